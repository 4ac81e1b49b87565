//! Control-plane metrics: config reloads, weights, phases, rollbacks, endpoints.

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::rollout::Phase;

/// Counters of the control plane, registered on the process registry.
#[derive(Clone)]
pub struct ControlMetrics {
    reloads: IntCounterVec,
    last_reload_ok: IntGauge,
    weight: GaugeVec,
    phase: IntGaugeVec,
    rollbacks: IntCounterVec,
    endpoints: IntGaugeVec,
}

impl ControlMetrics {
    /// Creates and registers the families.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "canaryd_config_reloads_total",
                "Config reload attempts by result (success, failure).",
            ),
            &["result"],
        )?;
        let last_reload_ok = IntGauge::new(
            "canaryd_config_last_reload_success",
            "1 when the last reload attempt applied, 0 when it was refused (the previous config keeps serving).",
        )?;
        let weight = GaugeVec::new(
            Opts::new(
                "canaryd_canary_weight_ratio",
                "Share of requests (or users) sent to the canary, 0 to 1.",
            ),
            &["route"],
        )?;
        let phase = IntGaugeVec::new(
            Opts::new(
                "canaryd_rollout_phase",
                "1 for the route's current rollout phase, 0 for the others.",
            ),
            &["route", "phase"],
        )?;
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "canaryd_rollbacks_total",
                "Automatic aborts by the analysis, by the rule that failed.",
            ),
            &["route", "reason"],
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new(
                "canaryd_endpoints",
                "Endpoints per route and variant; state is healthy or cooling (skipped after connect failures).",
            ),
            &["route", "variant", "state"],
        )?;
        registry.register(Box::new(weight.clone()))?;
        registry.register(Box::new(phase.clone()))?;
        registry.register(Box::new(rollbacks.clone()))?;
        registry.register(Box::new(endpoints.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload_ok.clone()))?;
        last_reload_ok.set(1);
        // Both label values exist from the start so rate() works before the first reload.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        Ok(Self {
            reloads,
            last_reload_ok,
            weight,
            phase,
            rollbacks,
            endpoints,
        })
    }

    /// Records one reload attempt.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        self.last_reload_ok.set(i64::from(ok));
    }
}

impl ControlMetrics {
    /// Publishes a route's weight (0..=1) and phase.
    pub fn route_state(&self, route: &str, weight_ratio: f64, phase: Phase) {
        self.weight.with_label_values(&[route]).set(weight_ratio);
        for p in Phase::ALL {
            self.phase
                .with_label_values(&[route, p.as_str()])
                .set(i64::from(p == phase));
        }
    }

    /// Counts an automatic abort.
    pub fn rollback(&self, route: &str, reason: &str) {
        self.rollbacks.with_label_values(&[route, reason]).inc();
    }

    /// Publishes endpoint counts of a route's variant.
    pub fn endpoints(&self, route: &str, variant: &str, healthy: usize, total: usize) {
        self.endpoints
            .with_label_values(&[route, variant, "healthy"])
            .set(healthy as i64);
        self.endpoints
            .with_label_values(&[route, variant, "cooling"])
            .set((total - healthy) as i64);
    }

    /// Drops the series of routes no longer configured (an absent series is fine).
    pub fn forget_route(&self, route: &str) {
        let _ = self.weight.remove_label_values(&[route]);
        for p in Phase::ALL {
            let _ = self.phase.remove_label_values(&[route, p.as_str()]);
        }
        for v in ["stable", "canary"] {
            for s in ["healthy", "cooling"] {
                let _ = self.endpoints.remove_label_values(&[route, v, s]);
            }
        }
    }
}
