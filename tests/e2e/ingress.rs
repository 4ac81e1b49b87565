//! canaryd as an ingress-nginx replacement, in the shape GitLab Auto DevOps deploys: a stable
//! Ingress `production` and a canary Ingress `production-canary` carrying the ingress-nginx
//! canary annotations, both naming their Services by port number. The real
//! `canaryd --mode kubernetes` against the test API server, real backends playing the Pods.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use canary_tests::cluster::{pods, Load};
use canary_tests::kube_api::{self, KubeApi};
use canary_tests::{admin_call, BackendHandle, Canaryd, Client};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

const NS: &str = "prod";
const HOST: &str = "app.example";
const ROUTE: &str = "prod-production";
const NET: &str = "networking.k8s.io/v1";
const STABLE: [&str; 2] = ["production-a", "production-b"];
const CANARY: &str = "canary";

/// A Service whose port 5000 (`web`) targets the Pods' port, as a Helm chart's Service does.
fn service(name: &str, pod_port: u16) -> k8s_openapi::api::core::v1::Service {
    let mut svc = kube_api::service(NS, name, &[("app", name)], &[("web", 5000)], None);
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = Some(IntOrString::Int(pod_port.into()));
    svc
}

/// The canary Ingress with the ingress-nginx annotations GitLab Auto DevOps sets.
fn canary_ingress(weight: &str) -> k8s_openapi::api::networking::v1::Ingress {
    let mut ing = kube_api::ingress(
        NS,
        "production-canary",
        Some("canaryd"),
        &[(HOST, "/", "production-canary", "5000")],
    );
    ing.metadata.annotations = Some(kube_api::labels(&[
        ("nginx.ingress.kubernetes.io/canary", "true"),
        ("nginx.ingress.kubernetes.io/canary-weight", weight),
        ("nginx.ingress.kubernetes.io/canary-by-header", "canary"),
    ]));
    ing
}

/// The cluster, the Pods and canaryd serving the canary Ingress at 25 %.
struct Setup {
    api: KubeApi,
    _dir: tempfile::TempDir,
    _pods: Vec<BackendHandle>,
    proxy: Canaryd,
    client: Client,
}

