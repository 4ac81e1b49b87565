//! Kubernetes mode against the wire-level test API server (tests/src/kube_api.rs), for the
//! one fault the real one cannot be made to produce on cue: a rival write landing between
//! canaryd's read of a CanaryRoute and its status update (an injected 409, then the
//! server's own). Everything else in kubernetes mode runs on the real-Kubernetes test bed
//! (real_kubernetes.rs, replicas.rs, ingress.rs, tls.rs, helm.rs).

use std::time::Duration;

use canary_tests::cluster::{spread, wait_ready};
use canary_tests::kube_api::{self, KubeApi};
use canary_tests::{admin_call, Backend, Canaryd, Client};
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
    let unlisted = canary_tests::rbac::unlisted(&api.requests(), "prod");
    assert!(
        unlisted.is_empty(),
        "requests not in API_CALLS:\n{}",
        unlisted.join("\n")
    );
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
