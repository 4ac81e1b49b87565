//! The `CanaryRoute` custom resource.
//!
//! `spec` is the plan people and GitOps tools own: the config file's route (camelCase,
//! without `name`, which is the object's name); canaryd never writes it. `status` (a status
//! subresource) is the live state canaryd owns: weight, rollout phase and step, salt
//! generation, revision. Every replica reads the same status, and a Git sync that rewrites
//! `spec` never undoes a pipeline step.
//!
//! The spec types ignore unknown fields (the API server prunes them anyway, and a replica
//! older than the installed CRD must still read new objects); [`CanaryRoute::from_value_strict`]
//! refuses them for files checked outside a cluster.

use canary_config::{ConfigError, FieldCase, FieldError, FieldPath, Route};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::rollout::{Phase, Rollout};
use crate::state::RouteState;

/// The plan of one route: where it matches, its stable and canary backends, the initial
/// canary weight, stickiness, overrides and the rollout with its analysis.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "canaryd.dev",
    version = "v1alpha1",
    kind = "CanaryRoute",
    namespaced,
    status = "CanaryRouteStatus",
    derive = "PartialEq",
    shortname = "croute",
    category = "canaryd",
    doc = "A route canaryd serves: spec is the plan (owned by people and GitOps), status the live weight and rollout (owned by canaryd).",
    printcolumn(
        name = "Weight",
        type_ = "number",
        json_path = ".status.weight",
        description = "Canary weight served, percent"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Rollout phase"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.step",
        description = "Index of the current rollout step"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRouteSpec {
    /// Host names (`*.example.com` allowed); empty or absent: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Path prefix matched on segment boundaries; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Match the path exactly instead of as a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<bool>,
    /// The stable backends.
    pub stable: BackendSpec,
    /// The canary backends; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<BackendSpec>,
    /// Fresh pods of the stable version, sent as much traffic as the canary, for the analysis to
    /// judge the canary against instead of stable; absent: judged against stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BackendSpec>,
    /// Initial canary weight in percent (0..100, four decimals at most); a change here is applied as an operator's edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Sticky users: the key a user is recognised by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinitySpec>,
    /// The header and cookie that force a variant (`always` or `never`).
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub overrides: Option<OverrideSpec>,
    /// Every request goes to the canary (a canary-only host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_only: Option<bool>,
    /// Tell the client which variant answered (`x-canary-variant` response header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_variant: Option<bool>,
    /// Forward the normalised request path (default true); false sends the client's own bytes, though the route is
    /// still chosen by the normalised path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize_path: Option<bool>,
    /// The rollout plan: steps, timer and analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<bool>,
    /// Largest request body accepted, bytes; absent: the global limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Send `Strict-Transport-Security` on HTTPS responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HstsSpec>,
}

/// Where a variant's requests go: static addresses or a Kubernetes source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// Static `host:port` addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// Endpoints discovered from a Service or a Pod selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSourceSpec>,
}

/// Backends discovered in the cluster: a Service's EndpointSlices or Pods by label selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesSourceSpec {
    /// Namespace of the Service or Pods; absent: the CanaryRoute's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Service name (give this or `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Pod label selector such as `id=app,type=canary` (give this or `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Port number, or the Service's port name.
    pub port: IntOrString,
}

/// How a user is recognised so that they stay on one variant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AffinitySpec {
    /// Where the user key comes from.
    pub key: AffinityKeySpec,
    /// Cookie name with `key: cookie`; default `canary_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Header name with `key: header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Lifetime of a minted cookie such as `7d`; default `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// The source of the sticky user key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AffinityKeySpec {
    /// A cookie, minted when missing.
    Cookie,
    /// A request header.
    Header,
    /// The client's address.
    ClientIp,
}

/// Forcing a variant per request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverrideSpec {
    /// Overrides honoured at all; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Override header; default `x-canary`; empty string: no override header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The header value that means canary (any other value means stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
    /// A regular expression a header value must match to mean canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_pattern: Option<String>,
    /// Override cookie; default `canary`; empty string: no override cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// The rollout plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Rising canary weights in percent; default `[10, 25, 50, 100]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<f64>>,
    /// Time per step such as `5m`; absent: steps advance only by API call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Canary analysis; a failing canary is rolled back to 0 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
}