async fn setup(first_ip: u8) -> Setup {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    // Two stable Pods and one canary Pod, all on port P (not 5000).
    let (port, handles) = pods(&[STABLE[0], STABLE[1], CANARY], first_ip).await;
    assert_ne!(port, 5000);
    let ip = |i: u8| format!("127.0.0.{}", first_ip + i);
    api.apply(kube_api::ingress_class("canaryd", "canaryd.dev/ingress-controller"));
    api.apply(service("production", port));
    api.apply(service("production-canary", port));
    api.apply(kube_api::endpoint_slice(
        NS,
        "production-x1",
        "production",
        "web",
        port.into(),
        &[(&ip(0), true, true, false), (&ip(1), true, true, false)],
    ));
    api.apply(kube_api::endpoint_slice(
        NS,
        "production-canary-x1",
        "production-canary",
        "web",
        port.into(),
        &[(&ip(2), true, true, false)],
    ));
    api.apply(kube_api::ingress(
        NS,
        "production",
        Some("canaryd"),
        &[(HOST, "/", "production", "5000")],
    ));
    api.apply(canary_ingress("25"));
    // Another controller's Ingress, pointing at a Service canaryd could serve: it must still be ignored.
    api.apply(kube_api::ingress(
        NS,
        "other",
        Some("nginx"),
        &[("other.example", "/", "production", "5000")],
    ));
    api.apply(kube_api::service(
        "ingress",
        "canaryd",
        &[("app", "canaryd")],
        &[("http", 80)],
        Some("192.0.2.10"),
    ));

    let proxy = Canaryd::start_kubernetes(
        &Canaryd::config(
            "kubernetes: { namespace: prod, canary_routes: false, publish_service: ingress/canaryd, lease_duration: 3s }\n",
        ),
        &kubeconfig,
    );
    let client = Client::new();
    // Ready, and both variants resolved: forced requests reach each side.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = admin_call(proxy.admin, "GET", "/readyz", &[], "").await;
        if status == 200 {
            let always = client.send(proxy.addr, HOST, "/", &[("canary", "always")]).await;
            let never = client.send(proxy.addr, HOST, "/", &[("canary", "never")]).await;
            let backend =
                |r: &Result<canary_tests::Reply, String>| r.as_ref().ok().and_then(|r| r.backend().map(str::to_string));
            if backend(&always).as_deref() == Some(CANARY)
                && backend(&never).is_some_and(|b| STABLE.contains(&b.as_str()))
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the Ingress routes were never served:\n{}",
            proxy.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Setup {
        api,
        _dir: dir,
        _pods: handles,
        proxy,
        client,
    }
}

/// Sends `n` requests for the app's host and counts the answering backends.
async fn spread(client: &Client, proxy: &Canaryd, headers: &[(&str, &str)], n: usize) -> HashMap<String, usize> {
    canary_tests::cluster::spread(client, proxy, HOST, headers, n).await
}

/// Polls until 40 requests in a row reach only stable (`canary` false) or some reach the canary.
async fn wait_canary_share(s: &Setup, canary: bool, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let seen = spread(&s.client, &s.proxy, &[], 40).await;
        if seen.contains_key(CANARY) == canary {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "after {timeout:?} requests still reach {seen:?} (canary wanted: {canary})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every request canaryd made is a call of `API_CALLS` (control/src/kubernetes/api_calls.rs),
/// which deploy/rbac.yaml grants exactly.
fn assert_requests_listed(api: &KubeApi) {
    let unlisted = canary_tests::rbac::unlisted(&api.requests(), NS);
    assert!(
        unlisted.is_empty(),
        "requests not in API_CALLS:\n{}",
        unlisted.join("\n")
    );
}

async fn route_status(proxy: &Canaryd) -> Value {
    let (status, _, body) = admin_call(proxy.admin, "GET", &format!("/api/v1/routes/{ROUTE}"), &[], "").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_ingress_annotations_split_override_and_follow_the_cluster() {
    let s = setup(2).await;
    let (proxy, client) = (&s.proxy, &s.client);

    // 1. The weight annotation: 25 % to the canary, both stable Pods used.
    let seen = spread(client, proxy, &[], 4_000).await;
    let to_canary = *seen.get(CANARY).unwrap_or(&0);
    let (lo, hi) = canary_tests::binomial_bounds(4_000, 0.25);
    eprintln!("canary-weight 25: {seen:?}; canary {to_canary} of 4000, 99.9 % bounds {lo:.0}..={hi:.0}");
    assert!(
        (lo..=hi).contains(&(to_canary as f64)),
        "{to_canary} of 4000 to the canary"
    );
    for pod in STABLE {
        assert!(seen.get(pod).copied().unwrap_or(0) > 1_000, "{pod} got {seen:?}");
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // 2. canary-by-header: `always` and `never` decide; any other value follows the weight.
    let always = spread(client, proxy, &[("canary", "always")], 50).await;
    assert_eq!(always, HashMap::from([(CANARY.to_string(), 50)]));
    let never = spread(client, proxy, &[("canary", "never")], 50).await;
    assert_eq!(never.get(CANARY), None, "{never:?}");
    assert_eq!(never.values().sum::<usize>(), 50);
    let maybe = spread(client, proxy, &[("canary", "maybe")], 400).await;
    let maybe_canary = *maybe.get(CANARY).unwrap_or(&0);
    let (lo, hi) = canary_tests::binomial_bounds(400, 0.25);
    eprintln!("canary: always → {always:?}; never → {never:?}; maybe → {maybe:?} (bounds {lo:.0}..={hi:.0})");
    assert!(
        (lo..=hi).contains(&(maybe_canary as f64)),
        "`canary: maybe` must follow the weight: {maybe:?}"
    );

    // 3. canary-weight "0": everything to stable within a few seconds; the header still forces.
    s.api.apply(canary_ingress("0"));
    let took = wait_canary_share(&s, false, Duration::from_secs(5)).await;
    let after = spread(client, proxy, &[], 400).await;
    eprintln!("canary-weight 0 applied after {took:?}; then {after:?}");
    assert_eq!(after.get(CANARY), None, "{after:?}");
    assert_eq!(route_status(proxy).await["weight"], json!(0.0));
    let forced = spread(client, proxy, &[("canary", "always")], 10).await;
    assert_eq!(
        forced,
        HashMap::from([(CANARY.to_string(), 10)]),
        "the header overrides weight 0"
    );
    // ... and back to 25.
    s.api.apply(canary_ingress("25"));
    let took = wait_canary_share(&s, true, Duration::from_secs(5)).await;
    eprintln!("canary-weight 25 again after {took:?}");
    assert_eq!(route_status(proxy).await["weight"], json!(25.0));

    // 4. Deleting the canary Ingress under load: all traffic to stable, no request fails.
    let load = Load::start(proxy.addr, HOST, 8_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.api.delete(NET, "Ingress", NS, "production-canary").is_some());
    let deleted = Instant::now();
    let started = Instant::now();
    loop {
        let seen = spread(client, proxy, &[("canary", "always")], 20).await;
        if !seen.contains_key(CANARY) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the deleted canary still serves: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = deleted.elapsed();
    let after = spread(client, proxy, &[], 200).await;
    let forced = spread(client, proxy, &[("canary", "always")], 20).await;
    let (sent, failed) = load.stop().await;
    eprintln!(
        "canary Ingress deleted: stable only after {took:?}; then {after:?}, forced {forced:?}; load {sent} sent, {failed} failed"
    );
    assert_eq!(after.get(CANARY), None, "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 200);
    assert_eq!(forced.get(CANARY), None, "{forced:?}");
    assert_eq!(failed, 0, "requests failed while the canary Ingress went away");
    assert!(sent > 100, "the load ran ({sent})");
    assert_eq!(route_status(proxy).await["weight"], json!(0.0));
    assert_requests_listed(&s.api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_status_ownership_and_other_classes() {
    let s = setup(12).await;
    let (proxy, client) = (&s.proxy, &s.client);

    // 6. The route is the Ingresses': status shows the annotation's weight, and the API refuses
    // to change it (it would be overwritten by the next Ingress event).
    let status = route_status(proxy).await;
    eprintln!(
        "GET /api/v1/routes/{ROUTE}: weight {}, stable {}, canary {}",
        status["weight"], status["stable"], status["canary"]
    );
    assert_eq!(status["name"], json!(ROUTE));
    assert_eq!(status["weight"], json!(25.0));
    assert_eq!(status["stable"]["endpoints"], json!(2), "{status}");
    assert_eq!(status["canary"]["endpoints"], json!(1), "{status}");
    let (code, _, body) = admin_call(
        proxy.admin,
        "PUT",
        &format!("/api/v1/routes/{ROUTE}/weight"),
        &[("content-type", "application/json")],
        r#"{"percent": 50, "reason": "manual"}"#,
    )
    .await;
    eprintln!("PUT weight → {code}: {body}");
    assert_eq!(code, 409, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("owned by") && error.contains("annotations") && error.contains("prod/production-canary"),
        "{body}"
    );
    assert_eq!(
        route_status(proxy).await["weight"],
        json!(25.0),
        "the refused write changed nothing"
    );

    // 7. Another class's Ingress is not served (canaryd answers an unknown host 404), and has no route.
    for _ in 0..20 {
        let r = client.get(proxy.addr, "other.example", "/").await.expect("request");
        assert_eq!(
            r.status,
            404,
            "other.example belongs to nginx: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(r.backend(), None);
    }
    let (code, _, routes) = admin_call(proxy.admin, "GET", "/api/v1/routes", &[], "").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = routes
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec![ROUTE], "{routes}");

    // 5. The leader publishes the LoadBalancer address of `ingress/canaryd` on our Ingresses.
    let started = Instant::now();
    let ip_of = |api: &KubeApi, name: &str| {
        api.get(NET, "Ingress", NS, name).and_then(|o| {
            o["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(str::to_string)
        })
    };
    let published = s
        .api
        .wait_until(Duration::from_secs(15), |api| {
            ip_of(api, "production").as_deref() == Some("192.0.2.10")
                && ip_of(api, "production-canary").as_deref() == Some("192.0.2.10")
        })
        .await;
    eprintln!(
        "status.loadBalancer: production {:?}, production-canary {:?}, other {:?} after {:?}",
        ip_of(&s.api, "production"),
        ip_of(&s.api, "production-canary"),
        ip_of(&s.api, "other"),
        started.elapsed()
    );
    assert!(published, "no Ingress status address:\n{}", proxy.log().join("\n"));
    assert_eq!(
        ip_of(&s.api, "other"),
        None,
        "canaryd wrote the status of nginx's Ingress"
    );
    assert_requests_listed(&s.api);
}
