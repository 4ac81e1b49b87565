//! Writes the live state of CanaryRoute routes to their `status`, with optimistic
//! concurrency: read the object, apply the change to the state found there, replace the
//! status at that `resourceVersion`; on a 409 Conflict read again and re-apply. A caller's
//! `If-Match` is checked against the state found, so a stale one is a 412 whichever replica
//! wrote last. Every applied change is an audit entry and a Kubernetes Event on the object.
//!
//! API calls (see [`super::api_calls`]): get of the CanaryRoute, update of its status,
//! create and patch of Events.

use std::sync::Arc;
use std::time::Duration;

use kube::api::PostParams;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};

use super::crd::{CanaryRoute, CanaryRouteStatus};
use crate::controller::{Change, CommandError, Controller, Intent, Owner};
use crate::state::{describe, now_rfc3339, AuditEntry};
use crate::status::RouteStatus;

/// Conflicts retried before giving up (each one means another replica wrote meanwhile).
const ATTEMPTS: u32 = 8;

/// The writer of CanaryRoute status.
pub struct StatusWriter {
    client: Client,
    identity: String,
    recorder: Recorder,
}

impl StatusWriter {
    /// A writer that signs its changes as `identity` (this replica).
    pub fn new(client: Client, identity: String) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "canaryd".into(),
                instance: Some(identity.clone()),
            },
        );
        Self {
            client,
            identity,
            recorder,
        }
    }

    /// Applies `intent` on the cluster's current state of its route; on success every
    /// replica (this one at once) serves the result.
    pub async fn write(
        &self,
        controller: &Controller,
        intent: &Intent,
        action: &str,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, CommandError> {
        let route = intent.route.as_str();
        let Owner::CanaryRoute { namespace, name } = controller.owner(route) else {
            return Err(CommandError::UnknownRoute(route.into()));
        };
        let failed = |e: kube::Error| CommandError::Cluster {
            route: route.into(),
            message: e.to_string(),
        };
        let api: Api<CanaryRoute> = Api::namespaced(self.client.clone(), &namespace);
        for attempt in 0..ATTEMPTS {
            let mut object = api.get(&name).await.map_err(failed)?;
            let base = object.status.as_ref().and_then(CanaryRouteStatus::to_state);
            let from = base.as_ref().map(describe);
            let new = controller.evolve(route, base.clone(), intent, if_match)?;
            if base.as_ref() == Some(&new) {
                controller.adopt(route, new);
                return controller
                    .status(route)
                    .ok_or_else(|| CommandError::UnknownRoute(route.into()));
            }
            let mut status = CanaryRouteStatus::from_state(&new);
            status.updated_by = Some(format!("{} via {}", intent.actor, self.identity));
            status.updated_at = Some(now_rfc3339());
            status.observed_generation = object.metadata.generation;
            if let Some(old) = &object.status {
                status.last_verdict = old.last_verdict.clone();
            }
            object.status = Some(status);
            match api.replace_status(&name, &PostParams::default(), &object).await {
                Ok(_) => {
                    let to = describe(&new);
                    controller.adopt(route, new);
                    if !matches!(intent.change, Change::Init) {
                        let from = from.unwrap_or_else(|| "none".into());
                        self.audit(controller, &object, intent, action, from, to).await;
                    }
                    return controller
                        .status(route)
                        .ok_or_else(|| CommandError::UnknownRoute(route.into()));
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::debug!(route, attempt, "status write conflicted; retrying on fresh state");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1))).await;
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Err(CommandError::Cluster {
            route: route.into(),
            message: format!("{ATTEMPTS} conflicting writes in a row; try again"),
        })
    }

    async fn audit(
        &self,
        controller: &Controller,
        object: &CanaryRoute,
        intent: &Intent,
        action: &str,
        from: String,
        to: String,
    ) {
        let note = format!(
            "{from} → {to} by {}{}",
            intent.actor,
            intent.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        );
        controller.record(AuditEntry::applied(
            &intent.actor,
            &intent.route,
            action,
            from,
            to,
            intent.reason.clone(),
        ));
        let event = Event {
            type_: if action == "abort" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: pascal(action),
            note: Some(note.chars().take(1000).collect()),
            action: pascal(action),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(route = %intent.route, error = %e, "Kubernetes Event not recorded (the audit log has it)");
        }
    }

    /// Writes queued intents (timed steps, analysis aborts, first statuses, spec edits) until
    /// the process stops.
    pub async fn run(self: Arc<Self>, controller: Arc<Controller>) {
        loop {
            for intent in controller.next_intents().await {
                let action = match &intent.change {
                    Change::Event(e) => e.name(),
                    Change::Init => "init",
                    Change::SpecWeight(_) => "config",
                };
                let spec_driven = matches!(intent.change, Change::Init | Change::SpecWeight(_));
                match self.write(&controller, &intent, action, None).await {
                    Ok(_) => {}
                    // The state moved on meanwhile (already aborted, say): nothing to do.
                    Err(CommandError::Rollout(e)) => {
                        tracing::debug!(route = %intent.route, error = %e, "intent no longer applies")
                    }
                    Err(e @ CommandError::Cluster { .. }) => {
                        tracing::error!(route = %intent.route, error = %e, "shared state not written; retrying in 1s");
                        let (controller, intent) = (controller.clone(), intent.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            controller.queue(intent);
                        });
                        // Still pending: the retry writes it.
                        continue;
                    }
                    Err(e) => tracing::error!(route = %intent.route, error = %e, "shared state not written"),
                }
                if spec_driven {
                    controller.spec_written(&intent.route);
                }
            }
        }
    }
}

fn pascal(action: &str) -> String {
    let mut c = action.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}
