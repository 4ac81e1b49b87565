//! How a CanaryRoute's `spec` becomes the config crate's typed [`config::RouteSpec`], field by field:
//! the route is then validated as a file's route is, with errors named in the CRD's camelCase.

use canary_config as config;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::crd::{
    AffinityKeySpec, AffinitySpec, AnalysisSpec, BackendSpec, CanaryRouteSpec, OverrideSpec, RolloutSpec,
};

impl CanaryRouteSpec {
    /// The config crate's route for this plan, named `name`: a field left out takes the file's default,
    /// a Kubernetes source without a namespace is in `namespace`, an empty override header or cookie
    /// name means none. Every field is listed, so a field added to either side must be mapped here.
    pub fn to_route_spec(&self, name: &str, namespace: &str) -> config::RouteSpec {
        let backend = |b: &BackendSpec| b.to_config(namespace);
        let d = config::RouteSpec::new(name, backend(&self.stable));
        config::RouteSpec {
            name: d.name,
            hosts: self.hosts.clone().unwrap_or(d.hosts),
            path_prefix: self.path_prefix.clone().unwrap_or(d.path_prefix),
            path_exact: self.path_exact.unwrap_or(d.path_exact),
            stable: d.stable,
            canary: self.canary.as_ref().map_or(d.canary, backend),
            baseline: self.baseline.as_ref().map(backend),
            weight: self.weight.unwrap_or(d.weight),
            affinity: self.affinity.as_ref().map(AffinitySpec::to_config),
            overrides: self.overrides.as_ref().map_or(d.overrides, OverrideSpec::to_config),
            canary_only: self.canary_only.unwrap_or(d.canary_only),
            expose_variant: self.expose_variant.unwrap_or(d.expose_variant),
            normalize_path: self.normalize_path.unwrap_or(d.normalize_path),
            rollout: self.rollout.as_ref().map(RolloutSpec::to_config),
            redirect_https: self.redirect_https.unwrap_or(d.redirect_https),
            max_body_bytes: self.max_body_bytes,
            hsts: self.hsts.as_ref().map(|h| {
                let d = config::HstsSpec::default();
                config::HstsSpec {
                    max_age: h.max_age.clone().unwrap_or(d.max_age),
                    include_subdomains: h.include_subdomains.unwrap_or(d.include_subdomains),
                }
            }),
        }
    }
}

impl BackendSpec {
    fn to_config(&self, namespace: &str) -> config::BackendSpec {
        config::BackendSpec {
            endpoints: self.endpoints.clone().unwrap_or_default(),
            kubernetes: self.kubernetes.as_ref().map(|k| config::KubeSourceSpec {
                namespace: Some(k.namespace.clone().unwrap_or_else(|| namespace.to_string())),
                service: k.service.clone(),
                selector: k.selector.clone(),
                port: match &k.port {
                    // A negative number is refused by the port's validation, named as written.
                    IntOrString::Int(n) => u32::try_from(*n)
                        .map_or_else(|_| config::PortSpec::Name(n.to_string()), config::PortSpec::Number),
                    IntOrString::String(name) => config::PortSpec::Name(name.clone()),
                },
            }),
            tls: None,
        }
    }
}

impl AffinitySpec {
    fn to_config(&self) -> config::AffinitySpec {
        config::AffinitySpec {
            key: match self.key {
                AffinityKeySpec::Cookie => config::AffinityKeySpec::Cookie,
                AffinityKeySpec::Header => config::AffinityKeySpec::Header,
                AffinityKeySpec::ClientIp => config::AffinityKeySpec::ClientIp,
            },
            cookie: self.cookie.clone(),
            header: self.header.clone(),
            max_age: self.max_age.clone(),
        }
    }
}

impl OverrideSpec {
    fn to_config(&self) -> config::OverrideSpec {
        let d = config::OverrideSpec::default();
        // `""` is how a CRD says "none" (the API server drops nulls).
        let name = |given: &Option<String>, default: Option<String>| match given.as_deref() {
            Some("") => None,
            Some(n) => Some(n.to_string()),
            None => default,
        };
        config::OverrideSpec {
            enabled: self.enabled.unwrap_or(d.enabled),
            header: name(&self.header, d.header),
            header_value: self.header_value.clone().or(d.header_value),
            header_pattern: self.header_pattern.clone().or(d.header_pattern),
            cookie: name(&self.cookie, d.cookie),
        }
    }
}

impl RolloutSpec {
    fn to_config(&self) -> config::RolloutSpec {
        let d = config::RolloutSpec::default();
        config::RolloutSpec {
            steps: self.steps.clone().unwrap_or(d.steps),
            interval: self.interval.clone().or(d.interval),
            analysis: self.analysis.as_ref().map(AnalysisSpec::to_config),
        }
    }
}