/// Canary versus stable comparison that decides rollbacks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Sliding window such as `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Canary requests in the window before judging; default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Largest canary error rate, percent; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Largest canary-minus-stable error rate, percentage points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<f64>,
    /// Significance level of the canary-versus-stable error test, e.g. 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significance: Option<f64>,
    /// Largest canary p99 latency such as `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_p99: Option<String>,
    /// Sequential mode: the false-abort rate of the whole analysis, e.g. 0.01 (every rule judged on all traffic since
    /// the rollout began, with anytime-valid bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Largest increase of the canary's `latencyQuantile` over stable's, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_increase: Option<f64>,
    /// The quantile `maxLatencyIncrease` compares, 0.5 to 0.999; default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_quantile: Option<f64>,
    /// Consecutive failed checks before aborting; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_before_abort: Option<u32>,
    /// URL called for an extra verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// A PromQL check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
}

/// A PromQL query whose value must stay within bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Prometheus base URL (`http://...`).
    pub url: String,
    /// The query; its value is compared with `max` and `min`.
    pub query: String,
    /// Largest acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Smallest acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Time between queries; default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// `Strict-Transport-Security` settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HstsSpec {
    /// `max-age` such as `365d` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Add `includeSubDomains`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_subdomains: Option<bool>,
}

/// The live state canaryd keeps for a route; every field is optional so `{}` reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRouteStatus {
    /// Canary weight served, percent (for people and `kubectl get`; `weightPpm` is the truth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Canary weight served, parts per million.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_ppm: Option<u32>,
    /// The spec's weight when last applied, parts per million, to notice edits in Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_weight_ppm: Option<u32>,
    /// Rollout phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Idle", "Progressing", "Paused", "Promoted", "Aborted"]))]
    pub phase: Option<String>,
    /// Index of the current step while Progressing or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The running rollout's steps, parts per million.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_ppm: Option<Vec<u32>>,
    /// Time between timed steps, milliseconds; absent: steps advance only by API call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// When the current step began, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_ms: Option<u64>,
    /// Rollout number the sticky salt is derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt_generation: Option<u64>,
    /// Bumped on every change; the control API's `If-Match`. Absent or 0: never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why the last change was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// The analysis' last verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verdict: Option<String>,
    /// `metadata.generation` of the spec last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Who made the last change: replica and actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When the last change was made, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl CanaryRouteStatus {
    /// The status recording `state`; `lastVerdict`, `observedGeneration`, `updatedBy` and `updatedAt` are left for the caller.
    pub fn from_state(state: &RouteState) -> CanaryRouteStatus {
        let r = &state.rollout;
        CanaryRouteStatus {
            weight: Some(state.weight().percent()),
            weight_ppm: Some(state.weight_ppm),
            spec_weight_ppm: Some(state.config_weight_ppm),
            phase: Some(r.phase.as_str().to_string()),
            step: r.step.map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
            steps_ppm: Some(r.steps_ppm.clone()),
            interval_ms: r.interval_ms,
            step_started_ms: Some(r.step_started_ms),
            salt_generation: Some(state.generation),
            revision: Some(state.revision),
            last_reason: state.last_reason.clone(),
            last_verdict: None,
            observed_generation: None,
            updated_by: None,
            updated_at: None,
        }
    }

    /// The route state this status records; `None` when it was never written (revision absent or 0).
    ///
    /// An unknown phase reads as Idle, which keeps the weight served.
    pub fn to_state(&self) -> Option<RouteState> {
        let revision = self.revision.filter(|&r| r > 0)?;
        let phase = self
            .phase
            .as_deref()
            .and_then(|p| Phase::ALL.into_iter().find(|x| x.as_str() == p))
            .unwrap_or(Phase::Idle);
        Some(RouteState {
            weight_ppm: self.weight_ppm.unwrap_or(0),
            config_weight_ppm: self.spec_weight_ppm.unwrap_or(0),
            generation: self.salt_generation.unwrap_or(0),
            revision,
            rollout: Rollout {
                phase,
                steps_ppm: self.steps_ppm.clone().unwrap_or_default(),
                step: self.step.map(|s| s as usize),
                interval_ms: self.interval_ms,
                step_started_ms: self.step_started_ms.unwrap_or(0),
            },
            last_reason: self.last_reason.clone(),
        })
    }
}

impl CanaryRoute {
    /// The route this object describes, validated like a config-file route; errors name the field in camelCase
    /// (`CanaryRoute prod/web: spec.weight: ...`). Kubernetes sources without a namespace use the object's namespace
    /// (`default_namespace_for_sources` when it has none).
    pub fn to_route(
        &self,
        default_namespace_for_sources: &str,
        default_max_body_bytes: u64,
    ) -> Result<Route, ConfigError> {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let ns = self
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(default_namespace_for_sources);
        let at = FieldPath::new(format!("CanaryRoute {ns}/{name}: spec"), FieldCase::Camel);
        let name_at = FieldPath::new(format!("CanaryRoute {ns}/{name}: metadata.name"), FieldCase::Camel);
        self.spec
            .to_route_spec(name, ns)
            .build(&at, &name_at, default_max_body_bytes)
            .map_err(ConfigError::Invalid)
    }

