//! Commands from the API on one route: checked, applied through the state machine, audited,
//! built into a table, saved, then served.

use std::time::Duration;

use canary_config::Weight;

use crate::rollout::{Event, RolloutError};
use crate::state::{describe, now_ms, AuditEntry, RouteState, StateError};
use crate::status::RouteStatus;

use super::{Change, Controller, Inner, Intent, Owner};

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
    /// The state machine event of the command; a rollout start takes what it leaves out from
    /// the route's planned steps and interval.
    fn into_event(self, plan_steps: Vec<Weight>, plan_interval: Option<Duration>) -> Event {
        match self {
            Command::SetWeight(w) => Event::SetWeight(w),
            Command::Start { steps, interval } => Event::Start {
                steps: steps.unwrap_or(plan_steps),
                interval: interval.or(plan_interval),
            },
            Command::Step => Event::Step,
            Command::Pause => Event::Pause,
            Command::Resume => Event::Resume,
            Command::Promote => Event::Promote,
            Command::Abort => Event::Abort,
        }
    }

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
    /// The route's weight belongs to another object (an Ingress annotation).
    #[error("route {route} is owned by {owner}; change it there")]
    NotOurs {
        /// The route.
        route: String,
        /// What owns it.
        owner: String,
    },
    /// The shared state could not be written to the cluster; nothing changed.
    #[error("route {route}: shared state not written to the cluster: {message}")]
    Cluster {
        /// The route.
        route: String,
        /// Why.
        message: String,
    },
    /// The table serving the change could not be built; nothing changed.
    #[error("route {route}: the change cannot be served, undone: {message}")]
    NotServed {
        /// The route.
        route: String,
        /// Why.
        message: String,
    },
}

impl Controller {
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
                let entry = AuditEntry::refused(actor, Some(route), command.name(), reason, &e.to_string());
                inner.store.state.record(entry);
                inner.store.save_soon();
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
        match inner.owners.get(route) {
            None | Some(Owner::Local) => {}
            Some(Owner::Ingress { source }) => {
                return Err(CommandError::NotOurs {
                    route: route.into(),
                    owner: format!("the canary annotations of Ingress {source}"),
                })
            }
            Some(Owner::CanaryRoute { namespace, name }) => {
                return Err(CommandError::Cluster {
                    route: route.into(),
                    message: format!("CanaryRoute {namespace}/{name} is changed through the cluster writer"),
                })
            }
        }
        let Some(plan) = inner.route(route).map(|r| r.rollout.clone()) else {
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
        let event = command.into_event(plan.steps, plan.interval);
        state.apply(event, reason.clone(), now_ms())?;
        let to = describe(state);
        let entry = AuditEntry::applied(actor, route, action, from, to, reason);
        inner.store.state.record(entry);
        // Built before it is saved, swapped in after: Ok means the data plane serves it.
        let table = match self.build_table(&inner.config, &inner.store) {
            Ok(t) => t,
            Err(e) => {
                inner.store.state = before;
                return Err(CommandError::NotServed {
                    route: route.into(),
                    message: format!("{e:#}"),
                });
            }
        };
        if let Err(e) = inner.store.save() {
            inner.store.state = before;
            return Err(e.into());
        }
        self.table.store(table);
        Ok(self
            .status_locked(inner, &self.table.load(), route)
            .expect("route exists"))
    }

    /// Runs a command on a route for `actor`: routes kept in CanaryRoute status are changed
    /// on the cluster first (every replica then applies it), others here.
    pub async fn command_async(
        &self,
        route: &str,
        command: Command,
        actor: &str,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, CommandError> {
        let shared = matches!(self.owner(route), Owner::CanaryRoute { .. });
        match (shared, self.cluster.get()) {
            (true, Some(writer)) => {
                let event = self.event_for(route, command.clone())?;
                let intent = Intent {
                    route: route.into(),
                    change: Change::Event(event),
                    actor: actor.into(),
                    reason: reason.clone(),
                };
                let result = writer.write(self, &intent, command.name(), if_match).await;
                if let Err(e) = &result {
                    let entry = AuditEntry::refused(actor, Some(route), command.name(), reason, &e.to_string());
                    self.record(entry);
                }
                result
            }
            _ => self.command(route, command, actor, reason, if_match),
        }
    }

    /// The state machine event of a command (a rollout start takes the route's plan).
    fn event_for(&self, route: &str, command: Command) -> Result<Event, CommandError> {
        let inner = self.lock();
        let plan = inner
            .route(route)
            .map(|r| r.rollout.clone())
            .ok_or_else(|| CommandError::UnknownRoute(route.into()))?;
        Ok(command.into_event(plan.steps, plan.interval))
    }

    /// The state `change` makes of `base` (the cluster's current state of `route`, or `None`
    /// when it has none yet); `if_match` is checked against it.
    pub fn evolve(
        &self,
        route: &str,
        base: Option<RouteState>,
        intent: &Intent,
        if_match: Option<u64>,
    ) -> Result<RouteState, CommandError> {
        let spec_weight = self
            .lock()
            .route(route)
            .map(|r| r.weight)
            .ok_or_else(|| CommandError::UnknownRoute(route.into()))?;
        let mut state = base.unwrap_or_else(|| RouteState::new(spec_weight));
        if let Some(expected) = if_match {
            if expected != state.revision {
                return Err(CommandError::Stale {
                    route: route.into(),
                    expected,
                    current: state.revision,
                });
            }
        }
        match &intent.change {
            Change::Init => {}
            Change::SpecWeight(w) => {
                state.apply_config_weight(*w, "weight edited in the CanaryRoute spec");
            }
            Change::Event(e) => state.apply(e.clone(), intent.reason.clone(), now_ms())?,
        }
        Ok(state)
    }
}
