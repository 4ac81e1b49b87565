//! Kubernetes mode against a real cluster (the test bed: kube-apiserver with RBAC, etcd,
//! the controller manager's Deployment, ReplicaSet and EndpointSlice controllers, the
//! scheduler, and a process kubelet running Pods as local processes): canaryd
//! authenticates with a ServiceAccount token that only `deploy/rbac.yaml` grants.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use canary_tests::cluster::{spread, wait_ready, Load};
use canary_tests::objects::{backend_deployment, canary_route, namespace, service, tls_secret};
use canary_tests::testbed::{self, apply_all, ready_pods, tail, AuditEvent, Testbed, CANARYD_USER};
use canary_tests::{Canaryd, Client};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{json, Value};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

/// Polls until requests for `host` reach exactly `backends`; returns how long it took.
async fn wait_serving(client: &Client, proxy: &Canaryd, host: &str, backends: &BTreeSet<String>) -> Duration {
    let started = Instant::now();
    loop {
        let seen = spread(client, proxy, host, &[], 40).await;
        let got: BTreeSet<String> = seen.into_keys().collect();
        if &got == backends {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "requests reach {got:?}, not {backends:?}\n{}",
            tail(&proxy.log().join("\n"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scale(client: &kube::Client, namespace: &str, name: &str, replicas: u32) {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), namespace);
    deployments
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// Real Deployments behind a real Service: the EndpointSlice controller's slices bring
/// canaryd the ready Pods, a scale-up adds one, a scale-down drains the leaving Pods
/// (terminating but serving, then gone) without one failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_real_deployments_scaling_up_and_down() {
    if !testbed::in_pod_network("endpoints_follow_real_deployments_scaling_up_and_down") {
        return;
    }
    let bed = Testbed::start();
    let admin = bed.admin().await;
    let stable_labels = json!({"app": "web", "track": "stable"});
    apply_all(
        &admin,
        &[
            namespace("prod"),
            service("prod", "web", stable_labels.clone()),
            backend_deployment("prod", "web", stable_labels, 2, 3000),
            backend_deployment("prod", "web-canary", json!({"app": "web", "track": "canary"}), 1, 0),
        ],
    )
    .await;
    let stable = bed.wait_pods(&admin, "prod", "app=web,track=stable", 2).await;
    let canary = bed.wait_pods(&admin, "prod", "app=web,track=canary", 1).await;

    let config = Canaryd::config(
        "kubernetes: { namespace: canaryd, ingress_class: null, canary_routes: false }\nroutes:\n  - name: web\n    hosts: [web.example]\n    stable: { kubernetes: { namespace: prod, service: web, port: http } }\n    canary: { kubernetes: { namespace: prod, selector: \"app=web,track=canary\", port: 8080 } }\n    weight: 0\n",
    );
    let (proxy, _dir) = bed
        .canaryd_as_service_account(&admin, &read("deploy/rbac.yaml"), &config)
        .await;
    wait_ready(&proxy).await;
    let client = Client::new();
    wait_serving(&client, &proxy, "web.example", &stable).await;
    let forced = client
        .send(proxy.addr, "web.example", "/", &[("x-canary", "always")])
        .await
        .unwrap();
    assert_eq!(
        forced.backend(),
        canary.iter().next().map(String::as_str),
        "the canary by Pod selector"
    );

    // Scale up: the new Pod takes requests once its readiness probe passes.
    let started = Instant::now();
    scale(&admin, "prod", "web", 3).await;
    let three = bed.wait_pods(&admin, "prod", "app=web,track=stable", 3).await;
    wait_serving(&client, &proxy, "web.example", &three).await;
    eprintln!("scale 2 → 3: new pod serving after {:?}", started.elapsed());

    // Scale down under load: the leaving Pods drain (SIGTERM, 3 s still serving) and
    // the real EndpointSlice controller marks them terminating; nothing fails.
    let load = Load::start(proxy.addr, "web.example", 40_000);
    let started = Instant::now();
    scale(&admin, "prod", "web", 1).await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "prod");
    let mut saw_terminating = false;
    let remaining = loop {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .unwrap();
        saw_terminating |= list.items.iter().flat_map(|s| s.endpoints.iter().flatten()).any(|e| {
            e.conditions
                .as_ref()
                .is_some_and(|c| c.terminating == Some(true) && c.serving == Some(true) && c.ready == Some(false))
        });
        let left = ready_pods(&admin, "prod", "app=web,track=stable").await;
        if left.len() == 1 && saw_terminating {
            break left;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "scale-down did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = wait_serving(&client, &proxy, "web.example", &remaining).await;
    eprintln!(
        "scale 3 → 1: only the remaining pod serves after {:?}",
        started.elapsed().max(took)
    );
    let (sent, failed) = load.stop().await;
    assert!(sent > 100, "the load ran ({sent} requests)");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while the Deployment scaled down"
    );
}

/// The CanaryRoute CRD of `deploy/crds/` on the real API server: its structural schema is
/// accepted (the CRD becomes Established), the example object is stored, and objects that
/// break the schema are refused by the server's own validation, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_route_crd_is_accepted_and_bad_objects_are_refused_by_the_server() {
    if !testbed::in_pod_network("the_canary_route_crd_is_accepted_and_bad_objects_are_refused_by_the_server") {
        return;
    }
    let bed = Testbed::start();
    let admin = bed.admin().await;
    testbed::install_canary_route_crd(&admin).await;
    apply_all(&admin, &[namespace("prod")]).await;
    let example: Value = serde_yaml_ng::from_str(&read("examples/kubernetes/canaryroute.yaml")).unwrap();
    if let Err(e) = testbed::apply(&admin, &example).await {
        panic!("the example CanaryRoute was refused: {e}");
    }

    let with = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut object = example.clone();
        object["metadata"]["name"] = json!(name);
        change(&mut object);
        object
    };
    let cases: [(&str, Value, &str); 4] = [
        (
            "negative body limit",
            with("neg", &|o| o["spec"]["maxBodyBytes"] = json!(-1)),
            "spec.maxBodyBytes",
        ),
        (
            "weight as text",
            with("text", &|o| o["spec"]["weight"] = json!("ten")),
            "spec.weight",
        ),
        (
            "no stable backend",
            with("nostable", &|o| {
                o["spec"].as_object_mut().unwrap().remove("stable");
            }),
            "spec.stable",
        ),
        (
            "unknown affinity key",
            with("key", &|o| o["spec"]["affinity"]["key"] = json!("moon-phase")),
            "spec.affinity.key",
        ),
    ];
    for (what, object, field) in cases {
        match testbed::apply(&admin, &object).await {
            Ok(_) => panic!("{what}: the API server stored an invalid CanaryRoute"),
            Err(kube::Error::Api(status)) => {
                // 422 from schema validation; a value of the wrong type fails earlier, when
                // server-side apply builds its typed patch, and the real server answers 500.
                assert!(matches!(status.code, 422 | 500), "{what}: {status:?}");
                assert!(
                    status.message.contains(field),
                    "{what}: the refusal names {field}: {}",
                    status.message
                );
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// The config of the all-features run: routes from a CanaryRoute and an Ingress, the
/// Lease in namespace canaryd, Ingress status from a LoadBalancer Service, a TLS Secret.
fn every_feature_config() -> String {
    Canaryd::config(
        "kubernetes: { namespace: canaryd, ingress_class: canaryd, publish_service: canaryd/canaryd-lb, lease_duration: 3s }\ntls: { secrets: [{ hosts: [web.example], secret: prod/web-tls }] }\n",
    )
    .replace("listen: {", "listen: { https: \"127.0.0.1:0\",")
}

/// What the all-features run needs in the cluster; returns the stable and canary Pods.
async fn every_feature_cluster(bed: &Testbed, admin: &kube::Client) -> (String, String) {
    testbed::install_canary_route_crd(admin).await;
    let stable_labels = json!({"app": "web", "track": "stable"});
    let canary_labels = json!({"app": "web", "track": "canary"});
    let mut secret = serde_json::to_value(tls_secret("prod", "web-tls", "web.example")).unwrap();
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    apply_all(
        admin,
        &[
            namespace("prod"),
            namespace("canaryd"),
            service("prod", "web", stable_labels.clone()),
            backend_deployment("prod", "web", stable_labels, 1, 0),
            backend_deployment("prod", "web-canary", canary_labels, 1, 0),
            // canaryd's own LoadBalancer Service: its address goes into Ingress status.
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "canaryd-lb", "namespace": "canaryd"},
                "spec": {"type": "LoadBalancer", "selector": {"app": "canaryd"},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }),
            // Its backend's port by number: canaryd watches the Service to name it.
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "shop", "namespace": "prod"},
                "spec": {"ingressClassName": "canaryd", "rules": [{"host": "shop.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
                ]}}]}
            }),
            secret,
            // The TLS Secret, granted by name (deploy/rbac.yaml's comment).
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "canaryd-tls", "namespace": "prod"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["web-tls"], "verbs": ["list", "watch"]}]
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "canaryd-tls", "namespace": "prod"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canaryd-tls"},
                "subjects": [{"kind": "ServiceAccount", "name": "canaryd", "namespace": "canaryd"}]
            }),
            canary_route("prod", "web", json!({
                    "hosts": ["web.example"],
                    "stable": {"kubernetes": {"service": "web", "port": "http"}},
                    "canary": {"kubernetes": {"selector": "app=web,track=canary", "port": 8080}},
                    "weight": 0
                })),
        ],
    )
    .await;
    testbed::set_load_balancer_ip(admin, "canaryd", "canaryd-lb", "192.0.2.10").await;
    let stable = bed.wait_pods(admin, "prod", "app=web,track=stable", 1).await;
    let canary = bed.wait_pods(admin, "prod", "app=web,track=canary", 1).await;
    (stable.into_iter().next().unwrap(), canary.into_iter().next().unwrap())
}

