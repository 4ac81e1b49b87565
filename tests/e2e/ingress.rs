//! canaryd as an ingress-nginx replacement, in the shape GitLab Auto DevOps deploys: a stable
//! Ingress `production` and a canary Ingress `production-canary` carrying the ingress-nginx
//! canary annotations, both naming their Services by port number. On the real-Kubernetes
//! test bed: real Deployments and Services, the real EndpointSlice controller, canaryd as
//! deploy/rbac.yaml's ServiceAccount through the real RBAC authorizer.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use canary_tests::cluster::Load;
use canary_tests::objects::{backend_deployment, namespace};
use canary_tests::testbed::{self, apply_all, Testbed};
use canary_tests::{admin_call, Canaryd, Client};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams};
use serde_json::{json, Value};

const NS: &str = "prod";
const HOST: &str = "app.example";
const ROUTE: &str = "prod-production";
const LB_IP: &str = "192.0.2.10";

/// A Service whose port 5000 (`web`) targets the Pods' port `http`, as a Helm chart's does.
fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"name": "web", "port": 5000, "targetPort": "http"}]}
    })
}

/// An Ingress of `class` sending `host` to port 5000 of Service `service`.
fn ingress(name: &str, class: &str, host: &str, service: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"ingressClassName": class, "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 5000}}}}
        ]}}]}
    })
}

/// The canary Ingress with the ingress-nginx annotations GitLab Auto DevOps sets.
fn canary_ingress(weight: &str) -> Value {
    ingress(
        "production-canary",
        "canaryd",
        HOST,
        "production-canary",
        json!({
            "nginx.ingress.kubernetes.io/canary": "true",
            "nginx.ingress.kubernetes.io/canary-weight": weight,
            "nginx.ingress.kubernetes.io/canary-by-header": "canary"
        }),
    )
}

/// The cluster, its Pods and canaryd serving the canary Ingress at 25 %.
struct Setup {
    bed: Testbed,
    admin: kube::Client,
    _dir: tempfile::TempDir,
    proxy: Canaryd,
    client: Client,
    /// The two stable Pods' names.
    stable: BTreeSet<String>,
    /// The canary Pod's name.
    canary: String,
}

