//! Kubernetes mode end to end: the real `canaryd --mode kubernetes` against the test API
//! server (real list/watch wire protocol, resourceVersions, 410 Gone, 409 conflicts) with
//! real backends playing the Pods on loopback addresses.

use std::time::{Duration, Instant};

use canary_tests::cluster::{pods, spread, wait_ready};
use canary_tests::kube_api::{self, KubeApi};
use canary_tests::{admin_call, Backend, Canaryd, Client};
use serde_json::{json, Value};

/// Polls until the requests reach exactly `backends`, within `timeout`.
async fn wait_spread(client: &Client, proxy: &Canaryd, host: &str, backends: &[&str], timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let seen = spread(client, proxy, host, &[], 40).await;
        let mut got: Vec<&str> = seen.keys().map(String::as_str).collect();
        got.sort_unstable();
        if got == backends {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "requests reach {got:?}, not {backends:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every request canaryd made is allowed by the RBAC rules we ship (plus `extra_rbac`, the
/// Secret Roles a test's config needs) and is a call of `API_CALLS`; `namespace` is
/// canaryd's own (`kubernetes.namespace`).
fn assert_requests_allowed_and_listed(api: &KubeApi, namespace: &str, extra_rbac: &str) {
    let rbac =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml")).unwrap() + extra_rbac;
    let requests = api.requests();
    let refused = canary_tests::rbac::violations(&requests, &rbac, namespace);
    assert!(
        refused.is_empty(),
        "deploy/rbac.yaml does not allow:\n{}",
        refused.join("\n")
    );
    let unlisted = canary_tests::rbac::unlisted(&requests, namespace);
    assert!(
        unlisted.is_empty(),
        "requests that are no call of API_CALLS (control/src/kubernetes/api_calls.rs):\n{}",
        unlisted.join("\n")
    );
}

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

async fn route_status(proxy: &Canaryd) -> Value {
    let (status, _, body) = admin_call(proxy.admin, "GET", "/api/v1/routes/web", &[], "").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn replica_config() -> String {
    Canaryd::config("kubernetes: { namespace: prod, ingress_class: null, lease_duration: 3s }\n")
}

/// The CanaryRoute `prod/web`, for the test API server's race injection.
const WEB_ROUTE: (&str, &str, &str, &str) = ("canaryd.dev/v1alpha1", "CanaryRoute", "prod", "web");

/// Requests of `log` from index `from` on with this method whose path ends with `suffix`.
fn count_requests(api: &KubeApi, from: usize, method: &str, suffix: &str) -> usize {
    api.requests()[from..]
        .iter()
        .filter(|(m, p)| m == method && p.split('?').next().is_some_and(|p| p.ends_with(suffix)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_status_write_is_retried_on_fresh_state() {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    api.apply(kube_api::canary_route(
        "prod",
        "web",
        canary_route_spec(&stable.endpoint(), &canary.endpoint()),
    ));
    let proxy = Canaryd::start_kubernetes(&replica_config(), &kubeconfig);
    wait_ready(&proxy).await;
    let status_of =
        |api: &KubeApi| api.get(WEB_ROUTE.0, WEB_ROUTE.1, WEB_ROUTE.2, WEB_ROUTE.3).unwrap()["status"].clone();
    assert!(
        api.wait_until(Duration::from_secs(10), |api| status_of(api)["revision"].as_u64()
            >= Some(1))
            .await,
        "no first status written"
    );
    let before = status_of(&api);
    let rival_revision = before["revision"].as_u64().unwrap() + 1;

    // The first write is refused with an injected 409; before the second one lands another
    // writer changes the status (a new resourceVersion, a revision and a verdict of its
    // own), so the second one gets the server's real 409. The third, on fresh state, wins.
    api.fail_writes("/canaryroutes/web/status", 1, 409);
    api.race_writes("/canaryroutes/web/status", 1, WEB_ROUTE, move |mut status| {
        status["revision"] = json!(rival_revision);
        status["lastVerdict"] = json!("healthy (the rival replica's analysis)");
        status["updatedBy"] = json!("analysis via the-rival-replica");
        status
    });
    let from = api.requests().len();
    let out = std::process::Command::new(canary_tests::canaryd::canaryctl())
        .args(["weight", "web", "30", "--reason", "pipeline step"])
        .env("CANARYD_URL", format!("http://{}", proxy.admin))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "canaryctl weight failed despite the retries: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log().join("\n")
    );
    let puts = count_requests(&api, from, "PUT", "/canaryroutes/web/status");
    let gets = count_requests(&api, from, "GET", "/canaryroutes/web");
    eprintln!("weight 30 through two conflicts: {gets} GETs, {puts} status PUTs");
    assert_eq!(puts, 3, "one write, two conflicts, one retry each");
    assert!(gets >= 3, "each attempt reads the object again ({gets} GETs)");

    // Built on the rival's state: its revision is the base, its verdict is kept.
    let after = status_of(&api);
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
    let status = route_status(&proxy).await;
    assert_eq!(status["weight"], json!(30.0), "{status}");
    assert_eq!(status["revision"], json!(rival_revision + 1), "{status}");
    let client = Client::new();
    let seen = spread(&client, &proxy, WEB, &[], 400).await;
    let to_canary = *seen.get("canary").unwrap_or(&0) as f64;
    let (lo, hi) = canary_tests::binomial_bounds(400, 0.3);
    assert!((lo..=hi).contains(&to_canary), "{to_canary} of 400 to the canary");
    assert_requests_allowed_and_listed(&api, "prod", "");
}

/// An EndpointSlice of Service `app` with ports `(name, number)` and ready `addresses`.
fn slice_with_ports(
    name: &str,
    ports: &[(&str, u16)],
    addresses: &[&str],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let ready: Vec<(&str, bool, bool, bool)> = addresses.iter().map(|a| (*a, true, true, false)).collect();
    let mut slice = kube_api::endpoint_slice("prod", name, "app", "unused", 0, &ready);
    slice.ports = Some(
        ports
            .iter()
            .map(|(n, p)| k8s_openapi::api::discovery::v1::EndpointPort {
                name: Some(n.to_string()),
                port: Some(i32::from(*p)),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect(),
    );
    slice
}

/// The stable variant's endpoint count in the control API's route status.
async fn stable_endpoints(proxy: &Canaryd) -> Value {
    let (_, _, status) = admin_call(proxy.admin, "GET", "/api/v1/routes/app", &[], "").await;
    status["stable"]["endpoints"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_slices_are_merged_deduplicated_and_their_named_port_resolved_per_slice() {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    // Pods a, b, c on port P1 (127.0.0.40-42); b2 and c2 on port P2 at b's and c's addresses.
    let (p1, _first) = pods(&["a", "b", "c"], 40).await;
    let (p2, _second) = pods(&["b2", "c2"], 41).await;
    assert_ne!(p1, p2);
    let ip = |i: u8| format!("127.0.0.{i}");
    // Two slices; b's address is in both. The second lists another port first, so the named
    // port must be found by name in each slice, not by position.
    api.apply(slice_with_ports("app-1", &[("http", p1)], &[&ip(40), &ip(41)]));
    api.apply(slice_with_ports(
        "app-2",
        &[("metrics", 9100), ("http", p1)],
        &[&ip(41), &ip(42)],
    ));
    let proxy = Canaryd::start_kubernetes(
        &Canaryd::config(
            "kubernetes: { namespace: prod, ingress_class: null, canary_routes: false }\nroutes:\n  - name: app\n    hosts: [app.example]\n    stable: { kubernetes: { service: app, port: http } }\n",
        ),
        &kubeconfig,
    );
    wait_ready(&proxy).await;
    let client = Client::new();

    // Same port in both slices: b's address is one endpoint, not two.
    wait_spread(&client, &proxy, "app.example", &["a", "b", "c"], Duration::from_secs(5)).await;
    assert_eq!(
        stable_endpoints(&proxy).await,
        json!(3),
        "b listed twice must count once"
    );
    let seen = spread(&client, &proxy, "app.example", &[], 300).await;
    eprintln!("slices [a b] + [b c] on one port: {seen:?}");
    assert!(
        seen["b"] < seen["a"] + seen["c"],
        "b, de-duplicated, gets a third, not half: {seen:?}"
    );

    // The second slice's `http` is now port P2: the shared address is two endpoints, one
    // per port, and every request reaches exactly a:P1, b:P1, b:P2 and c:P2.
    api.apply(slice_with_ports(
        "app-2",
        &[("metrics", 9100), ("http", p2)],
        &[&ip(41), &ip(42)],
    ));
    let took = wait_spread(
        &client,
        &proxy,
        "app.example",
        &["a", "b", "b2", "c2"],
        Duration::from_secs(5),
    )
    .await;
    eprintln!("second slice's http → port {p2}: applied after {took:?}");
    assert_eq!(stable_endpoints(&proxy).await, json!(4));
    let seen = spread(&client, &proxy, "app.example", &[], 200).await;
    let mut reached: Vec<&str> = seen.keys().map(String::as_str).collect();
    reached.sort_unstable();
    assert_eq!(reached, ["a", "b", "b2", "c2"], "{seen:?}");

    // One slice goes away: only the other's endpoints remain.
    assert!(api
        .delete("discovery.k8s.io/v1", "EndpointSlice", "prod", "app-1")
        .is_some());
    wait_spread(&client, &proxy, "app.example", &["b2", "c2"], Duration::from_secs(5)).await;
    assert_eq!(stable_endpoints(&proxy).await, json!(2));
    assert_requests_allowed_and_listed(&api, "prod", "");
}

/// The request checks themselves: calls are matched by group, resource, verb and scope.
#[test]
fn requests_are_matched_to_the_api_call_list_with_their_scope() {
    let log = |reqs: &[(&str, &str)]| -> Vec<(String, String)> {
        reqs.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect()
    };
    let listed = log(&[
        ("GET", "/api/v1/namespaces/a/pods?labelSelector=x"),
        ("PUT", "/apis/canaryd.dev/v1alpha1/namespaces/a/canaryroutes/web/status"),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/ops/leases/l"),
        (
            "GET",
            "/api/v1/namespaces/a/secrets?fieldSelector=metadata.name%3Dt&watch=true",
        ),
        ("GET", "/version"),
    ]);
    assert_eq!(canary_tests::rbac::unlisted(&listed, "ops"), Vec::<String>::new());
    for (m, p) in [
        ("GET", "/api/v1/namespaces/a/pods/p"),
        (
            "PATCH",
            "/apis/canaryd.dev/v1alpha1/namespaces/a/canaryroutes/web/status",
        ),
        ("GET", "/apis/networking.k8s.io/v1/ingressclasses"),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/prod/leases/l"),
        ("GET", "/api/v1/namespaces/a/secrets"),
    ] {
        assert_eq!(canary_tests::rbac::unlisted(&log(&[(m, p)]), "ops").len(), 1, "{m} {p}");
    }
    let unused = canary_tests::rbac::unused(&log(&[("GET", "/api/v1/namespaces/a/pods?watch=true")]), "ops");
    assert!(unused.iter().any(|u| u.starts_with("/pods list")), "{unused:?}");
    assert!(!unused.iter().any(|u| u.starts_with("/pods watch")), "{unused:?}");
    assert_eq!(
        unused.len(),
        canary_control::kubernetes::api_calls::API_CALLS
            .iter()
            .map(|c| c.verbs.len())
            .sum::<usize>()
            - 1
    );
}
