//! The sequential analysis (`alpha`) through the real binary at 50 requests a second: a canary
//! 5 points worse than stable is aborted and the verdict explains itself everywhere it is
//! shown; a canary identical to stable is left alone for two minutes. With a baseline, the
//! canary is judged against it, not against stable.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use canary_tests::{admin_call, Backend, BackendHandle, Canaryd, Client};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The README's analysis.
const ANALYSIS: &str = "{ window: 60s, alpha: 0.01, max_error_rate: 5, max_error_rate_increase: 1, \
                        max_latency_increase: 20%";

fn config(stable: &BackendHandle, canary: &BackendHandle, webhook: &str) -> String {
    Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    \
         weight: 10\n    rollout:\n      analysis: {ANALYSIS}, webhook: \"{webhook}\" }}\n",
        stable.endpoint(),
        canary.endpoint()
    ))
}

async fn status(proxy: &Canaryd) -> serde_json::Value {
    admin_call(proxy.admin, "GET", "/api/v1/routes/app", &[], "").await.2
}

/// A webhook receiver on loopback: the JSON bodies POSTed to it.
async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Ok(json) = serde_json::from_slice(&body) {
                            seen.lock().unwrap().push(json);
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, bodies)
}

/// Sends 50 requests a second to the proxy until `until` says stop or `limit` has passed.
async fn paced_load(proxy: &Canaryd, limit: Duration, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    load_every(proxy, Duration::from_millis(20), limit, until).await
}

