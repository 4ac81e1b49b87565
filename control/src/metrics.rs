//! Control-plane metrics: config reloads.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Counters of the control plane, registered on the process registry.
#[derive(Clone)]
pub struct ControlMetrics {
    reloads: IntCounterVec,
    last_reload_ok: IntGauge,
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
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload_ok.clone()))?;
        last_reload_ok.set(1);
        // Both label values exist from the start so rate() works before the first reload.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        Ok(Self {
            reloads,
            last_reload_ok,
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
