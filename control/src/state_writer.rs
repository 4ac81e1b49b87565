//! Writes the state file off the caller's thread. Changes that need no answer (an audit
//! entry of a refused call, a timed step, state adopted from the cluster) mark the store
//! dirty and return; one thread per store writes the newest state, so a flood of changes
//! costs one write at a time, never an fsync on a data-plane worker, and at most
//! [`MIN_INTERVAL`] apart, so a flood of refused calls costs ten writes a second, not one per
//! call. Commands still save before they answer; a SIGKILL loses at most the changes of the
//! last interval that needed no answer, and a clean shutdown flushes them. Every write carries the number of the change it holds, and an older
//! one never replaces a newer one on disk.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::state::{State, StateError};

/// The least time between two background writes; changes in between share the next one.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The file side of a store, shared by synchronous saves and the background writer.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// The number of the newest change on disk; held while writing.
    written: Mutex<u64>,
    /// A change is waiting for the background writer.
    dirty: Mutex<bool>,
    wake: Condvar,
}

/// A state to write, taken under the owner's lock and written outside it.
#[derive(Debug)]
pub struct Unsaved {
    /// The number of the change this state includes.
    pub change: u64,
    /// The state at that change.
    pub state: State,
}

impl StateFile {
    /// The file at `path`, holding change 0 (what was loaded).
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            path,
            written: Mutex::new(0),
            dirty: Mutex::new(false),
            wake: Condvar::new(),
        })
    }

    /// Writes `state`, which includes changes up to `change`, unless a newer one is on disk.
    pub fn write(&self, change: u64, state: &State) -> Result<(), StateError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if change <= *written {
            return Ok(());
        }
        state.save(&self.path)?;
        *written = change;
        Ok(())
    }

    /// Whether changes up to `change` are on disk.
    pub fn holds(&self, change: u64) -> bool {
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) >= change
    }

    /// Wakes the background writer.
    pub fn mark_dirty(&self) {
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }

    /// Waits up to `timeout` for a change; true (and clears the flag) when there is one.
    fn wait_dirty(&self, timeout: Duration) -> bool {
        let dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let (mut dirty, _) = self
            .wake
            .wait_timeout_while(dirty, timeout, |d| !*d)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *dirty)
    }
}

/// Starts the thread that writes `file` whenever it is marked dirty; `take` is called
/// for the state to write (under its owner's lock, which is released before the write).
/// The thread ends once `owner` is dropped.
pub fn spawn<T: Send + Sync + 'static>(
    file: Arc<StateFile>,
    owner: Weak<T>,
    take: fn(&T) -> Option<Unsaved>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("canaryd-state".into())
        .spawn(move || loop {
            if !file.wait_dirty(Duration::from_secs(1)) {
                if owner.strong_count() == 0 {
                    return;
                }
                continue;
            }
            let started = std::time::Instant::now();
            let Some(owner) = owner.upgrade() else { return };
            let unsaved = take(&owner);
            drop(owner);
            if let Some(unsaved) = unsaved {
                if let Err(e) = file.write(unsaved.change, &unsaved.state) {
                    tracing::error!(error = %e, "route state not saved; retrying in a second");
                    std::thread::sleep(Duration::from_secs(1));
                    file.mark_dirty();
                }
            }
            std::thread::sleep(MIN_INTERVAL.saturating_sub(started.elapsed()));
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_change_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        let mut newer = State::default();
        newer.record(crate::state::AuditEntry::refused("t", None, "newer", None, "401"));
        file.write(2, &newer).unwrap();
        file.write(1, &State::default()).unwrap();
        let on_disk = State::load(&dir.path().join("state.json")).unwrap();
        assert_eq!(on_disk.audit.len(), 1, "change 1 overwrote change 2");
        assert!(file.holds(2) && !file.holds(3));
    }

    #[test]
    fn the_background_writer_writes_the_newest_state_and_ends_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state.json"));
        let owner: Arc<Mutex<(u64, State)>> = Arc::new(Mutex::new((0, State::default())));
        spawn(file.clone(), Arc::downgrade(&owner), |o: &Mutex<(u64, State)>| {
            let o = o.lock().unwrap();
            Some(Unsaved {
                change: o.0,
                state: o.1.clone(),
            })
        })
        .unwrap();
        for i in 1..=50u64 {
            let mut o = owner.lock().unwrap();
            o.1.record(crate::state::AuditEntry::refused(
                "t",
                None,
                &format!("call {i}"),
                None,
                "401",
            ));
            o.0 = i;
            drop(o);
            file.mark_dirty();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !file.holds(50) {
            assert!(std::time::Instant::now() < deadline, "change 50 never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        let on_disk = State::load(&dir.path().join("state.json")).unwrap();
        assert_eq!(on_disk.audit.len(), 50);
        drop(owner);
        // The thread holds the file until it notices its owner is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&file) > 2 {
            assert!(std::time::Instant::now() < deadline, "the writer outlived its owner");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
