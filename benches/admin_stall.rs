//! Does a flood of refused admin calls slow proxied traffic? canaryd (release,
//! `--threads 1`, so the admin API and the data plane share one worker) with its state file on
//! disk proxies a closed loop of requests from 8 connections for 8 s, twice: alone, and while
//! 200 bad-token calls per second hit the admin API (each one is audited, and the audit is
//! part of the state file). Prints proxied p50/p99/p99.9/max for both phases as JSON.
//!
//!   cargo bench -p canary-benches --bench admin_stall
//!
//! `ADMIN_STALL_BIN=/path/to/canaryd` measures another build (a copy of an older one, say)
//! with the same harness.
//!
//! Figures and their history: benches/ADMIN_STALL.md.

use std::time::{Duration, Instant};

use canary_tests::{Backend, Canaryd, Client};

const CONNECTIONS: usize = 8;
const PHASE: Duration = Duration::from_secs(8);
const BAD_CALLS_PER_SECOND: u64 = 200;
/// Every loop below is bounded by count as well as by time.
const MAX_REQUESTS_PER_CONNECTION: usize = 400_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Proxied latencies (ms) from `CONNECTIONS` closed loops for `PHASE`.
async fn proxied_latencies(proxy: std::net::SocketAddr) -> Vec<f64> {
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let client = Client::new();
                let started = Instant::now();
                let mut out = Vec::new();
                while started.elapsed() < PHASE && out.len() < MAX_REQUESTS_PER_CONNECTION {
                    let t = Instant::now();
                    let reply = client.get(proxy, "app.example", "/").await.expect("proxied request");
                    assert_eq!(reply.status, 200);
                    out.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    all
}

/// Sends paced bad-token admin calls until `stop`; returns how many were answered 401.
async fn flood(admin: std::net::SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / BAD_CALLS_PER_SECOND));
    let mut refused = 0;
    let limit = BAD_CALLS_PER_SECOND * (PHASE.as_secs() + 2);
    while !*stop.borrow() && refused < limit {
        tick.tick().await;
        let (status, _, _) = canary_tests::admin_call(
            admin,
            "PUT",
            "/api/v1/routes/app/weight",
            &[("authorization", "Bearer not-a-token-of-ours")],
            r#"{"weight": 50}"#,
        )
        .await;
        assert_eq!(status, 401);
        refused += 1;
    }
    refused
}

/// canaryd's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn summary(latencies: &[f64], cpu: f64) -> serde_json::Value {
    serde_json::json!({
        "requests": latencies.len(),
        "canaryd_cpu_seconds": cpu,
        "canaryd_cpu_us_per_request": cpu * 1e6 / latencies.len() as f64,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "p999_ms": percentile(latencies, 0.999),
        "max_ms": latencies[latencies.len() - 1],
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let backend = Backend::new("stable").start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# name role token\nci write ci-pipeline-write-token-0001\n").unwrap();
    let config = format!(
        "listen: {{ http: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\", tokens_file: \"{}\" }}\nstate: {{ path: \"{}\" }}\nroutes:\n  - name: app\n    hosts: [app.example]\n    stable: {{ endpoints: [\"{}\"] }}\n",
        tokens.display(),
        dir.path().join("state.json").display(),
        backend.endpoint()
    );
    std::fs::write(dir.path().join("canaryd.yaml"), config).unwrap();
    let bin = std::env::var_os("ADMIN_STALL_BIN").map_or_else(canary_tests::canaryd::binary, Into::into);
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--log-format", "json", "run", "--threads", "1", "--config"])
        .arg(dir.path().join("canaryd.yaml"));
    // The audit is also logged; the log goes to a pipe the harness drains, as in production.
    let proxy = Canaryd::spawn(cmd, dir);
    canary_tests::cluster::wait_ready(&proxy).await;
    // Warm up connections and the backend.
    let _ = proxied_latencies_for(proxy.addr, Duration::from_secs(1)).await;

    let cpu0 = cpu_seconds(proxy.pid());
    let alone = proxied_latencies(proxy.addr).await;
    let cpu1 = cpu_seconds(proxy.pid());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flooding = tokio::spawn(flood(proxy.admin, stop_rx));
    let flooded = proxied_latencies(proxy.addr).await;
    stop_tx.send_replace(true);
    let cpu2 = cpu_seconds(proxy.pid());
    let refused = flooding.await.unwrap();
    // The CPU the flood added, beyond what the proxied requests of that phase cost alone.
    let per_call_us =
        ((cpu2 - cpu1) - (cpu1 - cpu0) * flooded.len() as f64 / alone.len() as f64) * 1e6 / refused as f64;
    let state_bytes = std::fs::metadata(proxy.config_path().with_file_name("state.json"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "alone": summary(&alone, cpu1 - cpu0),
            "with_bad_token_calls": summary(&flooded, cpu2 - cpu1),
            "canaryd_cpu_us_per_bad_token_call": per_call_us,
            "bad_token_calls": refused,
            "bad_token_calls_per_second": refused as f64 / PHASE.as_secs_f64(),
            "state_file_bytes": state_bytes,
        }))
        .unwrap()
    );
}

/// A short closed loop on one connection, to warm up.
async fn proxied_latencies_for(proxy: std::net::SocketAddr, how_long: Duration) -> usize {
    let client = Client::new();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < how_long && n < 100_000 {
        client.get(proxy, "app.example", "/").await.expect("warm-up request");
        n += 1;
    }
    n
}
