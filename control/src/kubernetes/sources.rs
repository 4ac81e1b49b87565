//! Composes the routes served in kubernetes mode: the config file's routes, then
//! CanaryRoutes, then Ingresses, each variant's endpoints filled from discovery. A cluster
//! route whose name or host + path is already taken is refused and reported, never merged.
//!
//! API calls (see [`super::api_calls`]): list/watch of CanaryRoutes, of Ingresses and, by
//! name, of TLS Secrets.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::collections::BTreeMap;

use canary_config::{Config, HostPattern, Kubernetes, RouteClaims};
use canary_proxy::tls::LoadedCert;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch, Notify};

use super::crd::CanaryRoute;
use super::discovery::{Discovery, Resolved, SourceKey};
use super::ingress::routes_from_ingresses;
use super::watch::Watch;
use crate::certificates::SecretCertificates;
use crate::controller::{Controller, FileReload, Owner};
use crate::metrics::ControlMetrics;
use crate::state::RouteState;
use crate::status::DiscoveryStatus;
use canary_proxy::Variant;

/// The cluster's contribution to the routes, and the watches behind it.
pub struct ClusterSources {
    client: Client,
    settings: Kubernetes,
    changed: Arc<Notify>,
    canary_routes: Option<Watch<CanaryRoute>>,
    ingresses: Option<Watch<Ingress>>,
    discovery: Discovery,
    /// TLS Secrets in use (only with an HTTPS listener), each watched by name.
    secrets: BTreeMap<(String, String), Watch<TlsPair>>,
    /// The last certificate that loaded, per Secret and hosts: a broken update keeps it.
    good_certs: HashMap<(String, String, Vec<HostPattern>), (TlsPair, LoadedCert)>,
    /// Whether there is an HTTPS listener to load Secrets for.
    https: bool,
}

/// The PEM parts of a `kubernetes.io/tls` Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn tls_pair(s: Secret) -> TlsPair {
    let mut data = s.data.unwrap_or_default();
    let mut take = |k: &str| data.remove(k).map(|b| b.0).unwrap_or_default();
    TlsPair {
        cert: take("tls.crt"),
        key: take("tls.key"),
    }
}

/// `*.example.com` or `example.com`, lower-cased.
fn host_pattern(host: &str) -> HostPattern {
    let host = host.to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(parent) => HostPattern::Wildcard(parent.into()),
        None => HostPattern::Exact(host),
    }
}

/// One composition: what to serve and who owns each route's state.
pub struct Composed {
    /// The file's config with every route and every discovered endpoint.
    pub config: Config,
    /// Owners of routes that are not the file's.
    pub owners: HashMap<String, Owner>,
    /// The cluster's state of CanaryRoute routes that have a status.
    pub shared: HashMap<String, RouteState>,
    /// Objects refused, and why.
    pub problems: Vec<String>,
    /// Every watch has listed at least once.
    pub synced: bool,
    /// Certificates from Secrets (`namespace/name`, certificate), when there is an HTTPS listener.
    pub certificates: Vec<(String, LoadedCert)>,
    /// Discovery state per (route, variant), for metrics and the route status.
    pub discovered: Vec<(String, Variant, SourceKey, Resolved)>,
}

impl ClusterSources {
    /// Starts the CanaryRoute and Ingress watches `settings` asks for; with `https`, TLS
    /// Secrets are watched too.
    pub fn start(client: Client, settings: Kubernetes, https: bool) -> Self {
        let changed = Arc::new(Notify::new());
        let scope = |c: Client| match &settings.watch_namespace {
            Some(ns) => (
                Api::<CanaryRoute>::namespaced(c.clone(), ns),
                Api::<Ingress>::namespaced(c, ns),
            ),
            None => (Api::<CanaryRoute>::all(c.clone()), Api::<Ingress>::all(c)),
        };
        let (routes_api, ingress_api) = scope(client.clone());
        let canary_routes = settings.canary_routes.then(|| {
            Watch::start(
                routes_api,
                watcher::Config::default(),
                "canaryroutes".into(),
                changed.clone(),
                std::convert::identity,
            )
        });
        let ingresses = settings.ingress_class.is_some().then(|| {
            Watch::start(
                ingress_api,
                watcher::Config::default(),
                "ingresses".into(),
                changed.clone(),
                std::convert::identity,
            )
        });
        Self {
            discovery: Discovery::new(client.clone(), changed.clone()),
            client,
            secrets: BTreeMap::new(),
            good_certs: HashMap::new(),
            https,
            settings,
            changed,
            canary_routes,
            ingresses,
        }
    }

    /// The Ingress sets as the watch publishes them (`None` without `ingress_class`).
    pub fn ingress_updates(&self) -> Option<watch::Receiver<Arc<super::watch::Snapshot<Ingress>>>> {
        self.ingresses.as_ref().map(Watch::subscribe)
    }

