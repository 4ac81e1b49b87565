//! The rollout driver: owns the live state, applies commands from the API, the config
//! file and the clock through the pure state machine, then persists, audits and publishes
//! a new routing table. All of this is control plane; the request path never waits on it.

mod cluster;
mod command;
mod gauges;
mod judgement;
mod route_status;

pub use cluster::{Change, Intent, Owner};
pub use command::CommandError;
use gauges::Gauges;
use judgement::Judged;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;

use canary_config::Config;
use canary_proxy::{LiveRoute, ProxyMetrics, RoutingTable, TableHandle, Variant};

use crate::analysis::PromReading;
use crate::metrics::ControlMetrics;
use crate::state::{AuditEntry, State, StateError, StateStore};

struct Inner {
    config: Config,
    /// Route name → index in `config.routes`; set with the config by [`Inner::set_config`].
    route_index: HashMap<String, usize>,
    /// Indexes of the routes with an analysis, so per-tick loops skip the others.
    analysed: Vec<usize>,
    store: StateStore,
    /// Routes whose state is not this process's own; absent means [`Owner::Local`].
    owners: HashMap<String, Owner>,
    /// Changes waiting to be written to CanaryRoute status.
    intents: Vec<Intent>,
    /// Routes with a spec-driven write (init, spec weight) queued or in flight: every
    /// source event recomposes all routes, and queueing it again for each one made n
    /// routes cost n² status reads at start.
    spec_writes: HashSet<String>,
    /// Discovery state per (route, variant) in kubernetes mode.
    discovery: HashMap<(String, Variant), crate::status::DiscoveryStatus>,
    /// The analysis's memory per route (not persisted: a restart judges afresh).
    judged: HashMap<String, Judged>,
    /// The gauge values last set per route, so a tick sets only what changed.
    published: HashMap<String, Gauges>,
}

impl Inner {
    /// Replaces the config and its name index together.
    fn set_config(&mut self, config: Config) {
        self.route_index = route_index(&config);
        self.analysed = analysed(&config);
        self.config = config;
    }

    /// The routes with an analysis.
    fn analysed_routes(&self) -> impl Iterator<Item = &canary_config::Route> {
        self.analysed.iter().map(|&i| &self.config.routes[i])
    }

    /// The configured route called `name`, without a scan (loops over all routes use this).
    fn route(&self, name: &str) -> Option<&canary_config::Route> {
        self.route_index.get(name).map(|&i| &self.config.routes[i])
    }
}

fn route_index(config: &Config) -> HashMap<String, usize> {
    config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect()
}

fn analysed(config: &Config) -> Vec<usize> {
    (0..config.routes.len())
        .filter(|&i| config.routes[i].rollout.analysis.is_some())
        .collect()
}

/// The control plane's single owner of route state.
pub struct Controller {
    /// Shared with the state file's background writer, which holds it weakly.
    inner: Arc<Mutex<Inner>>,
    table: TableHandle,
    metrics: ProxyMetrics,
    control_metrics: ControlMetrics,
    /// Latest PromQL reading per route and when it was taken; written by the poller.
    prometheus: Mutex<HashMap<String, (Instant, PromReading)>>,
    /// Holds the leader Lease (always true outside kubernetes mode): may advance shared rollouts.
    leader: tokio::sync::watch::Sender<bool>,
    /// Notified when intents are queued.
    intents_ready: tokio::sync::Notify,
    /// Writes CanaryRoute status (kubernetes mode).
    cluster: std::sync::OnceLock<Arc<crate::kubernetes::status::StatusWriter>>,
    /// In kubernetes mode, new config files go to the composition of all sources.
    file_sink: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<FileReload>>,
}

/// A config file for the kubernetes-mode composition, and where to say whether it serves.
pub struct FileReload {
    /// The file's validated config.
    pub config: Config,
    /// Answered once the table composed with it is published, or with why it was not.
    pub applied: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
}

impl Controller {
    /// Reconciles `store` with `config`, saves it, and builds the first table.
    pub fn new(
        config: Config,
        mut store: StateStore,
        metrics: ProxyMetrics,
        control_metrics: ControlMetrics,
    ) -> anyhow::Result<(Self, TableHandle)> {
        for entry in store.state.reconcile(&config) {
            store.state.record(entry);
        }
        store.save()?;
        let table = TableHandle::new(RoutingTable::build(&config, |r| store.state.live(r), None, &metrics)?);
        let file = store.file();
        let controller = Self {
            inner: Arc::new(Mutex::new(Inner {
                route_index: route_index(&config),
                analysed: analysed(&config),
                config,
                store,
                judged: HashMap::new(),
                published: HashMap::new(),
                owners: HashMap::new(),
                intents: Vec::new(),
                spec_writes: HashSet::new(),
                discovery: HashMap::new(),
            })),
            leader: tokio::sync::watch::Sender::new(true),
            intents_ready: tokio::sync::Notify::new(),
            cluster: std::sync::OnceLock::new(),
            file_sink: std::sync::OnceLock::new(),
            table: table.clone(),
            metrics,
            control_metrics,
            prometheus: Mutex::new(HashMap::new()),
        };
        if let Some(file) = file {
            crate::state_writer::spawn(file, Arc::downgrade(&controller.inner), |inner| {
                lock(inner).store.unsaved()
            })
            .context("starting the state file writer")?;
        }
        controller.publish_gauges(&mut controller.lock());
        Ok((controller, table))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Writes state changes the background writer has not written yet (at shutdown).
    pub fn flush_state(&self) -> Result<(), StateError> {
        self.lock().store.flush()
    }

    /// Applies a new config file: its routes, and weights edited in it. In kubernetes mode
    /// it is composed with the cluster's routes first; Ok only once that table serves.
    pub async fn apply_config(&self, config: Config) -> anyhow::Result<()> {
        if let Some(sink) = self.file_sink.get() {
            let (applied, outcome) = tokio::sync::oneshot::channel();
            sink.send(FileReload { config, applied })
                .map_err(|_| anyhow::anyhow!("the cluster composition has stopped"))?;
            return outcome
                .await
                .map_err(|_| anyhow::anyhow!("the cluster composition stopped before applying it"))?;
        }
        let mut inner = self.lock();
        let before = inner.store.state.clone();
        self.serve_config(&mut inner, config, before)
    }

    /// Reconciles the state with `config` and serves both; on a table error the state goes
    /// back to `before` (taken before the caller's own changes) and the old config stays.
    fn serve_config(&self, inner: &mut Inner, config: Config, before: State) -> anyhow::Result<()> {
        let edits = inner.store.state.reconcile(&config);
        if let Err(e) = self.publish(&config, &inner.store) {
            inner.store.state = before;
            return Err(e);
        }
        for entry in edits {
            inner.store.state.record(entry);
        }
        inner.store.save_soon();
        inner.set_config(config);
        Ok(())
    }

    /// Who keeps a route's state.
    pub fn owner(&self, route: &str) -> Owner {
        self.lock().owners.get(route).cloned().unwrap_or(Owner::Local)
    }

    /// Sends future config files to the kubernetes-mode composition instead of applying them.
    pub fn set_file_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<FileReload>) {
        let _ = self.file_sink.set(sink);
    }

