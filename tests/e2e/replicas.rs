//! Replicas of canaryd sharing rollout state through CanaryRoute status, on the
//! real-Kubernetes test bed: real optimistic concurrency on the status subresource, Lease
//! leader election between two canaryd processes, Events, and CanaryRoutes beside config
//! file routes. Each canaryd runs as deploy/rbac.yaml's ServiceAccount, through the real
//! RBAC authorizer. The backends are static endpoints (no Pods needed here). A rival
//! replica's write between canaryd's read and write is made on cue through a tap in front of
//! the API server (tests/src/api_tap.rs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_tests::api_tap::ApiTap;
use canary_tests::cluster::{spread, wait_ready};
use canary_tests::objects::{canary_route, namespace};
use canary_tests::testbed::{self, apply_all, eventually, Testbed};
use canary_tests::{admin_call, Backend, BackendHandle, Canaryd, Client};
use http::Method;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};

const WEB: &str = "web.example";

fn canary_route_spec(stable: &str, canary: &str) -> Value {
    json!({
        "hosts": [WEB],
        "stable": {"endpoints": [stable]},
        "canary": {"endpoints": [canary]},
        "weight": 0,
        "rollout": {"steps": [10, 20, 30, 40, 50, 100], "interval": "2s"}
    })
}

/// A bed with the CRD, namespaces prod and canaryd, deploy/rbac.yaml, and `objects`.
async fn bed_with(objects: &[Value]) -> (Testbed, kube::Client) {
    let bed = Testbed::start();
    let admin = bed.admin().await;
    testbed::install_canary_route_crd(&admin).await;
    apply_all(&admin, &[namespace("prod")]).await;
    apply_all(&admin, objects).await;
    (bed, admin)
}

/// deploy/rbac.yaml's text.
fn rbac() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml")).unwrap()
}

/// A canaryd replica with `config` as deploy/rbac.yaml's ServiceAccount.
async fn replica(bed: &Testbed, admin: &kube::Client, config: &str) -> (Canaryd, tempfile::TempDir) {
    bed.canaryd_as_service_account(admin, &rbac(), config).await
}

/// Two backends and a bed with the CanaryRoute `prod/web` over them (weight 0, a timed plan).
async fn web_bed() -> (BackendHandle, BackendHandle, Testbed, kube::Client) {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    let (bed, admin) = bed_with(&[canary_route(
        "prod",
        "web",
        canary_route_spec(&stable.endpoint(), &canary.endpoint()),
    )])
    .await;
    (stable, canary, bed, admin)
}

/// `canaryctl weight web 30 --reason "pipeline step"` against the replica with admin `admin`.
fn pipeline_weight_30(admin: std::net::SocketAddr) -> std::process::Output {
    std::process::Command::new(canary_tests::canaryd::canaryctl())
        .args(["weight", "web", "30", "--reason", "pipeline step"])
        .env("CANARYD_URL", format!("http://{admin}"))
        .output()
        .unwrap()
}

fn replica_config() -> String {
    Canaryd::config("kubernetes: { namespace: canaryd, ingress_class: null, lease_duration: 3s }\n")
}

