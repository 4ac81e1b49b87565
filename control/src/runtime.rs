//! The serving process: build the first table, bind listeners, reload, drive rollouts,
//! drain on SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use canary_config::Config;
use canary_proxy::{serve, PoolOptions, Proxy, ProxyMetrics, ServeOptions, TlsListener, TlsMetrics};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::admin::Admin;
use crate::api::Api;
use crate::auth::Tokens;
use crate::certificates::Certificates;
use crate::controller::Controller;
use crate::metrics::ControlMetrics;
use crate::reload::Reloader;
use crate::state::StateStore;

/// A TLS handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the process was started.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The config file and the text `config` came from; reloaded on SIGHUP and on change.
    /// Without it (the demo) nothing is reloaded and state lives in memory only.
    pub file: Option<(PathBuf, String)>,
    /// Start afresh when the state file is unreadable.
    pub reset_state: bool,
    /// Where backends, routes and shared state come from.
    pub mode: Mode,
    /// Kubeconfig file for kubernetes mode outside a cluster.
    pub kubeconfig: Option<PathBuf>,
}

/// Where backends, routes and shared state come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Static endpoints from the file; state in the local state file.
    #[default]
    Standalone,
    /// EndpointSlices, Pods, CanaryRoutes and Ingresses watched; state in CanaryRoute status.
    Kubernetes,
}

/// Serves `config` until SIGTERM or SIGINT.
pub async fn run(config: Config, opts: RunOptions) -> anyhow::Result<()> {
    check_mode(&config, opts.mode)?;
    let kube_client = match opts.mode {
        Mode::Standalone => None,
        Mode::Kubernetes => Some(crate::kubernetes::client(opts.kubeconfig.as_deref()).await?),
    };
    let tokens = match &config.admin.tokens_file {
        Some(path) => Tokens::load(path)?,
        None => Tokens::default(),
    };
    if tokens.is_empty() && !config.admin.listen.ip().is_loopback() {
        anyhow::bail!(
            "admin.listen {} is not a loopback address and admin.tokens_file is not set: \
             the control API would be open to anyone who reaches it",
            config.admin.listen
        );
    }
    let tokens = Arc::new(RwLock::new(tokens));
    let store = StateStore::open(opts.file.as_ref().map(|_| config.state.path.clone()), opts.reset_state)?;

    let registry = Registry::new();
    let proxy_metrics = ProxyMetrics::register(&registry).context("registering proxy metrics")?;
    let control_metrics = ControlMetrics::register(&registry).context("registering control metrics")?;
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .context("registering process metrics")?;

    let pool = PoolOptions {
        connect_timeout: config.timeouts.connect,
    };
    let (serve_opts, https_opts) = public_listener_options(&config, &registry)?;
    // The admin listener has its own connection budget, so a flood of the public port leaves it answering.
    let admin_opts = ServeOptions::internal(config.timeouts.drain);
    let (listen, admin_listen) = (config.listen.http, config.admin.listen);
    let certificates = match config.listen.https {
        Some(_) => Some(Certificates::load(&config.tls, &registry)?),
        None => None,
    };
    let tls = match &certificates {
        Some(c) => Some(TlsListener {
            acceptor: tokio_rustls::TlsAcceptor::from(canary_proxy::tls::server_config(c.resolver())),
            metrics: TlsMetrics::register(&registry).context("registering TLS metrics")?,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }),
        None => None,
    };
    let (controller, table) = Controller::new(config.clone(), store, proxy_metrics.clone(), control_metrics.clone())?;
    let controller = Arc::new(controller);
    let proxy = Proxy::new(table, proxy_metrics, pool);

    // Signal handlers go in before anyone can learn our addresses and signal us.
    let mut signals = Signals::install()?;
    let public = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on listen.http {listen}"))?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen {admin_listen}"))?;
    let https = match config.listen.https {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on listen.https {addr}"))?,
        ),
        None => None,
    };
    tracing::info!(listener = "public", addr = %public.local_addr()?, "listening");
    if let Some(l) = &https {
        tracing::info!(listener = "https", addr = %l.local_addr()?, "listening");
    }
    tracing::info!(listener = "admin", addr = %admin_listener.local_addr()?, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    // In kubernetes mode, ready once every watch has listed (see kubernetes::sources).
    let ready = Arc::new(AtomicBool::new(kube_client.is_none()));
    let cluster_tasks = kube_client.map(|client| {
        crate::kubernetes::start(
            client,
            &config,
            controller.clone(),
            ready.clone(),
            control_metrics.clone(),
            certificates.as_ref().map(Certificates::secrets),
            stop_rx.clone(),
        )
    });

    let admin = Admin::new(registry, ready.clone(), Api::new(controller.clone(), tokens.clone()));
    let admin_task = tokio::spawn(serve(
        admin_listener,
        move |_| admin.service(),
        admin_opts,
        None,
        stopped(admin_stop_rx),
    ));
    let https_task = match (https, tls) {
        (Some(listener), Some(tls)) => {
            let proxy = proxy.clone();
            Some(tokio::spawn(serve(
                listener,
                move |peer| proxy.connection_service(peer, true),
                https_opts,
                Some(tls),
                stopped(stop_rx.clone()),
            )))
        }
        _ => None,
    };
    let proxy_task = tokio::spawn(serve(
        public,
        move |peer| proxy.connection_service(peer, false),
        serve_opts,
        None,
        stopped(stop_rx.clone()),
    ));
    let timer_task = tokio::spawn(drive_rollouts(controller.clone(), stop_rx.clone()));
    let prometheus_task = tokio::spawn(poll_prometheus(controller.clone(), stop_rx.clone()));
    let reload_task = opts.file.map(|(path, text)| {
        let reloader = Reloader {
            hangup: signals.hangup.take().expect("SIGHUP stream taken once"),
            path,
            current: config,
            last_text: text,
            controller: controller.clone(),
            tokens,
            metrics: control_metrics,
            certificates,
        };
        tokio::spawn(reloader.run(stop_rx))
    });

    let signal_name = signals.shutdown().await;
    tracing::info!(signal = signal_name, "shutting down: no new connections, draining");
    // Readiness goes first so load balancers stop sending while we drain.
    ready.store(false, Ordering::Relaxed);
    stop_tx.send_replace(true);
    proxy_task.await.context("proxy listener task")?;
    if let Some(t) = https_task {
        t.await.context("https listener task")?;
    }
    timer_task.await.context("rollout timer task")?;
    if let Some(tasks) = cluster_tasks {
        tasks.stop().await;
    }
    prometheus_task.await.context("prometheus poller task")?;
    if let Some(t) = reload_task {
        t.await.context("reload task")?;
    }
    admin_stop_tx.send_replace(true);
    admin_task.await.context("admin listener task")?;
    if let Err(e) = controller.flush_state() {
        tracing::error!(error = %e, "route state not saved at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// What the file asks that `mode` cannot serve (a kubernetes source or Secret outside
/// kubernetes mode).
fn check_mode(config: &Config, mode: Mode) -> anyhow::Result<()> {
    if mode == Mode::Standalone {
        for (i, r) in config.routes.iter().enumerate() {
            for (variant, b) in r.backends() {
                if b.kubernetes.is_some() {
                    anyhow::bail!(
                        "routes[{i}].{variant}.kubernetes: a kubernetes source needs `canaryd run --mode kubernetes`"
                    );
                }
            }
        }
    }
    if mode == Mode::Standalone && config.listen.https.is_some() && config.tls.certificates.is_empty() {
        anyhow::bail!(
            "tls.certificates: listen.https needs at least one certificate file (tls.secrets and Ingress TLS need `--mode kubernetes`)"
        );
    }
    Ok(())
}

/// The options of the public HTTP and HTTPS listeners, with their shed and cut counters
/// registered in `registry`.
fn public_listener_options(config: &Config, registry: &Registry) -> anyhow::Result<(ServeOptions, ServeOptions)> {
    let shed = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "canaryd_connections_shed_total",
            "Connections closed at accept because the listener had limits.max_connections open.",
        ),
        &["listener"],
    )?;
    registry
        .register(Box::new(shed.clone()))
        .context("registering listener metrics")?;
    let cut = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "canaryd_connections_cut_total",
            "Connections sent GOAWAY and closed for cancelling more requests than limits.h2_max_cancelled_streams allows (HTTP/2 rapid reset).",
        ),
        &["listener"],
    )?;
    registry
        .register(Box::new(cut.clone()))
        .context("registering listener metrics")?;
    let serve_opts = ServeOptions {
        shed: Some(shed.with_label_values(&["http"])),
        cut: Some(cut.with_label_values(&["http"])),
        ..ServeOptions::public(config)
    };
    let https_opts = ServeOptions {
        shed: Some(shed.with_label_values(&["https"])),
        cut: Some(cut.with_label_values(&["https"])),
        ..serve_opts.clone()
    };
    Ok((serve_opts, https_opts))
}

