//! The `CanaryRoute` custom resource: the committed CRD is current, the examples convert to
//! routes, status and route state round-trip, and bad specs name the field.

use std::path::{Path, PathBuf};

use canary_config::{KubeTarget, PortRef};
use canary_control::kubernetes::crd::{crd_yaml, CanaryRoute, CanaryRouteSpec, CanaryRouteStatus};
use canary_control::rollout::{Phase, Rollout};
use canary_control::state::RouteState;
use kube::CustomResourceExt;
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn committed_crd_is_current() {
    let path = repo_root().join("deploy/crds/canaryroute.yaml");
    let want = crd_yaml();
    if std::env::var_os("CANARYD_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from crd_yaml() (the CanaryRoute types changed); regenerate it with\n\n    \
         CANARYD_BLESS=1 cargo test -p canary-control --test crd\n\nand commit the result",
        path.display()
    );
}

#[test]
fn crd_has_status_subresource_and_printer_columns() {
    let crd = serde_json::to_value(CanaryRoute::crd()).unwrap();
    assert_eq!(crd["spec"]["group"], "canaryd.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "CanaryRoute");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<(&str, &str)> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Weight", ".status.weight"),
            ("Phase", ".status.phase"),
            ("Step", ".status.step"),
            ("Age", ".metadata.creationTimestamp")
        ]
    );
    let schema = &version["schema"]["openAPIV3Schema"]["properties"];
    assert_eq!(schema["spec"]["required"], json!(["stable"]));
    let port = &schema["spec"]["properties"]["stable"]["properties"]["kubernetes"]["properties"]["port"];
    assert_eq!(port["x-kubernetes-int-or-string"], true, "{port}");
    assert!(
        schema["status"].get("required").is_none(),
        "status fields are all optional"
    );
}

/// Every document of every YAML file in examples/kubernetes, with its file name.
fn example_documents() -> Vec<(String, Value)> {
    let dir = repo_root().join("examples/kubernetes");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let value: Value = serde::Deserialize::deserialize(doc).unwrap();
                if !value.is_null() {
                    docs.push((path.display().to_string(), value));
                }
            }
        }
    }
    docs
}

