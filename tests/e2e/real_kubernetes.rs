//! Kubernetes mode against a real cluster (the test bed: kube-apiserver with RBAC, etcd,
//! the controller manager's Deployment, ReplicaSet and EndpointSlice controllers, the
//! scheduler, and a process kubelet running Pods as local processes): canaryd
//! authenticates with a ServiceAccount token that only `deploy/rbac.yaml` grants.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use canary_tests::cluster::{spread, wait_ready, Load};
use canary_tests::testbed::{self, Testbed, BACKEND_IMAGE};
use canary_tests::{Canaryd, Client};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{json, Value};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

/// A Deployment of the test backend: each Pod answers with its own name, drains for
/// `drain_ms` after SIGTERM, and is ready when it answers `GET /`.
fn backend_deployment(namespace: &str, name: &str, labels: Value, replicas: u32, drain_ms: u64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 15,
                    "containers": [{
                        "name": "app",
                        "image": BACKEND_IMAGE,
                        "args": ["--listen=$(POD_IP):8080", "--name=$(POD_NAME)", format!("--drain-ms={drain_ms}")],
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
                    }]
                }
            }
        }
    })
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn service(namespace: &str, name: &str, selector: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    })
}

async fn apply_all(client: &kube::Client, objects: &[Value]) {
    for o in objects {
        if let Err(e) = testbed::apply(client, o).await {
            panic!("applying {} {}: {e}", o["kind"], o["metadata"]["name"]);
        }
    }
}

/// Names of the ready Pods matching `selector`.
async fn ready_pods(client: &kube::Client, namespace: &str, selector: &str) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(selector)).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// Waits until `n` Pods matching `selector` are ready and returns their names.
async fn wait_pods(
    bed: &Testbed,
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    n: usize,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = ready_pods(client, namespace, selector).await;
        if ready.len() == n {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} pods {selector} ready\ncontroller manager:\n{}",
            ready.len(),
            tail(&bed.log("kube-controller-manager"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
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

/// Starts canaryd as ServiceAccount canaryd/canaryd, with the rules of `rbac` (the
/// ServiceAccount, its ClusterRole and Role and their bindings).
async fn canaryd_as_service_account(
    bed: &Testbed,
    admin: &kube::Client,
    rbac: &str,
    config: &str,
) -> (Canaryd, tempfile::TempDir) {
    apply_all(admin, &[namespace("canaryd")]).await;
    testbed::apply_yaml(admin, rbac).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = bed
        .service_account_kubeconfig(admin, "canaryd", "canaryd", dir.path())
        .await;
    (Canaryd::start_kubernetes(config, &kubeconfig), dir)
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
    let stable = wait_pods(&bed, &admin, "prod", "app=web,track=stable", 2).await;
    let canary = wait_pods(&bed, &admin, "prod", "app=web,track=canary", 1).await;

    let config = Canaryd::config(
        "kubernetes: { namespace: canaryd, ingress_class: null, canary_routes: false }\nroutes:\n  - name: web\n    hosts: [web.example]\n    stable: { kubernetes: { namespace: prod, service: web, port: http } }\n    canary: { kubernetes: { namespace: prod, selector: \"app=web,track=canary\", port: 8080 } }\n    weight: 0\n",
    );
    let (proxy, _dir) = canaryd_as_service_account(&bed, &admin, &read("deploy/rbac.yaml"), &config).await;
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
    let three = wait_pods(&bed, &admin, "prod", "app=web,track=stable", 3).await;
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
    testbed::apply_yaml(&admin, &read("deploy/crds/canaryroute.yaml")).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get("canaryroutes.canaryd.dev").await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        if let Some(bad) = conditions
            .iter()
            .find(|c| c.type_ == "NonStructuralSchema" && c.status == "True")
        {
            panic!("the API server found the schema non-structural: {:?}", bad.message);
        }
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            break;
        }
        assert!(Instant::now() < deadline, "CRD not established: {conditions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    apply_all(&admin, &[namespace("prod")]).await;
    // Discovery of the new kind can lag the Established condition by a moment.
    let example: Value = serde_yaml_ng::from_str(&read("examples/kubernetes/canaryroute.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = testbed::apply(&admin, &example).await {
        assert!(Instant::now() < deadline, "the example CanaryRoute was refused: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
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