async fn set_weight(proxy: &Canaryd, percent: u32) -> (u16, String) {
    let (code, _, body) = canary_tests::client::admin_call(
        proxy.admin,
        "PUT",
        "/api/v1/routes/web/weight",
        &[("content-type", "application/json")],
        &format!(r#"{{"percent": {percent}}}"#),
    )
    .await;
    (code.as_u16(), body.to_string())
}

/// Waits for `done` (polled every 100 ms) or panics with `what` and canaryd's log.
async fn wait_for<F: std::future::Future<Output = bool>>(
    proxy: &Canaryd,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}\n{}", tail(&proxy.log().join("\n")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything kubernetes mode does, against the real API server as the ServiceAccount of
/// `deploy/rbac.yaml`: discovery by Service and by selector, a CanaryRoute and its status
/// (two weight changes: a status update each and an Event, then the same Event patched
/// into a series), the Lease created and renewed, an Ingress served and its status set
/// from the LoadBalancer Service, a TLS Secret loaded. The API server's audit log then
/// shows that every request was allowed by the real RBAC authorizer, that each is a call
/// of `API_CALLS` and that each listed call was made.
///
/// Then each rule of `deploy/rbac.yaml` in turn is removed: canaryd, started again, is
/// refused by the authorizer (a `forbid` in the audit log for that rule's resource) and
/// says so in its log. So no rule is dead weight, and none is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_grants_what_canaryd_does_and_each_rule_is_needed() {
    if !testbed::in_pod_network("deploy_rbac_grants_what_canaryd_does_and_each_rule_is_needed") {
        return;
    }
    let bed = Testbed::start();
    let admin = bed.admin().await;
    let rbac = read("deploy/rbac.yaml");
    let (stable_pod, canary_pod) = every_feature_cluster(&bed, &admin).await;
    let config = every_feature_config();
    let (proxy, dir) = bed.canaryd_as_service_account(&admin, &rbac, &config).await;
    wait_ready(&proxy).await;

    let client = Client::new();
    for (header, host, pod) in [
        (("x-canary", "always"), "web.example", &canary_pod),
        (("x-canary", "never"), "web.example", &stable_pod),
        (("x-none", "-"), "shop.example", &stable_pod),
    ] {
        let r = client.send(proxy.addr, host, "/", &[header]).await.unwrap();
        assert_eq!(r.backend(), Some(pod.as_str()), "{host} {header:?}: {}", r.text());
    }
    for percent in [10, 20] {
        let (code, body) = set_weight(&proxy, percent).await;
        assert_eq!(code, 200, "{body}");
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), "prod");
    wait_for(
        &proxy,
        "the repeated Weight Event was not patched into a series",
        Duration::from_secs(15),
        || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
                        && e.reason.as_deref() == Some("Weight")
                        && e.series.as_ref().is_some_and(|s| s.count == 2)
                })
        },
    )
    .await;
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> = Api::namespaced(admin.clone(), "prod");
    wait_for(
        &proxy,
        "no LoadBalancer address in the Ingress status",
        Duration::from_secs(15),
        || async {
            let shop = ingresses.get_status("shop").await.unwrap();
            let ip = shop
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .and_then(|i| i.into_iter().next())
                .and_then(|i| i.ip);
            ip.as_deref() == Some("192.0.2.10")
        },
    )
    .await;
    wait_for(&proxy, "the Lease was not renewed", Duration::from_secs(15), || async {
        bed.audit(CANARYD_USER)
            .iter()
            .any(|e| e.verb == "update" && e.request_uri.contains("/leases/"))
    })
    .await;
    wait_for(
        &proxy,
        "the Secret's certificate is not loaded",
        Duration::from_secs(15),
        || async {
            proxy
                .metric(r#"canaryd_certificate_expiry_seconds{cert="secret:prod/web-tls"}"#)
                .await
                > 0.0
        },
    )
    .await;

    let audit = bed.audit(CANARYD_USER);
    let refused: Vec<&AuditEvent> = audit.iter().filter(|e| e.decision() != "allow").collect();
    assert!(refused.is_empty(), "the real authorizer refused canaryd: {refused:#?}");
    let requests: Vec<(String, String)> = audit.iter().map(AuditEvent::method_and_path).collect();
    eprintln!("{} requests by canaryd, all allowed", requests.len());
    let unlisted = canary_tests::rbac::unlisted(&requests, "canaryd");
    assert!(
        unlisted.is_empty(),
        "requests that API_CALLS does not list:\n{}",
        unlisted.join("\n")
    );
    let unused = canary_tests::rbac::unused(&requests, "canaryd");
    assert!(
        unused.is_empty(),
        "API_CALLS (and so the RBAC) lists calls canaryd never made:\n{}",
        unused.join("\n")
    );
    drop(proxy);
    drop(dir);

    // Each rule removed in turn: the real authorizer refuses canaryd.
    let documents: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&rbac)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let tokens = tempfile::tempdir().unwrap();
    let ingress_status_clear = json!({"status": {"loadBalancer": {"ingress": null}}});
    for role in documents
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        let rules = role["rules"].as_array().unwrap();
        for (i, rule) in rules.iter().enumerate() {
            let mut without = role.clone();
            without["rules"].as_array_mut().unwrap().remove(i);
            testbed::apply(&admin, &without).await.unwrap();
            let group = rule["apiGroups"][0].as_str().unwrap();
            let resource = rule["resources"][0].as_str().unwrap();
            let verb = rule["verbs"][0].as_str().unwrap();
            wait_denied(&admin, group, resource, verb).await;
            // Status that is already right is not written again: clear it.
            ingresses
                .patch_status("shop", &PatchParams::default(), &Patch::Merge(&ingress_status_clear))
                .await
                .unwrap();
            let seen = bed.audit(CANARYD_USER).len();
            let kubeconfig = bed
                .service_account_kubeconfig(&admin, "canaryd", "canaryd", tokens.path())
                .await;
            let proxy = Canaryd::start_kubernetes(&config, &kubeconfig);
            let started = Instant::now();
            let (wanted_group, wanted_resource) = (group.to_string(), resource.to_string());
            let mut percent = 30;
            let forbid = loop {
                let audit = bed.audit(CANARYD_USER);
                let hit = audit[seen.min(audit.len())..]
                    .iter()
                    .find(|e| {
                        let (m, p) = e.method_and_path();
                        e.decision() == "forbid"
                            && canary_tests::rbac::attributes(&m, &p)
                                .is_some_and(|a| a.group == wanted_group && a.resource == wanted_resource)
                    })
                    .cloned();
                if let Some(hit) = hit {
                    break hit;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "without rule {group}/{resource} {:?}, canaryd was never refused\n{}",
                    rule["verbs"],
                    tail(&proxy.log().join("\n"))
                );
                // A status update and an Event come with a weight change.
                percent = if percent == 30 { 40 } else { 30 };
                let _ = tokio::time::timeout(Duration::from_secs(2), set_weight(&proxy, percent)).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert!(
                proxy.wait_log("forbidden", Duration::from_secs(10)),
                "canaryd did not report the refusal of {} {}\n{}",
                forbid.verb,
                forbid.request_uri,
                tail(&proxy.log().join("\n"))
            );
            eprintln!(
                "without {group}/{resource} {}: {} {} forbidden after {:?}",
                rule["verbs"],
                forbid.verb,
                forbid.request_uri,
                started.elapsed()
            );
            drop(proxy);
            testbed::apply(&admin, role).await.unwrap();
        }
    }
}

