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
    leader: IntGauge,
    discovery_stale: GaugeVec,
    discovery_synced: IntGaugeVec,
    kubernetes_problems: IntGauge,
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
        let leader = IntGauge::new(
            "canaryd_leader",
            "1 while this replica holds the leader Lease (kubernetes mode) and may advance timed rollouts.",
        )?;
        let discovery_stale = GaugeVec::new(
            Opts::new(
                "canaryd_discovery_stale_seconds",
                "Seconds a variant's discovered endpoints may be behind the cluster (0 while its watch is healthy).",
            ),
            &["route", "variant"],
        )?;
        let discovery_synced = IntGaugeVec::new(
            Opts::new(
                "canaryd_discovery_synced",
                "1 once a variant's endpoints were listed from the cluster at least once.",
            ),
            &["route", "variant"],
        )?;
        let kubernetes_problems = IntGauge::new(
            "canaryd_kubernetes_problems",
            "CanaryRoutes and Ingresses not served because of an error (name clash, invalid spec); see the log.",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(discovery_stale.clone()))?;
        registry.register(Box::new(discovery_synced.clone()))?;
        registry.register(Box::new(kubernetes_problems.clone()))?;
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
            leader,
            discovery_stale,
            discovery_synced,
            kubernetes_problems,
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

    /// Publishes whether this replica leads.
    pub fn leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Publishes a discovered variant's sync state and staleness.
    pub fn discovery(&self, route: &str, variant: &str, synced: bool, stale_seconds: f64) {
        self.discovery_synced
            .with_label_values(&[route, variant])
            .set(i64::from(synced));
        self.discovery_stale
            .with_label_values(&[route, variant])
            .set(stale_seconds);
    }

    /// Publishes how many cluster objects are refused.
    pub fn kubernetes_problems(&self, count: usize) {
        self.kubernetes_problems.set(count as i64);
    }

    /// Drops the series of routes no longer configured (an absent series is fine).
    pub fn forget_route(&self, route: &str) {
        let _ = self.weight.remove_label_values(&[route]);
        for p in Phase::ALL {
            let _ = self.phase.remove_label_values(&[route, p.as_str()]);
        }
        for v in ["stable", "canary"] {
            let _ = self.discovery_stale.remove_label_values(&[route, v]);
            let _ = self.discovery_synced.remove_label_values(&[route, v]);
            for s in ["healthy", "cooling"] {
                let _ = self.endpoints.remove_label_values(&[route, v, s]);
            }
        }
    }
}
