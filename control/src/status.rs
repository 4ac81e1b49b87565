//! The JSON shapes of the control API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::rollout::Phase;

/// A route's live state and traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteStatus {
    /// Route name.
    pub name: String,
    /// Percent of requests (or users) sent to the canary.
    pub weight: f64,
    /// Rollout phase.
    pub phase: Phase,
    /// Index of the current step while a rollout is Progressing or Paused.
    pub step: Option<usize>,
    /// The rollout's step weights in percent.
    pub steps: Vec<f64>,
    /// Seconds per step of a timed rollout.
    pub interval_seconds: Option<f64>,
    /// The sticky salt of the current rollout generation (hex).
    pub salt_id: String,
    /// Rollout generation (rises each time the weight rises from 0).
    pub generation: u64,
    /// Revision for `If-Match`.
    pub revision: u64,
    /// The reason given with the last change.
    pub last_reason: Option<String>,
    /// Stable variant.
    pub stable: VariantStatus,
    /// Canary variant.
    pub canary: VariantStatus,
    /// The baseline's traffic, when the route has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineStatus>,
    /// The last judgement of the analysis, when the route has one.
    pub analysis: Option<AnalysisStatus>,
}

/// The analysis's last judgement and the window it judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalysisStatus {
    /// `pass`, `fail`, `inconclusive`, or `idle` (no canary traffic to judge).
    pub verdict: String,
    /// Why, with the numbers.
    pub reason: Option<String>,
    /// Failing judgements in a row.
    pub consecutive_failures: u32,
    /// The window judged, in seconds.
    pub window_seconds: u64,
    /// Stable's figures over the window.
    pub stable: WindowFigures,
    /// The canary's figures over the window.
    pub canary: WindowFigures,
    /// The baseline's figures over the window, when the route has one (the canary is then
    /// judged against it rather than stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<WindowFigures>,
    /// Sequential mode: each rule's figures since the rollout began, bounds and decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::sequential::Check>,
}

/// A route's baseline: its share of the traffic (as much as the canary, as far as stable's
/// share allows) and its variant figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BaselineStatus {
    /// Percent of requests (or users) sent to the baseline.
    pub weight: f64,
    /// Its endpoints and traffic.
    #[serde(flatten)]
    pub variant: VariantStatus,
}

/// One variant's traffic over the analysis window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WindowFigures {
    /// Responses.
    pub requests: u64,
    /// 5xx share in percent.
    pub error_rate: f64,
    /// p99 time to response headers in milliseconds (bucket upper bound), if any traffic.
    pub p99_ms: Option<f64>,
}

/// One variant's endpoints and request totals since the process started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VariantStatus {
    /// Configured endpoints.
    pub endpoints: usize,
    /// Responses sent.
    pub requests: u64,
    /// Of which 5xx.
    pub server_errors: u64,
    /// Requests that got no upstream response.
    pub upstream_errors: u64,
    /// For endpoints discovered in the cluster: how current they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

/// The state of a variant's discovery (kubernetes mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryStatus {
    /// What is watched, e.g. `service prod/app:http`.
    pub source: String,
    /// Listed at least once.
    pub synced: bool,
    /// Seconds the endpoints may be behind the cluster (0 while the watch is healthy).
    pub stale_seconds: f64,
}

/// `PUT /api/v1/routes/{route}/weight`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    /// Percent to the canary, 0 to 100 with at most four decimals.
    pub percent: f64,
    /// Why (kept in the audit trail).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/v1/routes/{route}/rollout`; absent fields come from the route's `rollout` config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// Rising step weights in percent, e.g. `[10, 25, 50, 100]`.
    #[serde(default)]
    pub steps: Option<Vec<f64>>,
    /// Time per step for a timed rollout, e.g. `5m`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `step`, `pause`, `resume`, `promote` and `abort` (all optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why (kept in the audit trail).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Every error of the API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong.
    pub error: String,
    /// The request field at fault, when one is.
    pub field: Option<String>,
}