#[test]
fn example_canary_routes_convert_to_routes() {
    let mut seen = 0;
    for (file, doc) in example_documents() {
        if doc["kind"] != "CanaryRoute" {
            continue;
        }
        seen += 1;
        let cr = CanaryRoute::from_value_strict(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
        let route = cr.to_route("default", 0).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(Some(&route.name), cr.metadata.name.as_ref());
        for backend in [&route.stable, &route.canary] {
            if let Some(source) = &backend.kubernetes {
                assert_eq!(
                    source.namespace, cr.metadata.namespace,
                    "{file}: sources default to the object's namespace"
                );
            }
        }
    }
    assert!(seen > 0, "no CanaryRoute in examples/kubernetes");
}

#[test]
fn the_seeds_example_reads_as_intended() {
    let text = std::fs::read_to_string(repo_root().join("examples/kubernetes/canaryroute.yaml")).unwrap();
    let cr = CanaryRoute::from_value_strict(serde_yaml_ng::from_str(&text).unwrap()).unwrap();
    let route = cr.to_route("default", 0).unwrap();
    assert_eq!(
        route.stable.kubernetes.unwrap().target,
        KubeTarget::Service {
            name: "coolapp".into(),
            port: PortRef::Name("http".into())
        }
    );
    assert_eq!(
        route.canary.kubernetes.unwrap().target,
        KubeTarget::Selector {
            selector: "id=app,type=canary".into(),
            port: 5000
        }
    );
    assert!(route.affinity.is_some());
    assert_eq!(
        route.rollout.steps.iter().map(|w| w.percent()).collect::<Vec<_>>(),
        [10.0, 25.0, 50.0, 100.0]
    );
    assert!(route.rollout.interval.is_some() && route.rollout.analysis.is_some());
}

fn route(spec: Value) -> CanaryRoute {
    CanaryRoute::from_value_strict(json!({
        "apiVersion": "canaryd.dev/v1alpha1",
        "kind": "CanaryRoute",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn bad_specs_name_the_field_in_camel_case() {
    let err = route(json!({"stable": {"endpoints": ["10.0.0.1:80"]}, "weight": 120}))
        .to_route("default", 0)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("CanaryRoute prod/web: spec.weight: "), "{err}");

    let err = route(json!({
        "stable": {"endpoints": ["10.0.0.1:80"]},
        "override": {"header": "", "headerValue": "yes", "headerPattern": "("},
        "rollout": {"analysis": {"failuresBeforeAbort": 0, "maxLatencyP99": "soon"}},
    }))
    .to_route("default", 0)
    .unwrap_err()
    .to_string();
    for want in [
        "CanaryRoute prod/web: spec.rollout.analysis.failuresBeforeAbort: ",
        "CanaryRoute prod/web: spec.rollout.analysis.maxLatencyP99: ",
        "CanaryRoute prod/web: spec.override.header: headerValue and headerPattern need a header name",
    ] {
        assert!(err.contains(want), "{want:?} not in\n{err}");
    }
    assert!(!err.contains('_'), "snake_case left in\n{err}");

    let mut cr = route(json!({"stable": {"kubernetes": {"service": "app", "port": "http"}}}));
    cr.metadata.name = Some("Web_1".into());
    let err = cr.to_route("default", 0).unwrap_err().to_string();
    assert!(err.starts_with("CanaryRoute prod/Web_1: metadata.name: "), "{err}");

    let unknown = json!({
        "apiVersion": "canaryd.dev/v1alpha1",
        "kind": "CanaryRoute",
        "metadata": {"name": "web"},
        "spec": {"stable": {"endpoints": []}, "rollout": {"analysis": {"maxErorRate": 5}}, "canary": {"port": 1}},
    });
    let err = CanaryRoute::from_value_strict(unknown).unwrap_err().to_string();
    assert!(
        err.contains("spec.rollout.analysis.maxErorRate: unknown field"),
        "{err}"
    );
    assert!(err.contains("spec.canary.port: unknown field"), "{err}");

    let wrong_type = json!({
        "apiVersion": "canaryd.dev/v1alpha1",
        "kind": "CanaryRoute",
        "metadata": {"name": "web"},
        "spec": {"stable": {"endpoints": []}, "weight": "ten"},
    });
    let err = CanaryRoute::from_value_strict(wrong_type).unwrap_err().to_string();
    assert!(err.starts_with("spec.weight: "), "{err}");

    let wrong_kind = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
    let err = CanaryRoute::from_value_strict(wrong_kind).unwrap_err().to_string();
    assert!(err.starts_with("apiVersion: "), "{err}");
}

#[test]
fn sources_default_to_the_objects_namespace_and_empty_override_names_mean_none() {
    let cr = route(json!({
        "stable": {"kubernetes": {"service": "app", "port": 80}},
        "canary": {"kubernetes": {"namespace": "other", "selector": "id=app,type=canary", "port": "5000"}},
        "override": {"header": "", "cookie": "tester"},
    }));
    let r = cr.to_route("default", 1024).unwrap();
    assert_eq!(r.stable.kubernetes.unwrap().namespace.as_deref(), Some("prod"));
    assert_eq!(r.canary.kubernetes.unwrap().namespace.as_deref(), Some("other"));
    assert_eq!(r.overrides.header, None);
    assert_eq!(r.overrides.cookie.as_deref(), Some("tester"));
    assert_eq!(r.max_body_bytes, 1024);

    let mut no_ns = cr.clone();
    no_ns.metadata.namespace = None;
    let r = no_ns.to_route("fallback", 0).unwrap();
    assert_eq!(r.stable.kubernetes.unwrap().namespace.as_deref(), Some("fallback"));
}

#[test]
fn spec_serialises_without_nulls() {
    let cr = route(json!({"stable": {"endpoints": ["10.0.0.1:80"]}, "weight": 10}));
    let json = serde_json::to_string(&cr.spec).unwrap();
    assert_eq!(json, r#"{"stable":{"endpoints":["10.0.0.1:80"]},"weight":10.0}"#);
    let back: CanaryRouteSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cr.spec);
}

#[test]
fn status_and_route_state_round_trip() {
    let states = [
        RouteState {
            weight_ppm: 250_000,
            config_weight_ppm: 100_000,
            generation: 3,
            revision: 17,
            rollout: Rollout {
                phase: Phase::Paused,
                steps_ppm: vec![100_000, 250_000, 500_000, 1_000_000],
                step: Some(1),
                interval_ms: Some(300_000),
                step_started_ms: 1_700_000_000_123,
            },
            last_reason: Some("pipeline 4242".into()),
        },
        RouteState {
            weight_ppm: 0,
            config_weight_ppm: 0,
            generation: 0,
            revision: 1,
            rollout: Rollout::default(),
            last_reason: None,
        },
    ];
    for phase in Phase::ALL {
        let mut state = states[0].clone();
        state.rollout.phase = phase;
        let status = CanaryRouteStatus::from_state(&state);
        assert_eq!(status.phase.as_deref(), Some(phase.as_str()));
        assert_eq!(status.to_state(), Some(state));
    }
    for state in states {
        let status = CanaryRouteStatus::from_state(&state);
        let json = serde_json::to_value(&status).unwrap();
        let back: CanaryRouteStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.to_state(), Some(state));
    }
    let status = CanaryRouteStatus::from_state(&{
        let mut s = RouteState {
            weight_ppm: 125_000,
            config_weight_ppm: 0,
            generation: 1,
            revision: 2,
            rollout: Rollout::default(),
            last_reason: None,
        };
        s.rollout.phase = Phase::Progressing;
        s
    });
    assert_eq!(status.weight, Some(12.5));
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        json!({
            "weight": 12.5, "weightPpm": 125000, "specWeightPpm": 0, "phase": "Progressing", "stepsPpm": [],
            "stepStartedMs": 0, "saltGeneration": 1, "revision": 2
        })
    );
}

#[test]
fn an_unwritten_status_is_no_state() {
    let empty: CanaryRouteStatus = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, CanaryRouteStatus::default());
    assert_eq!(empty.to_state(), None);
    let zero: CanaryRouteStatus = serde_json::from_value(json!({"revision": 0, "weightPpm": 5})).unwrap();
    assert_eq!(zero.to_state(), None);
}
