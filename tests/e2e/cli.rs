//! `canaryd check` and `canaryd demo` as a user runs them.

use std::process::Command;
use std::time::Duration;

use canary_tests::{canaryd::binary, Canaryd, Client};

#[test]
fn check_prints_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
routes:
  - name: app
    stable: { endpoints: ["10.0.0.1:8080"] }
    weight: 120
  - name: api
    stable: { endpoints: ["10.0.0.2"] }
  - name: app
    path_prefix: /x
    stable: { endpoints: ["10.0.0.3:80"] }
    weight: 12.34567
"#,
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "routes[0].weight: 120 is above 100",
        "routes[1].stable.endpoints[0]: \"10.0.0.2\" is not an endpoint",
        "routes[2].name: \"app\" is already the name of routes[0]",
        "routes[2].weight: 12.34567 has more than four decimals",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_reports_unknown_keys_and_accepts_valid_files() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("unknown.yaml");
    std::fs::write(
        &bad,
        "routes:\n  - name: app\n    stable: { endpoints: [\"10.0.0.1:80\"] }\n    wieght: 5\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[0]") && err.contains("wieght"), "{err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "routes:\n  - name: app\n    stable: { endpoints: [\"10.0.0.1:80\"] }\n    weight: 10\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("-c")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid, 1 route(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_both_versions() {
    let mut cmd = Command::new(binary());
    cmd.args([
        "--log-format",
        "json",
        "demo",
        "--canary-percent",
        "50",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut demo = Canaryd::spawn(cmd, tempfile::tempdir().unwrap());
    let c = Client::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let reply = c.get(demo.addr, "localhost", "/").await.unwrap();
        assert_eq!(reply.status, 200);
        seen.insert(reply.text());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![r#"{"version":"v1"}"#.to_string(), r#"{"version":"v2"}"#.to_string()]
    );
    demo.signal(libc::SIGINT);
    assert_eq!(demo.wait_exit(Duration::from_secs(10)), Some(0));
}
