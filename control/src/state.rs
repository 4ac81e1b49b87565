//! Live per-route state that outlives the process in standalone mode — weight, rollout,
//! sticky-salt generation, revision — plus the recent audit trail.
//!
//! The config file's `weight` is applied when it *changes in the file* (an operator's edit);
//! otherwise the live weight set through the API stands, across reloads and restarts.
//! A weight rising from 0 starts a new salt generation (a new set of users goes first).
//! Saved atomically: write a temp file, fsync, rename, fsync the directory.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use canary_config::{Config, Weight};
use canary_proxy::{split, LiveRoute};
use serde::{Deserialize, Serialize};

use crate::rollout::{Action, Event, Rollout, RolloutError};
use crate::state_writer::{StateFile, Unsaved};

/// Format version of the state file.
const VERSION: u32 = 1;
/// Audit entries kept in the state file (older ones remain in the log).
pub const AUDIT_KEPT: usize = 1_000;

/// One route's live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteState {
    /// The canary weight served, parts per million.
    pub weight_ppm: u32,
    /// The config file's weight when last applied, to notice edits.
    pub config_weight_ppm: u32,
    /// Rollout number; the sticky salt is derived from it.
    pub generation: u64,
    /// Bumped on every change; the API's `If-Match`.
    pub revision: u64,
    /// The rollout state machine.
    pub rollout: Rollout,
    /// Why the last change was made.
    pub last_reason: Option<String>,
}

impl RouteState {
    /// What the data plane serves for route `name` in this state.
    pub fn live(&self, name: &str) -> LiveRoute {
        LiveRoute {
            weight: self.weight(),
            salt: split::salt_for(name, self.generation),
        }
    }

    /// A route first seen, serving its configured weight.
    pub fn new(weight: Weight) -> Self {
        let mut s = Self {
            weight_ppm: 0,
            config_weight_ppm: weight.ppm(),
            generation: 0,
            revision: 1,
            rollout: Rollout::default(),
            last_reason: None,
        };
        s.set_weight(weight);
        s
    }

    /// Serves `weight` from now on; rising from 0 starts a new salt generation.
    pub fn set_weight(&mut self, weight: Weight) {
        if self.weight_ppm == 0 && weight.ppm() > 0 {
            self.generation += 1;
        }
        self.weight_ppm = weight.ppm();
    }

    /// Applies the configured weight if it was edited since last applied (by `why`); true if so.
    pub fn apply_config_weight(&mut self, weight: Weight, why: &str) -> bool {
        if self.config_weight_ppm == weight.ppm() {
            return false;
        }
        self.config_weight_ppm = weight.ppm();
        // Same path as a manual weight (a progressing rollout pauses); no phase refuses it.
        self.apply(Event::SetWeight(weight), Some(why.into()), now_ms())
            .expect("every phase accepts a weight");
        true
    }

    /// Runs `event` through the rollout at `now_ms` and serves the weight it sets; the
    /// revision moves when anything changed or a reason is given. On refusal nothing changes.
    pub fn apply(&mut self, event: Event, reason: Option<String>, now_ms: u64) -> Result<(), RolloutError> {
        let before = self.rollout.clone();
        let actions = self.rollout.apply(event, now_ms)?;
        let mut changed = self.rollout != before;
        for action in actions {
            match action {
                Action::SetWeight(w) => {
                    changed |= w != self.weight();
                    self.set_weight(w);
                }
            }
        }
        if changed || reason.is_some() {
            self.revision += 1;
            self.last_reason = reason.or(self.last_reason.take());
        }
        Ok(())
    }

    /// The weight served.
    pub fn weight(&self) -> Weight {
        Weight::from_ppm(self.weight_ppm)
    }
}

/// One audited change (or refused attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// RFC 3339 time.
    pub time: String,
    /// Who: the token's name (never the token), `config-file`, `analysis` or `anonymous`.
    pub actor: String,
    /// The route, when the action was about one.
    pub route: Option<String>,
    /// What was asked: `weight`, `rollout`, `step`, `pause`, `resume`, `promote`, `abort`, `config`.
    pub action: String,
    /// Weight and phase before, e.g. `10 % Progressing`.
    pub from: Option<String>,
    /// Weight and phase after.
    pub to: Option<String>,
    /// The reason given.
    pub reason: Option<String>,
    /// `applied`, or why it was refused (`401 ...`, `409 ...`).
    pub outcome: String,
}