    /// Notified whenever any watched set changes.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Builds what to serve from the file's `config` and the cluster's current objects.
    pub fn compose(&mut self, file: &Config) -> Composed {
        let mut config = file.clone();
        let mut owners = HashMap::new();
        let mut shared = HashMap::new();
        let mut problems = Vec::new();
        let mut synced = true;
        let mut taken: RouteClaims<()> = RouteClaims::default();
        for r in &config.routes {
            taken.claim_route(r, ());
        }
        if let Some(w) = &self.canary_routes {
            let snapshot = w.snapshot();
            synced &= snapshot.synced;
            for ((ns, name), object) in &snapshot.objects {
                let route = match object.to_route(ns, file.limits.max_body_bytes) {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push(format!("CanaryRoute {ns}/{name} not served: {e}"));
                        continue;
                    }
                };
                if let Some(why) = taken.clash(&route) {
                    problems.push(format!("CanaryRoute {ns}/{name} not served: {why}"));
                    continue;
                }
                taken.claim_route(&route, ());
                if let Some(state) = object.status.as_ref().and_then(|s| s.to_state()) {
                    shared.insert(route.name.clone(), state);
                }
                owners.insert(
                    route.name.clone(),
                    Owner::CanaryRoute {
                        namespace: ns.clone(),
                        name: name.clone(),
                    },
                );
                config.routes.push(route);
            }
        }
        // (namespace, name, hosts) of every TLS Secret wanted.
        let mut wanted_certs: Vec<(String, String, Vec<HostPattern>)> = file
            .tls
            .secrets
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone(), s.hosts.clone()))
            .collect();
        if let (Some(w), Some(class)) = (&self.ingresses, &self.settings.ingress_class) {
            let snapshot = w.snapshot();
            synced &= snapshot.synced;
            let ingresses: Vec<Ingress> = snapshot.objects.values().cloned().collect();
            let built = routes_from_ingresses(&ingresses, class, file.limits.max_body_bytes);
            problems.extend(built.problems);
            for t in built.tls {
                if t.hosts.is_empty() {
                    problems.push(format!(
                        "Ingress {}: tls secret {} names no hosts; not served",
                        t.ingress, t.secret
                    ));
                    continue;
                }
                let hosts = t.hosts.iter().map(|h| host_pattern(h)).collect();
                wanted_certs.push((t.ingress.namespace.clone(), t.secret, hosts));
            }
            for r in built.routes {
                let source = r.canary.as_ref().unwrap_or(&r.stable).to_string();
                if let Some(why) = taken.clash(&r.route) {
                    problems.push(format!("Ingress {} not served: {why}", r.stable));
                    continue;
                }
                taken.claim_route(&r.route, ());
                owners.insert(r.route.name.clone(), Owner::Ingress { source });
                config.routes.push(r.route);
            }
        }

        let certificates = if self.https {
            self.certificates(&wanted_certs, &mut problems, &mut synced)
        } else {
            Vec::new()
        };

        // Discovery: start what the routes need, stop the rest, fill in the endpoints.
        let key = |ns: &Option<String>, target: &canary_config::KubeTarget| SourceKey {
            namespace: ns.clone().unwrap_or_else(|| self.settings.namespace.clone()),
            target: target.clone(),
        };
        let wanted: BTreeSet<SourceKey> = config
            .routes
            .iter()
            .flat_map(|r| r.backends())
            .filter_map(|(_, b)| b.kubernetes.as_ref().map(|k| key(&k.namespace, &k.target)))
            .collect();
        self.discovery.ensure(&wanted);
        let mut discovered = Vec::new();
        for route in &mut config.routes {
            let backends = [
                (Variant::Stable, Some(&mut route.stable)),
                (Variant::Canary, Some(&mut route.canary)),
                (Variant::Baseline, route.baseline.as_mut()),
            ];
            for (variant, backend) in backends.into_iter().filter_map(|(v, b)| Some((v, b?))) {
                let Some(k) = &backend.kubernetes else { continue };
                let source = key(&k.namespace, &k.target);
                let resolved = self.discovery.resolve(&source);
                synced &= resolved.synced;
                backend.endpoints = resolved.endpoints.clone();
                discovered.push((route.name.clone(), variant, source, resolved));
            }
        }
        Composed {
            config,
            owners,
            shared,
            problems,
            synced,
            certificates,
            discovered,
        }
    }

    /// Watches the wanted Secrets by name (RBAC can then be limited to those names) and loads
    /// their certificates; a Secret that does not load keeps its last good certificate.
    fn certificates(
        &mut self,
        wanted: &[(String, String, Vec<HostPattern>)],
        problems: &mut Vec<String>,
        synced: &mut bool,
    ) -> Vec<(String, LoadedCert)> {
        let names: BTreeSet<(String, String)> = wanted.iter().map(|(ns, n, _)| (ns.clone(), n.clone())).collect();
        self.secrets.retain(|k, _| names.contains(k));
        self.good_certs
            .retain(|(ns, n, _), _| names.contains(&(ns.clone(), n.clone())));
        for (ns, name) in &names {
            if !self.secrets.contains_key(&(ns.clone(), name.clone())) {
                let watch = Watch::start(
                    Api::<Secret>::namespaced(self.client.clone(), ns),
                    watcher::Config::default().fields(&format!("metadata.name={name}")),
                    format!("secret {ns}/{name}"),
                    self.changed.clone(),
                    tls_pair,
                );
                self.secrets.insert((ns.clone(), name.clone()), watch);
            }
        }
        let mut certs = Vec::new();
        for (ns, name, hosts) in wanted {
            let snapshot = self.secrets[&(ns.clone(), name.clone())].snapshot();
            *synced &= snapshot.synced;
            let key = (ns.clone(), name.clone(), hosts.clone());
            let label = format!("{ns}/{name}");
            match snapshot.objects.get(&(ns.clone(), name.clone())) {
                None if snapshot.synced => {
                    problems.push(format!("Secret {label} not found; its hosts get no certificate"))
                }
                None => {}
                Some(pair) => {
                    let fresh = match self.good_certs.get(&key) {
                        Some((seen, _)) if seen == pair => None,
                        _ => Some(LoadedCert::from_pem(hosts.clone(), &pair.cert, &pair.key)),
                    };
                    match fresh {
                        None => {}
                        Some(Ok(cert)) => {
                            self.good_certs.insert(key.clone(), (pair.clone(), cert));
                        }
                        Some(Err(e)) => {
                            let keeps = if self.good_certs.contains_key(&key) {
                                "the previous certificate keeps serving"
                            } else {
                                "its hosts get no certificate"
                            };
                            problems.push(format!("Secret {label} does not load ({e}); {keeps}"));
                        }
                    }
                }
            }
            if let Some((_, cert)) = self.good_certs.get(&key) {
                certs.push((label, cert.clone()));
            }
        }
        certs
    }
}