async fn setup() -> Setup {
    let bed = Testbed::start();
    let admin = bed.admin().await;
    apply_all(
        &admin,
        &[
            namespace(NS),
            namespace("ingress"),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": "canaryd"}, "spec": {"controller": "canaryd.dev/ingress-controller"}
            }),
            service("production"),
            service("production-canary"),
            backend_deployment(NS, "production", json!({"app": "production"}), 2, 0),
            backend_deployment(NS, "production-canary", json!({"app": "production-canary"}), 1, 0),
            ingress("production", "canaryd", HOST, "production", json!({})),
            canary_ingress("25"),
            // Another controller's Ingress, pointing at a Service canaryd could serve: it
            // must still be ignored.
            ingress("other", "nginx", "other.example", "production", json!({})),
            // canaryd's own LoadBalancer Service, whose address goes into Ingress status.
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "canaryd", "namespace": "ingress"},
                "spec": {"type": "LoadBalancer", "selector": {"app": "canaryd"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }),
        ],
    )
    .await;
    testbed::set_load_balancer_ip(&admin, "ingress", "canaryd", LB_IP).await;
    let stable = bed.wait_pods(&admin, NS, "app=production", 2).await;
    let canary = bed.wait_pods(&admin, NS, "app=production-canary", 1).await;
    let canary = canary.into_iter().next().unwrap();

    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml")).unwrap();
    let (proxy, dir) = bed
        .canaryd_as_service_account(
            &admin,
            &rbac,
            &Canaryd::config(
                "kubernetes: { namespace: canaryd, canary_routes: false, publish_service: ingress/canaryd, lease_duration: 3s }\n",
            ),
        )
        .await;
    let client = Client::new();
    // Ready, and both variants resolved: forced requests reach each side.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = admin_call(proxy.admin, "GET", "/readyz", &[], "").await;
        if status == 200 {
            let always = client.send(proxy.addr, HOST, "/", &[("canary", "always")]).await;
            let never = client.send(proxy.addr, HOST, "/", &[("canary", "never")]).await;
            let backend =
                |r: &Result<canary_tests::Reply, String>| r.as_ref().ok().and_then(|r| r.backend().map(str::to_string));
            if backend(&always).as_deref() == Some(canary.as_str())
                && backend(&never).is_some_and(|b| stable.contains(&b))
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
        bed,
        admin,
        _dir: dir,
        proxy,
        client,
        stable,
        canary,
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
        if seen.contains_key(&s.canary) == canary {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "after {timeout:?} requests still reach {seen:?} (canary wanted: {canary})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn route_status(proxy: &Canaryd) -> Value {
    let (status, _, body) = admin_call(proxy.admin, "GET", &format!("/api/v1/routes/{ROUTE}"), &[], "").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_ingress_annotations_split_override_and_follow_the_cluster() {
    if !testbed::in_pod_network("canary_ingress_annotations_split_override_and_follow_the_cluster") {
        return;
    }
    let s = setup().await;
    let (proxy, client) = (&s.proxy, &s.client);

    // 1. The weight annotation: 25 % to the canary, both stable Pods used.
    let seen = spread(client, proxy, &[], 4_000).await;
    let to_canary = *seen.get(&s.canary).unwrap_or(&0);
    let (lo, hi) = canary_tests::binomial_bounds(4_000, 0.25);
    eprintln!("canary-weight 25: {seen:?}; canary {to_canary} of 4000, 1e-5 bounds {lo:.0}..={hi:.0}");
    assert!(
        (lo..=hi).contains(&(to_canary as f64)),
        "{to_canary} of 4000 to the canary"
    );
    for pod in &s.stable {
        assert!(seen.get(pod).copied().unwrap_or(0) > 1_000, "{pod} got {seen:?}");
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // 2. canary-by-header: `always` and `never` decide; any other value follows the weight.
    let always = spread(client, proxy, &[("canary", "always")], 50).await;
    assert_eq!(always, HashMap::from([(s.canary.clone(), 50)]));
    let never = spread(client, proxy, &[("canary", "never")], 50).await;
    assert_eq!(never.get(&s.canary), None, "{never:?}");
    assert_eq!(never.values().sum::<usize>(), 50);
    let maybe = spread(client, proxy, &[("canary", "maybe")], 400).await;
    let maybe_canary = *maybe.get(&s.canary).unwrap_or(&0);
    let (lo, hi) = canary_tests::binomial_bounds(400, 0.25);
    eprintln!("canary: always → {always:?}; never → {never:?}; maybe → {maybe:?} (bounds {lo:.0}..={hi:.0})");
    assert!(
        (lo..=hi).contains(&(maybe_canary as f64)),
        "`canary: maybe` must follow the weight: {maybe:?}"
    );

    // 3. canary-weight "0": everything to stable within a few seconds; the header still forces.
    testbed::apply(&s.admin, &canary_ingress("0")).await.unwrap();
    let took = wait_canary_share(&s, false, Duration::from_secs(5)).await;
    let after = spread(client, proxy, &[], 400).await;
    eprintln!("canary-weight 0 applied after {took:?}; then {after:?}");
    assert_eq!(after.get(&s.canary), None, "{after:?}");
    assert_eq!(route_status(proxy).await["weight"], json!(0.0));
    let forced = spread(client, proxy, &[("canary", "always")], 10).await;
    assert_eq!(
        forced,
        HashMap::from([(s.canary.clone(), 10)]),
        "the header overrides weight 0"
    );
    // ... and back to 25.
    testbed::apply(&s.admin, &canary_ingress("25")).await.unwrap();
    let took = wait_canary_share(&s, true, Duration::from_secs(5)).await;
    eprintln!("canary-weight 25 again after {took:?}");
    assert_eq!(route_status(proxy).await["weight"], json!(25.0));

    // 4. Deleting the canary Ingress under load: all traffic to stable, no request fails.
    let load = Load::start(proxy.addr, HOST, 8_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ingresses: Api<Ingress> = Api::namespaced(s.admin.clone(), NS);
    ingresses
        .delete("production-canary", &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    let started = Instant::now();
    loop {
        let seen = spread(client, proxy, &[("canary", "always")], 20).await;
        if !seen.contains_key(&s.canary) {
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
    assert_eq!(after.get(&s.canary), None, "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 200);
    assert_eq!(forced.get(&s.canary), None, "{forced:?}");
    assert_eq!(failed, 0, "requests failed while the canary Ingress went away");
    assert!(sent > 100, "the load ran ({sent})");
    assert_eq!(route_status(proxy).await["weight"], json!(0.0));
    s.bed.assert_canaryd_allowed_and_listed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_status_ownership_and_other_classes() {
    if !testbed::in_pod_network("ingress_status_ownership_and_other_classes") {
        return;
    }
    let s = setup().await;
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
    let ingresses: Api<Ingress> = Api::namespaced(s.admin.clone(), NS);
    let ip_of = |name: &'static str| {
        let ingresses = ingresses.clone();
        async move {
            let status = ingresses.get_status(name).await.unwrap().status;
            status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .and_then(|i| i.into_iter().next())
                .and_then(|i| i.ip)
        }
    };
    let published = loop {
        if ip_of("production").await.as_deref() == Some(LB_IP)
            && ip_of("production-canary").await.as_deref() == Some(LB_IP)
        {
            break true;
        }
        if started.elapsed() > Duration::from_secs(15) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "status.loadBalancer: production {:?}, production-canary {:?}, other {:?} after {:?}",
        ip_of("production").await,
        ip_of("production-canary").await,
        ip_of("other").await,
        started.elapsed()
    );
    assert!(published, "no Ingress status address:\n{}", proxy.log().join("\n"));
    assert_eq!(
        ip_of("other").await,
        None,
        "canaryd wrote the status of nginx's Ingress"
    );

    // MetalLB moves the address: the change reaches both Ingresses, driven by the watches
    // canaryd already runs. No polling: one list of Ingresses (the route watch's), and the
    // Service is watched, never fetched.
    const MOVED_IP: &str = "192.0.2.11";
    testbed::set_load_balancer_ip(&s.admin, "ingress", "canaryd", MOVED_IP).await;
    let moved = Instant::now();
    let followed = testbed::eventually(Duration::from_secs(15), || async {
        ip_of("production").await.as_deref() == Some(MOVED_IP)
            && ip_of("production-canary").await.as_deref() == Some(MOVED_IP)
    })
    .await;
    assert!(
        followed,
        "the moved address was not published:\n{}",
        proxy.log().join("\n")
    );
    eprintln!("moved address published after {:?}", moved.elapsed());
    let audit = s.bed.audit(testbed::CANARYD_USER);
    let calls = |verb: &str, resource: &str| {
        audit
            .iter()
            .filter(|e| {
                let path = e.request_uri.split('?').next().unwrap_or_default();
                e.verb == verb && path.ends_with(resource)
            })
            .count()
    };
    assert_eq!(calls("list", "/ingresses"), 1, "Ingresses listed more than once");
    assert_eq!(calls("get", "/services/canaryd"), 0, "the publish Service was fetched");
    s.bed.assert_canaryd_allowed_and_listed();
}