/// The analysis tick: every second, judge canaries (aborting failing ones) and advance
/// timed rollouts.
async fn drive_rollouts(controller: Arc<Controller>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => controller.tick(),
            _ = stop.changed() => return,
        }
    }
}

/// Runs each route's PromQL check once per its interval, off the analysis tick.
async fn poll_prometheus(controller: Arc<Controller>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running: std::collections::HashSet<String> = std::collections::HashSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(route) = done_rx.recv() => { running.remove(&route); continue; }
            _ = stop.changed() => return,
        }
        for (route, check) in controller.prometheus_checks() {
            let due = controller
                .prometheus_read_at(&route)
                .is_none_or(|at| at.elapsed() >= check.interval);
            if !due || !running.insert(route.clone()) {
                continue;
            }
            let (controller, done) = (controller.clone(), done_tx.clone());
            tokio::spawn(async move {
                let reading = crate::outbound::query_prometheus(&check).await;
                controller.set_prometheus_reading(&route, reading);
                let _ = done.send(route);
            });
        }
    }
}

/// Resolves once the watched flag turns true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _closed = rx.wait_for(|stop| *stop).await;
}

/// The process's signal streams.
struct Signals {
    term: Signal,
    int: Signal,
    /// Taken by the reloader; without a config file SIGHUP is only logged.
    hangup: Option<Signal>,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hangup: Some(signal(SignalKind::hangup()).context("installing SIGHUP handler")?),
        })
    }

    /// Waits for SIGTERM or SIGINT; logs SIGHUPs that have no file to reload.
    async fn shutdown(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                Some(()) = async { match self.hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP ignored: no config file to reload");
                }
            }
        }
    }
}
