//! Publishes canaryd's own address in `status.loadBalancer` of the Ingresses it serves, as an
//! ingress controller does, so `kubectl get ingress`, external-dns and Argo CD health checks
//! see where the hosts are served. The address is that of canaryd's LoadBalancer Service
//! (given by MetalLB). Only the leader writes.
//!
//! Driven by changes, not by a timer: the Ingresses come from the watch that `sources.rs`
//! already runs for routes, the Service from a watch of that one name, and leadership from the
//! controller. Each change compares every Ingress of ours with the address (pure, in
//! [`stale`]) and patches only those that differ; a failed patch is retried after a pause.
//!
//! API calls (see [`super::api_calls`]): list/watch of the one Service (by name), patch of
//! Ingress status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{watch, Notify};

use super::ingress::is_ours;
use super::watch::{Snapshot, Watch};
use crate::controller::Controller;

/// How long a failed status write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Keeps the status of our Ingresses (as `ingresses` publishes them) pointing at `service`
/// (namespace, name) until `stop`.
pub async fn run(
    client: Client,
    controller: Arc<Controller>,
    service: (String, String),
    class: String,
    mut ingresses: watch::Receiver<Arc<Snapshot<Ingress>>>,
    mut stop: watch::Receiver<bool>,
) {
    let service_changed = Arc::new(Notify::new());
    let services = Watch::start(
        Api::<Service>::namespaced(client.clone(), &service.0),
        watcher::Config::default().fields(&format!("metadata.name={}", service.1)),
        format!("service {}/{}", service.0, service.1),
        service_changed.clone(),
        load_balancer_addresses,
    );
    let mut leadership = controller.leadership();
    let mut missing_reported = false;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = service_changed.notified() => {}
            r = ingresses.changed() => if r.is_err() { return },
            r = leadership.changed() => if r.is_err() { return },
            _ = retry => {}
        }
        retry_at = None;
        if !controller.is_leader() {
            continue;
        }
        let snapshot = services.snapshot();
        if !snapshot.synced {
            continue;
        }
        let Some(addresses) = snapshot.objects.get(&service) else {
            if !missing_reported {
                tracing::warn!(service = %format!("{}/{}", service.0, service.1), "kubernetes.publish_service not found");
                missing_reported = true;
            }
            continue;
        };
        missing_reported = false;
        let current = ingresses.borrow_and_update().clone();
        for (ns, name) in stale(addresses, &current.objects, &class) {
            if let Err(e) = write(&client, &ns, &name, addresses).await {
                tracing::warn!(ingress = %format!("{ns}/{name}"), error = %e, "ingress status not written");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            } else {
                tracing::info!(ingress = %format!("{ns}/{name}"), "ingress status address set");
            }
        }
    }
}

/// The Ingresses of `class` whose status does not already hold `addresses`.
pub fn stale(
    addresses: &[IngressLoadBalancerIngress],
    ingresses: &BTreeMap<(String, String), Ingress>,
    class: &str,
) -> Vec<(String, String)> {
    ingresses
        .iter()
        .filter(|(_, ing)| is_ours(ing, class))
        .filter(|(_, ing)| {
            let current = ing
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_deref())
                .unwrap_or_default();
            current != addresses
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Merge-patches one Ingress's `status.loadBalancer`.
async fn write(client: &Client, ns: &str, name: &str, addresses: &[IngressLoadBalancerIngress]) -> kube::Result<()> {
    let status = IngressStatus {
        load_balancer: Some(IngressLoadBalancerStatus {
            ingress: Some(addresses.to_vec()),
        }),
    };
    let patch = serde_json::json!({ "status": status });
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// The Service's load-balancer addresses, as Ingress status entries.
fn load_balancer_addresses(service: Service) -> Vec<IngressLoadBalancerIngress> {
    service
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .map(|list| {
            list.into_iter()
                .map(|i| IngressLoadBalancerIngress {
                    ip: i.ip,
                    hostname: i.hostname,
                    ..IngressLoadBalancerIngress::default()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(name: &str, class: &str, ip: Option<&str>) -> ((String, String), Ingress) {
        let mut ing: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "prod"},
            "spec": {"ingressClassName": class},
        }))
        .unwrap();
        if let Some(ip) = ip {
            ing.status = Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(vec![address(ip)]),
                }),
            });
        }
        (("prod".into(), name.into()), ing)
    }

    fn address(ip: &str) -> IngressLoadBalancerIngress {
        IngressLoadBalancerIngress {
            ip: Some(ip.into()),
            ..IngressLoadBalancerIngress::default()
        }
    }

    #[test]
    fn only_our_ingresses_with_another_address_are_written() {
        let set: BTreeMap<_, _> = [
            ingress("fresh", "canaryd", None),
            ingress("moved", "canaryd", Some("192.0.2.1")),
            ingress("right", "canaryd", Some("192.0.2.10")),
            ingress("theirs", "nginx", None),
        ]
        .into_iter()
        .collect();
        let names = |v: Vec<(String, String)>| v.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
        assert_eq!(
            names(stale(&[address("192.0.2.10")], &set, "canaryd")),
            ["fresh", "moved"]
        );
        // No address yet: only an Ingress that shows one is written (cleared).
        assert_eq!(names(stale(&[], &set, "canaryd")), ["moved", "right"]);
    }
}
