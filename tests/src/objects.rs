//! Kubernetes objects the real-cluster tests apply, as JSON (server-side apply takes any
//! kind): the test backend's Deployments, Services, Namespaces, TLS Secrets.

use serde_json::{json, Value};

use crate::testbed::BACKEND_IMAGE;

/// A Namespace.
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A ClusterIP Service selecting `selector`, port 80 (`http`) to the Pods' port `http`.
pub fn service(namespace: &str, name: &str, selector: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    })
}

/// A Deployment of the test backend: each Pod answers with its own name on port 8080
/// (`http`), drains for `drain_ms` after SIGTERM, and is ready when it answers `GET /`.
pub fn backend_deployment(namespace: &str, name: &str, labels: Value, replicas: u32, drain_ms: u64) -> Value {
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

/// A `kubernetes.io/tls` Secret with a self-signed certificate for `host`.
pub fn tls_secret(ns: &str, name: &str, host: &str) -> k8s_openapi::api::core::v1::Secret {
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let data = [
        ("tls.crt".to_string(), k8s_openapi::ByteString(cert.pem().into_bytes())),
        (
            "tls.key".to_string(),
            k8s_openapi::ByteString(key_pair.serialize_pem().into_bytes()),
        ),
    ];
    k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data.into_iter().collect()),
        ..Default::default()
    }
}

/// A CanaryRoute `namespace/name` with `spec`.
pub fn canary_route(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "canaryd.dev/v1alpha1", "kind": "CanaryRoute",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec
    })
}
