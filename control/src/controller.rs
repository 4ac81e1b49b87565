//! The rollout driver: owns the live state, applies commands from the API, the config
//! file and the clock through the pure state machine, then persists, audits and publishes
//! a new routing table. All of this is control plane; the request path never waits on it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use canary_config::{Analysis, Config, PrometheusCheck, Weight};
use canary_proxy::running::Totals;
use canary_proxy::window::{self, WindowTotals};
use canary_proxy::{split, ProxyMetrics, RoutingTable, TableHandle, Variant};

use crate::analysis::{self, PromReading, Verdict};
use crate::metrics::ControlMetrics;
use crate::rollout::{Event, Phase, RolloutError};
use crate::sequential;
use crate::state::{describe, now_ms, now_rfc3339, AuditEntry, RouteState, StateError, StateStore};
use crate::status::{AnalysisStatus, RouteStatus, VariantStatus, WindowFigures};

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

/// One route's gauge values as last published.
#[derive(Debug, Clone, PartialEq)]
struct Gauges {
    weight_ppm: u32,
    phase: Phase,
    /// (healthy, total) per variant, when the route is in the table.
    endpoints: [Option<(usize, usize)>; 2],
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

/// What the analysis remembers of a route between ticks.
#[derive(Debug, Clone, Default)]
struct Judged {
    /// The rollout generation and both variants' running totals when it was first judged:
    /// sequential mode judges what came after.
    rollout_start: Option<(u64, [Totals; 2])>,
    consecutive_failures: u32,
    /// Since when every judgement passed (ms since the Unix epoch).
    passing_since_ms: Option<u64>,
    last: Option<AnalysisStatus>,
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

    /// Once a second: judges every route with an analysis (aborting a failing canary),
    /// then advances timed rollouts whose interval passed with the analysis passing.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let now = now_ms();
        let mut changed = false;
        let aborts = self.judge_all(&mut inner, now);
        for (route, rule, reason, webhook, status) in aborts {
            changed = true;
            self.abort_by_analysis(&mut inner, &route, rule, &reason, webhook, status);
        }
        let mut stepped = Vec::new();
        let leader = self.is_leader();
        let Inner {
            store,
            judged,
            config,
            route_index,
            owners,
            intents,
            ..
        } = &mut *inner;
        for (name, state) in store.state.routes.iter_mut() {
            // A tick moves only progressing rollouts (rollout.rs); the rest cost nothing per tick.
            if state.rollout.phase != Phase::Progressing {
                continue;
            }
            let analysis_ok = match route_index
                .get(name)
                .and_then(|&i| config.routes[i].rollout.analysis.as_ref())
            {
                None => true,
                // Passing since (about) the start of the step: over the whole interval.
                Some(_) => judged
                    .get(name)
                    .and_then(|j| j.passing_since_ms)
                    .is_some_and(|since| since <= state.rollout.step_started_ms + 1_500),
            };
            match owners.get(name) {
                None | Some(Owner::Local) => {}
                Some(Owner::Ingress { .. }) => continue,
                // Shared rollouts advance by the leader only, on the cluster's state.
                Some(Owner::CanaryRoute { .. }) => {
                    let mut probe = state.clone();
                    if leader
                        && probe.apply(Event::Tick { analysis_ok }, None, now_ms()).is_ok()
                        && probe.revision != state.revision
                    {
                        intents.push(Intent {
                            route: name.clone(),
                            change: Change::Event(Event::Tick { analysis_ok }),
                            actor: "timer".into(),
                            reason: Some("interval passed with the analysis passing".into()),
                        });
                    }
                    continue;
                }
            }
            let (from, revision) = (describe(state), state.revision);
            if state.apply(Event::Tick { analysis_ok }, None, now_ms()).is_ok() && state.revision != revision {
                stepped.push((name.clone(), from, describe(state)));
            }
        }
        for (route, from, to) in stepped {
            changed = true;
            let reason = Some("interval passed with the analysis passing".to_string());
            inner
                .store
                .state
                .record(AuditEntry::applied("timer", &route, "step", from, to, reason));
        }
        if changed {
            // Saved before it serves: a step or an abort must survive a SIGKILL right after.
            if let Err(e) = inner.store.save() {
                tracing::error!(error = %e, "route state not saved after a timed step or abort");
            }
            if let Err(e) = self.publish(&inner.config, &inner.store) {
                tracing::error!(error = %e, "table not rebuilt after a timed step or abort");
            }
        }
        if !inner.intents.is_empty() {
            self.intents_ready.notify_one();
        }
        self.publish_gauges(&mut inner);
    }

