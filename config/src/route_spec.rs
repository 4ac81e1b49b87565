//! One route as a source writes it, typed: the config file's `routes[]` item, and what a
//! CanaryRoute or an Ingress is turned into. [`RouteSpec::build`] checks it into a [`Route`].
//!
//! Each type's `Default` is the file's default for that section, so a source that leaves a
//! field out gets what the file would give.

use serde::Deserialize;

use crate::error::FieldError;
use crate::field_path::FieldPath;
use crate::model::Route;

/// A route before validation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique route name.
    pub name: String,
    /// Host names (`*.example.com` allowed); empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefix matched on segment boundaries.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Match the path exactly instead of as a prefix.
    #[serde(default)]
    pub path_exact: bool,
    /// The stable backends.
    pub stable: BackendSpec,
    /// The canary backends.
    #[serde(default)]
    pub canary: BackendSpec,
    /// Fresh pods of the stable version the canary is judged against.
    #[serde(default)]
    pub baseline: Option<BackendSpec>,
    /// Canary weight in percent.
    #[serde(default)]
    pub weight: f64,
    /// Sticky users.
    #[serde(default)]
    pub affinity: Option<AffinitySpec>,
    /// The header and cookie that force a variant.
    #[serde(default, rename = "override")]
    pub overrides: OverrideSpec,
    /// Every request goes to the canary.
    #[serde(default)]
    pub canary_only: bool,
    /// Tell the client which variant answered.
    #[serde(default)]
    pub expose_variant: bool,
    /// Forward the normalised path rather than the client's bytes.
    #[serde(default = "yes")]
    pub normalize_path: bool,
    /// The rollout plan.
    #[serde(default)]
    pub rollout: Option<RolloutSpec>,
    /// Answer plain HTTP with a redirect to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// Largest request body, bytes; `None`: the global limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// `Strict-Transport-Security` on HTTPS responses.
    #[serde(default)]
    pub hsts: Option<HstsSpec>,
}

impl RouteSpec {
    /// A route named `name` sending everything to `stable`, every other field at the file's default.
    pub fn new(name: impl Into<String>, stable: BackendSpec) -> Self {
        Self {
            name: name.into(),
            hosts: Vec::new(),
            path_prefix: default_prefix(),
            path_exact: false,
            stable,
            canary: BackendSpec::default(),
            baseline: None,
            weight: 0.0,
            affinity: None,
            overrides: OverrideSpec::default(),
            canary_only: false,
            expose_variant: false,
            normalize_path: yes(),
            rollout: None,
            redirect_https: false,
            max_body_bytes: None,
            hsts: None,
        }
    }

    /// Checks this route alone (overlaps with other routes are the caller's: see
    /// [`crate::RouteClaims`]). Fields are named below `at`, the name at `name_at`.
    pub fn build(
        self,
        at: &FieldPath,
        name_at: &FieldPath,
        default_max_body_bytes: u64,
    ) -> Result<Route, Vec<FieldError>> {
        crate::validate::single_route(self, at, name_at, default_max_body_bytes)
    }
}

/// The rollout plan.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSpec {
    /// Rising canary weights in percent.
    pub steps: Vec<f64>,
    /// Time per step such as `5m`; `None`: steps advance only by API call.
    pub interval: Option<String>,
    /// The canary analysis.
    pub analysis: Option<AnalysisSpec>,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            steps: vec![10.0, 25.0, 50.0, 100.0],
            interval: None,
            analysis: None,
        }
    }
}

/// Canary analysis: the rules that decide a rollback.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisSpec {
    /// Sliding window such as `60s`.
    pub window: String,
    /// Canary requests in the window before judging.
    pub min_requests: u64,
    /// Largest canary error rate, percent; `None`: no such rule.
    pub max_error_rate: Option<f64>,
    /// Largest canary-minus-stable error rate, percentage points.
    pub max_error_rate_increase: Option<f64>,
    /// Significance level of the canary-versus-stable error test.
    pub significance: Option<f64>,
    /// Largest canary p99 latency such as `500ms`.
    pub max_latency_p99: Option<String>,
    /// Sequential mode's false-abort rate.
    pub alpha: Option<f64>,
    /// Largest latency increase over stable, percent.
    pub max_latency_increase: Option<PercentSpec>,
    /// The quantile `max_latency_increase` compares; `None`: the median.
    pub latency_quantile: Option<f64>,
    /// Consecutive failed checks before aborting.
    pub failures_before_abort: u32,
    /// URL called for an extra verdict.
    pub webhook: Option<String>,
    /// A PromQL check.
    pub prometheus: Option<PrometheusSpec>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            window: "60s".into(),
            min_requests: 50,
            max_error_rate: Some(5.0),
            max_error_rate_increase: None,
            significance: None,
            max_latency_p99: None,
            alpha: None,
            max_latency_increase: None,
            latency_quantile: None,
            failures_before_abort: 2,
            webhook: None,
            prometheus: None,
        }
    }
}

