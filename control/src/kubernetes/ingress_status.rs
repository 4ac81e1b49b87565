//! Publishes canaryd's own address in `status.loadBalancer` of the Ingresses it serves, as an
//! ingress controller does, so `kubectl get ingress`, external-dns and Argo CD health checks
//! see where the hosts are served. The address is that of canaryd's LoadBalancer Service
//! (given by MetalLB). Only the leader writes.
//!
//! API calls (see [`super::api_calls`]): get of the Service, list of Ingresses, patch of
//! their status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::ingress::is_ours;
use crate::controller::Controller;

/// How often the addresses are checked.
const PERIOD: Duration = Duration::from_secs(5);

/// Keeps the status of our Ingresses pointing at `service` (namespace, name) until `stop`.
pub async fn run(
    client: Client,
    controller: Arc<Controller>,
    service: (String, String),
    class: String,
    watch_namespace: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let services: Api<Service> = Api::namespaced(client.clone(), &service.0);
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !controller.is_leader() {
            continue;
        }
        let addresses = match services.get_opt(&service.1).await {
            Ok(Some(s)) => load_balancer_addresses(&s),
            Ok(None) => {
                tracing::warn!(service = %format!("{}/{}", service.0, service.1), "kubernetes.publish_service not found");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading kubernetes.publish_service");
                continue;
            }
        };
        let ingresses: Api<Ingress> = match &watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let list = match ingresses.list(&Default::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing Ingresses for their status");
                continue;
            }
        };
        for ing in list.items.iter().filter(|i| is_ours(i, &class)) {
            let current = ing
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.clone())
                .unwrap_or_default();
            if current == addresses {
                continue;
            }
            let ns = ing.namespace().unwrap_or_default();
            let status = IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(addresses.clone()),
                }),
            };
            let patch = serde_json::json!({ "status": status });
            let api: Api<Ingress> = Api::namespaced(client.clone(), &ns);
            match api
                .patch_status(&ing.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(ingress = %format!("{ns}/{}", ing.name_any()), "ingress status address set"),
                Err(e) => {
                    tracing::warn!(ingress = %format!("{ns}/{}", ing.name_any()), error = %e, "ingress status not written")
                }
            }
        }
    }
}

/// The Service's load-balancer addresses, as Ingress status entries.
fn load_balancer_addresses(service: &Service) -> Vec<IngressLoadBalancerIngress> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| {
            list.iter()
                .map(|i| IngressLoadBalancerIngress {
                    ip: i.ip.clone(),
                    hostname: i.hostname.clone(),
                    ..IngressLoadBalancerIngress::default()
                })
                .collect()
        })
        .unwrap_or_default()
}