async fn route_status(proxy: &Canaryd, route: &str) -> Value {
    let (status, _, body) = admin_call(proxy.admin, "GET", &format!("/api/v1/routes/{route}"), &[], "").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The CanaryRoute `prod/name` as the API server has it.
async fn object(admin: &kube::Client, name: &str) -> Value {
    serde_json::to_value(testbed::canary_routes(admin, "prod").get(name).await.unwrap()).unwrap()
}

async fn lease_holder(admin: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "canaryd");
    leases
        .get_opt("canaryd-leader")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Polls until the requests reach exactly `backends`, within `timeout`.
async fn wait_spread(client: &Client, proxy: &Canaryd, host: &str, backends: &[&str], timeout: Duration) {
    let started = Instant::now();
    loop {
        let seen = spread(client, proxy, host, &[], 40).await;
        let mut got: Vec<&str> = seen.keys().map(String::as_str).collect();
        got.sort_unstable();
        if got == backends {
            return;
        }
        assert!(started.elapsed() < timeout, "requests reach {got:?}, not {backends:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_weights_refuse_stale_writes_and_hand_over_the_lease() {
    if !testbed::in_pod_network("replicas_share_weights_refuse_stale_writes_and_hand_over_the_lease") {
        return;
    }
    let (stable, canary, bed, admin) = web_bed().await;
    let (a, _a_dir) = replica(&bed, &admin, &replica_config()).await;
    let (b, _b_dir) = replica(&bed, &admin, &replica_config()).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    // The first status is written by one of them, through the status subresource.
    assert!(
        eventually(Duration::from_secs(10), || async {
            object(&admin, "web").await["status"]["revision"].as_u64().unwrap_or(0) >= 1
        })
        .await,
        "no status written"
    );

    // A CanaryRoute whose host + path is taken is refused and reported; the route already
    // served is untouched. (An invalid spec never gets this far: the API server's schema
    // refuses it, real_kubernetes.rs shows.)
    apply_all(
        &admin,
        &[canary_route(
            "prod",
            "web-copy",
            canary_route_spec(&stable.endpoint(), &canary.endpoint()),
        )],
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.metric("canaryd_kubernetes_problems").await == 1.0
        })
        .await,
        "the clash was not reported:\n{}",
        a.log().join("\n")
    );
    assert!(a.wait_log(
        "CanaryRoute prod/web-copy not served: web.example with path",
        Duration::from_secs(1)
    ));
    let (status, _, _) = admin_call(a.admin, "GET", "/api/v1/routes/web-copy", &[], "").await;
    assert_eq!(status, 404);

    // A pipeline's `canaryctl weight` on replica A is served by replica B within a second.
    let out = pipeline_weight_30(a.admin);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    while route_status(&b, "web").await["weight"] != json!(30.0) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "replica B did not apply the weight within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("weight set on A served by B after {:?}", started.elapsed());
    let o = object(&admin, "web").await;
    assert_eq!(o["status"]["weightPpm"], json!(300_000));
    assert_eq!(o["spec"]["weight"], json!(0), "canaryd never writes the spec");
    let client = Client::new();
    let seen = spread(&client, &b, WEB, &[], 400).await;
    let to_canary = *seen.get("canary").unwrap_or(&0) as u64;
    let (lo, hi) = canary_tests::binomial_bounds(400, 0.3);
    assert!(
        (lo..=hi).contains(&(to_canary as f64)),
        "{to_canary} of 400 on B to the canary"
    );

    // Two writers at the same revision: the second one is refused with 412 on the other replica.
    let revision = route_status(&b, "web").await["revision"].as_u64().unwrap();
    let if_match = format!("\"{revision}\"");
    let headers = [("if-match", if_match.as_str()), ("content-type", "application/json")];
    let (first, _, body) = admin_call(
        a.admin,
        "PUT",
        "/api/v1/routes/web/weight",
        &headers,
        r#"{"percent": 35}"#,
    )
    .await;
    assert_eq!(first, 200, "{body}");
    let (second, _, body) = admin_call(
        b.admin,
        "PUT",
        "/api/v1/routes/web/weight",
        &headers,
        r#"{"percent": 40}"#,
    )
    .await;
    assert_eq!(second, 412, "a stale If-Match must be refused: {body}");
    assert_eq!(route_status(&a, "web").await["weight"], json!(35.0));

    // Timed advancement is the leader's. Start a timed rollout, kill the leader, and the
    // other replica takes the Lease over and keeps stepping.
    assert!(
        eventually(Duration::from_secs(10), || async {
            lease_holder(&admin).await.is_some()
        })
        .await,
        "nobody took the Lease"
    );
    let (status, _, body) = admin_call(b.admin, "POST", "/api/v1/routes/web/rollout", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let holder = lease_holder(&admin).await.unwrap();
    let a_leads = holder.ends_with(&format!("-{}", a.pid()));
    let (leader, follower) = if a_leads { (a, b) } else { (b, a) };
    let step = || async { object(&admin, "web").await["status"]["step"].as_u64() };
    assert!(
        eventually(Duration::from_secs(10), || async { step().await >= Some(1) }).await,
        "the leader did not advance the timed rollout"
    );
    drop(leader.kill()); // SIGKILL: no chance to release the Lease.
    let killed_at = Instant::now();
    let step_at_kill = step().await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            step().await > Some(step_at_kill + 1)
        })
        .await,
        "no timed step after the leader died"
    );
    let new_holder = lease_holder(&admin).await.unwrap();
    assert!(
        new_holder.ends_with(&format!("-{}", follower.pid())),
        "{new_holder} holds the Lease"
    );
    eprintln!(
        "leader killed; follower took over and stepped twice within {:?}",
        killed_at.elapsed()
    );
    let o = object(&admin, "web").await;
    assert!(
        o["status"]["updatedBy"].as_str().unwrap_or("").ends_with(&new_holder),
        "{}",
        o["status"]
    );
    // The audit trail is also Kubernetes Events on the CanaryRoute.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), "prod");
    let events = events.list(&Default::default()).await.unwrap().items;
    assert!(
        events.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web") && e.reason.as_deref() == Some("Weight")
        }),
        "no Weight event among {events:?}"
    );
    assert_eq!(follower.metric("canaryd_leader").await, 1.0);
    bed.assert_canaryd_allowed_and_listed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_by_any_replica_reaches_every_replica() {
    if !testbed::in_pod_network("an_abort_by_any_replica_reaches_every_replica") {
        return;
    }
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").status(500).start().await;
    let (bed, admin) = bed_with(&[canary_route(
        "prod",
        "web",
        json!({
            "hosts": [WEB],
            "stable": {"endpoints": [stable.endpoint()]},
            "canary": {"endpoints": [canary.endpoint()]},
            "weight": 50,
            "rollout": {"analysis": {"window": "10s", "minRequests": 20, "maxErrorRate": 5, "failuresBeforeAbort": 1}}
        }),
    )])
    .await;
    let (a, _a_dir) = replica(&bed, &admin, &replica_config()).await;
    let (b, _b_dir) = replica(&bed, &admin, &replica_config()).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            lease_holder(&admin).await.is_some()
        })
        .await
    );
    // Traffic reaches only the replica that does not lead: it must abort on its own.
    let holder = lease_holder(&admin).await.unwrap();
    let (leader, follower) = if holder.ends_with(&format!("-{}", a.pid())) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let client = Client::new();
    let started = Instant::now();
    let mut sent = 0;
    while route_status(leader, "web").await["phase"] != json!("Aborted") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no abort reached the leader"
        );
        for _ in 0..20 {
            let _ = client.get(follower.addr, WEB, "/").await;
            sent += 1;
        }
    }
    eprintln!(
        "canary failing on the follower only: aborted everywhere after {:?} ({sent} requests)",
        started.elapsed()
    );
    let o = object(&admin, "web").await;
    assert_eq!(o["status"]["weightPpm"], json!(0), "{}", o["status"]);
    assert_eq!(o["status"]["phase"], json!("Aborted"));
    assert!(
        o["status"]["updatedBy"]
            .as_str()
            .is_some_and(|u| u.starts_with("analysis via") && u.ends_with(&format!("-{}", follower.pid()))),
        "{}",
        o["status"]
    );
    assert_eq!(route_status(leader, "web").await["weight"], json!(0.0));
    let seen = spread(&client, leader, WEB, &[], 50).await;
    assert_eq!(
        seen.get("canary"),
        None,
        "the leader still sends traffic to the aborted canary"
    );
    bed.assert_canaryd_allowed_and_listed();
}