/// Waits until the real authorizer (a SubjectAccessReview) denies canaryd `verb` on
/// `group/resource` in namespace canaryd: RBAC changes reach it through an informer.
async fn wait_denied(admin: &kube::Client, group: &str, resource: &str, verb: &str) {
    let reviews: Api<k8s_openapi::api::authorization::v1::SubjectAccessReview> = Api::all(admin.clone());
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review: k8s_openapi::api::authorization::v1::SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": CANARYD_USER,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:canaryd", "system:authenticated"],
            "resourceAttributes": {"group": group, "resource": resource, "subresource": subresource, "verb": verb, "namespace": "canaryd"}
        }
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = reviews
            .create(&kube::api::PostParams::default(), &review)
            .await
            .unwrap();
        if !answer.status.is_some_and(|s| s.allowed) {
            return;
        }
        assert!(Instant::now() < deadline, "{verb} {group}/{resource} still allowed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Service `web`'s EndpointSlices as route `app`, and nothing else from the cluster.
fn discovery_only_config() -> String {
    Canaryd::config(
        "kubernetes: { namespace: canaryd, ingress_class: null, canary_routes: false }\nroutes:\n  - name: app\n    hosts: [app.example]\n    stable: { kubernetes: { namespace: prod, service: web, port: http } }\n",
    )
}

/// A real outage: the API server stops (its watches end, its port refuses) under load.
/// canaryd keeps serving the last known endpoints without a failed request and reports
/// the variant stale. While it is down, etcd's history is compacted past every
/// resourceVersion canaryd holds; the API server comes back, canaryd's resumed watch is
/// refused with 410 Gone, it lists again, staleness returns to 0, and a scale-down made
/// after the outage is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_and_a_compacted_history_keep_serving_and_relist() {
    if !testbed::in_pod_network("an_api_server_outage_and_a_compacted_history_keep_serving_and_relist") {
        return;
    }
    let mut bed = Testbed::start();
    let admin = bed.admin().await;
    let labels = json!({"app": "web"});
    apply_all(
        &admin,
        &[
            namespace("prod"),
            service("prod", "web", labels.clone()),
            backend_deployment("prod", "web", labels, 2, 2000),
        ],
    )
    .await;
    let pods = bed.wait_pods(&admin, "prod", "app=web", 2).await;
    let (proxy, _dir) = bed
        .canaryd_as_service_account(&admin, &read("deploy/rbac.yaml"), &discovery_only_config())
        .await;
    wait_ready(&proxy).await;
    let client = Client::new();
    wait_serving(&client, &proxy, "app.example", &pods).await;
    const STALE: &str = r#"canaryd_discovery_stale_seconds{route="app",variant="stable"}"#;
    assert_eq!(proxy.metric(STALE).await, 0.0, "a healthy watch is not stale");

    const LIMIT: usize = 400_000;
    let load = Load::start(proxy.addr, "app.example", LIMIT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    bed.command("stop-apiserver");
    let down = Instant::now();
    // Staleness counts from the first failed watch request and keeps running while the
    // server stays away; a full second of it shows a clock, not a flag.
    let status = loop {
        let (_, _, status) = canary_tests::client::admin_call(proxy.admin, "GET", "/api/v1/routes/app", &[], "").await;
        if status["stable"]["discovery"]["stale_seconds"].as_f64().unwrap_or(0.0) >= 1.0 {
            break status;
        }
        assert!(
            down.elapsed() < Duration::from_secs(20),
            "the route never turned stale: {status}\n{}",
            tail(&proxy.log().join("\n"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        proxy.metric(STALE).await >= 1.0,
        "the route is stale, the metric is not"
    );
    assert_eq!(status["stable"]["endpoints"], json!(2), "{status}");
    let during: BTreeSet<String> = spread(&client, &proxy, "app.example", &[], 100)
        .await
        .into_keys()
        .collect();
    assert_eq!(during, pods, "the last known endpoints serve during the outage");

    bed.command("compact-etcd");
    let audit_before = bed.audit(CANARYD_USER).len();
    bed.command("start-apiserver");
    let outage = down.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.metric(STALE).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "still stale after the API server came back\n{}",
            tail(&proxy.log().join("\n"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = down.elapsed() - outage;
    // The resumed watch is accepted (200), then ended by the server's in-stream 410
    // ERROR event, which kube-runtime turns into a re-list.
    let gone: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("watch failed") && l.contains("too old resource version"))
        .collect();
    let after = bed.audit(CANARYD_USER).split_off(audit_before);
    let relisted = after
        .iter()
        .any(|e| e.verb == "list" && e.request_uri.contains("endpointslices"));
    eprintln!(
        "outage {outage:?}; synced again {back:?} after the restart; 410: {:?}",
        gone.first()
    );
    assert!(
        !gone.is_empty(),
        "no watch was refused with 410 Gone\n{}",
        tail(&proxy.log().join("\n"))
    );
    assert!(relisted, "canaryd did not list the EndpointSlices again: {after:#?}");

    // The new watch follows the cluster: scale down to one Pod.
    scale(&admin, "prod", "web", 1).await;
    let one = bed.wait_pods(&admin, "prod", "app=web", 1).await;
    wait_serving(&client, &proxy, "app.example", &one).await;
    let (sent, failed) = load.stop().await;
    eprintln!("{sent} requests under load through the outage and the scale-down, {failed} failed");
    assert_eq!(failed, 0, "requests failed while the API server was away");
    assert!(sent > 100 && sent < LIMIT, "the load ran throughout ({sent})");
}

/// An EndpointSlice of the selector-less Service `app` in prod, as another controller (or
/// a person) writes them: ports `(name, number)` and ready `addresses`.
fn slice_with_ports(name: &str, ports: &[(&str, u16)], addresses: &[String]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "prod", "labels": {
            "kubernetes.io/service-name": "app",
            "endpointslice.kubernetes.io/managed-by": "canaryd-tests"
        }},
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>()
    })
}

/// Backends named `names` on 10.250.0.{first}.. (made local here: the real API server
/// refuses loopback endpoints), all on one free port.
async fn backends_on_local_net(names: &[&str], first: u8) -> (u16, Vec<canary_tests::BackendHandle>) {
    static ROUTE: std::sync::Once = std::sync::Once::new();
    ROUTE.call_once(|| {
        let status = std::process::Command::new("ip")
            .args(["route", "add", "local", "10.250.0.0/24", "dev", "lo"])
            .status()
            .unwrap();
        assert!(status.success(), "ip route add local 10.250.0.0/24");
    });
    'retry: for _ in 0..20 {
        let port = std::net::TcpListener::bind("10.250.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut handles = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let addr = std::net::SocketAddr::from(([10, 250, 0, first + i as u8], port));
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'retry;
            }
            handles.push(canary_tests::Backend::new(name).start_on(addr).await);
        }
        return (port, handles);
    }
    panic!("no port free on all of 10.250.0.{first}..");
}