    /// Reads a CanaryRoute document strictly, as `canaryd check` would: a wrong `apiVersion` or `kind`, a wrong
    /// type or an unknown field under `spec` or `status` is an error naming the field.
    pub fn from_value_strict(value: Value) -> Result<CanaryRoute, ConfigError> {
        let syntax = |path: &str, message: String| ConfigError::Syntax {
            path: path.to_string(),
            message,
        };
        let api_version = <CanaryRoute as kube::Resource>::api_version(&());
        let kind = <CanaryRoute as kube::Resource>::kind(&());
        for (field, want) in [("apiVersion", api_version.as_ref()), ("kind", kind.as_ref())] {
            let got = value.get(field).and_then(Value::as_str);
            if got != Some(want) {
                return Err(syntax(field, format!("{got:?} is not {want:?}")));
            }
        }
        let parsed: CanaryRoute = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let path = e.path().to_string();
            syntax(if path == "." { "" } else { &path }, e.into_inner().to_string())
        })?;
        let written = serde_json::to_value(&parsed).expect("a CanaryRoute serialises");
        let mut unknown = Vec::new();
        let empty = Value::Object(Map::new());
        for part in ["spec", "status"] {
            if let Some(given) = value.get(part) {
                unknown_fields(given, written.get(part).unwrap_or(&empty), part, &mut unknown);
            }
        }
        for key in value.as_object().into_iter().flat_map(Map::keys) {
            if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
                unknown.push(FieldError {
                    path: key.clone(),
                    message: "unknown field".into(),
                });
            }
        }
        if unknown.is_empty() {
            Ok(parsed)
        } else {
            Err(ConfigError::Invalid(unknown))
        }
    }
}

/// The CRD of [`CanaryRoute`] as YAML, headed by a comment saying it is generated; `deploy/crds/canaryroute.yaml` holds it.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml_ng::to_string(&CanaryRoute::crd()).expect("the CRD serialises");
    format!(
        "# Generated from control/src/kubernetes/crd.rs by `canaryd crd`; do not edit.\n\
         # Regenerate with: CANARYD_BLESS=1 cargo test -p canary-control --test crd\n{yaml}"
    )
}

/// Keys given in `given` but absent from `known` (what serde kept), skipping nulls.
fn unknown_fields(given: &Value, known: &Value, at: &str, out: &mut Vec<FieldError>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                let path = format!("{at}.{key}");
                match k.get(key) {
                    Some(kv) => unknown_fields(value, kv, &path, out),
                    None if value.is_null() => {}
                    None => out.push(FieldError {
                        path,
                        message: "unknown field".into(),
                    }),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_fields(gv, kv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_analysis_fields_reach_the_route() {
        let object: CanaryRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "canaryd.dev/v1alpha1",
            "kind": "CanaryRoute",
            "metadata": { "name": "web", "namespace": "prod" },
            "spec": {
                "stable": { "endpoints": ["10.0.0.1:80"] },
                "rollout": { "analysis": { "alpha": 0.01, "maxLatencyIncrease": 20, "latencyQuantile": 0.9 } }
            }
        }))
        .unwrap();
        let route = object.to_route("default", 0).unwrap();
        let a = route.rollout.analysis.unwrap();
        assert_eq!(
            (a.alpha, a.max_latency_increase, a.latency_quantile),
            (Some(0.01), Some(20.0), 0.9)
        );
        let mut bad = object.clone();
        bad.spec.rollout.as_mut().unwrap().analysis.as_mut().unwrap().alpha = Some(0.9);
        let err = bad.to_route("default", 0).unwrap_err().to_string();
        assert!(err.contains("spec.rollout.analysis.alpha"), "{err}");
    }

    #[test]
    fn the_example_canaryroute_is_valid() {
        let text = include_str!("../../../examples/kubernetes/canaryroute.yaml");
        let value: Value = serde_yaml_ng::from_str(text).unwrap();
        let object = CanaryRoute::from_value_strict(value).unwrap();
        let route = object.to_route("default", 0).unwrap();
        assert_eq!(route.rollout.analysis.and_then(|a| a.alpha), Some(0.01));
    }
}