/// Recomposes on every change of the cluster, and on every config file reload, and applies
/// the result; `ready` turns true once every watch has listed, so no traffic is taken on a
/// partial view. A reload is answered with whether its table serves; a refused one leaves
/// the last applied file config in the composition, as a refused reload does standalone.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut sources: ClusterSources,
    controller: Arc<Controller>,
    mut file_config: Config,
    mut reloads: mpsc::UnboundedReceiver<FileReload>,
    ready: Arc<AtomicBool>,
    metrics: ControlMetrics,
    certificates: Option<SecretCertificates>,
    mut stop: watch::Receiver<bool>,
) {
    let changed = sources.changed();
    let mut reported: Vec<String> = Vec::new();
    // (label, hosts, chain) of the Secret certificates served, to republish only on change.
    let mut served: Option<Vec<(String, Vec<HostPattern>, usize)>> = None;
    let mut reload: Option<FileReload> = None;
    loop {
        let composed = sources.compose(reload.as_ref().map_or(&file_config, |r| &r.config));
        if composed.problems != reported {
            for p in composed.problems.iter().filter(|p| !reported.contains(p)) {
                tracing::error!(problem = %p, "cluster object refused");
            }
            reported = composed.problems.clone();
        }
        metrics.kubernetes_problems(reported.len());
        let mut discovery = HashMap::new();
        for (route, variant, source, r) in &composed.discovered {
            metrics.discovery(route, variant.as_str(), r.synced, r.stale_seconds);
            let status = DiscoveryStatus {
                source: source.to_string(),
                synced: r.synced,
                stale_seconds: r.stale_seconds,
            };
            discovery.insert((route.clone(), *variant), status);
        }
        if let Some(handle) = &certificates {
            let now: Vec<_> = composed
                .certificates
                .iter()
                .map(|(l, c)| (l.clone(), c.hosts.clone(), Arc::as_ptr(&c.key) as usize))
                .collect();
            if served.as_ref() != Some(&now) {
                tracing::info!(certificates = now.len(), "certificates from Secrets applied");
                handle.set(composed.certificates.clone());
                served = Some(now);
            } else {
                handle.refresh_expiry();
            }
        }
        let synced = composed.synced;
        let applied = controller.apply_sources(composed.config, composed.owners, composed.shared, discovery);
        match reload.take() {
            Some(r) => {
                if applied.is_ok() {
                    file_config = r.config;
                }
                // The reloader reports the outcome (and may be gone at shutdown).
                let _ = r.applied.send(applied);
            }
            None => {
                if let Err(e) = applied {
                    tracing::error!(error = %e, "routes from the cluster not applied; the previous ones keep serving");
                }
            }
        }
        if synced && !ready.swap(true, Ordering::Relaxed) {
            tracing::info!("cluster state listed; ready");
        }
        tokio::select! {
            _ = changed.notified() => {}
            r = reloads.recv() => match r {
                Some(r) => reload = Some(r),
                None => return,
            },
            _ = stop.changed() => return,
            // Staleness is a clock: refresh its metric while a watch is failing.
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}
