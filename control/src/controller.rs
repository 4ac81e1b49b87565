//! The rollout driver: owns the live state, applies commands from the API, the config
//! file and the clock through the pure state machine, then persists, audits and publishes
//! a new routing table. All of this is control plane; the request path never waits on it.

use std::sync::Mutex;
use std::time::Duration;

use canary_config::{Config, Weight};
use canary_proxy::{split, ProxyMetrics, RoutingTable, TableHandle, Variant};

use crate::rollout::{Action, Event, RolloutError};
use crate::state::{describe, now_ms, now_rfc3339, AuditEntry, RouteState, StateError, StateStore};
use crate::status::{RouteStatus, VariantStatus};

/// A change asked of one route.
#[derive(Debug, Clone)]
pub enum Command {
    /// Serve this weight (a manual step).
    SetWeight(Weight),
    /// Start a rollout; `None` fields come from the route's configured plan.
    Start {
        /// Rising step weights.
        steps: Option<Vec<Weight>>,
        /// Time per step for a timed rollout.
        interval: Option<Duration>,
    },
    /// Next step.
    Step,
    /// Stop advancing.
    Pause,
    /// Advance again.
    Resume,
    /// 100 % to the canary.
    Promote,
    /// 0 % to the canary.
    Abort,
}

impl Command {
    /// The audit name of the command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::SetWeight(_) => "weight",
            Command::Start { .. } => "rollout",
            Command::Step => "step",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote => "promote",
            Command::Abort => "abort",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No route of that name.
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    /// `If-Match` named an older revision.
    #[error("route {route} is at revision {current}, not {expected}; read it again and retry")]
    Stale {
        /// The route.
        route: String,
        /// The revision the caller expected.
        expected: u64,
        /// The route's revision now.
        current: u64,
    },
    /// The state machine refused the event.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The change could not be persisted; nothing changed.
    #[error("state not saved, change undone: {0}")]
    Persist(#[from] StateError),
}

struct Inner {
    config: Config,
    store: StateStore,
}

/// The control plane's single owner of route state.
pub struct Controller {
    inner: Mutex<Inner>,
    table: TableHandle,
    metrics: ProxyMetrics,
}

impl Controller {
    /// Reconciles `store` with `config`, saves it, and builds the first table.
    pub fn new(config: Config, mut store: StateStore, metrics: ProxyMetrics) -> anyhow::Result<(Self, TableHandle)> {
        for entry in store.state.reconcile(&config) {
            store.state.record(entry);
        }
        store.save()?;
        let table = TableHandle::new(RoutingTable::build(&config, |r| store.state.live(r), None, &metrics)?);
        let controller = Self {
            inner: Mutex::new(Inner { config, store }),
            table: table.clone(),
            metrics,
        };
        Ok((controller, table))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that was valid before the panicking call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a new config file: its routes, and weights edited in it.
    pub fn apply_config(&self, config: Config) -> anyhow::Result<()> {
        let mut inner = self.lock();
        let before = inner.store.state.clone();
        let edits = inner.store.state.reconcile(&config);
        if let Err(e) = self.publish(&config, &inner.store) {
            inner.store.state = before;
            return Err(e);
        }
        for entry in edits {
            inner.store.state.record(entry);
        }
        if let Err(e) = inner.store.save() {
            // The new config serves; the next successful save catches up.
            tracing::error!(error = %e, "route state not saved");
        }
        inner.config = config;
        Ok(())
    }

    /// Runs a command on a route for `actor`; with `if_match`, only at that revision.
    pub fn command(
        &self,
        route: &str,
        command: Command,
        actor: &str,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, CommandError> {
        let mut inner = self.lock();
        let result = self.command_locked(&mut inner, route, command.clone(), actor, reason.clone(), if_match);
        if let Err(e) = &result {
            if !matches!(e, CommandError::Persist(_)) {
                let entry = AuditEntry {
                    time: now_rfc3339(),
                    actor: actor.into(),
                    route: Some(route.into()),
                    action: command.name().into(),
                    from: None,
                    to: None,
                    reason,
                    outcome: format!("refused: {e}"),
                };
                inner.store.state.record(entry);
                if let Err(e) = inner.store.save() {
                    tracing::error!(error = %e, "audit not saved");
                }
            }
        }
        result
    }

    fn command_locked(
        &self,
        inner: &mut Inner,
        route: &str,
        command: Command,
        actor: &str,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, CommandError> {
        let Some(plan) = inner
            .config
            .routes
            .iter()
            .find(|r| r.name == route)
            .map(|r| r.rollout.clone())
        else {
            return Err(CommandError::UnknownRoute(route.into()));
        };
        let before = inner.store.state.clone();
        let state = inner
            .store
            .state
            .routes
            .get_mut(route)
            .ok_or_else(|| CommandError::UnknownRoute(route.into()))?;
        if let Some(expected) = if_match {
            if expected != state.revision {
                return Err(CommandError::Stale {
                    route: route.into(),
                    expected,
                    current: state.revision,
                });
            }
        }
        let from = describe(state);
        let action = command.name();
        let event = match command {
            Command::SetWeight(w) => Event::SetWeight(w),
            Command::Start { steps, interval } => Event::Start {
                steps: steps.unwrap_or(plan.steps),
                interval: interval.or(plan.interval),
            },
            Command::Step => Event::Step,
            Command::Pause => Event::Pause,
            Command::Resume => Event::Resume,
            Command::Promote => Event::Promote,
            Command::Abort => Event::Abort,
        };
        apply_event(state, event, reason.clone())?;
        let to = describe(state);
        let entry = AuditEntry {
            time: now_rfc3339(),
            actor: actor.into(),
            route: Some(route.into()),
            action: action.into(),
            from: Some(from),
            to: Some(to),
            reason,
            outcome: "applied".into(),
        };
        inner.store.state.record(entry);
        if let Err(e) = inner.store.save() {
            inner.store.state = before;
            return Err(e.into());
        }
        if let Err(e) = self.publish(&inner.config, &inner.store) {
            tracing::error!(error = %e, "table not rebuilt after a command");
        }
        Ok(self.status_locked(inner, route).expect("route exists"))
    }

    /// Advances timed rollouts whose interval has passed; `analysis_ok` says per route
    /// whether the analysis passed over the whole interval.
    pub fn tick(&self, analysis_ok: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        let mut changed = Vec::new();
        for (name, state) in inner.store.state.routes.iter_mut() {
            let from = describe(state);
            let revision = state.revision;
            if apply_event(
                state,
                Event::Tick {
                    analysis_ok: analysis_ok(name),
                },
                None,
            )
            .is_ok()
                && state.revision != revision
            {
                changed.push((name.clone(), from, describe(state)));
            }
        }
        if changed.is_empty() {
            return;
        }
        for (route, from, to) in changed {
            inner.store.state.record(AuditEntry {
                time: now_rfc3339(),
                actor: "timer".into(),
                route: Some(route),
                action: "step".into(),
                from: Some(from),
                to: Some(to),
                reason: Some("interval passed with the analysis passing".into()),
                outcome: "applied".into(),
            });
        }
        if let Err(e) = inner.store.save() {
            tracing::error!(error = %e, "route state not saved after a timed step");
        }
        if let Err(e) = self.publish(&inner.config, &inner.store) {
            tracing::error!(error = %e, "table not rebuilt after a timed step");
        }
    }

    fn publish(&self, config: &Config, store: &StateStore) -> anyhow::Result<()> {
        let previous = self.table.load_full();
        let table = RoutingTable::build(config, |r| store.state.live(r), Some(&previous), &self.metrics)?;
        self.table.store(table);
        Ok(())
    }

    /// The status of one route.
    pub fn status(&self, route: &str) -> Option<RouteStatus> {
        self.status_locked(&self.lock(), route)
    }

    /// The status of every route, in config order.
    pub fn statuses(&self) -> Vec<RouteStatus> {
        let inner = self.lock();
        inner
            .config
            .routes
            .iter()
            .filter_map(|r| self.status_locked(&inner, &r.name))
            .collect()
    }

    fn status_locked(&self, inner: &Inner, route: &str) -> Option<RouteStatus> {
        let state = inner.store.state.routes.get(route)?;
        let config = inner.config.routes.iter().find(|r| r.name == route)?;
        let variant = |v: Variant, endpoints: usize| {
            let c = self.metrics.variant_counts(route, v);
            VariantStatus {
                endpoints,
                requests: c.requests,
                server_errors: c.server_errors,
                upstream_errors: c.upstream_errors,
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
        })
    }

    /// Recent audit entries, newest last, optionally of one route.
    pub fn audit(&self, route: Option<&str>, limit: usize) -> Vec<AuditEntry> {
        let inner = self.lock();
        let matching: Vec<&AuditEntry> = inner
            .store
            .state
            .audit
            .iter()
            .filter(|e| route.is_none_or(|r| e.route.as_deref() == Some(r)))
            .collect();
        matching[matching.len().saturating_sub(limit)..]
            .iter()
            .map(|e| (*e).clone())
            .collect()
    }

    /// Records an audit entry that is not a route command (a refused API call).
    pub fn record(&self, entry: AuditEntry) {
        let mut inner = self.lock();
        inner.store.state.record(entry);
        if let Err(e) = inner.store.save() {
            tracing::error!(error = %e, "audit not saved");
        }
    }
}

/// Runs one event through a route's state machine and applies its actions to the route.
fn apply_event(state: &mut RouteState, event: Event, reason: Option<String>) -> Result<(), RolloutError> {
    let before = state.rollout.clone();
    let actions = state.rollout.apply(event, now_ms())?;
    let mut changed = state.rollout != before;
    for action in actions {
        match action {
            Action::SetWeight(w) => {
                changed |= w != state.weight();
                state.set_weight(w);
            }
        }
    }
    if changed || reason.is_some() {
        state.revision += 1;
        state.last_reason = reason.or(state.last_reason.take());
    }
    Ok(())
}
