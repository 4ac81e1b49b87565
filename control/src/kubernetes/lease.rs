//! Leader election with a `coordination.k8s.io/v1` Lease: the holder renews it every third
//! of its duration; another replica takes it over once it has not been renewed for a whole
//! duration. Every write carries the `resourceVersion` read, so two replicas racing for an
//! expired Lease cannot both win. Only the leader advances timed rollouts; aborts need no
//! leader.
//!
//! API calls (see [`super::api_calls`]): get, create and update of the Lease.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::controller::Controller;

/// The election loop's settings.
pub struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (`holderIdentity`).
    pub identity: String,
    /// Lease duration.
    pub duration: Duration,
}

/// What one round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Leading,
    Following,
}

impl Election {
    /// Runs until `stop`; on the way out a held Lease is released so another replica takes
    /// over at once instead of after a whole duration.
    pub async fn run(self, client: Client, controller: Arc<Controller>, mut stop: watch::Receiver<bool>) {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut tick = tokio::time::interval(self.duration / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let leading = match self.round(&api).await {
                Ok(r) => r == Round::Leading,
                Err(e) => {
                    // Unsure means not leading: two leaders are worse than none for a moment.
                    tracing::warn!(lease = %self.name, error = %e, "lease round failed");
                    false
                }
            };
            controller.set_leader(leading);
        }
        if controller.is_leader() {
            controller.set_leader(false);
            if let Err(e) = self.release(&api).await {
                tracing::warn!(lease = %self.name, error = %e, "lease not released");
            }
        }
    }

    async fn round(&self, api: &Api<Lease>) -> kube::Result<Round> {
        let now = Timestamp::now();
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Following),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let duration = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
        let expired = renewed.is_none_or(|t| {
            now.duration_since(t)
                .try_into()
                .is_ok_and(|age: Duration| age >= duration)
        });
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            LeaseSpec {
                renew_time: Some(MicroTime(now)),
                ..self.spec(spec.acquire_time.map_or(now, |t| t.0), transitions)
            }
        } else if holder.is_empty() || expired {
            tracing::info!(lease = %self.name, previous = holder, "taking over the leader lease");
            self.spec(now, transitions + 1)
        } else {
            return Ok(Round::Following);
        };
        lease.spec = Some(new_spec);
        // The resourceVersion read makes this a compare-and-swap.
        match api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Round::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Following),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn release(&self, api: &Api<Lease>) -> kube::Result<()> {
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        api.replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}
