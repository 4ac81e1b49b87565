//! Hot reload: on SIGHUP or a change of the file, parse → validate → build → swap.
//! A bad file keeps the running table and says why.

use std::path::PathBuf;
use std::time::Duration;

use canary_config::Config;
use canary_proxy::{ProxyMetrics, RoutingTable, TableHandle};
use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::config_file;
use crate::metrics::ControlMetrics;
use crate::state::StateStore;

/// How often the file is re-read to notice changes (ConfigMap updates swap a symlink, which inotify misses).
const POLL: Duration = Duration::from_secs(1);

/// Everything the reloader needs.
pub struct Reloader {
    /// The config file.
    pub path: PathBuf,
    /// The config now serving.
    pub current: Config,
    /// Text of the file last seen (applied or refused), to notice changes.
    pub last_text: String,
    /// Where new tables go.
    pub table: TableHandle,
    /// For resolving the new table's metric children.
    pub proxy_metrics: ProxyMetrics,
    /// Reload counters.
    pub metrics: ControlMetrics,
    /// Live route state (weights, sticky salts).
    pub store: StateStore,
    /// SIGHUP, installed before the listeners announce themselves so an early signal
    /// cannot hit the default action (terminate).
    pub hangup: Signal,
}

impl Reloader {
    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = self.hangup.recv() => true,
                _ = shutdown.changed() => return,
            };
            self.check(forced);
        }
    }

    /// Re-reads the file; applies it when forced (SIGHUP) or when its text changed.
    pub fn check(&mut self, forced: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                if forced {
                    tracing::error!(path = %self.path.display(), error = %e, "reload refused: cannot read config file");
                    self.metrics.reload(false);
                }
                return;
            }
        };
        if !forced && text == self.last_text {
            return;
        }
        self.last_text.clone_from(&text);
        match config_file::parse(&self.path, &text) {
            Ok(config) => self.apply(config),
            Err(e) => {
                tracing::error!(path = %self.path.display(), "reload refused, the previous config keeps serving:\n{}", e.report());
                self.metrics.reload(false);
            }
        }
    }

    fn apply(&mut self, config: Config) {
        for field in restart_only_changes(&self.current, &config) {
            tracing::warn!(
                field,
                "changed in the config file; it takes effect only after a restart"
            );
        }
        if let Err(e) = self.store.apply(&config) {
            // Serving the new config matters more; the next successful save catches up.
            tracing::error!(error = %e, "route state not saved");
        }
        let previous = self.table.load_full();
        let state = &self.store.state;
        match RoutingTable::build(&config, |r| state.live(r), Some(&previous), &self.proxy_metrics) {
            Ok(table) => {
                self.table.store(table);
                tracing::info!(routes = config.routes.len(), "config reloaded");
                self.current = config;
                self.metrics.reload(true);
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused, the previous config keeps serving");
                self.metrics.reload(false);
            }
        }
    }
}

/// Fields a reload cannot apply to live sockets or the shared upstream pool.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if old.listen != new.listen {
        fields.push("listen");
    }
    if old.admin != new.admin {
        fields.push("admin");
    }
    let (a, b) = (&old.timeouts, &new.timeouts);
    if a.connect != b.connect {
        fields.push("timeouts.connect");
    }
    if a.upstream_idle != b.upstream_idle {
        fields.push("timeouts.upstream_idle");
    }
    if a.idle != b.idle {
        fields.push("timeouts.idle");
    }
    if a.drain != b.drain {
        fields.push("timeouts.drain");
    }
    fields
}