    /// Installs the writer of CanaryRoute status (kubernetes mode).
    pub fn set_cluster_writer(&self, writer: Arc<crate::kubernetes::status::StatusWriter>) {
        let _ = self.cluster.set(writer);
    }

    /// Whether this replica may advance shared rollouts.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Changes of [`Self::is_leader`], for work only the leader does.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// Records whether this replica holds the leader Lease.
    pub fn set_leader(&self, leader: bool) {
        let was = self.leader.send_replace(leader);
        if was != leader {
            tracing::info!(leader, "leadership changed");
        }
        self.control_metrics.leader(leader);
    }

    fn publish(&self, config: &Config, store: &StateStore) -> anyhow::Result<()> {
        self.table.store(self.build_table(config, store)?);
        Ok(())
    }

    /// The table `config` and `store` make, reusing the serving one's endpoints and clients.
    fn build_table(&self, config: &Config, store: &StateStore) -> anyhow::Result<RoutingTable> {
        self.build_table_with(config, |r| store.state.live(r))
    }

    /// The table `config` makes with each route's weight and salt from `live`.
    fn build_table_with(
        &self,
        config: &Config,
        live: impl Fn(&canary_config::Route) -> LiveRoute,
    ) -> anyhow::Result<RoutingTable> {
        let previous = self.table.load_full();
        Ok(RoutingTable::build(config, live, Some(&previous), &self.metrics)?)
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
        inner.store.save_soon();
    }
}

/// Locks the controller's state; a panic while it was held leaves state that was valid
/// before the panicking call.
fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn controller() -> Controller {
        controller_with(StateStore::open(None, false).unwrap())
    }

    fn controller_with(store: StateStore) -> Controller {
        let config = canary_config::parse(
            "listen: { http: \"127.0.0.1:0\" }\nadmin: { listen: \"127.0.0.1:0\" }\nroutes:\n  - name: web\n    hosts: [web.example]\n    stable: { endpoints: [\"127.0.0.1:1\"] }\n",
        )
        .unwrap();
        let registry = prometheus::Registry::new();
        let (c, _) = Controller::new(
            config,
            store,
            ProxyMetrics::register(&registry).unwrap(),
            ControlMetrics::register(&registry).unwrap(),
        )
        .unwrap();
        c
    }

    /// Refused calls are audited without a write of their own on the caller's thread: the
    /// background writer catches up, and a clean shutdown writes what it has not yet.
    #[test]
    fn audits_of_refused_calls_reach_the_file_in_the_background_and_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let c = controller_with(StateStore::open(Some(path.clone()), false).unwrap());
        let on_disk = || crate::state::State::load(&path).unwrap().audit.len();
        assert_eq!(on_disk(), 0);
        for i in 0..300 {
            c.record(AuditEntry::refused(
                "unauthenticated",
                None,
                &format!("call {i}"),
                None,
                "401",
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while on_disk() < 300 {
            assert!(Instant::now() < deadline, "the background writer never wrote the audit");
            std::thread::sleep(Duration::from_millis(10));
        }
        c.record(AuditEntry::refused(
            "unauthenticated",
            None,
            "the last call",
            None,
            "401",
        ));
        c.flush_state().unwrap();
        assert_eq!(on_disk(), 301, "the shutdown flush missed the last entry");
    }

    fn recompose(c: &Controller) {
        let config = c.lock().config.clone();
        let owners = HashMap::from([(
            "web".to_string(),
            Owner::CanaryRoute {
                namespace: "prod".into(),
                name: "web".into(),
            },
        )]);
        c.apply_sources(config, owners, HashMap::new(), HashMap::new()).unwrap();
    }

    /// Every source event recomposes every route; a CanaryRoute without status gets one
    /// init write, not one per event, until that write is done.
    #[test]
    fn a_spec_write_is_queued_once_until_it_is_done() {
        let c = controller();
        recompose(&c);
        recompose(&c);
        let queued = std::mem::take(&mut c.lock().intents);
        assert_eq!(queued.len(), 1, "{queued:?}");
        assert!(matches!(queued[0].change, Change::Init));
        recompose(&c);
        assert!(c.lock().intents.is_empty(), "queued again while in flight");
        c.spec_written("web");
        recompose(&c);
        assert_eq!(c.lock().intents.len(), 1, "queued again once done");
    }
}