/// A config-file route with static endpoints and a CanaryRoute are served side by side by
/// one canaryd. A CanaryRoute named like the file route is refused and reported (an error
/// log line naming the clash, `canaryd_kubernetes_problems`), never merged: the file route
/// keeps its endpoints and its state, the refused object's host is not served, its backend
/// gets no request, and canaryd writes no status to it, not even when the file route's
/// weight changes. Deleting the object clears the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_routes_and_canary_routes_coexist_and_a_name_clash_is_refused() {
    if !testbed::in_pod_network("file_routes_and_canary_routes_coexist_and_a_name_clash_is_refused") {
        return;
    }
    let file_stable = Backend::new("file-stable").start().await;
    let file_canary = Backend::new("file-canary").start().await;
    let web_stable = Backend::new("web-stable").start().await;
    let web_canary = Backend::new("web-canary").start().await;
    let impostor = Backend::new("impostor").start().await;
    let (bed, admin) = bed_with(&[canary_route(
        "prod",
        "web",
        canary_route_spec(&web_stable.endpoint(), &web_canary.endpoint()),
    )])
    .await;
    let config = Canaryd::config(&format!(
        "kubernetes: {{ namespace: canaryd, ingress_class: null }}\nroutes:\n  - name: files\n    hosts: [files.example]\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: 0\n",
        file_stable.endpoint(),
        file_canary.endpoint()
    ));
    let (proxy, _dir) = replica(&bed, &admin, &config).await;
    wait_ready(&proxy).await;
    let client = Client::new();

    // Both served, each by its own backends.
    wait_spread(
        &client,
        &proxy,
        "files.example",
        &["file-stable"],
        Duration::from_secs(5),
    )
    .await;
    wait_spread(&client, &proxy, WEB, &["web-stable"], Duration::from_secs(5)).await;
    assert_eq!(route_status(&proxy, "web").await["name"], json!("web"));
    assert_eq!(proxy.metric("canaryd_kubernetes_problems").await, 0.0);

    // Same name, other host and backend: a clash by name alone.
    apply_all(
        &admin,
        &[canary_route(
            "prod",
            "files",
            json!({"hosts": ["impostor.example"], "stable": {"endpoints": [impostor.endpoint()]}, "weight": 0}),
        )],
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metric("canaryd_kubernetes_problems").await == 1.0
        })
        .await,
        "the clash was not reported:\n{}",
        proxy.log().join("\n")
    );
    // The log is JSON, so the quotes around the name are escaped.
    assert!(
        proxy.wait_log(
            r#"CanaryRoute prod/files not served: a route named \"files\" already exists"#,
            Duration::from_secs(1)
        ),
        "{}",
        proxy.log().join("\n")
    );

    // The file route is unchanged: its static endpoint (no discovery), nothing of the
    // refused object's, which gets no traffic and whose host is not served.
    let files = route_status(&proxy, "files").await;
    assert_eq!(files["stable"]["endpoints"], json!(1), "{files}");
    assert!(files["stable"].get("discovery").is_none(), "{files}");
    let r = client.send(proxy.addr, "impostor.example", "/", &[]).await.unwrap();
    assert_eq!(r.status, 404, "the refused CanaryRoute's host is served");
    assert_eq!(
        spread(&client, &proxy, "files.example", &[], 100).await,
        HashMap::from([("file-stable".to_string(), 100)])
    );

    // A weight change of the file route stays the file route's: served, and not written
    // to the CanaryRoute of the same name.
    let writes_before = bed.audit(testbed::CANARYD_USER).len();
    let (code, _, body) = admin_call(
        proxy.admin,
        "PUT",
        "/api/v1/routes/files/weight",
        &[("content-type", "application/json")],
        r#"{"percent": 50}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let seen = spread(&client, &proxy, "files.example", &[], 400).await;
    let to_canary = *seen.get("file-canary").unwrap_or(&0) as f64;
    let (lo, hi) = canary_tests::binomial_bounds(400, 0.5);
    assert!((lo..=hi).contains(&to_canary), "{seen:?}");
    assert_eq!(impostor.count(), 0, "the refused CanaryRoute's backend got requests");
    // Give a stray status write time to arrive before checking there was none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = object(&admin, "files").await;
    assert!(o.get("status").is_none_or(Value::is_null), "{o}");
    let writes: Vec<_> = bed.audit(testbed::CANARYD_USER)[writes_before..]
        .iter()
        .filter(|e| e.request_uri.contains("/canaryroutes/files/status"))
        .map(|e| format!("{} {}", e.verb, e.request_uri))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");

    // The report goes with the object.
    testbed::canary_routes(&admin, "prod")
        .delete("files", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.metric("canaryd_kubernetes_problems").await == 0.0
        })
        .await,
        "the clash stayed reported after the delete"
    );
    assert_eq!(route_status(&proxy, "web").await["name"], json!("web"));
    bed.assert_canaryd_allowed_and_listed();
}

