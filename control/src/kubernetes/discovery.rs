//! Endpoint discovery: a variant's `kubernetes:` source resolved to the addresses of its
//! ready Pods, from EndpointSlices (by Service) or from Pods (by label selector).
//!
//! Only `ready` endpoints are published; a terminating one drops out of the set, so it gets
//! no new requests, while requests already sent to it finish on their connections.
//!
//! API calls (see [`super::api_calls`]): list/watch of EndpointSlices, of Pods, and of the
//! Service for a port given by number.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use canary_config::{Endpoint, KubeTarget, PortRef};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;

use super::watch::Watch;

/// A source with its namespace resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// Namespace watched.
    pub namespace: String,
    /// What is watched there.
    pub target: KubeTarget,
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            KubeTarget::Service { name, port } => match port {
                PortRef::Name(p) => write!(f, "service {}/{name}:{p}", self.namespace),
                PortRef::Number(p) => write!(f, "service {}/{name}:{p}", self.namespace),
            },
            KubeTarget::Selector { selector, port } => write!(f, "pods {}/{{{selector}}}:{port}", self.namespace),
        }
    }
}

/// What a source resolves to now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// Ready endpoints, de-duplicated and sorted.
    pub endpoints: Vec<Endpoint>,
    /// The first complete list arrived (before that the set is empty, not "no endpoints").
    pub synced: bool,
    /// Seconds the set may be behind the cluster (0 while the watches are healthy).
    pub stale_seconds: f64,
}

/// The parts of an EndpointSlice discovery needs.
#[derive(Debug, Clone)]
struct Slice {
    /// Port name ("" when unnamed) → port number.
    ports: Vec<(String, i32)>,
    /// Addresses of ready endpoints.
    ready: Vec<String>,
}

fn slim_slice(s: EndpointSlice) -> Slice {
    let ports = s
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((p.name.unwrap_or_default(), p.port?)))
        .collect();
    let ready = s
        .endpoints
        .unwrap_or_default()
        .into_iter()
        // A nil `ready` means ready (EndpointSlice API); terminating endpoints are not ready.
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true) && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .flat_map(|e| e.addresses)
        .collect();
    Slice { ports, ready }
}

/// A Service's ports: number → name ("" when unnamed).
#[derive(Debug, Clone)]
struct ServicePorts(Vec<(i32, String)>);

fn slim_service(s: Service) -> ServicePorts {
    ServicePorts(
        s.spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.port, p.name.unwrap_or_default()))
            .collect(),
    )
}

/// A Pod's address when it is ready for requests.
#[derive(Debug, Clone)]
struct PodAddress(Option<String>);

fn slim_pod(p: Pod) -> PodAddress {
    if p.metadata.deletion_timestamp.is_some() {
        return PodAddress(None);
    }
    let status = p.status.unwrap_or_default();
    let ready = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    PodAddress(if ready { status.pod_ip } else { None })
}

enum Source {
    Service {
        slices: Watch<Slice>,
        /// Watched only for a port given by number, to find that port's name.
        service: Option<Watch<ServicePorts>>,
    },
    Pods(Watch<PodAddress>),
}

/// The running watches, one set per source in use.
pub struct Discovery {
    client: Client,
    changed: Arc<Notify>,
    sources: BTreeMap<SourceKey, Source>,
}

impl Discovery {
    /// No sources yet; `changed` is notified whenever a source's set changes.
    pub fn new(client: Client, changed: Arc<Notify>) -> Self {
        Self {
            client,
            changed,
            sources: BTreeMap::new(),
        }
    }

    /// Starts watches for new sources and stops those no longer wanted.
    pub fn ensure(&mut self, wanted: &BTreeSet<SourceKey>) {
        self.sources.retain(|k, _| wanted.contains(k));
        for key in wanted {
            if self.sources.contains_key(key) {
                continue;
            }
            let source = self.start(key);
            tracing::info!(source = %key, "discovery started");
            self.sources.insert(key.clone(), source);
        }
    }

