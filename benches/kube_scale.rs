//! Kubernetes mode at scale, against the real API server of the test bed (not a test: it
//! prints figures). N Services with 5 EndpointSlices each (4 endpoints per slice) and N
//! CanaryRoutes on them; canaryd runs as deploy/rbac.yaml's ServiceAccount. Measured:
//! time from start to `/readyz` 200, RSS, CPU per EndpointSlice update, the delay from an
//! EndpointSlice change (an endpoint turning not ready) to the route serving without it
//! (p50/p99, as the route's status reports the published table), and the requests canaryd
//! makes to the API server (its audit log) while starting and while idle.
//!
//! `cargo bench -p canary-benches --bench kube_scale` (N = 1000); under `cargo test` it
//! runs once with N = 30 so it cannot rot. Needs what the real-Kubernetes tests need (Go
//! for the test bed, root for its network namespace). Results: benches/KUBE_SCALE.md.

use std::time::{Duration, Instant};

use canary_tests::testbed::{self, Testbed};
use canary_tests::{admin_call, Canaryd};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

const SLICES: usize = 5;
const ENDPOINTS: usize = 4;
const USER: &str = "system:serviceaccount:canaryd:canaryd";

fn slice(i: usize, k: usize, not_ready: usize) -> Value {
    let endpoints: Vec<Value> = (0..ENDPOINTS)
        .map(|e| {
            json!({
                "addresses": [format!("10.{}.{}.{}", 100 + k, i / 50, 1 + (i % 50) * 5 + e)],
                "conditions": {"ready": e >= not_ready, "serving": e >= not_ready, "terminating": false}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-{k}"), "namespace": "scale", "labels": {
            "kubernetes.io/service-name": format!("svc-{i}"),
            "endpointslice.kubernetes.io/managed-by": "kube-scale-bench"
        }},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn objects(n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "scale"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        for k in 0..SLICES {
            out.push(slice(i, k, 0));
        }
        out.push(canary_tests::objects::canary_route(
            "scale",
            &format!("route-{i}"),
            json!({
                "hosts": [format!("svc-{i}.example")],
                "stable": {"kubernetes": {"service": format!("svc-{i}"), "port": "http"}},
                "weight": 0
            }),
        ));
    }
    out
}

async fn apply_concurrently(client: &kube::Client, objects: Vec<Value>) {
    stream::iter(objects)
        .for_each_concurrent(16, |o| async move {
            if let Err(e) = testbed::apply(client, &o).await {
                panic!("applying {} {}: {e}", o["kind"], o["metadata"]["name"]);
            }
        })
        .await;
}

/// User plus system CPU seconds of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn route_endpoints(proxy: &Canaryd, i: usize) -> i64 {
    let (_, _, status) = admin_call(proxy.admin, "GET", &format!("/api/v1/routes/route-{i}"), &[], "").await;
    status["stable"]["endpoints"].as_i64().unwrap_or(-1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; the run inside the network namespace learns it by env.
    if std::env::args().any(|a| a == "--bench") {
        std::env::set_var("KUBE_SCALE_FULL", "1");
    }
    if !testbed::in_pod_network("kube_scale") {
        return;
    }
    let full = std::env::var_os("KUBE_SCALE_FULL").is_some();
    let n = if full { 1000 } else { 30 };
    let bed = Testbed::start();
    let admin = bed.admin().await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    testbed::apply_yaml(
        &admin,
        &std::fs::read_to_string(format!("{root}/deploy/crds/canaryroute.yaml")).unwrap(),
    )
    .await;
    testbed::apply_all(
        &admin,
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scale"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "canaryd"}}),
        ],
    )
    .await;
    testbed::apply_yaml(
        &admin,
        &std::fs::read_to_string(format!("{root}/deploy/rbac.yaml")).unwrap(),
    )
    .await;
    let gvk = kube::core::GroupVersionKind::gvk("canaryd.dev", "v1alpha1", "CanaryRoute");
    while kube::discovery::pinned_kind(&admin, &gvk).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = Instant::now();
    apply_concurrently(&admin, objects(n)).await;
    eprintln!(
        "kube_scale: {n} Services, {} EndpointSlices, {n} CanaryRoutes created in {:?}",
        n * SLICES,
        created.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = bed
        .service_account_kubeconfig(&admin, "canaryd", "canaryd", dir.path())
        .await;
    let config = Canaryd::config("kubernetes: { namespace: canaryd, ingress_class: null }\n");
    let audit_before = bed.audit(USER).len();
    let started = Instant::now();
    let proxy = Canaryd::start_kubernetes(&config, &kubeconfig);
    let client = canary_tests::Client::new();
    loop {
        if let Ok(r) = client.get(proxy.admin, "admin", "/readyz").await {
            if r.status == 200 {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(600), "not ready after 10 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = started.elapsed();
    // Every route's endpoints are in: the last one too.
    while route_endpoints(&proxy, n - 1).await != (SLICES * ENDPOINTS) as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in = started.elapsed();
    let startup_requests = bed.audit(USER).len() - audit_before;
    let rss_ready = proxy.rss_kib();

    // Idle: what canaryd asks of the API server when nothing changes.
    let idle_window = Duration::from_secs(if full { 30 } else { 5 });
    let idle_before = bed.audit(USER).len();
    let cpu_idle_before = cpu_seconds(proxy.pid());
    // KUBE_SCALE_PERF=FILE: a perf profile of canaryd over the idle window.
    let perf = std::env::var_os("KUBE_SCALE_PERF").map(|out| {
        std::process::Command::new("perf")
            .args(["record", "-F", "499", "-g", "-o"])
            .arg(out)
            .args([
                "-p",
                &proxy.pid().to_string(),
                "--",
                "sleep",
                &idle_window.as_secs().to_string(),
            ])
            .spawn()
            .expect("perf")
    });
    tokio::time::sleep(idle_window).await;
    if let Some(mut perf) = perf {
        perf.wait().unwrap();
    }
    let idle_audit = bed.audit(USER).split_off(idle_before);
    let idle_requests = idle_audit.len();
    // KUBE_SCALE_DEBUG=1: the last audit events with their timings, and canaryd's log.
    if std::env::var_os("KUBE_SCALE_DEBUG").is_some() {
        let raw = std::fs::read_to_string(&bed.info.audit_log).unwrap();
        for line in raw.lines().rev().take(40) {
            let v: Value = serde_json::from_str(line).unwrap();
            eprintln!(
                "IDLE {} {} {} {} {}",
                v["requestReceivedTimestamp"], v["stageTimestamp"], v["stage"], v["verb"], v["requestURI"]
            );
        }
        for l in proxy.log().iter().rev().take(30) {
            eprintln!("LOG {l}");
        }
    }
    let mut idle_kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in &idle_audit {
        let path = e.request_uri.split('?').next().unwrap_or_default();
        // /apis/group/version/namespaces/ns/resource[/name[/sub]] → verb resource[/sub]
        let parts: Vec<&str> = path.split('/').collect();
        let resource = match parts.iter().position(|p| *p == "namespaces") {
            Some(at) => parts[at + 2..]
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != 1)
                .map(|(_, p)| *p)
                .collect::<Vec<_>>()
                .join("/"),
            None => parts.last().copied().unwrap_or_default().to_string(),
        };
        *idle_kinds.entry(format!("{} {resource}", e.verb)).or_default() += 1;
    }
    let cpu_idle = cpu_seconds(proxy.pid()) - cpu_idle_before;

    // Latency: one endpoint of route i turns not ready; time until the route serves 19.
    let samples = if full { 100 } else { 10 };
    let mut delays = Vec::new();
    for i in 0..samples {
        let t = Instant::now();
        testbed::apply(&admin, &slice(i, 0, 1)).await.unwrap();
        while route_endpoints(&proxy, i).await != (SLICES * ENDPOINTS - 1) as i64 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "route-{i} never dropped the endpoint"
            );
        }
        delays.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    delays.sort_by(f64::total_cmp);

    // CPU per update: a burst of updates over the other routes, until the last is served.
    let updates = if full { 1000 } else { 20 };
    let cpu_before = cpu_seconds(proxy.pid());
    let burst = Instant::now();
    let changes: Vec<Value> = (0..updates)
        .map(|u| slice(samples + u % (n - samples), 1 + u / (n - samples) % (SLICES - 1), 2))
        .collect();
    apply_concurrently(&admin, changes).await;
    let last = samples + (updates - 1) % (n - samples);
    while route_endpoints(&proxy, last).await > (SLICES * ENDPOINTS - 2) as i64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let burst_took = burst.elapsed();
    let cpu_per_update_ms = (cpu_seconds(proxy.pid()) - cpu_before) * 1000.0 / updates as f64;
    let rss_after = proxy.rss_kib();

    let report = json!({
        "services": n, "endpoint_slices": n * SLICES, "canary_routes": n,
        "readyz_after_s": ready.as_secs_f64(), "all_routes_served_after_s": all_in.as_secs_f64(),
        "rss_ready_mib": rss_ready as f64 / 1024.0, "rss_after_updates_mib": rss_after as f64 / 1024.0,
        "startup_api_requests": startup_requests,
        "idle_api_requests_per_s": idle_requests as f64 / idle_window.as_secs_f64(),
        "idle_api_requests": idle_kinds,
        "idle_cpu_percent": 100.0 * cpu_idle / idle_window.as_secs_f64(),
        "slice_change_to_served_ms": {"p50": percentile(&delays, 0.5), "p99": percentile(&delays, 0.99), "max": delays[delays.len() - 1], "samples": samples},
        "cpu_ms_per_slice_update": cpu_per_update_ms, "updates": updates, "burst_s": burst_took.as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