    /// Judges each route; returns the routes to abort now.
    #[allow(clippy::type_complexity)]
    fn judge_all(
        &self,
        inner: &mut Inner,
        now: u64,
    ) -> Vec<(String, analysis::Rule, String, Option<String>, AnalysisStatus)> {
        let table = self.table.load_full();
        let second = window::now_second();
        let readings = self.prometheus.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut aborts = Vec::new();
        for &i in &inner.analysed {
            let route = &inner.config.routes[i];
            let Some(a) = &route.rollout.analysis else { continue };
            let Some(state) = inner.store.state.routes.get(&route.name) else {
                continue;
            };
            let judged = inner.judged.entry(route.name.clone()).or_default();
            let totals = |v: Variant| {
                table
                    .route(&route.name)
                    .and_then(|r| r.window(v))
                    .map(|w| w.totals(second, a.window.as_secs()))
                    .unwrap_or_default()
            };
            let (stable, canary) = (totals(Variant::Stable), totals(Variant::Canary));
            if state.rollout.phase == Phase::Aborted && judged.last.as_ref().is_some_and(|l| l.verdict == "fail") {
                // The judgement that aborted stays on show until the next rollout.
                continue;
            }
            let active = state.weight_ppm > 0
                && state.weight() != Weight::FULL
                && !matches!(state.rollout.phase, Phase::Aborted | Phase::Promoted);
            let since_rollout = a
                .alpha
                .and_then(|_| since_rollout(judged, &table, &route.name, state.generation));
            let judgement = if !active {
                None
            } else {
                let prom = match &a.prometheus {
                    None => PromReading::NotConfigured,
                    Some(check) => fresh_reading(readings.get(&route.name), check),
                };
                let since = since_rollout.as_ref().map(|[s, c]| (s, c));
                let mut j = analysis::judge(a, &stable, &canary, since, &prom);
                if let (Verdict::Inconclusive(why), Some((s, c)), Some(alpha)) = (&mut j.verdict, since, a.alpha) {
                    why.push_str(&needed(a, alpha, s, c, &canary));
                }
                Some(j)
            };
            let (name, reason) = match judgement.as_ref().map(|j| &j.verdict) {
                None => ("idle", None),
                Some(Verdict::Pass) => ("pass", None),
                Some(Verdict::Inconclusive(why)) => ("inconclusive", Some(why.clone())),
                Some(Verdict::Fail(_, why)) => ("fail", Some(why.clone())),
            };
            match judgement.as_ref().map(|j| &j.verdict) {
                Some(Verdict::Pass) => {
                    judged.consecutive_failures = 0;
                    judged.passing_since_ms.get_or_insert(now);
                }
                Some(Verdict::Fail(..)) => {
                    judged.consecutive_failures += 1;
                    judged.passing_since_ms = None;
                }
                _ => {
                    judged.consecutive_failures = 0;
                    judged.passing_since_ms = None;
                }
            }
            let status = AnalysisStatus {
                verdict: name.into(),
                reason,
                consecutive_failures: judged.consecutive_failures,
                window_seconds: a.window.as_secs(),
                stable: figures(&stable),
                canary: figures(&canary),
                checks: judgement.as_ref().map(|j| j.checks.clone()).unwrap_or_default(),
            };
            judged.last = Some(status.clone());
            if let Some(Verdict::Fail(rule, why)) = judgement.map(|j| j.verdict) {
                if judged.consecutive_failures >= a.failures_before_abort {
                    aborts.push((route.name.clone(), rule, why, a.webhook.clone(), status));
                }
            }
        }
        aborts
    }

    fn abort_by_analysis(
        &self,
        inner: &mut Inner,
        route: &str,
        rule: analysis::Rule,
        why: &str,
        webhook: Option<String>,
        status: AnalysisStatus,
    ) {
        let Some(state) = inner.store.state.routes.get_mut(route) else {
            return;
        };
        let from = describe(state);
        let weight_before = state.weight().percent();
        let reason = format!("analysis: {why}");
        if state.apply(Event::Abort, Some(reason.clone()), now_ms()).is_err() {
            return;
        }
        let to = describe(state);
        tracing::warn!(route, rule = rule.as_str(), reason = %reason, "canary aborted by the analysis");
        // Applied here at once (the safe direction), and written for every replica.
        if matches!(inner.owners.get(route), Some(Owner::CanaryRoute { .. })) {
            inner.intents.push(Intent {
                route: route.into(),
                change: Change::Event(Event::Abort),
                actor: "analysis".into(),
                reason: Some(reason.clone()),
            });
        }
        self.control_metrics.rollback(route, rule.as_str());
        inner.judged.insert(
            route.to_string(),
            Judged {
                last: Some(status.clone()),
                ..Judged::default()
            },
        );
        inner.store.state.record(AuditEntry::applied(
            "analysis",
            route,
            "abort",
            from,
            to,
            Some(reason.clone()),
        ));
        if let Some(url) = webhook {
            let body = serde_json::json!({
                "event": "canary_aborted",
                "route": route,
                "rule": rule.as_str(),
                "reason": reason,
                "weight_before": weight_before,
                "time": now_rfc3339(),
                "analysis": status,
            });
            tokio::spawn(crate::outbound::post_webhook(url, body));
        }
    }

