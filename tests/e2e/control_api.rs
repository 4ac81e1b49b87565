//! The control API through the real binary: auth, concurrency, bad input, persistence,
//! the OpenAPI document, and how fast a change reaches requests.

use std::time::{Duration, Instant};

use canary_tests::{admin_call, Backend, BackendHandle, Canaryd, Client};

const WRITE: &str = "ci-pipeline-write-token-0001";
const READ: &str = "dashboard-read-token-000002";

/// A config with a tokens file beside it, for a route `app` over the two backends.
fn setup(stable: &BackendHandle, canary: &BackendHandle, dir: &std::path::Path, weight: &str) -> String {
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("# name role token\nci write {WRITE}\ngrafana read {READ}\n"),
    )
    .unwrap();
    Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: {weight}\n",
        stable.endpoint(),
        canary.endpoint()
    ))
    .replace("admin: {", &format!("admin: {{ tokens_file: \"{}\",", tokens.display()))
}

/// The stable and canary backends, kept alive for the test's length.
type Backends = (BackendHandle, BackendHandle);

/// Two backends and a canaryd with a tokens file, route `app` at weight 0; also returns its config.
async fn start() -> (Backends, String, Canaryd) {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(&stable, &canary, dir.path(), "0");
    let proxy = Canaryd::start_in(&yaml, dir);
    ((stable, canary), yaml, proxy)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn route(proxy: &Canaryd) -> serde_json::Value {
    let (status, _, body) = admin_call(
        proxy.admin,
        "GET",
        "/api/v1/routes/app",
        &[("authorization", &bearer(READ))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_refuses_without_changing_anything_and_audits() {
    let (_backends, _, proxy) = start().await;
    let before = route(&proxy).await;
    let prefix = &WRITE[..WRITE.len() - 1];
    let suffixed = format!("{WRITE}x");
    let cases: Vec<(Option<String>, u16)> = vec![
        (None, 401),
        (Some(String::new()), 401),
        (Some("Bearer ".into()), 401),
        (Some(format!("Basic {WRITE}")), 401),
        (Some(format!("bearer {WRITE}")), 401),
        (Some(bearer(prefix)), 401),
        (Some(bearer(&suffixed)), 401),
        (Some(bearer(READ)), 403),
    ];
    for (auth, want) in &cases {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, _, body) = admin_call(
            proxy.admin,
            "PUT",
            "/api/v1/routes/app/weight",
            &headers,
            r#"{"percent": 50}"#,
        )
        .await;
        assert_eq!(status.as_u16(), *want, "{auth:?}: {body}");
        assert_eq!(body["field"], "Authorization");
    }
    // Reads need a token too.
    let (status, _, _) = admin_call(proxy.admin, "GET", "/api/v1/routes", &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(route(&proxy).await["revision"], before["revision"], "no state change");
    assert_eq!(route(&proxy).await["weight"], 0.0);

    let (_, _, audit) = admin_call(
        proxy.admin,
        "GET",
        "/api/v1/audit?limit=50",
        &[("authorization", &bearer(READ))],
        "",
    )
    .await;
    let refusals = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"].as_str().unwrap().starts_with("refused: 40"))
        .count();
    assert_eq!(refusals, cases.len() + 1, "every refusal is audited: {audit}");

    // A write token works, and the audit names it, never its secret.
    let (status, _, body) = admin_call(
        proxy.admin,
        "PUT",
        "/api/v1/routes/app/weight",
        &[("authorization", &bearer(WRITE))],
        r#"{"percent": 12.5, "reason": "manual step"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["weight"], 12.5);
    let (_, _, audit) = admin_call(
        proxy.admin,
        "GET",
        "/api/v1/audit?route=app&limit=1",
        &[("authorization", &bearer(READ))],
        "",
    )
    .await;
    assert_eq!(audit[0]["actor"], "ci");
    assert_eq!(audit[0]["from"], "0 % Idle");
    assert_eq!(audit[0]["to"], "12.5 % Idle");
    assert_eq!(audit[0]["reason"], "manual step");

    let state = std::fs::read_to_string(proxy.config_path().with_file_name("state.json")).unwrap();
    let everything = format!("{}\n{audit}\n{state}", proxy.log().join("\n"));
    for secret in [WRITE, READ, prefix] {
        assert!(!everything.contains(secret), "a token leaked into logs, audit or state");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_stale_revisions_and_bad_input_change_nothing() {
    let (_backends, _, proxy) = start().await;
    let w = bearer(WRITE);
    let auth = [("authorization", w.as_str())];
    let before = route(&proxy).await;

    let (status, _, body) = admin_call(proxy.admin, "POST", "/api/v1/routes/app/step", &auth, "").await;
    assert_eq!(status, 409);
    assert_eq!(
        body["error"],
        "cannot step while the rollout is Idle; start a rollout first"
    );

    let bad: [(&str, &str, &str, u16, Option<&str>); 8] = [
        ("PUT", "/api/v1/routes/app/weight", "{not json", 400, None),
        (
            "PUT",
            "/api/v1/routes/app/weight",
            r#"{"percent": 10, "colour": "red"}"#,
            400,
            Some("colour"),
        ),
        (
            "PUT",
            "/api/v1/routes/app/weight",
            r#"{"reason": "x"}"#,
            400,
            Some("percent"),
        ),
        (
            "PUT",
            "/api/v1/routes/app/weight",
            r#"{"percent": 101}"#,
            400,
            Some("percent"),
        ),
        (
            "PUT",
            "/api/v1/routes/app/weight",
            r#"{"percent": 12.34567}"#,
            400,
            Some("percent"),
        ),
        (
            "PUT",
            "/api/v1/routes/nope/weight",
            r#"{"percent": 10}"#,
            404,
            Some("route"),
        ),
        (
            "POST",
            "/api/v1/routes/app/rollout",
            r#"{"steps": [50, 25]}"#,
            400,
            Some("steps"),
        ),
        (
            "POST",
            "/api/v1/routes/app/rollout",
            r#"{"interval": "soon"}"#,
            400,
            Some("interval"),
        ),
    ];
    for (method, path, body, want, field) in bad {
        let (status, _, resp) = admin_call(proxy.admin, method, path, &auth, body).await;
        assert_eq!(status.as_u16(), want, "{method} {path} {body}: {resp}");
        assert!(resp["error"].is_string(), "{resp}");
        if let Some(f) = field {
            assert_eq!(resp["field"], f, "{body}: {resp}");
        }
    }
    let after = route(&proxy).await;
    assert_eq!(
        (after["revision"].clone(), after["weight"].clone()),
        (before["revision"].clone(), before["weight"].clone())
    );

    // Optimistic concurrency: two pipelines read revision R; the first wins, the second gets 412.
    let rev = before["revision"].as_u64().unwrap().to_string();
    let if_match = [("authorization", w.as_str()), ("if-match", rev.as_str())];
    let (status, headers, first) = admin_call(
        proxy.admin,
        "PUT",
        "/api/v1/routes/app/weight",
        &if_match,
        r#"{"percent": 10}"#,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(headers["etag"].to_str().unwrap(), format!("\"{}\"", first["revision"]));
    let (status, _, second) = admin_call(
        proxy.admin,
        "PUT",
        "/api/v1/routes/app/weight",
        &if_match,
        r#"{"percent": 90}"#,
    )
    .await;
    assert_eq!(status, 412, "{second}");
    assert_eq!(second["field"], "If-Match");
    assert_eq!(route(&proxy).await["weight"], 10.0, "the stale write changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_survives_restart_and_kill_9() {
    let (_backends, yaml, mut proxy) = start().await;
    let w = bearer(WRITE);
    let auth = [("authorization", w.as_str())];
    let (status, _, started) = admin_call(
        proxy.admin,
        "POST",
        "/api/v1/routes/app/rollout",
        &auth,
        r#"{"steps": [5, 20, 60, 100], "reason": "v2"}"#,
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let (_, _, stepped) = admin_call(proxy.admin, "POST", "/api/v1/routes/app/step", &auth, "").await;
    assert_eq!(
        (
            stepped["weight"].as_f64(),
            stepped["phase"].as_str(),
            stepped["step"].as_u64()
        ),
        (Some(20.0), Some("Progressing"), Some(1))
    );

    for how in ["SIGTERM", "SIGKILL"] {
        if how == "SIGTERM" {
            proxy.signal(libc::SIGTERM);
            assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
        }
        let dir = proxy.kill();
        proxy = Canaryd::start_in(&yaml, dir);
        let after = route(&proxy).await;
        for key in [
            "weight",
            "phase",
            "step",
            "steps",
            "salt_id",
            "generation",
            "revision",
            "last_reason",
        ] {
            assert_eq!(after[key], stepped[key], "{key} after {how}");
        }
        let (_, _, audit) = admin_call(
            proxy.admin,
            "GET",
            "/api/v1/audit?route=app",
            &[("authorization", &bearer(READ))],
            "",
        )
        .await;
        let actions: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["rollout", "step"], "audit after {how}");
    }
    // The live weight serves after the restart.
    let c = Client::new();
    let mut canary_hits = 0;
    for _ in 0..1_000 {
        canary_hits += usize::from(c.get(proxy.addr, "app", "/").await.unwrap().backend() == Some("canary"));
    }
    assert!((140..=260).contains(&canary_hits), "20 % of 1000: {canary_hits}");

    // A corrupt state file stops the start with a message naming it, unless --reset-state.
    let dir = proxy.kill();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{ broken").unwrap();
    let out = std::process::Command::new(canary_tests::canaryd::binary())
        .args(["run", "--config"])
        .arg(dir.path().join("canaryd.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state.json") && err.contains("--reset-state"), "{err}");
    let mut cmd = std::process::Command::new(canary_tests::canaryd::binary());
    cmd.args(["--log-format", "json", "run", "--reset-state", "--config"])
        .arg(dir.path().join("canaryd.yaml"));
    let reset = Canaryd::spawn(cmd, dir);
    assert_eq!(route(&reset).await["phase"], "Idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_validates_and_lists_every_served_endpoint() {
    let (_backends, _, proxy) = start().await;
    let w = bearer(WRITE);
    let (status, _, doc) = admin_call(proxy.admin, "GET", "/api/v1/openapi.json", &[("authorization", &w)], "").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // Validate with the openapi-spec-validator package (scripts/test.sh installs it).
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), doc.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator failed (install it with `pip install openapi-spec-validator`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every documented operation is served by the real router (none answers "no endpoint").
    let mut count = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post"] {
            if item.get(method).is_none() {
                continue;
            }
            count += 1;
            let concrete = path.replace("{route}", "app");
            let body = if method == "put" { r#"{"percent": 1}"# } else { "" };
            let (status, _, resp) = admin_call(
                proxy.admin,
                &method.to_uppercase(),
                &concrete,
                &[("authorization", &w)],
                body,
            )
            .await;
            let unserved =
                status == 405 || (status == 404 && resp["error"].as_str().unwrap_or("").starts_with("no endpoint"));
            assert!(
                !unserved,
                "{method} {path} is documented but not served: {status} {resp}"
            );
        }
    }
    assert_eq!(count, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_reaches_the_very_next_request() {
    let (_backends, _, proxy) = start().await;
    let api = canary_control::client::ApiClient::new(&format!("http://{}", proxy.admin), Some(WRITE.into())).unwrap();
    let c = Client::new();
    let mut delays = Vec::new();
    for i in 0..20 {
        let (percent, want) = if i % 2 == 0 { (100.0, "canary") } else { (0.0, "stable") };
        api.set_weight("app", percent, None, None).await.unwrap();
        let answered = Instant::now();
        let r = c.get(proxy.addr, "app", "/").await.unwrap();
        delays.push(answered.elapsed());
        assert_eq!(
            r.backend(),
            Some(want),
            "change {i}: the first request after the API answered"
        );
    }
    delays.sort();
    eprintln!(
        "API answer → first request routed with the new weight: always the first request; its round trip median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
}
