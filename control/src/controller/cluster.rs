//! Routes whose state lives in the cluster: who owns a route, the writes queued for
//! CanaryRoute status, the composition of every source, and state adopted from the cluster.

use std::collections::HashMap;

use canary_config::{Config, Weight};
use canary_proxy::Variant;

use crate::rollout::Event;
use crate::state::RouteState;

use super::Controller;

/// Where a route's live state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This process (and its state file).
    Local,
    /// The status of a CanaryRoute, shared by every replica.
    CanaryRoute {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// An Ingress (and its canary Ingress): the weight is its annotation, not ours to change.
    Ingress {
        /// `namespace/name` of the Ingress that sets the weight.
        source: String,
    },
}

/// A change to a CanaryRoute-owned route, to be made on the cluster's current state.
#[derive(Debug, Clone)]
pub struct Intent {
    /// The route.
    pub route: String,
    /// The change.
    pub change: Change,
    /// Who asked (token name, `analysis`, `timer`, `spec`).
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
}

/// What an [`Intent`] changes.
#[derive(Debug, Clone)]
pub enum Change {
    /// An event of the rollout state machine.
    Event(Event),
    /// Write the first status of a route that has none.
    Init,
    /// The spec's weight was edited (in Git, say): apply it once.
    SpecWeight(Weight),
}

impl Controller {
    /// Takes a route's state from the cluster unless ours is newer (a local abort not yet
    /// written); republishes the table when it changed.
    pub fn adopt(&self, route: &str, state: RouteState) {
        let mut inner = self.lock();
        let Some(current) = inner.store.state.routes.get_mut(route) else {
            return;
        };
        if *current == state || state.revision < current.revision {
            return;
        }
        *current = state;
        inner.store.save_soon();
        if let Err(e) = self.publish(&inner.config, &inner.store) {
            tracing::error!(error = %e, "table not rebuilt after adopting cluster state");
        }
        self.publish_gauges(&mut inner);
    }

    /// Applies routes from every source (config file, CanaryRoutes, Ingresses, discovery):
    /// `owners` says whose state each route is, `shared` holds the cluster's state of
    /// CanaryRoute routes that have one. Queues the writes the cluster needs.
    pub fn apply_sources(
        &self,
        config: Config,
        owners: HashMap<String, Owner>,
        shared: HashMap<String, RouteState>,
        discovery: HashMap<(String, Variant), crate::status::DiscoveryStatus>,
    ) -> anyhow::Result<()> {
        let mut inner = self.lock();
        let before = inner.store.state.clone();
        let mut intents = Vec::new();
        for route in &config.routes {
            let state = inner.store.state.routes.get(&route.name);
            match owners.get(&route.name) {
                Some(Owner::CanaryRoute { .. }) => {
                    let change = match shared.get(&route.name) {
                        Some(s) => {
                            if state.is_none_or(|l| s.revision >= l.revision) {
                                inner.store.state.routes.insert(route.name.clone(), s.clone());
                            }
                            (s.config_weight_ppm != route.weight.ppm()).then_some(Change::SpecWeight(route.weight))
                        }
                        None => Some(Change::Init),
                    };
                    if let Some(change) = change.filter(|_| inner.spec_writes.insert(route.name.clone())) {
                        let reason = matches!(change, Change::SpecWeight(_))
                            .then(|| "weight edited in the CanaryRoute spec".to_string());
                        intents.push(Intent {
                            route: route.name.clone(),
                            change,
                            actor: "spec".into(),
                            reason,
                        });
                    }
                }
                Some(Owner::Ingress { source }) => {
                    if let Some(s) = inner.store.state.routes.get_mut(&route.name) {
                        s.apply_config_weight(route.weight, &format!("canary-weight of Ingress {source}"));
                    }
                }
                None | Some(Owner::Local) => {}
            }
        }
        self.serve_config(&mut inner, config, before)?;
        inner.owners = owners;
        inner.discovery = discovery;
        if !intents.is_empty() {
            inner.intents.extend(intents);
            self.intents_ready.notify_one();
        }
        self.publish_gauges(&mut inner);
        Ok(())
    }

    /// The spec-driven write of `route` (init, spec weight) is done, written or not: the
    /// next recompose may queue one again.
    pub fn spec_written(&self, route: &str) {
        self.lock().spec_writes.remove(route);
    }

    /// Queues a write to CanaryRoute status.
    pub fn queue(&self, intent: Intent) {
        self.lock().intents.push(intent);
        self.intents_ready.notify_one();
    }

    /// Waits for queued writes to CanaryRoute status and takes them.
    pub async fn next_intents(&self) -> Vec<Intent> {
        loop {
            let taken = std::mem::take(&mut self.lock().intents);
            if !taken.is_empty() {
                return taken;
            }
            self.intents_ready.notified().await;
        }
    }
}