    /// The Prometheus checks to poll: (route, check).
    pub fn prometheus_checks(&self) -> Vec<(String, PrometheusCheck)> {
        let inner = self.lock();
        inner
            .analysed_routes()
            .filter_map(|r| Some((r.name.clone(), r.rollout.analysis.as_ref()?.prometheus.clone()?)))
            .collect()
    }

    /// Stores a PromQL reading for a route.
    pub fn set_prometheus_reading(&self, route: &str, reading: PromReading) {
        self.prometheus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(route.into(), (Instant::now(), reading));
    }

    /// When a route's check last ran.
    pub fn prometheus_read_at(&self, route: &str) -> Option<Instant> {
        self.prometheus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .map(|(at, _)| *at)
    }

    /// Sets the gauges of the routes whose values changed since last time. A route gets
    /// series once it is in use (it has served a request, has a canary, an analysis, a weight
    /// or a rollout), so thousands of idle routes cost no series and no work per tick.
    fn publish_gauges(&self, inner: &mut Inner) {
        let table = self.table.load();
        let Inner {
            config,
            store,
            published,
            route_index,
            ..
        } = inner;
        let mut in_use_count = 0;
        for route in &config.routes {
            let Some(state) = store.state.routes.get(&route.name) else {
                continue;
            };
            // Cheapest tests first: most routes of a large config are idle.
            let has_canary = route.rollout.analysis.is_some()
                || !route.canary.endpoints.is_empty()
                || route.canary.kubernetes.is_some()
                || state.weight_ppm > 0
                || state.rollout.phase != Phase::Idle;
            let served = table.route(&route.name);
            let in_use = has_canary || served.is_some_and(|r| r.has_served());
            if !in_use {
                if published.remove(&route.name).is_some() {
                    self.control_metrics.forget_route(&route.name);
                }
                continue;
            }
            in_use_count += 1;
            let now = Gauges {
                weight_ppm: state.weight_ppm,
                phase: state.rollout.phase,
                endpoints: Variant::ALL.map(|v| served.map(|r| r.healthy_endpoints(v))),
            };
            let last = published.get(&route.name);
            if last.map(|g| (g.weight_ppm, g.phase)) != Some((now.weight_ppm, now.phase)) {
                self.control_metrics
                    .route_state(&route.name, state.weight().percent() / 100.0, state.rollout.phase);
            }
            for v in Variant::ALL {
                let counts = now.endpoints[v as usize];
                if let Some((healthy, total)) = counts.filter(|_| last.map(|g| g.endpoints[v as usize]) != Some(counts))
                {
                    self.control_metrics.endpoints(&route.name, v.as_str(), healthy, total);
                }
            }
            if last != Some(&now) {
                published.insert(route.name.clone(), now);
            }
        }
        // Routes no longer configured: their series go.
        if published.len() > in_use_count {
            published.retain(|name, _| {
                let keep = route_index.contains_key(name);
                if !keep {
                    self.control_metrics.forget_route(name);
                }
                keep
            });
        }
    }

    fn publish(&self, config: &Config, store: &StateStore) -> anyhow::Result<()> {
        self.table.store(self.build_table(config, store)?);
        Ok(())
    }

    /// The table `config` and `store` make, reusing the serving one's endpoints and clients.
    fn build_table(&self, config: &Config, store: &StateStore) -> anyhow::Result<RoutingTable> {
        let previous = self.table.load_full();
        Ok(RoutingTable::build(
            config,
            |r| store.state.live(r),
            Some(&previous),
            &self.metrics,
        )?)
    }

    /// The status of one route.
    pub fn status(&self, route: &str) -> Option<RouteStatus> {
        self.status_locked(&self.lock(), &self.table.load(), route)
    }

    /// The status of every route, in config order.
    pub fn statuses(&self) -> Vec<RouteStatus> {
        let inner = self.lock();
        let table = self.table.load();
        inner
            .config
            .routes
            .iter()
            .filter_map(|r| self.status_locked(&inner, &table, &r.name))
            .collect()
    }