impl AuditEntry {
    /// An applied change of `route` from one weight and phase to another.
    pub fn applied(actor: &str, route: &str, action: &str, from: String, to: String, reason: Option<String>) -> Self {
        Self {
            time: now_rfc3339(),
            actor: actor.into(),
            route: Some(route.into()),
            action: action.into(),
            from: Some(from),
            to: Some(to),
            reason,
            outcome: "applied".into(),
        }
    }

    /// A refused attempt and why.
    pub fn refused(actor: &str, route: Option<&str>, action: &str, reason: Option<String>, why: &str) -> Self {
        Self {
            time: now_rfc3339(),
            actor: actor.into(),
            route: route.map(str::to_string),
            action: action.into(),
            from: None,
            to: None,
            reason,
            outcome: format!("refused: {why}"),
        }
    }
}

/// Every route's live state and the recent audit trail, as saved on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    version: u32,
    /// By route name.
    pub routes: BTreeMap<String, RouteState>,
    /// Newest last.
    pub audit: VecDeque<AuditEntry>,
}

/// Why state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file this version understands.
    #[error(
        "state file {path} is corrupt or of another version ({source}); fix or remove it, or start with --reset-state"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl State {
    /// Brings the state in line with `config`: new routes start at the file's weight, a
    /// weight edited in the file is applied, routes no longer in the file go.
    /// Returns the audit entries of what the file changed.
    pub fn reconcile(&mut self, config: &Config) -> Vec<AuditEntry> {
        self.version = VERSION;
        let configured: std::collections::HashSet<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        self.routes.retain(|name, _| configured.contains(name.as_str()));
        let mut changes = Vec::new();
        for route in &config.routes {
            let file_weight = route.weight;
            match self.routes.get_mut(&route.name) {
                None => {
                    self.routes.insert(route.name.clone(), RouteState::new(file_weight));
                }
                // Described only when edited: most routes are unchanged by a reload.
                Some(s) if s.config_weight_ppm != file_weight.ppm() => {
                    let from = describe(s);
                    if s.apply_config_weight(file_weight, "weight edited in the config file") {
                        changes.push(AuditEntry::applied(
                            "config-file",
                            &route.name,
                            "config",
                            from,
                            describe(s),
                            s.last_reason.clone(),
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        changes
    }

    /// Appends an audit entry, keeping the newest [`AUDIT_KEPT`].
    pub fn record(&mut self, entry: AuditEntry) {
        tracing::info!(
            target: "canaryd::audit",
            actor = %entry.actor,
            route = entry.route.as_deref().unwrap_or(""),
            action = %entry.action,
            from = entry.from.as_deref().unwrap_or(""),
            to = entry.to.as_deref().unwrap_or(""),
            reason = entry.reason.as_deref().unwrap_or(""),
            outcome = %entry.outcome,
            "audit"
        );
        self.audit.push_back(entry);
        while self.audit.len() > AUDIT_KEPT {
            self.audit.pop_front();
        }
    }

    /// The live weight and salt of a route (the file's weight, generation 0, when unknown).
    pub fn live(&self, route: &canary_config::Route) -> LiveRoute {
        match self.routes.get(&route.name) {
            Some(s) => s.live(&route.name),
            None => LiveRoute::from_config(route),
        }
    }

    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.into(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                version: VERSION,
                ..State::default()
            }),
            Err(source) => Err(StateError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Writes the state file atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.into(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

/// `25 % Progressing` — a route's weight and phase for the audit trail.
pub fn describe(s: &RouteState) -> String {
    format!("{} % {}", s.weight(), s.rollout.phase.as_str())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The state and where it is kept (`None`: in memory only, as in the demo).
#[derive(Debug)]
pub struct StateStore {
    /// Current state.
    pub state: State,
    /// The number of changes made so far (each [`StateStore::save`] or
    /// [`StateStore::save_soon`] is one); the file knows which it holds.
    changes: u64,
    file: Option<Arc<StateFile>>,
}

impl StateStore {
    /// Loads the state at `path` (or starts empty in memory); `reset` ignores a corrupt file.
    pub fn open(path: Option<PathBuf>, reset: bool) -> Result<Self, StateError> {
        let state = match &path {
            Some(p) => match State::load(p) {
                Err(StateError::Corrupt { .. }) if reset => {
                    tracing::warn!(path = %p.display(), "state file unreadable, starting afresh (--reset-state)");
                    State::default()
                }
                other => other?,
            },
            None => State::default(),
        };
        Ok(Self {
            state,
            changes: 0,
            file: path.map(StateFile::new),
        })
    }

    /// Writes the state now (no-op in memory): for changes that answer only once saved.
    pub fn save(&mut self) -> Result<(), StateError> {
        self.changes += 1;
        match &self.file {
            Some(file) => file.write(self.changes, &self.state),
            None => Ok(()),
        }
    }

    /// Has the state written soon by the store's background writer
    /// ([`crate::state_writer::spawn`]), without waiting for the disk.
    pub fn save_soon(&mut self) {
        self.changes += 1;
        if let Some(file) = &self.file {
            file.mark_dirty();
        }
    }

    /// The file, for its background writer (`None` in memory).
    pub fn file(&self) -> Option<Arc<StateFile>> {
        self.file.clone()
    }

    /// The state to write, when the file does not hold the newest change yet.
    pub fn unsaved(&self) -> Option<Unsaved> {
        let file = self.file.as_ref()?;
        (!file.holds(self.changes)).then(|| Unsaved {
            change: self.changes,
            state: self.state.clone(),
        })
    }

    /// Writes what [`StateStore::save_soon`] left for the background writer, now (at shutdown).
    pub fn flush(&self) -> Result<(), StateError> {
        match (&self.file, self.unsaved()) {
            (Some(file), Some(u)) => file.write(u.change, &u.state),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(weight: &str) -> Config {
        canary_config::parse(&format!(
            "routes:\n  - name: app\n    stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n    weight: {weight}\n"
        ))
        .unwrap()
    }

    /// A weight edited in a file or a spec and a manual weight take one path: the same
    /// phase change, weight, generation, revision and reason.
    #[test]
    fn an_edited_weight_and_a_manual_weight_change_the_state_alike() {
        let mut edited = RouteState::new(Weight::from_ppm(0));
        let mut manual = edited.clone();
        let base = edited.revision;
        edited
            .rollout
            .apply(
                Event::Start {
                    steps: Some(vec![Weight::from_ppm(100_000)]),
                    interval: None,
                },
                1,
            )
            .ok();
        manual.rollout = edited.rollout.clone();
        assert!(edited.apply_config_weight(Weight::from_ppm(250_000), "edited"));
        manual
            .apply(Event::SetWeight(Weight::from_ppm(250_000)), Some("edited".into()), 2)
            .unwrap();
        manual.config_weight_ppm = edited.config_weight_ppm;
        manual.rollout.step_started_ms = edited.rollout.step_started_ms;
        assert_eq!(edited, manual);
        assert_eq!((edited.revision, edited.generation), (base + 1, 1));
        assert_eq!(edited.rollout.phase, crate::rollout::Phase::Paused);
        assert!(
            !edited.apply_config_weight(Weight::from_ppm(250_000), "again"),
            "unchanged is no edit"
        );
        assert_eq!(edited.revision, base + 1);
    }

    #[test]
    fn file_edits_apply_and_rising_from_zero_is_a_new_generation() {
        let mut s = State::default();
        assert!(s.reconcile(&config("10")).is_empty(), "a new route is not an edit");
        assert_eq!((s.routes["app"].weight_ppm, s.routes["app"].generation), (100_000, 1));
        assert_eq!(s.reconcile(&config("25")).len(), 1);
        s.reconcile(&config("50"));
        assert_eq!(s.routes["app"].generation, 1, "stepping up keeps the salt");
        s.reconcile(&config("0"));
        s.reconcile(&config("10"));
        assert_eq!(s.routes["app"].generation, 2, "rising from 0 is a new rollout");
    }

    #[test]
    fn an_unchanged_file_keeps_the_api_weight() {
        let mut s = State::default();
        s.reconcile(&config("10"));
        s.routes.get_mut("app").unwrap().set_weight(Weight::from_ppm(400_000));
        assert!(s.reconcile(&config("10")).is_empty());
        assert_eq!(s.routes["app"].weight_ppm, 400_000);
    }

    #[test]
    fn save_and_load_round_trip_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let mut s = State::default();
        s.reconcile(&config("10"));
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        std::fs::write(&path, "{not json").unwrap();
        let err = State::load(&path).unwrap_err().to_string();
        assert!(err.contains("state.json") && err.contains("corrupt"), "{err}");
        assert!(StateStore::open(Some(path.clone()), false).is_err());
        assert!(StateStore::open(Some(path), true).unwrap().state.routes.is_empty());
    }

    #[test]
    fn saved_format_is_pinned() {
        let mut s = State::default();
        s.reconcile(&config("12.5"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"routes":{"app":{"weight_ppm":125000,"config_weight_ppm":125000,"generation":1,"revision":1,"rollout":{"phase":"Idle","steps_ppm":[],"step":null,"interval_ms":null,"step_started_ms":0},"last_reason":null}},"audit":[]}"#
        );
    }
}
