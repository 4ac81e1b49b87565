//! File mode with many routes (not a test: it prints figures). For each N, canaryd (release)
//! starts on a config of N routes (one host each, all on one backend); measured: time from
//! spawn to serving the last route, RSS once serving, the size and series count of `/metrics`
//! while every route is idle, and two SIGHUP reloads: one that changes the last route's
//! backend (time until the change is served) and one that changes nothing.
//!
//!   cargo bench -p canary-benches --bench route_scale            # N = 1000, 10000, 50000
//!   ROUTE_SCALE_N=1000,5000 cargo bench -p canary-benches --bench route_scale
//!
//! `ROUTE_SCALE_BIN=/path/to/canaryd` measures another build with the same harness.
//! Figures and their history: benches/ROUTE_SCALE.md.

use std::time::{Duration, Instant};

use canary_tests::{Backend, Canaryd, Client};

/// No phase waits longer than this.
const PHASE_LIMIT: Duration = Duration::from_secs(180);

fn config(state: &std::path::Path, n: usize, stable: &str, last: &str) -> String {
    let mut out = String::with_capacity(n * 120);
    out.push_str(&format!(
        "listen: {{ http: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\nstate: {{ path: \"{}\" }}\nroutes:\n",
        state.display()
    ));
    for i in 0..n {
        let endpoint = if i + 1 == n { last } else { stable };
        out.push_str(&format!(
            "  - name: route-{i}\n    hosts: [r{i}.example]\n    stable: {{ endpoints: [\"{endpoint}\"] }}\n"
        ));
    }
    out
}

/// Polls `host` until the backend named `want` answers it; the time it took.
async fn until_served_by(proxy: std::net::SocketAddr, host: &str, want: &str, since: Instant) -> Duration {
    let client = Client::new();
    loop {
        if let Ok(reply) = client.get(proxy, host, "/").await {
            if reply.status == 200 && reply.body == want.as_bytes() {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < PHASE_LIMIT,
            "{host} not served by {want} within {PHASE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn measure(n: usize, a: &str, b: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(dir.path().join("canaryd.yaml"), config(&state, n, a, a)).unwrap();
    let bin = std::env::var_os("ROUTE_SCALE_BIN").map_or_else(canary_tests::canaryd::binary, Into::into);
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(dir.path().join("canaryd.yaml"));
    let started = Instant::now();
    let proxy = Canaryd::spawn(cmd, dir);
    let last = format!("r{}.example", n - 1);
    let ready = until_served_by(proxy.addr, &last, "a", started).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_mib = proxy.rss_kib() as f64 / 1024.0;
    let metrics = proxy.metrics().await;
    let series = metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();

    // A reload that changes one route: the last one moves to backend b.
    std::fs::write(proxy.config_path(), config(&state, n, a, b)).unwrap();
    let t = Instant::now();
    proxy.signal(1);
    let reload_one = until_served_by(proxy.addr, &last, "b", t).await;
    let reloads = proxy.log().iter().filter(|l| l.contains("config reloaded")).count();
    // A reload that changes nothing: timed to its log line.
    let t = Instant::now();
    proxy.signal(1);
    loop {
        let seen = proxy.log().iter().filter(|l| l.contains("config reloaded")).count();
        if seen > reloads {
            break;
        }
        assert!(
            t.elapsed() < PHASE_LIMIT,
            "unchanged reload not logged within {PHASE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reload_none = t.elapsed();
    serde_json::json!({
        "routes": n,
        "start_to_last_route_served_s": ready.as_secs_f64(),
        "rss_mib": rss_mib,
        "metrics_bytes_idle": metrics.len(),
        "metric_series_idle": series,
        "reload_one_route_changed_s": reload_one.as_secs_f64(),
        "reload_nothing_changed_s": reload_none.as_secs_f64(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let counts: Vec<usize> = std::env::var("ROUTE_SCALE_N")
        .unwrap_or_else(|_| "1000,10000,50000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("ROUTE_SCALE_N: comma-separated route counts"))
        .collect();
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let baseline = measure(1, &a.endpoint(), &b.endpoint()).await;
    let base_rss = baseline["rss_mib"].as_f64().unwrap();
    let base_series = baseline["metric_series_idle"].as_f64().unwrap();
    for n in counts {
        let mut row = measure(n, &a.endpoint(), &b.endpoint()).await;
        let rss = row["rss_mib"].as_f64().unwrap();
        let series = row["metric_series_idle"].as_f64().unwrap();
        row["kib_per_route"] = ((rss - base_rss) * 1024.0 / n as f64).into();
        row["series_per_route"] = ((series - base_series) / n as f64).into();
        println!("{}", serde_json::to_string(&row).unwrap());
    }
}
