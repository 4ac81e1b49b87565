//! The serving process: build the first table, bind listeners, reload, drain on SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use canary_config::Config;
use canary_proxy::{serve, PoolOptions, Proxy, ProxyMetrics, RoutingTable, ServeOptions, TableHandle};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::admin::Admin;
use crate::metrics::ControlMetrics;
use crate::reload::Reloader;
use crate::state::StateStore;

/// Serves `config` until SIGTERM or SIGINT; with `file` (its path and the text `config`
/// came from), reloads it on SIGHUP and on change, and keeps live state in `state.path`.
pub async fn run(config: Config, file: Option<(PathBuf, String)>) -> anyhow::Result<()> {
    let mut store =
        StateStore::open(file.as_ref().map(|_| config.state.path.clone())).context("loading state (state.path)")?;
    store.apply(&config).context("saving state (state.path)")?;
    let registry = Registry::new();
    let proxy_metrics = ProxyMetrics::register(&registry).context("registering proxy metrics")?;
    let control_metrics = ControlMetrics::register(&registry).context("registering control metrics")?;
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .context("registering process metrics")?;

    let table = TableHandle::new(RoutingTable::build(
        &config,
        |r| store.state.live(r),
        None,
        &proxy_metrics,
    )?);
    let proxy = Proxy::new(
        table.clone(),
        proxy_metrics.clone(),
        PoolOptions {
            connect_timeout: config.timeouts.connect,
            idle_timeout: config.timeouts.upstream_idle,
        },
    );

    // Signal handlers go in before anyone can learn our addresses and signal us.
    let mut signals = Signals::install()?;
    let public = TcpListener::bind(config.listen.http)
        .await
        .with_context(|| format!("cannot listen on listen.http {}", config.listen.http))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
    tracing::info!(listener = "public", addr = %public.local_addr()?, "listening");
    tracing::info!(listener = "admin", addr = %admin_listener.local_addr()?, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(true));
    let serve_opts = ServeOptions {
        header_read_timeout: config.timeouts.idle,
        drain: config.timeouts.drain,
    };

    let admin = Admin::new(registry, ready.clone());
    let admin_task = tokio::spawn(serve(
        admin_listener,
        move |_| admin.service(),
        serve_opts,
        stopped(admin_stop_rx),
    ));
    let proxy_task = tokio::spawn(serve(
        public,
        move |peer| proxy.connection_service(peer, false),
        serve_opts,
        stopped(stop_rx.clone()),
    ));
    let reload_task = file.map(|(path, text)| {
        let reloader = Reloader {
            hangup: signals.hangup.take().expect("SIGHUP stream taken once"),
            path,
            current: config,
            last_text: text,
            table,
            proxy_metrics,
            metrics: control_metrics,
            store,
        };
        tokio::spawn(reloader.run(stop_rx))
    });

    let signal_name = signals.shutdown().await;
    tracing::info!(signal = signal_name, "shutting down: no new connections, draining");
    // Readiness goes first so load balancers stop sending while we drain.
    ready.store(false, Ordering::Relaxed);
    stop_tx.send_replace(true);
    proxy_task.await.context("proxy listener task")?;
    if let Some(t) = reload_task {
        t.await.context("reload task")?;
    }
    admin_stop_tx.send_replace(true);
    admin_task.await.context("admin listener task")?;
    tracing::info!("stopped");
    Ok(())
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
