//! The clock: every second each analysed route is judged (a failing canary aborted, with
//! its webhook), then timed rollouts whose interval passed with the analysis passing advance.

use std::time::{Duration, Instant};

use canary_config::{Analysis, PrometheusCheck, Weight};
use canary_proxy::running::Totals;
use canary_proxy::window::{self, WindowTotals};
use canary_proxy::{RoutingTable, Variant};

use crate::analysis::{self, PromReading, Verdict};
use crate::rollout::{Event, Phase};
use crate::sequential;
use crate::state::{describe, now_ms, now_rfc3339, AuditEntry};
use crate::status::AnalysisStatus;

use super::route_status::figures;
use super::{Change, Controller, Inner, Intent, Owner};

/// What the analysis remembers of a route between ticks.
#[derive(Debug, Clone, Default)]
pub(super) struct Judged {
    /// The rollout generation and both variants' running totals when it was first judged:
    /// sequential mode judges what came after.
    pub(super) rollout_start: Option<(u64, [Totals; 2])>,
    pub(super) consecutive_failures: u32,
    /// Since when every judgement passed (ms since the Unix epoch).
    pub(super) passing_since_ms: Option<u64>,
    pub(super) last: Option<AnalysisStatus>,
}

impl Controller {
    /// Once a second: judges every route with an analysis (aborting a failing canary),
    /// then advances timed rollouts whose interval passed with the analysis passing.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let now = now_ms();
        let mut changed = false;
        let aborts = self.judge_all(&mut inner, now);
        for (route, rule, reason, webhook, status) in aborts {
            changed = true;
            self.abort_by_analysis(&mut inner, &route, rule, &reason, webhook, status);
        }
        let mut stepped = Vec::new();
        let leader = self.is_leader();
        let Inner {
            store,
            judged,
            config,
            route_index,
            owners,
            intents,
            ..
        } = &mut *inner;
        for (name, state) in store.state.routes.iter_mut() {
            // A tick moves only progressing rollouts (rollout.rs); the rest cost nothing per tick.
            if state.rollout.phase != Phase::Progressing {
                continue;
            }
            let analysis_ok = match route_index
                .get(name)
                .and_then(|&i| config.routes[i].rollout.analysis.as_ref())
            {
                None => true,
                // Passing since (about) the start of the step: over the whole interval.
                Some(_) => judged
                    .get(name)
                    .and_then(|j| j.passing_since_ms)
                    .is_some_and(|since| since <= state.rollout.step_started_ms + 1_500),
            };
            match owners.get(name) {
                None | Some(Owner::Local) => {}
                Some(Owner::Ingress { .. }) => continue,
                // Shared rollouts advance by the leader only, on the cluster's state.
                Some(Owner::CanaryRoute { .. }) => {
                    let mut probe = state.clone();
                    if leader
                        && probe.apply(Event::Tick { analysis_ok }, None, now_ms()).is_ok()
                        && probe.revision != state.revision
                    {
                        intents.push(Intent {
                            route: name.clone(),
                            change: Change::Event(Event::Tick { analysis_ok }),
                            actor: "timer".into(),
                            reason: Some("interval passed with the analysis passing".into()),
                        });
                    }
                    continue;
                }
            }
            let (from, revision) = (describe(state), state.revision);
            if state.apply(Event::Tick { analysis_ok }, None, now_ms()).is_ok() && state.revision != revision {
                stepped.push((name.clone(), from, describe(state)));
            }
        }
        for (route, from, to) in stepped {
            changed = true;
            let reason = Some("interval passed with the analysis passing".to_string());
            inner
                .store
                .state
                .record(AuditEntry::applied("timer", &route, "step", from, to, reason));
        }
        if changed {
            // Saved before it serves: a step or an abort must survive a SIGKILL right after.
            if let Err(e) = inner.store.save() {
                tracing::error!(error = %e, "route state not saved after a timed step or abort");
            }
            if let Err(e) = self.publish(&inner.config, &inner.store) {
                tracing::error!(error = %e, "table not rebuilt after a timed step or abort");
            }
        }
        if !inner.intents.is_empty() {
            self.intents_ready.notify_one();
        }
        self.publish_gauges(&mut inner);
    }

    /// Judges each route; returns the routes to abort now.
    #[allow(clippy::type_complexity)]
    fn judge_all(
        &self,
        inner: &mut Inner,
        now: u64,
    ) -> Vec<(String, analysis::Rule, String, Option<String>, AnalysisStatus)> {
        let table = self.table.load_full();
        let second = window::now_second();
        let readings = self.prometheus.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut aborts = Vec::new();
        for &i in &inner.analysed {
            let route = &inner.config.routes[i];
            let Some(a) = &route.rollout.analysis else { continue };
            let Some(state) = inner.store.state.routes.get(&route.name) else {
                continue;
            };
            let judged = inner.judged.entry(route.name.clone()).or_default();
            let totals = |v: Variant| {
                table
                    .route(&route.name)
                    .and_then(|r| r.window(v))
                    .map(|w| w.totals(second, a.window.as_secs()))
                    .unwrap_or_default()
            };
            let (stable, canary) = (totals(Variant::Stable), totals(Variant::Canary));
            if state.rollout.phase == Phase::Aborted && judged.last.as_ref().is_some_and(|l| l.verdict == "fail") {
                // The judgement that aborted stays on show until the next rollout.
                continue;
            }
            let active = state.weight_ppm > 0
                && state.weight() != Weight::FULL
                && !matches!(state.rollout.phase, Phase::Aborted | Phase::Promoted);
            let since_rollout = a
                .alpha
                .and_then(|_| since_rollout(judged, &table, &route.name, state.generation));
            let judgement = if !active {
                None
            } else {
                let prom = match &a.prometheus {
                    None => PromReading::NotConfigured,
                    Some(check) => fresh_reading(readings.get(&route.name), check),
                };
                let since = since_rollout.as_ref().map(|[s, c]| (s, c));
                let mut j = analysis::judge(a, &stable, &canary, since, &prom);
                if let (Verdict::Inconclusive(why), Some((s, c)), Some(alpha)) = (&mut j.verdict, since, a.alpha) {
                    why.push_str(&needed(a, alpha, s, c, &canary));
                }
                Some(j)
            };
            let (name, reason) = match judgement.as_ref().map(|j| &j.verdict) {
                None => ("idle", None),
                Some(Verdict::Pass) => ("pass", None),
                Some(Verdict::Inconclusive(why)) => ("inconclusive", Some(why.clone())),
                Some(Verdict::Fail(_, why)) => ("fail", Some(why.clone())),
            };
            match judgement.as_ref().map(|j| &j.verdict) {
                Some(Verdict::Pass) => {
                    judged.consecutive_failures = 0;
                    judged.passing_since_ms.get_or_insert(now);
                }
                Some(Verdict::Fail(..)) => {
                    judged.consecutive_failures += 1;
                    judged.passing_since_ms = None;
                }
                _ => {
                    judged.consecutive_failures = 0;
                    judged.passing_since_ms = None;
                }
            }
            let status = AnalysisStatus {
                verdict: name.into(),
                reason,
                consecutive_failures: judged.consecutive_failures,
                window_seconds: a.window.as_secs(),
                stable: figures(&stable),
                canary: figures(&canary),
                checks: judgement.as_ref().map(|j| j.checks.clone()).unwrap_or_default(),
            };
            judged.last = Some(status.clone());
            if let Some(Verdict::Fail(rule, why)) = judgement.map(|j| j.verdict) {
                if judged.consecutive_failures >= a.failures_before_abort {
                    aborts.push((route.name.clone(), rule, why, a.webhook.clone(), status));
                }
            }
        }
        aborts
    }

    fn abort_by_analysis(
        &self,
        inner: &mut Inner,
        route: &str,
        rule: analysis::Rule,
        why: &str,
        webhook: Option<String>,
        status: AnalysisStatus,
    ) {
        let Some(state) = inner.store.state.routes.get_mut(route) else {
            return;
        };
        let from = describe(state);
        let weight_before = state.weight().percent();
        let reason = format!("analysis: {why}");
        if state.apply(Event::Abort, Some(reason.clone()), now_ms()).is_err() {
            return;
        }
        let to = describe(state);
        tracing::warn!(route, rule = rule.as_str(), reason = %reason, "canary aborted by the analysis");
        // Applied here at once (the safe direction), and written for every replica.
        if matches!(inner.owners.get(route), Some(Owner::CanaryRoute { .. })) {
            inner.intents.push(Intent {
                route: route.into(),
                change: Change::Event(Event::Abort),
                actor: "analysis".into(),
                reason: Some(reason.clone()),
            });
        }
        self.control_metrics.rollback(route, rule.as_str());
        inner.judged.insert(
            route.to_string(),
            Judged {
                last: Some(status.clone()),
                ..Judged::default()
            },
        );
        inner.store.state.record(AuditEntry::applied(
            "analysis",
            route,
            "abort",
            from,
            to,
            Some(reason.clone()),
        ));
        if let Some(url) = webhook {
            let body = serde_json::json!({
                "event": "canary_aborted",
                "route": route,
                "rule": rule.as_str(),
                "reason": reason,
                "weight_before": weight_before,
                "time": now_rfc3339(),
                "analysis": status,
            });
            tokio::spawn(crate::outbound::post_webhook(url, body));
        }
    }

    /// The Prometheus checks to poll: (route, check).
    pub fn prometheus_checks(&self) -> Vec<(String, PrometheusCheck)> {
        let inner = self.lock();
        inner
            .analysed_routes()
            .filter_map(|r| Some((r.name.clone(), r.rollout.analysis.as_ref()?.prometheus.clone()?)))
            .collect()
    }

    /// Stores a PromQL reading for a route.
    pub fn set_prometheus_reading(&self, route: &str, reading: PromReading) {
        self.prometheus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(route.into(), (Instant::now(), reading));
    }

    /// When a route's check last ran.
    pub fn prometheus_read_at(&self, route: &str) -> Option<Instant> {
        self.prometheus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .map(|(at, _)| *at)
    }
}

