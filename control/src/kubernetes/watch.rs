//! A watched set of objects, published whole: the initial list (and every re-list after a
//! lost watch or a 410 Gone) replaces the set at once, never piece by piece, and a broken
//! watch keeps the last known set while kube-runtime backs off and re-lists.
//!
//! Each watch is a `list` and a `watch` call on its resource ([`super::api_calls`]). The decisions
//! are [`Reflector`]'s (pure, unit-tested with a stream of events); the task only performs them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{Stream, StreamExt};
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

/// What one watcher event did to the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Part of a (re-)list in progress: nothing to publish yet.
    Buffered,
    /// A list completed and replaced the set; `recovered` when it is the first, or ends a failure.
    Listed {
        /// The first list, or the first since the watch failed (worth a log line).
        recovered: bool,
    },
    /// One object was added, changed or removed.
    Changed,
    /// The watch failed; the set is kept.
    Failed,
}

/// The pure store writer of a watch (kube-runtime's `reflector::store` shape): applies events to the
/// set, buffers a (re-)list and swaps it in whole at `InitDone`, remembers failures. No I/O.
#[derive(Debug)]
pub struct Reflector<T> {
    objects: BTreeMap<(String, String), T>,
    /// Objects of a (re-)list in progress.
    listing: Option<BTreeMap<(String, String), T>>,
    synced: bool,
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

impl<T> Default for Reflector<T> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            listing: None,
            synced: false,
            failing_since: None,
            last_error: None,
        }
    }
}

impl<T: Clone> Reflector<T> {
    /// Applies one event of the watcher, keeping `keep(object)` of each object; `now` dates a failure.
    pub fn apply<K: Resource>(
        &mut self,
        item: Result<Event<K>, watcher::Error>,
        keep: fn(K) -> T,
        now: Instant,
    ) -> Applied {
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match item {
            Ok(Event::Init) => {
                self.listing = Some(BTreeMap::new());
                Applied::Buffered
            }
            Ok(Event::InitApply(o)) => {
                self.listing.get_or_insert_with(BTreeMap::new).insert(key(&o), keep(o));
                Applied::Buffered
            }
            Ok(Event::InitDone) => {
                self.objects = self.listing.take().unwrap_or_default();
                let recovered = !self.synced || self.failing_since.is_some();
                self.synced = true;
                self.failing_since = None;
                Applied::Listed { recovered }
            }
            Ok(Event::Apply(o)) => {
                self.objects.insert(key(&o), keep(o));
                self.failing_since = None;
                Applied::Changed
            }
            Ok(Event::Delete(o)) => {
                self.objects.remove(&key(&o));
                self.failing_since = None;
                Applied::Changed
            }
            Err(e) => {
                self.failing_since.get_or_insert(now);
                self.last_error = Some(e.to_string());
                Applied::Failed
            }
        }
    }

    /// The set as readers see it. A copy: measured cheaper than persistent maps here (benches/KUBE_SCALE.md).
    pub fn snapshot(&self) -> Snapshot<T> {
        Snapshot {
            objects: self.objects.clone(),
            synced: self.synced,
            failing_since: self.failing_since,
            last_error: self.last_error.clone(),
        }
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
    let stream = watcher::watcher(api, config).default_backoff();
    reflect(stream, &what, &tx, &changed, keep).await;
}

/// Drives a [`Reflector`] with `events` and performs its effects: logs, publishing, notifying.
async fn reflect<K: Resource, T: Clone>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    what: &str,
    tx: &watch::Sender<Arc<Snapshot<T>>>,
    changed: &Notify,
    keep: fn(K) -> T,
) {
    let mut events = std::pin::pin!(events);
    let mut store = Reflector::default();
    while let Some(item) = events.next().await {
        if let Err(e) = &item {
            // The last known set stays; the watcher backs off and re-lists.
            tracing::warn!(watch = %what, error = %e, "watch failed; keeping the last known objects");
        }
        match store.apply(item, keep, Instant::now()) {
            Applied::Buffered => continue,
            Applied::Listed { recovered: true } => {
                tracing::info!(watch = %what, objects = store.objects.len(), "listed");
            }
            Applied::Listed { recovered: false } | Applied::Changed | Applied::Failed => {}
        }
        tx.send_replace(Arc::new(store.snapshot()));
        changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn map(name: &str, value: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "prod", "name": name },
            "data": { "v": value },
        }))
        .unwrap()
    }

    fn value(c: ConfigMap) -> String {
        c.data.unwrap_or_default().remove("v").unwrap_or_default()
    }

    fn names(s: &Snapshot<String>) -> Vec<(&str, &str)> {
        s.objects.iter().map(|((_, n), v)| (n.as_str(), v.as_str())).collect()
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_a_failure_keeps_the_set() {
        let mut store = Reflector::default();
        let now = Instant::now();
        let mut apply = |e| store.apply(e, value, now);
        assert_eq!(apply(Ok(Event::Init)), Applied::Buffered);
        assert_eq!(apply(Ok(Event::InitApply(map("a", "1")))), Applied::Buffered);
        assert_eq!(apply(Ok(Event::InitDone)), Applied::Listed { recovered: true });
        assert_eq!(apply(Ok(Event::Apply(map("b", "2")))), Applied::Changed);
        assert_eq!(apply(Err(watcher::Error::NoResourceVersion)), Applied::Failed);
        let failed = store.snapshot();
        assert_eq!(
            names(&failed),
            [("a", "1"), ("b", "2")],
            "a failure keeps the last known set"
        );
        assert!(failed.failing_since.is_some() && failed.last_error.is_some());

        // A re-list after the failure: the old set is served until InitDone, then replaced whole.
        let mut apply = |e| store.apply(e, value, now);
        apply(Ok(Event::Init));
        apply(Ok(Event::InitApply(map("b", "3"))));
        assert_eq!(
            names(&store.snapshot()),
            [("a", "1"), ("b", "2")],
            "no half list is visible"
        );
        let mut apply = |e| store.apply(e, value, now);
        assert_eq!(apply(Ok(Event::InitDone)), Applied::Listed { recovered: true });
        assert_eq!(apply(Ok(Event::Delete(map("b", "")))), Applied::Changed);
        let healed = store.snapshot();
        assert!(healed.objects.is_empty() && healed.synced && healed.failing_since.is_none());

        let mut apply = |e| store.apply(e, value, now);
        apply(Ok(Event::Init));
        assert_eq!(apply(Ok(Event::InitDone)), Applied::Listed { recovered: false });
    }

    #[tokio::test]
    async fn reflect_publishes_after_each_change_but_not_mid_list() {
        let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
        let changed = Notify::new();
        let events = stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(map("a", "1"))),
            Ok(Event::InitApply(map("b", "2"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(map("a", "9"))),
        ])
        // Yield between events so the reader (same thread) sees every publication.
        .then(|e| async {
            tokio::task::yield_now().await;
            e
        });
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                seen.push(s.objects.len());
            }
            seen
        });
        reflect(events, "configmaps", &tx, &changed, value).await;
        assert_eq!(names(&tx.borrow()), [("a", "9"), ("b", "2")]);
        drop(tx);
        let seen = seen.await.unwrap();
        assert_eq!(
            seen,
            [2, 2],
            "published once per list and once per change, never a half list"
        );
        // One permit is stored by notify_one when nobody waits yet.
        tokio::time::timeout(std::time::Duration::from_secs(1), changed.notified())
            .await
            .unwrap();
    }
}
