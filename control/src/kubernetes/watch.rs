//! A watched set of objects, published whole: the initial list (and every re-list after a
//! lost watch or a 410 Gone) replaces the set at once, never piece by piece, and a broken
//! watch keeps the last known set while kube-runtime backs off and re-lists.
//!
//! Each watch is a `list` and a `watch` call on its resource ([`super::api_calls`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

/// The objects of one watch, by `(namespace, name)`.
#[derive(Debug)]
pub struct Snapshot<K> {
    /// The objects.
    pub objects: BTreeMap<(String, String), K>,
    /// The first complete list has arrived.
    pub synced: bool,
    /// Since when the watch has been failing (`None`: healthy).
    pub failing_since: Option<Instant>,
    /// The last error, for status and logs.
    pub last_error: Option<String>,
}

impl<K> Default for Snapshot<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            synced: false,
            failing_since: None,
            last_error: None,
        }
    }
}

impl<K> Snapshot<K> {
    /// Seconds the published set may be behind the cluster (0 while the watch is healthy).
    pub fn stale_seconds(&self) -> f64 {
        self.failing_since.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }
}

/// A running watch; dropping it stops the watch.
pub struct Watch<T> {
    rx: watch::Receiver<Arc<Snapshot<T>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for Watch<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Clone + Send + Sync + 'static> Watch<T> {
    /// Starts watching objects `K`, keeping `keep(object)` of each (so big objects such as
    /// Pods are not held whole); `changed` is notified after every published change. `what`
    /// names the watch in logs.
    pub fn start<K>(api: Api<K>, config: watcher::Config, what: String, changed: Arc<Notify>, keep: fn(K) -> T) -> Self
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let task = tokio::spawn(run(api, config, what, tx, changed, keep));
        Self { rx, task }
    }

    /// The latest published set.
    pub fn snapshot(&self) -> Arc<Snapshot<T>> {
        self.rx.borrow().clone()
    }

    /// Every set published from now on, for another reader of the same watch.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot<T>>> {
        self.rx.clone()
    }
}

async fn run<K, T: Clone>(
    api: Api<K>,
    config: watcher::Config,
    what: String,
    tx: watch::Sender<Arc<Snapshot<T>>>,
    changed: Arc<Notify>,
    keep: fn(K) -> T,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut objects: BTreeMap<(String, String), T> = BTreeMap::new();
    // Objects of a (re-)list in progress: published all at once on InitDone.
    let mut listing: Option<BTreeMap<(String, String), T>> = None;
    let mut synced = false;
    let mut failing_since: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    while let Some(item) = stream.next().await {
        let publish = match item {
            Ok(Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(o)) => {
                listing.get_or_insert_with(BTreeMap::new).insert(key(&o), keep(o));
                false
            }
            Ok(Event::InitDone) => {
                objects = listing.take().unwrap_or_default();
                if !synced || failing_since.is_some() {
                    tracing::info!(watch = %what, objects = objects.len(), "listed");
                }
                synced = true;
                failing_since = None;
                true
            }
            Ok(Event::Apply(o)) => {
                objects.insert(key(&o), keep(o));
                failing_since = None;
                true
            }
            Ok(Event::Delete(o)) => {
                objects.remove(&key(&o));
                failing_since = None;
                true
            }
            Err(e) => {
                // The last known set stays; the watcher backs off and re-lists.
                tracing::warn!(watch = %what, error = %e, "watch failed; keeping the last known objects");
                failing_since.get_or_insert_with(Instant::now);
                last_error = Some(e.to_string());
                true
            }
        };
        if publish {
            tx.send_replace(Arc::new(Snapshot {
                objects: objects.clone(),
                synced,
                failing_since,
                last_error: last_error.clone(),
            }));
            changed.notify_one();
        }
    }
}
