//! The config file's shape as serde reads it; unknown keys are errors, every field has a default.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub listen: RawListen,
    pub admin: RawAdmin,
    pub timeouts: RawTimeouts,
    pub passive_health: RawPassiveHealth,
    pub state: RawState,
    pub tls: RawTls,
    pub limits: crate::Limits,
    pub paths: RawPaths,
    pub trusted_proxies: Vec<String>,
    pub access_log: bool,
    pub kubernetes: RawKubernetes,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawKubernetes {
    pub namespace: String,
    pub ingress_class: Option<String>,
    pub canary_routes: bool,
    pub watch_namespace: Option<String>,
    pub publish_service: Option<String>,
    pub lease_name: String,
    pub lease_duration: String,
}

impl Default for RawKubernetes {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            ingress_class: Some("canaryd".into()),
            canary_routes: true,
            watch_namespace: None,
            publish_service: None,
            lease_name: "canaryd-leader".into(),
            lease_duration: "15s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawState {
    pub path: String,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            path: "/var/lib/canaryd/state.json".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawListen {
    pub http: String,
    pub https: Option<String>,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".into(),
            https: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPaths {
    pub merge_slashes: bool,
    pub encoded_slashes: RawEncodedSlashes,
}

impl Default for RawPaths {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_slashes: RawEncodedSlashes::Keep,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawEncodedSlashes {
    Keep,
    Reject,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub certificates: Vec<RawCertificate>,
    pub secrets: Vec<RawSecretCertificate>,
    pub unknown_sni: RawUnknownSni,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecretCertificate {
    pub hosts: Vec<String>,
    pub secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawUnknownSni {
    #[default]
    Default,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHsts {
    #[serde(default = "default_hsts_max_age")]
    pub max_age: String,
    #[serde(default)]
    pub include_subdomains: bool,
}

fn default_hsts_max_age() -> String {
    "365d".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub listen: String,
    pub tokens_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            tokens_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTimeouts {
    pub connect: String,
    pub response_header: String,
    pub upstream_idle: String,
    pub header_read: String,
    pub idle: String,
    pub drain: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: "2s".into(),
            response_header: "30s".into(),
            upstream_idle: "30s".into(),
            header_read: "10s".into(),
            idle: "75s".into(),
            drain: "30s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPassiveHealth {
    pub failures: u32,
    pub cooloff: String,
}

impl Default for RawPassiveHealth {
    fn default() -> Self {
        Self {
            failures: 3,
            cooloff: "10s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub path_exact: bool,
    pub stable: RawBackend,
    #[serde(default)]
    pub canary: RawBackend,
    #[serde(default)]
    pub baseline: Option<RawBackend>,
    #[serde(default)]
    pub weight: f64,
    #[serde(default)]
    pub affinity: Option<RawAffinity>,
    #[serde(default, rename = "override")]
    pub overrides: RawOverride,
    #[serde(default)]
    pub canary_only: bool,
    #[serde(default)]
    pub expose_variant: bool,
    #[serde(default = "yes")]
    pub normalize_path: bool,
    #[serde(default)]
    pub rollout: Option<RawRollout>,
    #[serde(default)]
    pub redirect_https: bool,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub hsts: Option<RawHsts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    pub interval: Option<String>,
    pub analysis: Option<RawAnalysis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAnalysis {
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub significance: Option<f64>,
    pub max_latency_p99: Option<String>,
    pub alpha: Option<f64>,
    pub max_latency_increase: Option<RawPercent>,
    pub latency_quantile: Option<f64>,
    #[serde(default = "default_failures")]
    pub failures_before_abort: u32,
    pub webhook: Option<String>,
    pub prometheus: Option<RawPrometheus>,
}

/// A percent written as a number (`20`) or with its sign (`"20%"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawPercent {
    Number(f64),
    Text(String),
}

fn default_window() -> String {
    "60s".into()
}
fn default_min_requests() -> u64 {
    50
}
#[allow(clippy::unnecessary_wraps)] // serde default of an Option field
fn default_max_error_rate() -> Option<f64> {
    Some(5.0)
}
fn default_failures() -> u32 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrometheus {
    pub url: String,
    pub query: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
    #[serde(default = "default_prometheus_interval")]
    pub interval: String,
}

fn default_prometheus_interval() -> String {
    "5s".into()
}

fn default_steps() -> Vec<f64> {
    vec![10.0, 25.0, 50.0, 100.0]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAffinity {
    pub key: RawAffinityKey,
    pub cookie: Option<String>,
    pub header: Option<String>,
    pub max_age: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawAffinityKey {
    Cookie,
    Header,
    ClientIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOverride {
    pub enabled: bool,
    /// `null`: no override header.
    pub header: Option<String>,
    pub header_value: Option<String>,
    pub header_pattern: Option<String>,
    /// `null`: no override cookie.
    pub cookie: Option<String>,
}

impl Default for RawOverride {
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

fn yes() -> bool {
    true
}

fn default_prefix() -> String {
    "/".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub kubernetes: Option<RawKubeSource>,
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
}

/// HTTPS to a variant's endpoints: `tls: { verify: true, ca: FILE, sni: NAME }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    #[serde(default = "default_verify")]
    pub verify: bool,
    pub ca: Option<String>,
    pub sni: Option<String>,
}

fn default_verify() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKubeSource {
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub selector: Option<String>,
    pub port: RawPort,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawPort {
    Number(u32),
    Name(String),
}