/// Polls until the requests for app.example reach exactly `backends`; returns how long.
async fn wait_reach(client: &Client, proxy: &Canaryd, backends: &[&str]) -> Duration {
    let want: BTreeSet<String> = backends.iter().map(|b| b.to_string()).collect();
    wait_serving(client, proxy, "app.example", &want).await
}

async fn stable_endpoints(proxy: &Canaryd) -> Value {
    let (_, _, status) = canary_tests::client::admin_call(proxy.admin, "GET", "/api/v1/routes/app", &[], "").await;
    status["stable"]["endpoints"].clone()
}

/// Two EndpointSlices of one Service (written by hand, as for a Service without selector):
/// an address in both is one endpoint, the named port is looked up by name in each slice
/// (not by position), a port change makes the shared address two endpoints, and a slice
/// deleted takes its endpoints with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_slices_are_merged_deduplicated_and_their_named_port_resolved_per_slice() {
    if !testbed::in_pod_network("a_services_slices_are_merged_deduplicated_and_their_named_port_resolved_per_slice") {
        return;
    }
    let bed = Testbed::start();
    let admin = bed.admin().await;
    // Backends a, b, c on port P1 (10.250.0.40-42); b2 and c2 on port P2 at b's and c's.
    let (p1, _first) = backends_on_local_net(&["a", "b", "c"], 40).await;
    let (p2, _second) = backends_on_local_net(&["b2", "c2"], 41).await;
    assert_ne!(p1, p2);
    let ip = |i: u8| format!("10.250.0.{i}");
    apply_all(
        &admin,
        &[
            namespace("prod"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "prod"},
                   "spec": {"ports": [{"name": "http", "port": 80}]}}),
            slice_with_ports("app-1", &[("http", p1)], &[ip(40), ip(41)]),
            // Another port first: `http` must be found by name.
            slice_with_ports("app-2", &[("metrics", 9100), ("http", p1)], &[ip(41), ip(42)]),
        ],
    )
    .await;
    let config = Canaryd::config(
        "kubernetes: { namespace: canaryd, ingress_class: null, canary_routes: false }\nroutes:\n  - name: app\n    hosts: [app.example]\n    stable: { kubernetes: { namespace: prod, service: app, port: http } }\n",
    );
    let (proxy, _dir) = bed
        .canaryd_as_service_account(&admin, &read("deploy/rbac.yaml"), &config)
        .await;
    wait_ready(&proxy).await;
    let client = Client::new();

    // Same port in both slices: b's address is one endpoint, not two.
    wait_reach(&client, &proxy, &["a", "b", "c"]).await;
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

    // The second slice's `http` is now port P2: the shared address is two endpoints.
    testbed::apply(
        &admin,
        &slice_with_ports("app-2", &[("metrics", 9100), ("http", p2)], &[ip(41), ip(42)]),
    )
    .await
    .unwrap();
    let took = wait_reach(&client, &proxy, &["a", "b", "b2", "c2"]).await;
    eprintln!("second slice's http → port {p2}: applied after {took:?}");
    assert_eq!(stable_endpoints(&proxy).await, json!(4));

    // One slice goes away: only the other's endpoints remain.
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "prod");
    slices.delete("app-1", &Default::default()).await.unwrap();
    wait_reach(&client, &proxy, &["b2", "c2"]).await;
    assert_eq!(stable_endpoints(&proxy).await, json!(2));
    bed.assert_canaryd_allowed_and_listed();
}