    fn status_locked(&self, inner: &Inner, table: &RoutingTable, route: &str) -> Option<RouteStatus> {
        let state = inner.store.state.routes.get(route)?;
        let config = inner.route(route)?;
        let served = table.route(route);
        let variant = |v: Variant, endpoints: usize| {
            let c = served.map(|r| r.counts(v)).unwrap_or_default();
            VariantStatus {
                endpoints,
                requests: c.requests,
                server_errors: c.server_errors,
                upstream_errors: c.upstream_errors,
                discovery: inner.discovery.get(&(route.to_string(), v)).cloned(),
            }
        };
        Some(RouteStatus {
            name: route.into(),
            weight: state.weight().percent(),
            phase: state.rollout.phase,
            step: state.rollout.step,
            steps: state
                .rollout
                .steps_ppm
                .iter()
                .map(|p| Weight::from_ppm(*p).percent())
                .collect(),
            interval_seconds: state.rollout.interval_ms.map(|ms| ms as f64 / 1000.0),
            salt_id: format!("{:016x}", split::salt_for(route, state.generation)),
            generation: state.generation,
            revision: state.revision,
            last_reason: state.last_reason.clone(),
            stable: variant(Variant::Stable, config.stable.endpoints.len()),
            canary: variant(Variant::Canary, config.canary.endpoints.len()),
            analysis: config.rollout.analysis.as_ref().map(|a| {
                inner
                    .judged
                    .get(route)
                    .and_then(|j| j.last.clone())
                    .unwrap_or_else(|| idle(a.window))
            }),
        })
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

/// A route's figures over the window, for the status.
fn figures(t: &WindowTotals) -> WindowFigures {
    WindowFigures {
        requests: t.requests,
        error_rate: t.error_rate() * 100.0,
        p99_ms: t.quantile(0.99).map(|d| {
            if d == Duration::MAX {
                f64::INFINITY
            } else {
                d.as_secs_f64() * 1000.0
            }
        }),
    }
}

/// Both variants' totals since the rollout `generation` was first judged (the start is taken
/// now when it was not yet, or when the route's counters were rebuilt).
fn since_rollout(judged: &mut Judged, table: &RoutingTable, route: &str, generation: u64) -> Option<[Totals; 2]> {
    let route = table.route(route)?;
    let now = [
        route.running(Variant::Stable)?.read(),
        route.running(Variant::Canary)?.read(),
    ];
    if let Some((g, start)) = &judged.rollout_start {
        if *g == generation {
            if let (Some(s), Some(c)) = (now[0].since(&start[0]), now[1].since(&start[1])) {
                return Some([s, c]);
            }
        }
    }
    judged.rollout_start = Some((generation, now));
    Some([Totals::default(), Totals::default()])
}

/// `; about N more canary requests (~T at the current rate)` for an inconclusive sequential
/// judgement, or why no amount would do.
fn needed(a: &Analysis, alpha: f64, stable: &Totals, canary: &Totals, window: &WindowTotals) -> String {
    if canary.requests == 0 {
        return "; no canary traffic yet".into();
    }
    let Some(k) = sequential::traffic_needed(a, alpha, stable, canary) else {
        return "; at the rates seen so far no amount of traffic would pass".into();
    };
    let more = ((k - 1.0) * canary.requests as f64).ceil().max(1.0) as u64;
    let rate = window.requests as f64 / a.window.as_secs_f64().max(1.0);
    if rate > 0.0 {
        let eta = Duration::from_secs((more as f64 / rate).ceil() as u64);
        format!(
            "; needs about {more} more canary requests (~{} at {rate:.1} req/s)",
            humantime::format_duration(eta)
        )
    } else {
        format!("; needs about {more} more canary requests")
    }
}

/// The status of an analysis that has not judged yet.
fn idle(window: Duration) -> AnalysisStatus {
    let empty = figures(&WindowTotals::default());
    AnalysisStatus {
        verdict: "idle".into(),
        reason: None,
        consecutive_failures: 0,
        window_seconds: window.as_secs(),
        stable: empty,
        canary: empty,
        checks: Vec::new(),
    }
}

/// A reading younger than three intervals, or "unavailable".
fn fresh_reading(reading: Option<&(Instant, PromReading)>, check: &PrometheusCheck) -> PromReading {
    match reading {
        Some((at, r)) if at.elapsed() <= check.interval * 3 + Duration::from_secs(2) => r.clone(),
        Some(_) => PromReading::Unavailable("no fresh reading".into()),
        None => PromReading::Unavailable("not queried yet".into()),
    }
}

#[cfg(test)]
mod tests {
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
