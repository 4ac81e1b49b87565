//! The read model: a route's status (state, traffic, discovery, last judgement) and the
//! audit trail, as the API and `canaryctl status` show them.

use std::time::Duration;

use canary_config::Weight;
use canary_proxy::window::WindowTotals;
use canary_proxy::{split, RoutingTable, Variant};

use crate::status::{AnalysisStatus, BaselineStatus, RouteStatus, VariantStatus, WindowFigures};

use super::{Controller, Inner};

impl Controller {
    /// The status of one route.
    pub fn status(&self, route: &str) -> Option<RouteStatus> {
        self.status_locked(&self.lock(), &self.table.load(), route)
    }

    /// The status of every route, in config order.
    pub fn statuses(&self) -> Vec<RouteStatus> {
        let inner = self.lock();
        let table = self.table.load();
        inner
            .config
            .routes
            .iter()
            .filter_map(|r| self.status_locked(&inner, &table, &r.name))
            .collect()
    }

    pub(super) fn status_locked(&self, inner: &Inner, table: &RoutingTable, route: &str) -> Option<RouteStatus> {
        let state = inner.store.state.routes.get(route)?;
        let config = inner.route(route)?;
        let served = table.route(route);
        let variant = |v: Variant, endpoints: usize| {
            let c = served.map(|r| r.counts(v)).unwrap_or_default();
            VariantStatus {
                endpoints,
                requests: c.requests,
                server_errors: c.server_errors,
                upstream_errors: c.upstream_errors,
                discovery: inner.discovery.get(&(route.to_string(), v)).cloned(),
            }
        };
        Some(RouteStatus {
            name: route.into(),
            weight: state.weight().percent(),
            phase: state.rollout.phase,
            step: state.rollout.step,
            steps: state
                .rollout
                .steps_ppm
                .iter()
                .map(|p| Weight::from_ppm(*p).percent())
                .collect(),
            interval_seconds: state.rollout.interval_ms.map(|ms| ms as f64 / 1000.0),
            salt_id: format!("{:016x}", split::salt_for(route, state.generation)),
            generation: state.generation,
            revision: state.revision,
            last_reason: state.last_reason.clone(),
            stable: variant(Variant::Stable, config.stable.endpoints.len()),
            canary: variant(Variant::Canary, config.canary.endpoints.len()),
            baseline: config.baseline.as_ref().map(|b| BaselineStatus {
                weight: Weight::from_ppm(split::Shares::with_baseline(state.weight_ppm).baseline).percent(),
                variant: variant(Variant::Baseline, b.endpoints.len()),
            }),
            analysis: config.rollout.analysis.as_ref().map(|a| {
                inner
                    .judged
                    .get(route)
                    .and_then(|j| j.last.clone())
                    .unwrap_or_else(|| idle(a.window))
            }),
        })
    }
}

/// A route's figures over the window, for the status.
pub(super) fn figures(t: &WindowTotals) -> WindowFigures {
    WindowFigures {
        requests: t.requests,
        error_rate: t.error_rate() * 100.0,
        p99_ms: t.quantile(0.99).map(|d| {
            if d == Duration::MAX {
                f64::INFINITY
            } else {
                d.as_secs_f64() * 1000.0
            }
        }),
    }
}

/// The status of an analysis that has not judged yet.
fn idle(window: Duration) -> AnalysisStatus {
    let empty = figures(&WindowTotals::default());
    AnalysisStatus {
        verdict: "idle".into(),
        reason: None,
        consecutive_failures: 0,
        window_seconds: window.as_secs(),
        stable: empty,
        canary: empty,
        baseline: None,
        checks: Vec::new(),
    }
}