/// A stalled path to the API server: a TCP proxy between canaryd and the real API server
/// stops moving bytes but keeps every connection open (packets dropped, no FIN, no RST).
/// canaryd keeps serving its last endpoints without a failed request while the cluster
/// changes behind the stall (a scale-up it cannot see), and when the stalled connections
/// are reset (a NAT or load balancer timing them out) it reconnects and follows the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_api_connection_keeps_serving_and_recovers_when_reset() {
    if !testbed::in_pod_network("a_stalled_api_connection_keeps_serving_and_recovers_when_reset") {
        return;
    }
    let bed = Testbed::start();
    let admin = bed.admin().await;
    let labels = json!({"app": "web"});
    apply_all(
        &admin,
        &[
            namespace("prod"),
            namespace("canaryd"),
            service("prod", "web", labels.clone()),
            backend_deployment("prod", "web", labels, 2, 0),
        ],
    )
    .await;
    let two = bed.wait_pods(&admin, "prod", "app=web", 2).await;
    let server: std::net::SocketAddr = bed.info.server.trim_start_matches("https://").parse().unwrap();
    let proxy_path = canary_tests::fault_proxy::FaultProxy::start(server).await;
    let (proxy, _dir) = bed
        .canaryd_as_service_account_via(
            &admin,
            &read("deploy/rbac.yaml"),
            &discovery_only_config(),
            &format!("https://{}", proxy_path.addr),
        )
        .await;
    wait_ready(&proxy).await;
    let client = Client::new();
    wait_serving(&client, &proxy, "app.example", &two).await;

    const LIMIT: usize = 400_000;
    let load = Load::start(proxy.addr, "app.example", LIMIT);
    proxy_path.stall(true);
    scale(&admin, "prod", "web", 3).await;
    let three = bed.wait_pods(&admin, "prod", "app=web", 3).await;
    // The cluster has three ready Pods; canaryd, cut off, serves the two it knows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during: BTreeSet<String> = spread(&client, &proxy, "app.example", &[], 100)
        .await
        .into_keys()
        .collect();
    assert_eq!(during, two, "during the stall the last known endpoints serve");

    let reset = Instant::now();
    proxy_path.stall(false);
    proxy_path.cut();
    let took = wait_serving(&client, &proxy, "app.example", &three).await;
    let (sent, failed) = load.stop().await;
    eprintln!(
        "stalled API connection reset: the scale-up made behind it served after {:?} ({took:?} of polling); {sent} requests under load, {failed} failed",
        reset.elapsed()
    );
    assert_eq!(failed, 0, "requests failed while the API connection was stalled");
    assert!(sent > 100 && sent < LIMIT, "the load ran throughout ({sent})");
}