/// Both variants' totals since the rollout `generation` was first judged (the start is taken
/// now when it was not yet, or when the route's counters were rebuilt).
fn since_rollout(judged: &mut Judged, table: &RoutingTable, route: &str, generation: u64) -> Option<[Totals; 2]> {
    let route = table.route(route)?;
    let now = [
        route.running(Variant::Stable)?.read(),
        route.running(Variant::Canary)?.read(),
    ];
    if let Some((g, start)) = &judged.rollout_start {
        if *g == generation {
            if let (Some(s), Some(c)) = (now[0].since(&start[0]), now[1].since(&start[1])) {
                return Some([s, c]);
            }
        }
    }
    judged.rollout_start = Some((generation, now));
    Some([Totals::default(), Totals::default()])
}

/// `; about N more canary requests (~T at the current rate)` for an inconclusive sequential
/// judgement, or why no amount would do.
fn needed(a: &Analysis, alpha: f64, stable: &Totals, canary: &Totals, window: &WindowTotals) -> String {
    if canary.requests == 0 {
        return "; no canary traffic yet".into();
    }
    let Some(k) = sequential::traffic_needed(a, alpha, stable, canary) else {
        return "; at the rates seen so far no amount of traffic would pass".into();
    };
    let more = ((k - 1.0) * canary.requests as f64).ceil().max(1.0) as u64;
    let rate = window.requests as f64 / a.window.as_secs_f64().max(1.0);
    if rate > 0.0 {
        let eta = Duration::from_secs((more as f64 / rate).ceil() as u64);
        format!(
            "; needs about {more} more canary requests (~{} at {rate:.1} req/s)",
            humantime::format_duration(eta)
        )
    } else {
        format!("; needs about {more} more canary requests")
    }
}

/// A reading younger than three intervals, or "unavailable".
fn fresh_reading(reading: Option<&(Instant, PromReading)>, check: &PrometheusCheck) -> PromReading {
    match reading {
        Some((at, r)) if at.elapsed() <= check.interval * 3 + Duration::from_secs(2) => r.clone(),
        Some(_) => PromReading::Unavailable("no fresh reading".into()),
        None => PromReading::Unavailable("not queried yet".into()),
    }
}