/// Sends a request every `period` until `until` says stop or `limit` has passed.
async fn load_every(
    proxy: &Canaryd,
    period: Duration,
    limit: Duration,
    until: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let client = Client::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(period);
    let mut last_check = Instant::now();
    let mut s = status(proxy).await;
    while started.elapsed() < limit {
        tick.tick().await;
        let (client, addr) = (client.clone(), proxy.addr);
        tokio::spawn(async move {
            let _ = client.get(addr, "app", "/").await;
        });
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            s = status(proxy).await;
            if until(&s) {
                break;
            }
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_five_points_worse_is_aborted_and_the_verdict_explains_itself() {
    // Stable answers 1 % 5xx, the canary 6.25 %: 5.25 points worse.
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    stable.fail_every(100);
    canary.fail_every(16);
    let (hook, bodies) = webhook().await;
    let proxy = Canaryd::start(&config(&stable, &canary, &hook));
    let started = Instant::now();
    let s = paced_load(&proxy, Duration::from_secs(400), |s| s["phase"] == "Aborted").await;
    let took = started.elapsed();
    eprintln!("aborted after {took:?}: {}", s["last_reason"]);
    assert_eq!(s["phase"], "Aborted", "{s}");
    assert_eq!(s["weight"], 0.0);

    // Route status: the reason, and the failing rule's figures.
    let reason = s["last_reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("analysis: canary 5xx ")
            && reason.contains("vs stable ")
            && reason.contains("the increase is at least ")
            && reason.contains("above the 1 allowed (alpha 0.0033"),
        "{reason}"
    );
    let checks = s["analysis"]["checks"].as_array().expect("checks in the status");
    let failed = checks
        .iter()
        .find(|c| c["decision"] == "fail")
        .unwrap_or_else(|| panic!("{s}"));
    assert_eq!(failed["rule"], "error_rate_increase");
    assert!(failed["statistic_lower"].as_f64().unwrap() > 1.0, "{failed}");
    assert!(failed["canary"]["requests"].as_u64().unwrap() > 100, "{failed}");
    assert!(failed["stable"]["requests"].as_u64().unwrap() > 1_000, "{failed}");
    assert_eq!(failed["threshold"], 1.0);
    assert_eq!(failed["unit"], "points");

    // The audit entry.
    let (_, _, audit) = admin_call(proxy.admin, "GET", "/api/v1/audit?route=app", &[], "").await;
    let last = audit.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["actor"].as_str(), last["action"].as_str()),
        (Some("analysis"), Some("abort"))
    );
    assert_eq!(last["reason"].as_str(), Some(reason.as_str()));

    // The webhook body.
    let deadline = Instant::now() + Duration::from_secs(5);
    while bodies.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = bodies.lock().unwrap().first().cloned().expect("the webhook was called");
    assert_eq!(body["event"], "canary_aborted");
    assert_eq!(body["rule"], "error_rate_increase");
    assert_eq!(body["reason"].as_str(), Some(reason.as_str()));
    assert!(
        body["analysis"]["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["decision"] == "fail")),
        "{body}"
    );

    // `canaryctl status` shows it too.
    let out = std::process::Command::new(canary_tests::canaryd::canaryctl())
        .arg("status")
        .env("CANARYD_URL", format!("http://{}", proxy.admin))
        .env_remove("CANARYD_TOKEN")
        .output()
        .expect("run canaryctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("aborted: {reason}")), "{text}");
    assert!(text.contains("error_rate_increase fail: canary 5xx"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_canary_is_not_aborted_in_two_minutes() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    stable.fail_every(100);
    canary.fail_every(100);
    let (hook, bodies) = webhook().await;
    let proxy = Canaryd::start(&config(&stable, &canary, &hook));
    let s = paced_load(&proxy, Duration::from_secs(120), |s| s["phase"] == "Aborted").await;
    assert_ne!(s["phase"], "Aborted", "{s}");
    assert!(bodies.lock().unwrap().is_empty());
    let verdict = &s["analysis"];
    // Two minutes at 5 canary requests a second cannot show that the canary is within a point
    // of stable: the verdict says so, and how much more traffic it needs.
    assert!(
        verdict["verdict"] == "inconclusive" || verdict["verdict"] == "pass",
        "{verdict}"
    );
    if verdict["verdict"] == "inconclusive" {
        let why = verdict["reason"].as_str().unwrap();
        assert!(
            why.contains("needs about ") && why.contains(" more canary requests"),
            "{why}"
        );
    }
    assert!(canary.count() > 300, "the canary got {} requests", canary.count());
}

/// Fresh pods are worse than long-running ones (here 10 % 5xx against stable's 0 %): judged
/// against stable, a canary as good as a fresh stable pod would be aborted; judged against a
/// baseline of fresh stable pods it is not, and a canary really worse than the baseline is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_baseline_the_canary_is_judged_against_fresh_pods_not_stable() {
    let (stable, canary, baseline) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
        Backend::new("baseline").start().await,
    );
    canary.fail_every(10);
    baseline.fail_every(10);
    let (hook, bodies) = webhook().await;
    let rules = "{ window: 60s, alpha: 0.01, max_error_rate: null, max_error_rate_increase: 1";
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    \
         baseline: {{ endpoints: [\"{}\"] }}\n    weight: 10\n    rollout:\n      analysis: {rules}, webhook: \"{hook}\" }}\n",
        stable.endpoint(),
        canary.endpoint(),
        baseline.endpoint()
    )));
    // The same rules judged against stable, on the counts the status shows.
    let config = canary_config::parse(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n    rollout:\n      analysis: {rules} }}\n"
    ))
    .unwrap();
    let a = config.routes[0].rollout.analysis.clone().unwrap();
    let totals = |v: &serde_json::Value| {
        let mut t = canary_proxy::running::Totals::default();
        let (n, errors) = (v["requests"].as_u64().unwrap(), v["server_errors"].as_u64().unwrap());
        for i in 0..n {
            t.record(if i < errors { 500 } else { 200 }, Duration::from_millis(1));
        }
        t
    };
    let against_stable_fails = |s: &serde_json::Value| {
        let checks = canary_control::sequential::judge(
            &a,
            0.01,
            canary_proxy::Variant::Stable,
            &totals(&s["stable"]),
            &totals(&s["canary"]),
        );
        checks[0].decision == canary_control::sequential::Decision::Fail
    };

    // 200 requests a second: 10 % canary, 10 % baseline, 80 % stable.
    let period = Duration::from_millis(5);
    let started = Instant::now();
    let s = load_every(&proxy, period, Duration::from_secs(90), |s| {
        s["phase"] == "Aborted" || against_stable_fails(s)
    })
    .await;
    eprintln!(
        "judged against stable the canary would fail after {:?}",
        started.elapsed()
    );
    assert!(against_stable_fails(&s), "{s}");
    assert_ne!(s["phase"], "Aborted", "aborted against the baseline: {s}");
    // Ten more judgements against the baseline, and still no abort.
    let s = load_every(&proxy, period, Duration::from_secs(10), |s| s["phase"] == "Aborted").await;
    assert_ne!(s["phase"], "Aborted", "aborted against the baseline: {s}");
    assert!(bodies.lock().unwrap().is_empty());
    assert_eq!(s["baseline"]["weight"], 10.0, "{s}");
    let check = &s["analysis"]["checks"][0];
    assert_eq!(check["rule"], "error_rate_increase", "{s}");
    assert_ne!(check["decision"], "fail", "{check}");
    assert!(
        check["stable"].is_null() && check["baseline"]["requests"].as_u64().unwrap() > 0,
        "{check}"
    );
    assert!(
        check["explanation"].as_str().unwrap().contains(" vs baseline "),
        "{check}"
    );
    assert!(s["analysis"]["baseline"]["requests"].as_u64().unwrap() > 0, "{s}");
    // The baseline gets the canary's share, taken from stable's (binomial bounds, 4.42 sd).
    let n = ["stable", "canary", "baseline"].map(|v| s[v]["requests"].as_u64().unwrap() as f64);
    let total: f64 = n.iter().sum();
    for (count, share) in [(n[0], 0.8), (n[1], 0.1), (n[2], 0.1)] {
        let sd = (total * share * (1.0 - share)).sqrt();
        assert!((count - total * share).abs() <= 4.42 * sd, "{n:?} of {total}: {s}");
    }

    // Now the canary is really worse than the baseline (50 % 5xx against 10 %).
    canary.fail_every(2);
    let worse = Instant::now();
    let s = load_every(&proxy, period, Duration::from_secs(60), |s| s["phase"] == "Aborted").await;
    eprintln!(
        "aborted {:?} after the canary got worse: {}",
        worse.elapsed(),
        s["last_reason"]
    );
    assert_eq!(s["phase"], "Aborted", "{s}");
    let reason = s["last_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("analysis: canary 5xx ") && reason.contains(" vs baseline "),
        "{reason}"
    );
    assert!(s["baseline"]["weight"] == 0.0 && s["weight"] == 0.0, "{s}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while bodies.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = bodies.lock().unwrap().first().cloned().expect("the webhook was called");
    assert_eq!(body["reason"].as_str(), Some(reason));
    let failed = body["analysis"]["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["decision"] == "fail"))
        .cloned()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(failed["baseline"]["requests"].as_u64().unwrap() > 0, "{failed}");
}