    fn start(&self, key: &SourceKey) -> Source {
        let ns = &key.namespace;
        match &key.target {
            KubeTarget::Service { name, port } => {
                let slices = Watch::start(
                    Api::<EndpointSlice>::namespaced(self.client.clone(), ns),
                    watcher::Config::default().labels(&format!("kubernetes.io/service-name={name}")),
                    format!("endpointslices {ns}/{name}"),
                    self.changed.clone(),
                    slim_slice,
                );
                let service = matches!(port, PortRef::Number(_)).then(|| {
                    Watch::start(
                        Api::<Service>::namespaced(self.client.clone(), ns),
                        watcher::Config::default().fields(&format!("metadata.name={name}")),
                        format!("service {ns}/{name}"),
                        self.changed.clone(),
                        slim_service,
                    )
                });
                Source::Service { slices, service }
            }
            KubeTarget::Selector { selector, .. } => Source::Pods(Watch::start(
                Api::<Pod>::namespaced(self.client.clone(), ns),
                watcher::Config::default().labels(selector),
                format!("pods {ns} {selector}"),
                self.changed.clone(),
                slim_pod,
            )),
        }
    }

    /// The endpoints of a source (empty and unsynced when it is not watched yet).
    pub fn resolve(&self, key: &SourceKey) -> Resolved {
        let Some(source) = self.sources.get(key) else {
            return Resolved::default();
        };
        let mut endpoints = BTreeSet::new();
        let (synced, stale_seconds) = match (source, &key.target) {
            (Source::Service { slices, service }, KubeTarget::Service { port, .. }) => {
                let slices = slices.snapshot();
                let service = service.as_ref().map(|s| s.snapshot());
                let port_name = match port {
                    PortRef::Name(n) => Some(n.clone()),
                    PortRef::Number(n) => service
                        .as_ref()
                        .and_then(|s| s.objects.values().next())
                        .and_then(|ports| ports.0.iter().find(|(p, _)| i32::from(*n) == *p))
                        .map(|(_, name)| name.clone()),
                };
                if let Some(port_name) = port_name {
                    for slice in slices.objects.values() {
                        let Some((_, number)) = slice.ports.iter().find(|(name, _)| *name == port_name) else {
                            continue;
                        };
                        for ip in &slice.ready {
                            endpoints.extend(endpoint(ip, *number));
                        }
                    }
                }
                let service_synced = service.as_ref().is_none_or(|s| s.synced);
                let stale = slices
                    .stale_seconds()
                    .max(service.as_ref().map_or(0.0, |s| s.stale_seconds()));
                (slices.synced && service_synced, stale)
            }
            (Source::Pods(pods), KubeTarget::Selector { port, .. }) => {
                let pods = pods.snapshot();
                for ip in pods.objects.values().filter_map(|p| p.0.as_deref()) {
                    endpoints.extend(endpoint(ip, i32::from(*port)));
                }
                (pods.synced, pods.stale_seconds())
            }
            _ => unreachable!("a source is started from its own key"),
        };
        Resolved {
            endpoints: endpoints.into_iter().collect(),
            synced,
            stale_seconds,
        }
    }
}

/// `ip:port`, bracketing IPv6; `None` for an address that is not an IP (never in practice).
fn endpoint(ip: &str, port: i32) -> Option<Endpoint> {
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let port = u16::try_from(port).ok()?;
    Endpoint::parse(&std::net::SocketAddr::new(ip, port).to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_keep_only_ready_endpoints() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s1", "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        let s = slim_slice(slice);
        assert_eq!(s.ready, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(s.ports, [("http".to_string(), 8080), ("metrics".to_string(), 9100)]);
    }

    #[test]
    fn pods_need_ready_and_an_ip() {
        let pod = |ready: &str, ip: Option<&str>, deleting: bool| {
            let mut v = serde_json::json!({
                "metadata": {"name": "p"},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}
            });
            if let Some(ip) = ip {
                v["status"]["podIP"] = ip.into();
            }
            if deleting {
                v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            slim_pod(serde_json::from_value(v).unwrap()).0
        };
        assert_eq!(pod("True", Some("10.1.0.5"), false).as_deref(), Some("10.1.0.5"));
        assert_eq!(pod("False", Some("10.1.0.5"), false), None);
        assert_eq!(pod("True", None, false), None);
        assert_eq!(pod("True", Some("10.1.0.5"), true), None, "terminating");
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(endpoint("fd00::1", 80).unwrap().authority(), "[fd00::1]:80");
        assert_eq!(endpoint("10.0.0.1", 80).unwrap().authority(), "10.0.0.1:80");
        assert_eq!(endpoint("not-an-ip", 80), None);
    }
}
