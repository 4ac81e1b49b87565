//! Live per-route state that must outlive the process in standalone mode: the weight last
//! applied and the rollout generation behind the sticky salt.
//!
//! A new rollout — the weight rising from 0 — bumps the generation, so a new set of users
//! goes first; everything else keeps it, so users keep their variant across reloads and
//! restarts. Saved atomically: write a temp file, fsync, rename, fsync the directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use canary_config::{Config, Weight};
use canary_proxy::{split, LiveRoute};
use serde::{Deserialize, Serialize};

/// Format version of the state file.
const VERSION: u32 = 1;

/// One route's live state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteState {
    /// The canary weight in parts per million.
    pub weight_ppm: u32,
    /// Rollout number; the sticky salt is derived from it.
    pub generation: u64,
}

/// Every route's live state, as saved on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    version: u32,
    /// By route name.
    pub routes: BTreeMap<String, RouteState>,
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
    #[error("state file {path} is corrupt or of another version: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl State {
    /// Brings the state in line with `config`: new routes start at generation 1 when they
    /// carry traffic, a weight rising from 0 starts a new generation, removed routes go.
    /// Returns true when anything changed.
    pub fn reconcile(&mut self, config: &Config) -> bool {
        let before = self.clone();
        self.version = VERSION;
        self.routes
            .retain(|name, _| config.routes.iter().any(|r| &r.name == name));
        for route in &config.routes {
            let weight = route.weight.ppm();
            let entry = self.routes.entry(route.name.clone()).or_insert(RouteState {
                weight_ppm: 0,
                generation: 0,
            });
            if entry.weight_ppm == 0 && weight > 0 {
                entry.generation += 1;
            }
            entry.weight_ppm = weight;
        }
        *self != before
    }

    /// The live weight and salt of a route (generation 0 when unknown).
    pub fn live(&self, route: &canary_config::Route) -> LiveRoute {
        let state = self.routes.get(&route.name);
        LiveRoute {
            weight: state.map_or(route.weight, |s| Weight::from_ppm(s.weight_ppm)),
            salt: split::salt_for(&route.name, state.map_or(0, |s| s.generation)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(weight: &str) -> Config {
        canary_config::parse(&format!(
            "routes:\n  - name: app\n    stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n    weight: {weight}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_new_rollout_gets_a_new_generation_and_steps_keep_it() {
        let mut s = State::default();
        assert!(s.reconcile(&config("10")));
        assert_eq!(
            s.routes["app"],
            RouteState {
                weight_ppm: 100_000,
                generation: 1
            }
        );
        s.reconcile(&config("25"));
        s.reconcile(&config("50"));
        assert_eq!(s.routes["app"].generation, 1, "stepping up keeps the salt");
        s.reconcile(&config("0"));
        assert_eq!(s.routes["app"].generation, 1);
        s.reconcile(&config("10"));
        assert_eq!(s.routes["app"].generation, 2, "rising from 0 is a new rollout");
        assert!(!s.reconcile(&config("10")), "no change, nothing to save");
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
    }

    #[test]
    fn saved_format_is_pinned() {
        let mut s = State::default();
        s.reconcile(&config("12.5"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"routes":{"app":{"weight_ppm":125000,"generation":1}}}"#
        );
    }
}

/// The state and where it is kept (`None`: in memory only, as in the demo).
#[derive(Debug)]
pub struct StateStore {
    /// Current state.
    pub state: State,
    path: Option<PathBuf>,
}

impl StateStore {
    /// Loads the state at `path` (or starts empty in memory).
    pub fn open(path: Option<PathBuf>) -> Result<Self, StateError> {
        let state = match &path {
            Some(p) => State::load(p)?,
            None => State::default(),
        };
        Ok(Self { state, path })
    }

    /// Reconciles with `config` and saves when something changed.
    pub fn apply(&mut self, config: &Config) -> Result<(), StateError> {
        if self.state.reconcile(config) {
            if let Some(path) = &self.path {
                self.state.save(path)?;
            }
        }
        Ok(())
    }
}
