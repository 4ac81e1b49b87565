//! Automatic rollback through the real binary: the analysis aborts a failing or slow
//! canary within seconds, leaves a merely imperfect one alone, and can judge by PromQL
//! against a real Prometheus server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_tests::{admin_call, Backend, BackendHandle, Canaryd, Client};

fn config(stable: &BackendHandle, canary: &BackendHandle, weight: &str, analysis: &str) -> String {
    Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: {weight}\n    rollout:\n      analysis: {analysis}\n",
        stable.endpoint(),
        canary.endpoint()
    ))
}

async fn status(proxy: &Canaryd) -> serde_json::Value {
    admin_call(proxy.admin, "GET", "/api/v1/routes/app", &[], "").await.2
}

/// Steady load over 4 connections until stopped (at most 120 s); counts non-200s from stable.
struct Load {
    stop: Arc<AtomicBool>,
    stable_errors: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Self {
        let (stop, stable_errors, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let tasks = (0..4)
            .map(|_| {
                let (stop, stable_errors, sent, client) =
                    (stop.clone(), stable_errors.clone(), sent.clone(), Client::new());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let r = client.get(addr, "app", "/").await.expect("request");
                        sent.fetch_add(1, Ordering::Relaxed);
                        if r.backend() == Some("stable") && r.status != 200 {
                            stable_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            stable_errors,
            sent,
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.stable_errors.load(Ordering::Relaxed),
        )
    }
}

/// Polls until the route is Aborted (or `timeout`); returns when it saw it.
async fn wait_aborted(proxy: &Canaryd, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if status(proxy).await["phase"] == "Aborted" {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_is_rolled_back_within_seconds_and_stable_users_see_no_error() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let proxy = Canaryd::start(&config(
        &stable,
        &canary,
        "10",
        "{ window: 10s, min_requests: 20, max_error_rate: 5, failures_before_abort: 2 }",
    ));
    let load = Load::start(proxy.addr);
    let passing = canary_tests::testbed::eventually(Duration::from_secs(10), || async {
        status(&proxy).await["analysis"]["verdict"] == "pass"
    })
    .await;
    assert!(passing, "{}", status(&proxy).await);
    canary.set_status(500);
    let aborted = wait_aborted(&proxy, Duration::from_secs(15))
        .await
        .expect("canary aborted");
    let first_failure = canary.first_error_at().expect("the canary failed");
    let took = aborted.duration_since(first_failure);
    // Canary traffic stops at once: the next 500 requests all go to stable.
    let (before, stable_before) = (canary.count(), stable.count());
    let served = canary_tests::testbed::eventually(Duration::from_secs(10), || async {
        stable.count() >= stable_before + 500
    })
    .await;
    let (sent, stable_errors) = load.stop().await;
    assert!(served, "the load stopped reaching stable after the abort");
    assert_eq!(canary.count(), before, "no request reached the canary after the abort");
    let s = status(&proxy).await;
    eprintln!(
        "first failing canary response → Aborted: {took:?}; {sent} requests, {stable_errors} stable errors; reason: {}",
        s["last_reason"]
    );
    assert!(took < Duration::from_secs(3), "abort took {took:?}");
    assert_eq!(stable_errors, 0);
    assert_eq!(s["weight"], 0.0);
    assert!(
        s["last_reason"].as_str().unwrap().starts_with("analysis: canary 5xx"),
        "{s}"
    );
    let m = proxy.metrics().await;
    assert!(
        m.contains(r#"canaryd_rollbacks_total{reason="error_rate",route="app"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"canaryd_rollout_phase{phase="Aborted",route="app"} 1"#));
    assert!(m.contains(r#"canaryd_canary_weight_ratio{route="app"} 0"#));
    let (_, _, audit) = admin_call(proxy.admin, "GET", "/api/v1/audit?route=app", &[], "").await;
    let last = audit.as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["actor"].as_str(), last["action"].as_str()),
        (Some("analysis"), Some("abort"))
    );
    assert!(proxy
        .log()
        .iter()
        .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("canary aborted by the analysis")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperfect_canaries_are_not_rolled_back() {
    // 1 % failures under a 5 % threshold.
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    canary.fail_every(100);
    let one_percent = Canaryd::start(&config(
        &stable,
        &canary,
        "50",
        "{ window: 10s, min_requests: 20, max_error_rate: 5, failures_before_abort: 2 }",
    ));
    // Stable failing as much as the canary: not the canary's fault under the increase rule.
    let (bad_stable, bad_canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    bad_stable.fail_every(3);
    bad_canary.fail_every(3);
    let both_bad = Canaryd::start(&config(
        &bad_stable,
        &bad_canary,
        "50",
        "{ window: 10s, min_requests: 20, max_error_rate: null, max_error_rate_increase: 10, failures_before_abort: 2 }",
    ));
    // A quiet canary: too few requests to judge.
    let (q_stable, q_canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    q_canary.set_status(500);
    let quiet = Canaryd::start(&config(
        &q_stable,
        &q_canary,
        "1",
        "{ window: 10s, min_requests: 1000, failures_before_abort: 1 }",
    ));

    let loads = [
        Load::start(one_percent.addr),
        Load::start(both_bad.addr),
        Load::start(quiet.addr),
    ];
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s1 = status(&one_percent).await;
    let s2 = status(&both_bad).await;
    let s3 = status(&quiet).await;
    for l in loads {
        l.stop().await;
    }
    assert_eq!(s1["phase"], "Idle", "{s1}");
    assert_eq!(s1["analysis"]["verdict"], "pass", "{s1}");
    assert!(s1["analysis"]["canary"]["error_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(s2["phase"], "Idle", "{s2}");
    assert_eq!(s2["analysis"]["verdict"], "pass", "{s2}");
    assert_eq!(s3["phase"], "Idle", "{s3}");
    assert_eq!(s3["analysis"]["verdict"], "inconclusive", "{s3}");
    assert!(
        s3["analysis"]["reason"]
            .as_str()
            .unwrap()
            .contains("of the 1000 requests needed"),
        "{s3}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_canary_is_rolled_back_by_the_latency_rule() {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").delay(Duration::from_millis(800)).start().await;
    let proxy = Canaryd::start(&config(
        &stable,
        &canary,
        "30",
        "{ window: 10s, min_requests: 5, max_latency_p99: 500ms, failures_before_abort: 2 }",
    ));
    let load = Load::start(proxy.addr);
    let aborted = wait_aborted(&proxy, Duration::from_secs(20)).await;
    load.stop().await;
    let s = status(&proxy).await;
    assert!(aborted.is_some(), "{s}");
    assert_eq!(s["last_reason"], "analysis: canary p99 1 s > 500ms over 10s");
    assert!(proxy
        .metrics()
        .await
        .contains(r#"canaryd_rollbacks_total{reason="latency",route="app"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let proxy = Canaryd::start(&config(&stable, &canary, "10", "{ window: 10s }"));
    let c = Client::new();
    for _ in 0..50 {
        c.get(proxy.addr, "app", "/").await.unwrap();
    }
    let text = proxy.metrics().await;
    for name in [
        "canaryd_requests_total",
        "canaryd_request_duration_seconds_bucket",
        "canaryd_upstream_errors_total",
        "canaryd_canary_weight_ratio",
        "canaryd_rollout_phase",
        "canaryd_config_reloads_total",
        "canaryd_endpoints",
        "process_resident_memory_bytes",
    ] {
        // canaryd_rollbacks_total has series only after a rollback (checked in the abort tests).
        assert!(text.contains(name), "{name} missing");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus server on a free loopback port, scraping `target` every second.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!("global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: canaryd\n    static_configs: [{{ targets: [\"{target}\"] }}]\n"),
        )
        .unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = Client::new().get(addr, "prometheus", "/-/ready").await {
                if r.status == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url, _dir: dir }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const QUERY: &str = r#"sum(rate(canaryd_requests_total{route=\"app\",variant=\"canary\",code_class=\"5xx\"}[10s])) / sum(rate(canaryd_requests_total{route=\"app\",variant=\"canary\"}[10s]))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_query_aborts_a_failing_canary() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    // The admin port must be known before Prometheus starts: start canaryd, then point Prometheus at it,
    // then give canaryd the URL through a reload.
    let placeholder = "{ max_error_rate: null, min_requests: 0, prometheus: { url: \"http://127.0.0.1:9\", query: \"vector(0)\", max: 1 } }";
    let proxy = Canaryd::start(&config(&stable, &canary, "20", placeholder));
    let prom = Prometheus::start(proxy.admin).await;
    let analysis = format!(
        "{{ window: 10s, max_error_rate: null, min_requests: 0, failures_before_abort: 2, prometheus: {{ url: \"{}\", query: \"{QUERY}\", max: 0.05, interval: 1s }} }}",
        prom.url
    );
    proxy.write_config(&config(&stable, &canary, "20", &analysis));
    proxy.signal(libc::SIGHUP);
    let load = Load::start(proxy.addr);
    // Healthy first: the query answers 0 and the verdict passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&proxy).await["analysis"]["verdict"] != "pass" {
        assert!(Instant::now() < deadline, "never passed: {}", status(&proxy).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    canary.set_status(500);
    let aborted = wait_aborted(&proxy, Duration::from_secs(40)).await;
    let (_, stable_errors) = load.stop().await;
    let s = status(&proxy).await;
    assert!(aborted.is_some(), "{s}");
    let took = aborted.unwrap().duration_since(canary.first_error_at().unwrap());
    eprintln!(
        "PromQL analysis: first failing canary response → Aborted in {took:?}: {}",
        s["last_reason"]
    );
    assert!(
        s["last_reason"].as_str().unwrap().contains("prometheus query value"),
        "{s}"
    );
    assert_eq!(stable_errors, 0);
    assert!(proxy
        .metrics()
        .await
        .contains(r#"canaryd_rollbacks_total{reason="prometheus",route="app"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_is_inconclusive_not_pass() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    canary.set_status(500);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Canaryd::start(&config(
        &stable,
        &canary,
        "20",
        &format!("{{ window: 10s, max_error_rate: null, min_requests: 0, failures_before_abort: 1, prometheus: {{ url: \"http://{dead}\", query: \"up\", max: 0.05, interval: 1s }} }}"),
    ));
    let load = Load::start(proxy.addr);
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.stop().await;
    let s = status(&proxy).await;
    assert_eq!(s["phase"], "Idle", "{s}");
    assert_eq!(s["analysis"]["verdict"], "inconclusive", "{s}");
    assert!(s["analysis"]["reason"].as_str().unwrap().contains("unreachable"), "{s}");
}

/// Series of route `route` in a scrape (label order is Prometheus's: alphabetical).
fn series_of<'a>(text: &'a str, route: &str) -> Vec<&'a str> {
    let label = format!("route=\"{route}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_routes_have_no_series_until_their_first_request() {
    use canary_tests::testbed::eventually;
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let idle: String = (0..200)
        .map(|i| {
            format!(
                "  - name: idle-{i}\n    hosts: [idle-{i}.example]\n    stable: {{ endpoints: [\"{}\"] }}\n",
                stable.endpoint()
            )
        })
        .collect();
    let with_canary = format!(
        "  - name: app\n    hosts: [app]\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: 10\n",
        stable.endpoint(),
        canary.endpoint()
    );
    let proxy = Canaryd::start(&Canaryd::config(&format!("routes:\n{with_canary}{idle}")));
    // The route with a canary shows its weight and phase from the start; the idle ones nothing.
    let text = proxy.metrics().await;
    assert!(
        text.contains(r#"canaryd_canary_weight_ratio{route="app"} 0.1"#),
        "{text}"
    );
    for i in [0, 7, 199] {
        assert_eq!(series_of(&text, &format!("idle-{i}")), Vec::<&str>::new());
    }
    assert!(
        series_of(&text, "app")
            .iter()
            .all(|l| !l.starts_with("canaryd_requests_total")),
        "no request series before a request"
    );

    // One request: every series of the variant that served it exists (so 5xx / all has both
    // terms from the start), the other variant's do not, and the gauges follow within a tick.
    let reply = Client::new().get(proxy.addr, "idle-7.example", "/").await.unwrap();
    assert_eq!(reply.status, 200);
    let text = proxy.metrics().await;
    let seven = series_of(&text, "idle-7");
    for want in [
        r#"canaryd_requests_total{code_class="2xx",route="idle-7",variant="stable"} 1"#,
        r#"canaryd_requests_total{code_class="5xx",route="idle-7",variant="stable"} 0"#,
        r#"canaryd_upstream_errors_total{reason="connect",route="idle-7",variant="stable"} 0"#,
        r#"canaryd_request_duration_seconds_count{route="idle-7",variant="stable"} 1"#,
    ] {
        assert!(seven.contains(&want), "{want} missing from {seven:#?}");
    }
    assert!(seven.iter().all(|l| !l.contains(r#"variant="canary""#)), "{seven:#?}");
    assert_eq!(series_of(&text, "idle-8"), Vec::<&str>::new());
    let gauge = r#"canaryd_endpoints{route="idle-7",state="healthy",variant="stable"} 1"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metrics().await.contains(gauge)
        })
        .await,
        "{gauge} never appeared"
    );
    let status = admin_call(proxy.admin, "GET", "/api/v1/routes/idle-7", &[], "").await.2;
    assert_eq!(status["stable"]["requests"], 1, "{status}");

    // A route removed by a reload takes its gauges with it.
    proxy.write_config(&Canaryd::config(&format!("routes:\n{with_canary}")));
    proxy.signal(1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !proxy.metrics().await.contains(gauge)
        })
        .await,
        "{gauge} stayed after idle-7 was removed"
    );
}
