//! Hot reload: on SIGHUP or a change of the file, parse → validate → apply.
//! A bad file keeps the running config and says why.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use canary_config::Config;
use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::auth::Tokens;
use crate::certificates::Certificates;
use crate::config_file;
use crate::controller::Controller;
use crate::metrics::ControlMetrics;

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
    /// Applies new configs.
    pub controller: Arc<Controller>,
    /// The API's tokens, re-read with the config.
    pub tokens: Arc<RwLock<Tokens>>,
    /// Reload counters.
    pub metrics: ControlMetrics,
    /// The HTTPS listener's certificates, re-read every poll.
    pub certificates: Option<Certificates>,
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
            self.check(forced).await;
            if let Some(c) = &mut self.certificates {
                c.check(&self.current.tls);
            }
        }
    }

    /// Re-reads the file; applies it when forced (SIGHUP) or when its text changed.
    pub async fn check(&mut self, forced: bool) {
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
            Ok(config) => self.apply(config).await,
            Err(e) => {
                tracing::error!(path = %self.path.display(), "reload refused, the previous config keeps serving:\n{}", e.report());
                self.metrics.reload(false);
            }
        }
    }

    async fn apply(&mut self, config: Config) {
        let tokens = match &config.admin.tokens_file {
            Some(path) => match Tokens::load(path) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused, the previous config keeps serving");
                    self.metrics.reload(false);
                    return;
                }
            },
            None => None,
        };
        for field in restart_only_changes(&self.current, &config) {
            tracing::warn!(
                field,
                "changed in the config file; it takes effect only after a restart"
            );
        }
        match self.controller.apply_config(config.clone()).await {
            Ok(()) => {
                if let Some(t) = tokens {
                    *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = t;
                }
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

/// Fields a reload cannot apply to live sockets or the plain-HTTP connector.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if old.listen != new.listen {
        fields.push("listen");
    }
    if old.admin.listen != new.admin.listen {
        fields.push("admin.listen");
    }
    if old.admin.tokens_file.is_some() && new.admin.tokens_file.is_none() {
        fields.push("admin.tokens_file (removing it)");
    }
    if old.state != new.state {
        fields.push("state.path");
    }
    let (a, b) = (&old.timeouts, &new.timeouts);
    for (name, changed) in [
        ("timeouts.connect", a.connect != b.connect),
        ("timeouts.idle", a.idle != b.idle),
        ("timeouts.drain", a.drain != b.drain),
    ] {
        if changed {
            fields.push(name);
        }
    }
    fields
}