/// A rival replica's status write landing between canaryd's read of a CanaryRoute and its
/// own status update: the real server refuses canaryd's write (409, a stale
/// resourceVersion), and canaryd reads again and builds on the rival's state instead of
/// overwriting it. A tap in front of the API server (tests/src/api_tap.rs) answers the first
/// write with an injected 409 and runs the rival's write on cue before the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rival_status_write_between_read_and_write_is_retried_on_fresh_state() {
    if !testbed::in_pod_network("a_rival_status_write_between_read_and_write_is_retried_on_fresh_state") {
        return;
    }
    let (_stable, _canary, bed, admin) = web_bed().await;
    let tap = ApiTap::start(&bed.info.server, bed.info.ca_file.parent().unwrap()).await;
    let (proxy, _dir) = bed
        .canaryd_as_service_account_via(&admin, &rbac(), &replica_config(), &tap.url())
        .await;
    wait_ready(&proxy).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            object(&admin, "web").await["status"]["revision"].as_u64().unwrap_or(0) >= 1
        })
        .await,
        "no first status written"
    );
    let rival_revision = object(&admin, "web").await["status"]["revision"].as_u64().unwrap() + 1;

    const STATUS: &str = "/canaryroutes/web/status";
    let routes = testbed::canary_routes(&admin, "prod");
    let rival_writes = Arc::new(AtomicUsize::new(0));
    let counter = rival_writes.clone();
    tap.refuse(Method::PUT, STATUS, 1, 409);
    tap.before(
        Method::PUT,
        STATUS,
        1,
        Arc::new(move || {
            let (routes, counter) = (routes.clone(), counter.clone());
            Box::pin(async move {
                let mut o = routes.get_status("web").await.unwrap();
                let status = &mut o.data["status"];
                status["revision"] = json!(rival_revision);
                status["lastVerdict"] = json!("healthy (the rival replica's analysis)");
                status["updatedBy"] = json!("analysis via the-rival-replica");
                routes.replace_status("web", &PostParams::default(), &o).await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
            })
        }),
    );
    let from = tap.requests().len();
    let out = pipeline_weight_30(proxy.admin);
    assert!(
        out.status.success(),
        "canaryctl weight failed despite the retries: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log().join("\n")
    );
    assert_eq!(rival_writes.load(Ordering::SeqCst), 1, "the rival write did not run");
    let count = |method: &str, suffix: &str| {
        tap.requests()[from..]
            .iter()
            .filter(|(m, p)| m == method && p.split('?').next().is_some_and(|p| p.ends_with(suffix)))
            .count()
    };
    let (puts, gets) = (count("PUT", STATUS), count("GET", "/canaryroutes/web"));
    eprintln!("weight 30 through an injected and a real 409: {gets} GETs, {puts} status PUTs");
    assert_eq!(puts, 3, "one write, two conflicts, one retry each");
    assert!(gets >= 3, "each attempt reads the object again ({gets} GETs)");
    // The real server refused the second write: its audit log says 409.
    let conflicts = bed
        .audit(testbed::CANARYD_USER)
        .into_iter()
        .filter(|e| e.verb == "update" && e.request_uri.split('?').next().is_some_and(|p| p.ends_with(STATUS)))
        .filter(|e| e.response_status.as_ref().is_some_and(|s| s.code == 409))
        .count();
    assert_eq!(conflicts, 1, "the API server's own 409 for the stale write");

    // Built on the rival's state: its revision is the base, its verdict is kept.
    let after = object(&admin, "web").await["status"].clone();
    assert_eq!(after["weightPpm"], json!(300_000), "{after}");
    assert_eq!(after["revision"], json!(rival_revision + 1), "{after}");
    assert_eq!(
        after["lastVerdict"],
        json!("healthy (the rival replica's analysis)"),
        "{after}"
    );
    assert_eq!(after["lastReason"], json!("pipeline step"), "{after}");
    assert!(
        after["updatedBy"].as_str().is_some_and(|u| !u.contains("rival")),
        "{after}"
    );

    // And served: the control API's status and the traffic split say 30 %.
    let status = route_status(&proxy, "web").await;
    assert_eq!(status["weight"], json!(30.0), "{status}");
    assert_eq!(status["revision"], json!(rival_revision + 1), "{status}");
    let seen = spread(&Client::new(), &proxy, WEB, &[], 400).await;
    let to_canary = *seen.get("canary").unwrap_or(&0) as f64;
    let (lo, hi) = canary_tests::binomial_bounds(400, 0.3);
    assert!((lo..=hi).contains(&to_canary), "{to_canary} of 400 to the canary");
    bed.assert_canaryd_allowed_and_listed();
}