/// Serves `first`, then `second`, to the next two opens of the FIFO at `path` by process
/// `reader` (blocking opens on a thread of its own; left blocked if a reader never comes).
fn fifo_serving(path: &Path, reader: u32, first: String, second: &'static str) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY-free: mkfifo(3) through the libc crate on a path of our temp dir.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let holds_fifo = || {
            std::fs::read_dir(format!("/proc/{reader}/fd"))
                .map(|fds| {
                    fds.flatten()
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
                })
                .unwrap_or(false)
        };
        for text in [first.as_str(), second] {
            // The first reader must be gone before the second write, or it would read both.
            let deadline = Instant::now() + Duration::from_secs(20);
            while holds_fifo() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::io::Write::write_all(&mut w, text.as_bytes()).unwrap();
        }
    });
}

/// In kubernetes mode a reload goes through the cluster composition; it is reported as
/// applied only once the composed table serves it. A config whose table cannot be built is
/// refused as in standalone mode: logged as a refused reload, `canaryd_config_last_reload_success`
/// 0, the previous routes serve on, and cluster changes keep being applied with them (not
/// with the refused file). The failure is made deterministic with a FIFO as a route's
/// upstream CA file: the reload's check reads a good CA, the table build then reads garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_mode_reload_is_reported_applied_only_when_it_serves() {
    if !testbed::in_pod_network("a_kubernetes_mode_reload_is_reported_applied_only_when_it_serves") {
        return;
    }
    let bed = Testbed::start();
    let admin = bed.admin().await;
    testbed::install_canary_route_crd(&admin).await;
    let backend = canary_tests::Backend::new("file-route").start().await;
    let route = |name: &str, tls: &str| {
        format!(
            "  - name: {name}\n    hosts: [{name}.example]\n    stable: {{ endpoints: [\"{}\"]{tls} }}\n",
            backend.endpoint()
        )
    };
    let config = |routes: &str| {
        Canaryd::config(&format!(
            "kubernetes: {{ namespace: canaryd, ingress_class: null, canary_routes: true }}\nroutes:\n{routes}"
        ))
    };
    let (proxy, dir) = bed
        .canaryd_as_service_account(&admin, &read("deploy/rbac.yaml"), &config(&route("one", "")))
        .await;
    wait_ready(&proxy).await;
    let client = Client::new();
    assert_eq!(client.get(proxy.addr, "one.example", "/").await.unwrap().status, 200);
    const LAST: &str = "canaryd_config_last_reload_success";

    let ca = dir.path().join("ca.fifo");
    let good_ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()])
        .unwrap()
        .cert
        .pem();
    fifo_serving(&ca, proxy.pid(), good_ca, "not a certificate\n");
    let bad = format!(
        "{}{}",
        route("one", ""),
        route("two", &format!(", tls: {{ ca: \"{}\" }}", ca.display()))
    );
    proxy.write_config(&config(&bad));
    proxy.signal(libc::SIGHUP);
    assert!(
        proxy.wait_log("reload refused", Duration::from_secs(10)),
        "{}",
        tail(&proxy.log().join("\n"))
    );
    assert!(!proxy.log().iter().any(|l| l.contains("config reloaded")));
    assert_eq!(proxy.metric(LAST).await, 0.0);
    assert_eq!(client.get(proxy.addr, "one.example", "/").await.unwrap().status, 200);
    assert_eq!(client.get(proxy.addr, "two.example", "/").await.unwrap().status, 404);

    // The cluster is still followed, composed with the file config that serves.
    apply_all(
        &admin,
        &[service("canaryd", "cluster-web", json!({"app": "cluster-web"}))],
    )
    .await;
    apply_all(
        &admin,
        &[canary_route(
            "canaryd",
            "from-cluster",
            json!({
                "hosts": ["from-cluster.example"],
                "stable": {"kubernetes": {"service": "cluster-web", "port": "http"}}
            }),
        )],
    )
    .await;
    assert!(
        testbed::eventually(Duration::from_secs(10), || async {
            canary_tests::client::admin_call(proxy.admin, "GET", "/api/v1/routes/from-cluster", &[], "")
                .await
                .0
                == 200
        })
        .await,
        "a CanaryRoute made after the refused reload is not served:\n{}",
        tail(&proxy.log().join("\n"))
    );

    let good = format!("{}{}", route("one", ""), route("three", ""));
    proxy.write_config(&config(&good));
    proxy.signal(libc::SIGHUP);
    assert!(proxy.wait_log("config reloaded", Duration::from_secs(10)));
    assert_eq!(proxy.metric(LAST).await, 1.0);
    assert_eq!(client.get(proxy.addr, "three.example", "/").await.unwrap().status, 200);
}
