//! Kubernetes sources, ingress-nginx style header matches, exact paths and single routes.

use canary_config::{
    parse, AnalysisSpec, BackendSpec, FieldCase, FieldPath, HeaderMatch, KubeTarget, PortRef, RolloutSpec, RouteSpec,
};

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.field_errors().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn kubernetes_sources_parse() {
    let config = parse(
        r#"
kubernetes: { namespace: prod, publish_service: ingress/canaryd, lease_duration: 10s }
routes:
  - name: app
    stable: { kubernetes: { service: app, port: http } }
    canary: { kubernetes: { namespace: prod, selector: "id=app,type=canary", port: 5000 } }
"#,
    )
    .unwrap();
    let r = &config.routes[0];
    assert_eq!(
        r.stable.kubernetes.as_ref().unwrap().target,
        KubeTarget::Service {
            name: "app".into(),
            port: PortRef::Name("http".into())
        }
    );
    assert_eq!(
        r.canary.kubernetes.as_ref().unwrap().target,
        KubeTarget::Selector {
            selector: "id=app,type=canary".into(),
            port: 5000
        }
    );
    assert_eq!(config.kubernetes.namespace, "prod");
    assert_eq!(
        config.kubernetes.publish_service,
        Some(("ingress".into(), "canaryd".into()))
    );
    assert_eq!(config.kubernetes.ingress_class.as_deref(), Some("canaryd"));
}

#[test]
fn bad_kubernetes_sources_name_the_field() {
    let errs = errors(
        r#"
kubernetes: { publish_service: nope }
routes:
  - name: app
    stable: { endpoints: ["10.0.0.1:80"], kubernetes: { service: app, port: 80 } }
    canary: { kubernetes: { service: app, selector: "a=b", port: 80 } }
  - name: two
    hosts: [two.example]
    stable: { kubernetes: { selector: "id=app,=x", port: http } }
    canary: { kubernetes: { service: Bad_Name, port: 70000 } }
"#,
    );
    let joined = errs.join("\n");
    for path in [
        "kubernetes.publish_service:",
        "routes[0].stable.kubernetes: give either endpoints",
        "routes[0].canary.kubernetes: give exactly one of service or selector",
        "routes[1].stable.kubernetes.port:",
        "routes[1].canary.kubernetes.service:",
        "routes[1].canary.kubernetes.port: 70000",
    ] {
        assert!(joined.contains(path), "missing {path:?} in\n{joined}");
    }
}

#[test]
fn header_value_and_pattern() {
    let config = parse(
        r#"
routes:
  - name: a
    hosts: [a.example]
    stable: { endpoints: ["10.0.0.1:80"] }
    override: { header: X-Canary, header_value: yes-please }
  - name: b
    hosts: [b.example]
    stable: { endpoints: ["10.0.0.1:80"] }
    override: { header: x-canary, header_pattern: "v2|beta.*" }
"#,
    )
    .unwrap();
    assert_eq!(
        config.routes[0].overrides.header_match,
        Some(HeaderMatch::Value("yes-please".into()))
    );
    let pattern = config.routes[1].overrides.header_match.as_ref().unwrap();
    assert!(pattern.matches("v2") && pattern.matches("beta-7"));
    assert!(!pattern.matches("xv2"), "the pattern matches the whole value");
    let errs = errors(
        r#"
routes:
  - name: a
    stable: { endpoints: ["10.0.0.1:80"] }
    override: { header_pattern: "(" }
"#,
    );
    assert!(
        errs[0].starts_with("routes[0].override.header_pattern: not a regular expression"),
        "{errs:?}"
    );
}

#[test]
fn exact_and_prefix_paths_may_share_a_path() {
    let config = parse(
        r#"
routes:
  - { name: a, path_prefix: /x, path_exact: true, stable: { endpoints: ["10.0.0.1:80"] } }
  - { name: b, path_prefix: /x, stable: { endpoints: ["10.0.0.1:80"] } }
"#,
    )
    .unwrap();
    assert!(config.routes[0].path_exact && !config.routes[1].path_exact);
}

#[test]
fn single_route_errors_carry_the_given_path() {
    let spec_at = FieldPath::new("CanaryRoute prod/web: spec", FieldCase::Camel);
    let name_at = FieldPath::new("CanaryRoute prod/web: metadata.name", FieldCase::Camel);
    let mut spec = RouteSpec::new("web", BackendSpec::default());
    spec.stable.endpoints = vec!["10.0.0.1:80".into()];
    spec.hosts = vec!["web.example".into()];
    spec.weight = 12.5;
    let route = spec.clone().build(&spec_at, &name_at, 0).unwrap();
    assert_eq!(route.weight.ppm(), 125_000);
    assert_eq!(route.max_body_bytes, 0);

    spec.weight = 120.0;
    spec.name = "Web_1".into();
    spec.rollout = Some(RolloutSpec {
        analysis: Some(AnalysisSpec {
            failures_before_abort: 0,
            ..AnalysisSpec::default()
        }),
        ..RolloutSpec::default()
    });
    spec.overrides.header = None;
    spec.overrides.header_value = Some("yes".into());
    let paths: Vec<String> = spec
        .build(&spec_at, &name_at, 0)
        .unwrap_err()
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    for want in [
        "CanaryRoute prod/web: metadata.name: ",
        "CanaryRoute prod/web: spec.weight: ",
        "CanaryRoute prod/web: spec.rollout.analysis.failuresBeforeAbort: ",
        "CanaryRoute prod/web: spec.override.header: headerValue and headerPattern need a header name",
    ] {
        assert!(paths.iter().any(|p| p.starts_with(want)), "{want:?} not in {paths:#?}");
    }
    assert_eq!(paths.len(), 4, "{paths:#?}");
}
