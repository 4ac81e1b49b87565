//! The clock: every second each analysed route is judged (a failing canary aborted, with
//! its webhook), then timed rollouts whose interval passed with the analysis passing advance.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use canary_config::{Analysis, PrometheusCheck, Weight};
use canary_proxy::running::Totals;
use canary_proxy::window::{self, WindowTotals};
use canary_proxy::{RoutingTable, Variant};

use crate::analysis::{self, PromReading, Verdict};
use crate::rollout::{Event, Phase};
use crate::sequential;
use crate::state::{describe, now_ms, now_rfc3339, AuditEntry, RouteState};
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

/// A route state a tick changed, not yet saved or served.
struct Pending {
    route: String,
    state: RouteState,
    audit: AuditEntry,
    /// For a CanaryRoute-owned route: the same change, for every replica.
    intent: Option<Intent>,
}

/// What a tick does once its changes are saved and served, outside the lock.
#[derive(Debug)]
pub(super) enum Effect {
    /// The analysis aborted `route`: log it and count it in `canaryd_rollbacks_total`.
    Aborted {
        route: String,
        rule: analysis::Rule,
        reason: String,
    },
    /// POST `body` to the route's webhook.
    Webhook { url: String, body: serde_json::Value },
}

impl Controller {
    /// Once a second: judges every route with an analysis (aborting a failing canary),
    /// then advances timed rollouts whose interval passed with the analysis passing.
    pub fn tick(&self) {
        for effect in self.tick_changes() {
            match effect {
                Effect::Aborted { route, rule, reason } => {
                    tracing::warn!(route, rule = rule.as_str(), reason = %reason, "canary aborted by the analysis");
                    self.control_metrics.rollback(&route, rule.as_str());
                }
                Effect::Webhook { url, body } => {
                    tokio::spawn(crate::outbound::post_webhook(url, body));
                }
            }
        }
    }

    /// The state half of a tick: decides, builds the table the changes make, saves them,
    /// serves them, and returns what is left to do. A table that cannot be built changes
    /// nothing (the next tick tries again), so nothing is reported that is not served.
    pub(super) fn tick_changes(&self) -> Vec<Effect> {
        let mut inner = self.lock();
        let now = now_ms();
        let mut pending = Vec::new();
        let mut effects = Vec::new();
        for (route, rule, why, webhook, status) in self.judge_all(&mut inner, now) {
            if let Some((p, mut e)) = abort_by_analysis(&mut inner, &route, rule, &why, webhook, status, now) {
                pending.push(p);
                effects.append(&mut e);
            }
        }
        let aborted: HashSet<String> = pending.iter().map(|p| p.route.clone()).collect();
        pending.extend(timed_steps(&mut inner, &aborted, self.is_leader(), now));
        if !pending.is_empty() {
            let changed: HashMap<&str, &RouteState> = pending.iter().map(|p| (p.route.as_str(), &p.state)).collect();
            let built = {
                let store = &inner.store;
                self.build_table_with(&inner.config, |r| match changed.get(r.name.as_str()) {
                    Some(s) => s.live(&r.name),
                    None => store.state.live(r),
                })
            };
            let table = match built {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "timed step or abort not applied: its table could not be built (next tick tries again)");
                    return Vec::new();
                }
            };
            for p in pending {
                inner.store.state.routes.insert(p.route, p.state);
                inner.store.state.record(p.audit);
                inner.intents.extend(p.intent);
            }
            // Saved before it serves: a step or an abort must survive a SIGKILL right after.
            // A failed save still serves: an abort must not wait for a disk.
            if let Err(e) = inner.store.save() {
                tracing::error!(error = %e, "route state not saved after a timed step or abort");
            }
            self.table.store(table);
        }
        if !inner.intents.is_empty() {
            self.intents_ready.notify_one();
        }
        self.publish_gauges(&mut inner);
        effects
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
            // With a baseline, the canary is judged against it and stable is only shown.
            let against = if route.baseline.is_some() {
                Variant::Baseline
            } else {
                Variant::Stable
            };
            let (stable, canary) = (totals(Variant::Stable), totals(Variant::Canary));
            // Stable's totals are summed once; only a baseline needs a third sum.
            let baseline = (against == Variant::Baseline).then(|| totals(Variant::Baseline));
            let reference = baseline.as_ref().unwrap_or(&stable);
            if state.rollout.phase == Phase::Aborted && judged.last.as_ref().is_some_and(|l| l.verdict == "fail") {
                // The judgement that aborted stays on show until the next rollout.
                continue;
            }
            let active = state.weight_ppm > 0
                && state.weight() != Weight::FULL
                && !matches!(state.rollout.phase, Phase::Aborted | Phase::Promoted);
            let since_rollout = a
                .alpha
                .and_then(|_| since_rollout(judged, &table, &route.name, against, state.generation));
            let judgement = if !active {
                None
            } else {
                let prom = match &a.prometheus {
                    None => PromReading::NotConfigured,
                    Some(check) => fresh_reading(readings.get(&route.name), check),
                };
                let since = since_rollout.as_ref().map(|[s, c]| (s, c));
                let mut j = analysis::judge(a, against, reference, &canary, since, &prom);
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
                baseline: baseline.as_ref().map(figures),
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
}