impl AnalysisSpec {
    fn to_config(&self) -> config::AnalysisSpec {
        let d = config::AnalysisSpec::default();
        config::AnalysisSpec {
            window: self.window.clone().unwrap_or(d.window),
            min_requests: self.min_requests.unwrap_or(d.min_requests),
            max_error_rate: self.max_error_rate.or(d.max_error_rate),
            max_error_rate_increase: self.max_error_rate_increase.or(d.max_error_rate_increase),
            significance: self.significance.or(d.significance),
            max_latency_p99: self.max_latency_p99.clone().or(d.max_latency_p99),
            alpha: self.alpha.or(d.alpha),
            max_latency_increase: self
                .max_latency_increase
                .map(config::PercentSpec::Number)
                .or(d.max_latency_increase),
            latency_quantile: self.latency_quantile.or(d.latency_quantile),
            failures_before_abort: self.failures_before_abort.unwrap_or(d.failures_before_abort),
            webhook: self.webhook.clone().or(d.webhook),
            prometheus: self.prometheus.as_ref().map(|p| config::PrometheusSpec {
                url: p.url.clone(),
                query: p.query.clone(),
                max: p.max,
                min: p.min,
                interval: p
                    .interval
                    .clone()
                    .unwrap_or_else(|| config::PrometheusSpec::DEFAULT_INTERVAL.into()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use canary_config::Route;
    use serde_json::Value;

    use super::super::crd::{CanaryRoute, CanaryRouteSpec};

    /// Every spec field reaches the route as the same field written in a config file would.
    #[test]
    fn every_spec_field_maps_to_the_files_field() {
        let spec = serde_json::json!({
            "hosts": ["web.example"], "pathPrefix": "/api", "pathExact": true,
            "stable": { "kubernetes": { "service": "web", "port": "http" } },
            "canary": { "endpoints": ["10.0.0.2:80"] },
            "baseline": { "kubernetes": { "namespace": "other", "selector": "app=web", "port": 8080 } },
            "weight": 12.5,
            "affinity": { "key": "cookie", "cookie": "uid", "maxAge": "7d" },
            "override": { "enabled": true, "header": "x-try", "headerValue": "yes", "cookie": "" },
            "canaryOnly": false, "exposeVariant": true, "normalizePath": false, "redirectHttps": true,
            "maxBodyBytes": 1024, "hsts": { "maxAge": "1d", "includeSubdomains": true },
            "rollout": { "steps": [5, 50], "interval": "1m", "analysis": {
                "window": "30s", "minRequests": 10, "maxErrorRate": 2, "maxErrorRateIncrease": 1,
                "significance": 0.05, "maxLatencyP99": "300ms", "alpha": 0.01, "maxLatencyIncrease": 20,
                "latencyQuantile": 0.9, "failuresBeforeAbort": 3, "webhook": "http://hook/",
                "prometheus": { "url": "http://prom:9090", "query": "up", "max": 1, "min": 0, "interval": "10s" } } },
        });
        let mut unmentioned = Vec::new();
        let schema = serde_json::to_value(schemars::schema_for!(CanaryRouteSpec)).unwrap();
        property_names(&schema, &mut unmentioned);
        let text = spec.to_string();
        unmentioned.retain(|name| !text.contains(&format!("\"{name}\"")));
        // `headerPattern` is left out because `headerValue` wins over it.
        assert_eq!(unmentioned, ["headerPattern"], "spec fields this test does not set");

        let object: CanaryRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "canaryd.dev/v1alpha1", "kind": "CanaryRoute",
            "metadata": { "name": "web", "namespace": "prod" }, "spec": spec,
        }))
        .unwrap();
        let from_crd = object.to_route("default", 0).unwrap();
        let file = r#"
listen: { https: "127.0.0.1:0" }
tls: { certificates: [ { hosts: [web.example], cert: /c, key: /k } ] }
routes:
  - name: web
    hosts: [web.example]
    path_prefix: /api
    path_exact: true
    stable: { kubernetes: { namespace: prod, service: web, port: http } }
    canary: { endpoints: ["10.0.0.2:80"] }
    baseline: { kubernetes: { namespace: other, selector: app=web, port: 8080 } }
    weight: 12.5
    affinity: { key: cookie, cookie: uid, max_age: 7d }
    override: { enabled: true, header: x-try, header_value: "yes", cookie: null }
    canary_only: false
    expose_variant: true
    normalize_path: false
    redirect_https: true
    max_body_bytes: 1024
    hsts: { max_age: 1d, include_subdomains: true }
    rollout:
      steps: [5, 50]
      interval: 1m
      analysis: { window: 30s, min_requests: 10, max_error_rate: 2, max_error_rate_increase: 1,
        significance: 0.05, max_latency_p99: 300ms, alpha: 0.01, max_latency_increase: 20,
        latency_quantile: 0.9, failures_before_abort: 3, webhook: "http://hook/",
        prometheus: { url: "http://prom:9090", query: up, max: 1, min: 0, interval: 10s } }
"#;
        let from_file = canary_config::parse(file).unwrap().routes.remove(0);
        assert_eq!(from_crd, from_file);

        let defaults = route_with(serde_json::json!({ "stable": { "endpoints": ["10.0.0.1:80"] } }));
        let file_defaults =
            canary_config::parse("routes:\n  - { name: web, stable: { endpoints: [\"10.0.0.1:80\"] } }\n").unwrap();
        assert_eq!(
            defaults, file_defaults.routes[0],
            "fields left out take the file's defaults"
        );
    }

    fn route_with(spec: Value) -> Route {
        let object: CanaryRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "canaryd.dev/v1alpha1", "kind": "CanaryRoute",
            "metadata": { "name": "web", "namespace": "prod" }, "spec": spec,
        }))
        .unwrap();
        object.to_route("default", 0).unwrap()
    }

    fn property_names(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    out.extend(props.keys().filter(|k| !out.contains(k)).cloned().collect::<Vec<_>>());
                }
                map.values().for_each(|v| property_names(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| property_names(v, out)),
            _ => {}
        }
    }
}