/// A CanaryRoute with a baseline and the sequential analysis: a canary that fails where the
/// baseline (fresh stable pods) does not is aborted, and the Kubernetes Event on the object
/// carries the same explained verdict as the route status and the audit entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_against_the_baseline_explains_itself_in_the_kubernetes_event() {
    if !testbed::in_pod_network("an_abort_against_the_baseline_explains_itself_in_the_kubernetes_event") {
        return;
    }
    let stable = Backend::new("stable").start().await;
    let baseline = Backend::new("baseline").start().await;
    let canary = Backend::new("canary").start().await;
    canary.fail_every(2);
    let (bed, admin) = bed_with(&[canary_route(
        "prod",
        "web",
        json!({
            "hosts": [WEB],
            "stable": {"endpoints": [stable.endpoint()]},
            "canary": {"endpoints": [canary.endpoint()]},
            "baseline": {"endpoints": [baseline.endpoint()]},
            "weight": 20,
            "rollout": {"analysis": {"alpha": 0.01, "maxErrorRateIncrease": 1, "maxErrorRate": 50, "failuresBeforeAbort": 1}}
        }),
    )])
    .await;
    let (proxy, _dir) = replica(&bed, &admin, &replica_config()).await;
    wait_ready(&proxy).await;
    let s = route_status(&proxy, "web").await;
    assert_eq!(s["baseline"]["weight"], json!(20.0), "{s}");
    let client = Client::new();
    let started = Instant::now();
    while route_status(&proxy, "web").await["phase"] != json!("Aborted") {
        assert!(started.elapsed() < Duration::from_secs(60), "not aborted");
        for _ in 0..50 {
            let _ = client.get(proxy.addr, WEB, "/").await;
        }
    }
    let s = route_status(&proxy, "web").await;
    let reason = s["last_reason"].as_str().unwrap().to_string();
    eprintln!("aborted after {:?}: {reason}", started.elapsed());
    assert!(
        reason.starts_with("analysis: canary 5xx ")
            && reason.contains(" vs baseline ")
            && reason.contains("allowed (alpha "),
        "{reason}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), "prod");
    let deadline = Instant::now() + Duration::from_secs(15);
    let event = loop {
        let found = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
                    && e.reason.as_deref() == Some("Abort")
            });
        match found {
            Some(e) => break e,
            None if Instant::now() > deadline => panic!("no Abort Event on the CanaryRoute"),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(
        note.ends_with(&format!("by analysis: {reason}")),
        "Event note {note:?}, reason {reason:?}"
    );
    let o = object(&admin, "web").await;
    assert_eq!(o["status"]["phase"], json!("Aborted"), "{}", o["status"]);
    bed.assert_canaryd_allowed_and_listed();
}
