//! Commands from the API on one route: a rollout [`Event`] checked, applied through the state
//! machine, audited, built into a table, saved, then served.

use crate::rollout::{Event, RolloutError};
use crate::state::{describe, now_ms, AuditEntry, RouteState, StateError};
use crate::status::RouteStatus;

use super::{Change, Controller, Inner, Intent, Owner};

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
        event: Event,
        actor: &str,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, CommandError> {
        let mut inner = self.lock();
        let result = self.command_locked(&mut inner, route, event.clone(), actor, reason.clone(), if_match);
        if let Err(e) = &result {
            if !matches!(e, CommandError::Persist(_)) {
                let entry = AuditEntry::refused(actor, Some(route), event.name(), reason, &e.to_string());
                inner.store.state.record(entry);
                inner.store.save_soon();
            }
        }
        result
    }

    /// Decides, builds the table the new state makes, saves, then serves: Ok means the data
    /// plane serves the change; on any error nothing changed.
    fn command_locked(
        &self,
        inner: &mut Inner,
        route: &str,
        event: Event,
        actor: &str,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, CommandError> {
        let (next, entry) = decide(inner, route, event, actor, reason, if_match, now_ms())?;
        let table = {
            let state = &inner.store.state;
            self.build_table_with(&inner.config, |r| {
                if r.name == route {
                    next.live(route)
                } else {
                    state.live(r)
                }
            })
        }
        .map_err(|e| CommandError::NotServed {
            route: route.into(),
            message: format!("{e:#}"),
        })?;
        let previous = inner.store.state.routes.insert(route.into(), next);
        inner.store.state.record(entry);
        if let Err(e) = inner.store.save() {
            if let Some(previous) = previous {
                inner.store.state.routes.insert(route.into(), previous);
            }
            inner.store.state.audit.pop_back();
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
        event: Event,
        actor: &str,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, CommandError> {
        let shared = matches!(self.owner(route), Owner::CanaryRoute { .. });
        match (shared, self.cluster.get()) {
            (true, Some(writer)) => {
                let name = event.name();
                let intent = Intent {
                    route: route.into(),
                    change: Change::Event(self.planned(route, event)?),
                    actor: actor.into(),
                    reason: reason.clone(),
                };
                let result = writer.write(self, &intent, name, if_match).await;
                if let Err(e) = &result {
                    let entry = AuditEntry::refused(actor, Some(route), name, reason, &e.to_string());
                    self.record(entry);
                }
                result
            }
            _ => self.command(route, event, actor, reason, if_match),
        }
    }

    /// `event` with a rollout start's missing fields taken from the route's plan.
    fn planned(&self, route: &str, event: Event) -> Result<Event, CommandError> {
        let inner = self.lock();
        let plan = inner
            .route(route)
            .map(|r| r.rollout.clone())
            .ok_or_else(|| CommandError::UnknownRoute(route.into()))?;
        Ok(event.planned(&plan.steps, plan.interval))
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

/// What `event` makes of `route` for `actor`: its next state and the audit entry, or why
/// it is refused (owner, unknown route, `If-Match`, the state machine). Decides only; the
/// caller builds, saves and serves.
fn decide(
    inner: &Inner,
    route: &str,
    event: Event,
    actor: &str,
    reason: Option<String>,
    if_match: Option<u64>,
    now_ms: u64,
) -> Result<(RouteState, AuditEntry), CommandError> {
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
    let unknown = || CommandError::UnknownRoute(route.into());
    let plan = &inner.route(route).ok_or_else(unknown)?.rollout;
    let current = inner.store.state.routes.get(route).ok_or_else(unknown)?;
    if let Some(expected) = if_match {
        if expected != current.revision {
            return Err(CommandError::Stale {
                route: route.into(),
                expected,
                current: current.revision,
            });
        }
    }
    let action = event.name();
    let mut next = current.clone();
    next.apply(event.planned(&plan.steps, plan.interval), reason.clone(), now_ms)?;
    let entry = AuditEntry::applied(actor, route, action, describe(current), describe(&next), reason);
    Ok((next, entry))
}

#[cfg(test)]
mod tests {
    use canary_proxy::ProxyMetrics;

    use super::*;
    use crate::metrics::ControlMetrics;
    use crate::rollout::Phase;
    use crate::state::StateStore;

    fn controller() -> Controller {
        let config = canary_config::parse(
            "listen: { http: \"127.0.0.1:0\" }\nadmin: { listen: \"127.0.0.1:0\" }\nroutes:\n  - name: web\n    \
             stable: { endpoints: [\"127.0.0.1:1\"] }\n    canary: { endpoints: [\"127.0.0.1:2\"] }\n    \
             rollout: { steps: [10, 50] }\n",
        )
        .unwrap();
        let registry = prometheus::Registry::new();
        Controller::new(
            config,
            StateStore::open(None, false).unwrap(),
            ProxyMetrics::register(&registry).unwrap(),
            ControlMetrics::register(&registry).unwrap(),
        )
        .unwrap()
        .0
    }

    fn start() -> Event {
        Event::Start {
            steps: None,
            interval: None,
        }
    }

    /// The decision alone: next state and audit entry, nothing changed until it is applied.
    #[test]
    fn a_decision_changes_nothing_and_says_what_would_change() {
        let c = controller();
        let inner = c.lock();
        let (next, entry) = decide(&inner, "web", start(), "ci", Some("release 42".into()), Some(1), 1_000).unwrap();
        assert_eq!(
            (next.rollout.phase, next.weight().percent()),
            (Phase::Progressing, 10.0)
        );
        assert_eq!(next.rollout.step_started_ms, 1_000);
        assert_eq!((entry.actor.as_str(), entry.action.as_str()), ("ci", "rollout"));
        assert_eq!(entry.from.as_deref(), Some("0 % Idle"));
        assert_eq!(entry.to.as_deref(), Some("10 % Progressing"));
        assert_eq!(
            inner.store.state.routes["web"].rollout.phase,
            Phase::Idle,
            "decided only"
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let c = controller();
        let mut inner = c.lock();
        let refused = |inner: &Inner, route: &str, event: Event, if_match: Option<u64>| {
            decide(inner, route, event, "ci", None, if_match, 0)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(&inner, "nope", Event::Step, None).contains("nope"));
        let stale = refused(&inner, "web", Event::Step, Some(7));
        assert!(stale.contains("revision 1, not 7"), "{stale}");
        let phase = refused(&inner, "web", Event::Step, None);
        assert!(phase.contains("Idle"), "{phase}");
        inner.owners.insert(
            "web".into(),
            Owner::Ingress {
                source: "prod/web-canary".into(),
            },
        );
        assert!(refused(&inner, "web", start(), None).contains("prod/web-canary"));
    }

    /// Applied: saved, served and audited together; refused: audited as refused, unchanged.
    #[test]
    fn a_command_serves_its_state_and_a_refused_one_changes_nothing() {
        let c = controller();
        let served = c.table.load_full();
        let status = c.command("web", start(), "ci", None, None).unwrap();
        assert_eq!(
            (status.phase, status.weight, status.revision),
            (Phase::Progressing, 10.0, 2)
        );
        assert!(!std::sync::Arc::ptr_eq(&served, &c.table.load_full()), "no new table");
        let err = c.command("web", Event::Resume, "ci", None, None).unwrap_err();
        assert!(matches!(err, CommandError::Rollout(_)), "{err:?}");
        assert_eq!(c.status("web").unwrap().revision, 2);
        let audit = c.audit(Some("web"), 2);
        assert_eq!(audit[0].outcome, "applied");
        assert!(audit[1].outcome.starts_with("refused: cannot resume"), "{:?}", audit[1]);
    }
}