/// The timed steps due now: local routes as pending changes; CanaryRoute routes, on the
/// leader only, as intents written to the cluster's state (every replica then adopts it).
fn timed_steps(inner: &mut Inner, aborted: &HashSet<String>, leader: bool, now: u64) -> Vec<Pending> {
    let Inner {
        store,
        judged,
        config,
        route_index,
        owners,
        intents,
        ..
    } = inner;
    let mut steps = Vec::new();
    for (name, state) in &store.state.routes {
        // A tick moves only progressing rollouts (rollout.rs); the rest cost nothing per tick.
        if state.rollout.phase != Phase::Progressing || aborted.contains(name) {
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
        let event = Event::Tick { analysis_ok };
        let mut next = state.clone();
        if next.apply(event.clone(), None, now).is_err() || next.revision == state.revision {
            continue;
        }
        let reason = Some("interval passed with the analysis passing".to_string());
        match owners.get(name) {
            None | Some(Owner::Local) => steps.push(Pending {
                route: name.clone(),
                audit: AuditEntry::applied("timer", name, "step", describe(state), describe(&next), reason),
                state: next,
                intent: None,
            }),
            Some(Owner::Ingress { .. }) => {}
            // Shared rollouts advance by the leader only, on the cluster's state.
            Some(Owner::CanaryRoute { .. }) if leader => intents.push(Intent {
                route: name.clone(),
                change: Change::Event(event),
                actor: "timer".into(),
                reason,
            }),
            Some(Owner::CanaryRoute { .. }) => {}
        }
    }
    steps
}

/// The abort of a failing canary as a pending change, and what to do once it serves. The
/// analysis's memory of the route restarts with the verdict that aborted it.
fn abort_by_analysis(
    inner: &mut Inner,
    route: &str,
    rule: analysis::Rule,
    why: &str,
    webhook: Option<String>,
    status: AnalysisStatus,
    now: u64,
) -> Option<(Pending, Vec<Effect>)> {
    let current = inner.store.state.routes.get(route)?;
    let mut state = current.clone();
    let reason = format!("analysis: {why}");
    state.apply(Event::Abort, Some(reason.clone()), now).ok()?;
    // Applied here at once (the safe direction), and written for every replica.
    let intent = matches!(inner.owners.get(route), Some(Owner::CanaryRoute { .. })).then(|| Intent {
        route: route.into(),
        change: Change::Event(Event::Abort),
        actor: "analysis".into(),
        reason: Some(reason.clone()),
    });
    let audit = AuditEntry::applied(
        "analysis",
        route,
        "abort",
        describe(current),
        describe(&state),
        Some(reason.clone()),
    );
    let mut effects = vec![Effect::Aborted {
        route: route.into(),
        rule,
        reason: reason.clone(),
    }];
    if let Some(url) = webhook {
        let body = serde_json::json!({
            "event": "canary_aborted",
            "route": route,
            "rule": rule.as_str(),
            "reason": reason,
            "weight_before": current.weight().percent(),
            "time": now_rfc3339(),
            "analysis": status,
        });
        effects.push(Effect::Webhook { url, body });
    }
    inner.judged.insert(
        route.to_string(),
        Judged {
            last: Some(status),
            ..Judged::default()
        },
    );
    Some((
        Pending {
            route: route.into(),
            state,
            audit,
            intent,
        },
        effects,
    ))
}

impl Controller {
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

/// The totals of `against` (stable or the baseline) and of the canary since the rollout
/// `generation` was first judged (the start is taken now when it was not yet, or when the
/// route's counters were rebuilt).
fn since_rollout(
    judged: &mut Judged,
    table: &RoutingTable,
    route: &str,
    against: Variant,
    generation: u64,
) -> Option<[Totals; 2]> {
    let route = table.route(route)?;
    let now = [route.running(against)?.read(), route.running(Variant::Canary)?.read()];
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use canary_proxy::ProxyMetrics;

    use super::*;
    use crate::metrics::ControlMetrics;
    use crate::state::StateStore;

    fn controller(config: &str) -> Controller {
        let registry = prometheus::Registry::new();
        let (c, _) = Controller::new(
            canary_config::parse(config).unwrap(),
            StateStore::open(None, false).unwrap(),
            ProxyMetrics::register(&registry).unwrap(),
            ControlMetrics::register(&registry).unwrap(),
        )
        .unwrap();
        c
    }

    /// The abort is decided, served and saved inside the tick; its log, counter and webhook
    /// are handed back to be done after, outside the lock (no runtime is needed here).
    #[test]
    fn an_abort_serves_first_and_leaves_its_webhook_as_an_effect() {
        let c = controller(
            "listen: { http: \"127.0.0.1:0\" }\nadmin: { listen: \"127.0.0.1:0\" }\nroutes:\n  - name: web\n    \
             stable: { endpoints: [\"127.0.0.1:1\"] }\n    canary: { endpoints: [\"127.0.0.1:2\"] }\n    weight: 10\n    \
             rollout:\n      analysis: { window: 10s, min_requests: 20, max_error_rate: 5, failures_before_abort: 1, \
             webhook: \"http://127.0.0.1:9/hook\" }\n",
        );
        let served = c.table.load_full();
        let route = served.route("web").unwrap();
        let started = Instant::now();
        for i in 0..100 {
            route.observe(Variant::Stable, http::StatusCode::OK, false, started);
            let status = if i % 2 == 0 {
                http::StatusCode::BAD_GATEWAY
            } else {
                http::StatusCode::OK
            };
            route.observe(Variant::Canary, status, false, started);
        }
        let effects = c.tick_changes();
        let status = c.status("web").unwrap();
        assert_eq!((status.phase, status.weight), (Phase::Aborted, 0.0), "{effects:?}");
        assert!(
            !Arc::ptr_eq(&served, &c.table.load_full()),
            "the abort's table was not swapped in"
        );
        assert!(
            matches!(&effects[..], [Effect::Aborted { route, .. }, Effect::Webhook { url, body }]
                if route == "web" && url == "http://127.0.0.1:9/hook" && body["event"] == "canary_aborted"
                    && body["weight_before"] == 10.0),
            "{effects:?}"
        );
        assert_eq!(c.audit(Some("web"), 1)[0].actor, "analysis");
        // Judged again: the abort is not repeated.
        assert!(c.tick_changes().is_empty());
    }
}