/// A percent written as a number (`20`) or with its sign (`"20%"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PercentSpec {
    /// `20`
    Number(f64),
    /// `"20%"`
    Text(String),
}

/// A PromQL query whose value must stay within bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSpec {
    /// Prometheus base URL.
    pub url: String,
    /// The query.
    pub query: String,
    /// Largest acceptable value.
    #[serde(default)]
    pub max: Option<f64>,
    /// Smallest acceptable value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Time between queries.
    #[serde(default = "default_prometheus_interval")]
    pub interval: String,
}

impl PrometheusSpec {
    /// Time between queries when none is given.
    pub const DEFAULT_INTERVAL: &'static str = "5s";

    /// A check of `query` at `url`, queried at the default interval; set `max` and/or `min`.
    pub fn new(url: impl Into<String>, query: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            query: query.into(),
            max: None,
            min: None,
            interval: default_prometheus_interval(),
        }
    }
}

fn default_prometheus_interval() -> String {
    PrometheusSpec::DEFAULT_INTERVAL.into()
}

/// How a user is recognised so that they stay on one variant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinitySpec {
    /// Where the user key comes from.
    pub key: AffinityKeySpec,
    /// Cookie name with `key: cookie`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Header name with `key: header`.
    #[serde(default)]
    pub header: Option<String>,
    /// Lifetime of a minted cookie.
    #[serde(default)]
    pub max_age: Option<String>,
}

/// The source of the sticky user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverrideSpec {
    /// Overrides honoured at all.
    pub enabled: bool,
    /// Override header; `None`: no override header.
    pub header: Option<String>,
    /// The header value that means canary.
    pub header_value: Option<String>,
    /// A regular expression a header value must match to mean canary.
    pub header_pattern: Option<String>,
    /// Override cookie; `None`: no override cookie.
    pub cookie: Option<String>,
}

impl Default for OverrideSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            header: Some("x-canary".into()),
            header_value: None,
            header_pattern: None,
            cookie: Some("canary".into()),
        }
    }
}

/// Where a variant's requests go: static addresses or a Kubernetes source.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSpec {
    /// Static `host:port` addresses.
    pub endpoints: Vec<String>,
    /// Endpoints discovered from a Service or a Pod selector.
    pub kubernetes: Option<KubeSourceSpec>,
    /// HTTPS to the endpoints.
    pub tls: Option<UpstreamTlsSpec>,
}

impl BackendSpec {
    /// Endpoints discovered from `source`.
    pub fn kubernetes(source: KubeSourceSpec) -> Self {
        Self {
            kubernetes: Some(source),
            ..Self::default()
        }
    }
}

/// HTTPS to a variant's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsSpec {
    /// Verify the endpoint's certificate.
    pub verify: bool,
    /// CA bundle file; `None`: the system roots.
    pub ca: Option<String>,
    /// Name to send and verify; `None`: the endpoint's host.
    pub sni: Option<String>,
}

impl Default for UpstreamTlsSpec {
    fn default() -> Self {
        Self {
            verify: true,
            ca: None,
            sni: None,
        }
    }
}

/// Backends discovered in the cluster: a Service's EndpointSlices or Pods by label selector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSourceSpec {
    /// Namespace; `None`: the source's default.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service name (this or `selector`).
    #[serde(default)]
    pub service: Option<String>,
    /// Pod label selector (this or `service`).
    #[serde(default)]
    pub selector: Option<String>,
    /// Port number, or the Service's port name.
    pub port: PortSpec,
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// `8080`
    Number(u32),
    /// `http`
    Name(String),
}

/// `Strict-Transport-Security` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HstsSpec {
    /// `max-age` such as `365d`.
    pub max_age: String,
    /// Add `includeSubDomains`.
    pub include_subdomains: bool,
}

impl Default for HstsSpec {
    fn default() -> Self {
        Self {
            max_age: "365d".into(),
            include_subdomains: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_prefix() -> String {
    "/".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constructors and `Default`s give what the file gives for a field left out.
    #[test]
    fn defaults_are_the_files() {
        let read = |json: &str| -> RouteSpec { serde_json::from_str(json).unwrap() };
        assert_eq!(
            read(r#"{"name":"a","stable":{}}"#),
            RouteSpec::new("a", BackendSpec::default())
        );
        let full = read(
            r#"{"name":"a","stable":{"tls":{}},"rollout":{"analysis":{"prometheus":{"url":"u","query":"q"}}},"hsts":{}}"#,
        );
        let rollout = full.rollout.unwrap();
        assert_eq!(rollout.steps, RolloutSpec::default().steps);
        let analysis = rollout.analysis.unwrap();
        assert_eq!(
            AnalysisSpec {
                prometheus: None,
                ..analysis.clone()
            },
            AnalysisSpec::default()
        );
        assert_eq!(analysis.prometheus.unwrap(), PrometheusSpec::new("u", "q"));
        assert_eq!(full.stable.tls.unwrap(), UpstreamTlsSpec::default());
        assert_eq!(full.hsts.unwrap(), HstsSpec::default());
    }
}
