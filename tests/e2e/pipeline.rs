//! The example GitLab pipeline, run for real: each manual rollout job's script lines go
//! through bash with the real `canaryctl` against the real `canaryd` while traffic flows,
//! and the measured canary share is checked after each job.

use std::process::Command;

use canary_tests::{binomial_bounds, canaryd, Backend, Canaryd, Client};

const TOKEN: &str = "gitlab-runner-token-0000001";
const JOBS: [(&str, f64); 4] = [
    ("rollout 10%", 0.10),
    ("rollout 25%", 0.25),
    ("rollout 50%", 0.50),
    ("rollout 100%", 1.0),
];

/// Runs one job's `script:` lines as GitLab would (bash, stop at the first failure).
fn run_job(pipeline: &serde_yaml_ng::Value, job: &str, admin: std::net::SocketAddr) {
    let script = pipeline[job]["script"]
        .as_sequence()
        .unwrap_or_else(|| panic!("job {job:?} has a script"));
    let lines: Vec<&str> = script.iter().map(|l| l.as_str().unwrap()).collect();
    let path = format!(
        "{}:{}",
        canaryd::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-euc")
        .arg(lines.join("\n"))
        .env("PATH", path)
        .env("CANARYD_URL", format!("http://{admin}"))
        .env("CANARYD_TOKEN", TOKEN)
        .env("CANARY_ROUTE", pipeline["variables"]["CANARY_ROUTE"].as_str().unwrap())
        .env("CI_PIPELINE_ID", "4242")
        .env("GITLAB_USER_LOGIN", "tester")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "job {job:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ {job}\n{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_incremental_rollout_pipeline() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/gitlab-ci.yml")).unwrap();
    let pipeline: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), format!("gitlab write {TOKEN}\n")).unwrap();
    let yaml = Canaryd::config(&format!(
        "routes:\n  - name: coolapp\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n",
        stable.endpoint(),
        canary.endpoint()
    ))
    .replace(
        "admin: {",
        &format!("admin: {{ tokens_file: \"{}\",", dir.path().join("tokens").display()),
    );
    let proxy = Canaryd::start_in(&yaml, dir);

    let client = Client::new();
    let n = 4_000u64;
    for (job, share) in JOBS {
        run_job(&pipeline, job, proxy.admin);
        let mut hits = 0u64;
        for _ in 0..n {
            let r = client.get(proxy.addr, "coolapp.example.com", "/").await.unwrap();
            assert_eq!(r.status, 200);
            hits += u64::from(r.backend() == Some("canary"));
        }
        let (lo, hi) = binomial_bounds(n, share);
        eprintln!(
            "after {job:?}: canary {hits} of {n} ({:.2} %), 1e-5 interval {lo:.0}..{hi:.0}",
            hits as f64 * 100.0 / n as f64
        );
        assert!((lo..=hi).contains(&(hits as f64)), "after {job}: {hits} of {n}");
    }

    // Promoted now: stepping again fails the job, as a pipeline must see.
    let out = Command::new(canaryd::canaryctl())
        .args(["step", "coolapp"])
        .env("CANARYD_URL", format!("http://{}", proxy.admin))
        .env("CANARYD_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("409 Conflict: cannot step while the rollout is Promoted"));

    // The abort job rolls everything back.
    run_job(&pipeline, "abort", proxy.admin);
    for _ in 0..200 {
        assert_eq!(
            client
                .get(proxy.addr, "coolapp.example.com", "/")
                .await
                .unwrap()
                .backend(),
            Some("stable")
        );
    }
    let out = Command::new(canaryd::canaryctl())
        .args(["--output", "json", "audit", "--route", "coolapp"])
        .env("CANARYD_URL", format!("http://{}", proxy.admin))
        .env("CANARYD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rollout", "step", "step", "step", "step", "abort"], "{audit}");
    assert_eq!(audit[5]["reason"], "aborted by tester in pipeline 4242");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_rollout_advances_by_itself_and_wait_returns() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    rollout: {{ steps: [20, 60, 100], interval: 1s }}\n",
        stable.endpoint(),
        canary.endpoint()
    )));
    let ctl = |args: &[&str]| {
        Command::new(canaryd::canaryctl())
            .args(args)
            .env("CANARYD_URL", format!("http://{}", proxy.admin))
            .output()
            .unwrap()
    };
    let out = ctl(&["rollout", "app"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = std::time::Instant::now();
    let out = ctl(&["wait", "app", "--phase", "Promoted", "--timeout", "20s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(2),
        "three 1 s steps cannot finish in {took:?}"
    );
    assert_eq!(
        Client::new().get(proxy.addr, "app", "/").await.unwrap().backend(),
        Some("canary")
    );
    // watch prints a live line per second.
    let out = ctl(&["watch", "app", "--count", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("app  weight     100%  Promoted")),
        "{text}"
    );
    // Waiting for a phase that does not come times out with a failure.
    let out = ctl(&["wait", "app", "--phase", "Paused", "--timeout", "1s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is Promoted after"));
}
