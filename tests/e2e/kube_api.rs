//! The test Kubernetes API server (`canary_tests::kube_api`) driven by the real kube-rs
//! client and kube-runtime watcher: lists and selectors, watches with bookmarks, streaming
//! lists, 410 Gone and re-lists, optimistic concurrency, status subresources, patches,
//! finalizers, fault injection, restart.

use std::time::Duration;

use canary_tests::kube_api::{canary_route, ingress_class, lease, pod, service, KubeApi};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::IngressClass;
use kube::api::{Api, DeleteParams, ListParams, ObjectList, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

/// Watcher events, forwarded by a task that polls the watcher all the time (as a controller does).
type Events<K> = mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>;

fn spawn_watcher<K: Send + 'static>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
) -> Events<K> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    rx
}

/// A server and a kube client built the way canaryd builds one: from a kubeconfig file.
async fn setup() -> (KubeApi, tempfile::TempDir, Client) {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = api.write_kubeconfig(dir.path());
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();
    (api, dir, client)
}

fn describe<K: Resource>(e: &Event<K>) -> String {
    match e {
        Event::Init => "Init".into(),
        Event::InitApply(o) => format!("InitApply({})", o.name_any()),
        Event::InitDone => "InitDone".into(),
        Event::Apply(o) => format!("Apply({})", o.name_any()),
        Event::Delete(o) => format!("Delete({})", o.name_any()),
    }
}

async fn next<K>(s: &mut Events<K>) -> Result<Event<K>, watcher::Error> {
    tokio::time::timeout(WAIT, s.recv())
        .await
        .expect("a watcher event within 10 s")
        .expect("the watcher never ends")
}

/// The next event, which must not be an error, described.
async fn next_ok<K: Resource>(s: &mut Events<K>) -> String {
    match next(s).await {
        Ok(e) => describe(&e),
        Err(e) => panic!("watcher error: {e}"),
    }
}

async fn expect_events<K: Resource>(s: &mut Events<K>, want: &[&str]) {
    for w in want {
        assert_eq!(next_ok(s).await, *w);
    }
}

fn names<K: Resource + Clone>(list: &ObjectList<K>) -> Vec<String> {
    list.items.iter().map(|o| o.name_any()).collect()
}

fn api_code(r: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(ae)) => (ae.code, ae.reason.clone(), ae.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// GETs of pod lists (not watches) in the request log.
fn pod_lists(api: &KubeApi) -> usize {
    api.requests()
        .iter()
        .filter(|(m, t)| m == "GET" && t.starts_with("/api/v1/namespaces/default/pods?") && !t.contains("watch="))
        .count()
}

fn route_api(client: &Client) -> (Api<DynamicObject>, ApiResource) {
    let gvk = GroupVersionKind::gvk("canaryd.dev", "v1alpha1", "CanaryRoute");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "canaryroutes");
    (Api::namespaced_with(client.clone(), "default", &ar), ar)
}

#[tokio::test]
async fn lists_with_label_and_field_selectors() {
    let (kube, _dir, client) = setup().await;
    kube.apply(pod(
        "default",
        "web-1",
        &[("app", "web"), ("track", "stable")],
        "10.0.0.1",
        true,
    ));
    kube.apply(pod(
        "default",
        "web-2",
        &[("app", "web"), ("track", "canary")],
        "10.0.0.2",
        true,
    ));
    kube.apply(pod("default", "api-1", &[("app", "api")], "10.0.0.3", false));
    kube.apply(pod("other", "web-9", &[("app", "web")], "10.0.0.9", true));
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let list = |sel: &str| {
        let pods = pods.clone();
        let lp = ListParams::default().labels(sel);
        async move { names(&pods.list(&lp).await.unwrap()) }
    };
    assert_eq!(list("").await, ["api-1", "web-1", "web-2"]);
    assert_eq!(list("app=web").await, ["web-1", "web-2"]);
    assert_eq!(list("app==web,track in (canary, blue)").await, ["web-2"]);
    assert_eq!(list("track notin (canary)").await, ["api-1", "web-1"]);
    assert_eq!(list("!track").await, ["api-1"]);
    assert_eq!(list("track").await, ["web-1", "web-2"]);
    assert_eq!(list("app!=web").await, ["api-1"]);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=web-1"))
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["web-1"]);
    assert_eq!(
        by_name.items[0].status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.0.0.1")
    );
    let everything = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        everything.metadata.resource_version,
        Some(kube.resource_version().to_string())
    );

    // Cluster-wide lists see every namespace; field selectors on the namespace work too.
    let all: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        names(&all.list(&ListParams::default().labels("app=web")).await.unwrap()),
        ["web-1", "web-2", "web-9"]
    );
    let other = all
        .list(&ListParams::default().fields("metadata.namespace=other"))
        .await
        .unwrap();
    assert_eq!(names(&other), ["web-9"]);

    // Pagination.
    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&page), ["api-1", "web-1"]);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&rest), ["web-2"]);
    assert!(rest.metadata.continue_.as_deref().unwrap_or("").is_empty());

    // Gets and 404s.
    assert_eq!(pods.get("web-2").await.unwrap().labels()["track"], "canary");
    let (code, reason, message) = api_code(pods.get("nope").await);
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", "pods \"nope\" not found")
    );
    assert!(pods.get_opt("nope").await.unwrap().is_none());
    let (code, reason, _) = api_code(pods.list(&ListParams::default().labels("a in (x")).await);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));

    // Cluster-scoped resources have no namespace.
    let classes: Api<IngressClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &ingress_class("canaryd", "canaryd.dev/controller"),
        )
        .await
        .unwrap();
    assert_eq!(names(&classes.list(&ListParams::default()).await.unwrap()), ["canaryd"]);
    let stored = kube.get("networking.k8s.io/v1", "IngressClass", "", "canaryd").unwrap();
    assert!(stored["metadata"].get("namespace").is_none());

    // Discovery basics.
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    assert!(client
        .list_core_api_versions()
        .await
        .unwrap()
        .versions
        .contains(&"v1".to_string()));
    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "canaryd.dev"));
    let core = client.list_core_api_resources("v1").await.unwrap();
    assert!(core.resources.iter().any(|r| r.name == "pods/status"));
}

#[tokio::test]
async fn watcher_sees_changes_and_relists_after_410() {
    let (kube, _dir, client) = setup().await;
    kube.apply(pod("default", "a", &[("app", "web")], "10.0.0.1", true));
    kube.apply(pod("default", "b", &[("app", "other")], "10.0.0.2", true));
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut events: Events<Pod> = spawn_watcher(watcher::watcher(
        pods.clone(),
        watcher::Config::default().labels("app=web"),
    ));
    expect_events(&mut events, &["Init", "InitApply(a)", "InitDone"]).await;
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 1).await);

    // Writes through the client and through the control API both reach the watcher.
    pods.create(
        &PostParams::default(),
        &pod("default", "c", &[("app", "web")], "10.0.0.3", false),
    )
    .await
    .unwrap();
    expect_events(&mut events, &["Apply(c)"]).await;
    kube.apply(pod("default", "a", &[("app", "web")], "10.0.0.1", false));
    expect_events(&mut events, &["Apply(a)"]).await;
    pods.delete("c", &DeleteParams::default()).await.unwrap();
    expect_events(&mut events, &["Delete(c)"]).await;
    // Entering and leaving the selector look like ADDED and DELETED.
    kube.apply(pod("default", "b", &[("app", "web")], "10.0.0.2", true));
    expect_events(&mut events, &["Apply(b)"]).await;
    kube.apply(pod("default", "a", &[("app", "gone")], "10.0.0.1", true));
    expect_events(&mut events, &["Delete(a)"]).await;
    // Unchanged writes emit nothing; the next event is the one after.
    kube.apply(pod("default", "b", &[("app", "web")], "10.0.0.2", true));
    kube.set_status(
        "v1",
        "Pod",
        "default",
        "b",
        json!({"phase": "Running", "podIP": "10.0.0.22"}),
    );
    let Ok(Event::Apply(b)) = next(&mut events).await else {
        panic!("expected Apply(b)")
    };
    assert_eq!(b.status.unwrap().pod_ip.as_deref(), Some("10.0.0.22"));
    assert_eq!(pod_lists(&kube), 1);

    // The connection drops and history is compacted: the re-watch gets 410, the watcher re-lists.
    kube.expire_watches();
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 410 watch error, got {:?}", other.map(|e| describe(&e))),
    }
    expect_events(&mut events, &["Init", "InitApply(b)", "InitDone"]).await;
    assert_eq!(pod_lists(&kube), 2, "{:#?}", kube.requests());
    kube.apply(pod("default", "d", &[("app", "web")], "10.0.0.4", true));
    expect_events(&mut events, &["Apply(d)"]).await;
}

#[tokio::test]
async fn dropped_watches_resume_from_their_resource_version() {
    let (kube, _dir, client) = setup().await;
    kube.apply(pod("default", "a", &[("app", "web")], "10.0.0.1", true));
    let pods: Api<Pod> = Api::default_namespaced(client);
    let mut events: Events<Pod> = spawn_watcher(watcher::watcher(pods, watcher::Config::default()));
    expect_events(&mut events, &["Init", "InitApply(a)", "InitDone"]).await;
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 1).await);
    let rv = kube.resource_version();
    kube.drop_watches();
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 0).await);
    // A change while no watch is open is replayed from the history on the re-watch.
    kube.apply(pod("default", "b", &[("app", "web")], "10.0.0.2", true));
    expect_events(&mut events, &["Apply(b)"]).await;
    assert_eq!(pod_lists(&kube), 1, "a dropped watch resumes without a re-list");
    let rewatch = format!("resourceVersion={rv}");
    assert!(kube
        .requests()
        .iter()
        .any(|(_, t)| t.contains("watch=true") && t.contains(&rewatch)));
}

#[tokio::test]
async fn bookmarks_streaming_lists_timeouts_and_raw_410() {
    let (kube, _dir, client) = setup().await;
    kube.set_bookmark_interval(Duration::from_millis(100));
    kube.apply(pod("default", "a", &[("app", "web")], "10.0.0.1", true));
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // Raw watch from "0": ADDED for what exists, then bookmarks.
    let wp = WatchParams::default().timeout(5);
    assert!(wp.bookmarks, "kube asks for bookmarks by default");
    let mut raw = pods.watch(&wp, "0").await.unwrap().boxed();
    let first = tokio::time::timeout(WAIT, raw.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(first, WatchEvent::Added(ref p) if p.name_any() == "a"));
    let second = tokio::time::timeout(WAIT, raw.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Bookmark(bm) = second else {
        panic!("expected a bookmark, got {second:?}")
    };
    assert_eq!(bm.metadata.resource_version, kube.resource_version().to_string());
    assert_eq!((bm.types.api_version.as_str(), bm.types.kind.as_str()), ("v1", "Pod"));

    // A watcher (bookmarks on by default) takes bookmarks silently.
    let mut events: Events<Pod> = spawn_watcher(watcher::watcher(pods.clone(), watcher::Config::default()));
    expect_events(&mut events, &["Init", "InitApply(a)", "InitDone"]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(800), events.recv())
            .await
            .is_err(),
        "no events, no errors"
    );
    kube.apply(pod("default", "b", &[("app", "web")], "10.0.0.2", true));
    expect_events(&mut events, &["Apply(b)"]).await;
    assert!(kube
        .requests()
        .iter()
        .any(|(_, t)| t.contains("allowWatchBookmarks=true")));

    // Streaming lists: sendInitialEvents, then the initial-events-end bookmark.
    let mut streamed: Events<Pod> = spawn_watcher(watcher::watcher(
        pods.clone(),
        watcher::Config::default().streaming_lists(),
    ));
    expect_events(&mut streamed, &["Init", "InitApply(a)", "InitApply(b)", "InitDone"]).await;
    assert!(kube
        .requests()
        .iter()
        .any(|(_, t)| t.contains("sendInitialEvents=true")));
    kube.delete("v1", "Pod", "default", "a").unwrap();
    expect_events(&mut streamed, &["Delete(a)"]).await;

    // timeoutSeconds ends the stream.
    let started = std::time::Instant::now();
    let mut short = pods
        .watch(&WatchParams::default().timeout(1), &kube.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    let mut bookmarks = 0;
    while let Some(ev) = tokio::time::timeout(WAIT, short.next())
        .await
        .expect("the watch ends by itself")
    {
        assert!(matches!(ev, Ok(WatchEvent::Bookmark(_))), "{ev:?}");
        bookmarks += 1;
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(bookmarks >= 3, "bookmarks every 100 ms: {bookmarks}");

    // A watch from below the compaction floor: one ERROR event with a 410 Status, then the end.
    let old = kube.resource_version();
    kube.apply(pod("default", "c", &[("app", "web")], "10.0.0.3", true));
    kube.compact();
    let mut gone = pods
        .watch(&WatchParams::default(), &(old - 1).to_string())
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(WAIT, gone.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Error(status) = ev else {
        panic!("expected an ERROR event, got {ev:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(tokio::time::timeout(WAIT, gone.next()).await.unwrap().is_none());
    // A watch from the floor itself is fine.
    let mut ok = pods
        .watch(&WatchParams::default(), &kube.resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    kube.apply(pod("default", "d", &[("app", "web")], "10.0.0.4", true));
    let ev = tokio::time::timeout(WAIT, ok.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(ev, WatchEvent::Added(ref p) if p.name_any() == "d"), "{ev:?}");
}

#[tokio::test]
async fn metadata_watcher_gets_partial_objects() {
    let (kube, _dir, client) = setup().await;
    kube.apply(pod("default", "a", &[("app", "web")], "10.0.0.1", true));
    let pods: Api<PartialObjectMeta<Pod>> = Api::default_namespaced(client);
    let mut events = spawn_watcher(watcher::watcher(pods, watcher::Config::default()));
    expect_events(&mut events, &["Init", "InitApply(a)", "InitDone"]).await;
    kube.apply(pod("default", "b", &[("app", "web")], "10.0.0.2", true));
    expect_events(&mut events, &["Apply(b)"]).await;
}

#[tokio::test]
async fn writes_follow_optimistic_concurrency() {
    let (kube, _dir, client) = setup().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();

    // Create: server-set metadata, status dropped (pods have a status subresource), generateName.
    let created = pods
        .create(&pp, &pod("default", "web-1", &[("app", "web")], "10.0.0.1", true))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none());
    let mut generated = pod("default", "", &[], "10.0.0.5", true);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = pods.create(&pp, &generated).await.unwrap();
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() == 9);
    let (code, reason, _) = api_code(pods.create(&pp, &pod("default", "web-1", &[], "10.0.0.1", true)).await);
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // Replace with a stale resourceVersion: 409 Conflict.
    let mut fresh = created.clone();
    fresh.labels_mut().insert("x".into(), "1".into());
    let updated = pods.replace("web-1", &pp, &fresh).await.unwrap();
    assert_ne!(updated.resource_version(), created.resource_version());
    assert_eq!(
        updated.metadata.generation,
        Some(1),
        "labels do not bump the generation"
    );
    let (code, reason, message) = api_code(pods.replace("web-1", &pp, &created).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("the object has been modified"), "{message}");
    // A stale resourceVersion inside a merge patch is a precondition too.
    let stale =
        Patch::Merge(json!({"metadata": {"resourceVersion": created.resource_version(), "labels": {"y": "2"}}}));
    assert_eq!(
        api_code(pods.patch("web-1", &PatchParams::default(), &stale).await).0,
        409
    );
    let patched = pods
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"x": null, "y": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels().get("y").map(String::as_str), Some("2"));
    assert!(!patched.labels().contains_key("x"));

    // Fault injection: the next write fails, the one after succeeds.
    kube.fail_writes("/pods/web-1", 1, 500);
    let (code, reason, _) = api_code(pods.replace("web-1", &pp, &patched).await);
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    kube.fail_writes("/pods/web-1", 1, 409);
    assert_eq!(api_code(pods.replace("web-1", &pp, &patched).await).0, 409);
    pods.replace("web-1", &pp, &patched).await.unwrap();
    // kube-rs retries 429/503/504 by itself (RetryPolicy::server_retry); 500 reaches the caller.
    kube.fail_requests("GET", "/pods?", 1, 500);
    assert_eq!(api_code(pods.list(&ListParams::default()).await).0, 500);
    kube.fail_requests("GET", "/pods?", 2, 503);
    let lists_before = pod_lists(&kube);
    pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(pod_lists(&kube), lists_before + 3, "two 503s retried by the client");

    // Delete returns the object; a second delete is a 404.
    let deleted = pods.delete("web-1", &DeleteParams::default()).await.unwrap();
    assert_eq!(deleted.left().map(|p| p.name_any()), Some("web-1".to_string()));
    assert_eq!(api_code(pods.delete("web-1", &DeleteParams::default()).await).0, 404);
    assert!(kube.get("v1", "Pod", "default", "web-1").is_none());

    // Leader election on a Lease: the loser of a race gets 409; leases have no /status.
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let l = leases
        .create(&pp, &lease("default", "canaryd", None, 15))
        .await
        .unwrap();
    let mut mine = l.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("replica-a".into());
    let mut theirs = l.clone();
    theirs.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    leases.replace("canaryd", &pp, &mine).await.unwrap();
    assert_eq!(api_code(leases.replace("canaryd", &pp, &theirs).await).0, 409);
    assert_eq!(api_code(leases.replace_status("canaryd", &pp, &mine).await).0, 404);
    let stored = kube
        .get("coordination.k8s.io/v1", "Lease", "default", "canaryd")
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "replica-a");

    // Server-side apply creates, then merges.
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let ssa = PatchParams::apply("canary-test").force();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}});
    cms.patch("cfg", &ssa, &Patch::Apply(&cm)).await.unwrap();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"b": "2"}});
    let applied = cms.patch("cfg", &ssa, &Patch::Apply(&cm)).await.unwrap();
    assert_eq!(applied.data.unwrap().get("b").map(String::as_str), Some("2"));
}

#[tokio::test]
async fn status_subresource_changes_only_status() {
    let (kube, _dir, client) = setup().await;
    let (routes, ar) = route_api(&client);
    let pp = PostParams::default();
    let obj = DynamicObject::new("coolapp", &ar)
        .within("default")
        .data(json!({"spec": {"weight": 10}, "status": {"weight": 99}}));
    let created = routes.create(&pp, &obj).await.unwrap();
    assert!(created.data.get("status").is_none(), "status is ignored on create");
    assert_eq!(created.metadata.generation, Some(1));

    // PUT /status: the spec in the body is ignored.
    let mut body = created.clone();
    body.data["spec"]["weight"] = json!(50);
    body.data["status"] = json!({"weight": 10, "phase": "Progressing"});
    let after = routes.replace_status("coolapp", &pp, &body).await.unwrap();
    assert_eq!(after.data["spec"]["weight"], 10);
    assert_eq!(after.data["status"], json!({"weight": 10, "phase": "Progressing"}));
    assert_eq!(after.metadata.generation, Some(1));
    // A stale PUT /status conflicts like any other.
    assert_eq!(api_code(routes.replace_status("coolapp", &pp, &body).await).0, 409);

    // PATCH /status merges into status only.
    let patch = Patch::Merge(json!({"status": {"weight": 25}, "spec": {"weight": 77}}));
    let after = routes
        .patch_status("coolapp", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(after.data["spec"]["weight"], 10);
    assert_eq!(after.data["status"], json!({"weight": 25, "phase": "Progressing"}));

    // PUT on the main resource keeps the stored status and bumps the generation on spec changes.
    let mut body = after.clone();
    body.data["spec"]["weight"] = json!(50);
    body.data["status"] = json!({"weight": 0});
    let after = routes.replace("coolapp", &pp, &body).await.unwrap();
    assert_eq!(after.data["spec"]["weight"], 50);
    assert_eq!(after.data["status"]["weight"], 25);
    assert_eq!(after.metadata.generation, Some(2));
    let patch = Patch::Merge(json!({"metadata": {"labels": {"team": "web"}}, "status": {"weight": 1}}));
    let after = routes.patch("coolapp", &PatchParams::default(), &patch).await.unwrap();
    assert_eq!(
        (after.metadata.generation, after.data["status"]["weight"].as_i64()),
        (Some(2), Some(25))
    );

    // The control API sets status directly; a re-apply of the spec keeps it.
    kube.set_status(
        "canaryd.dev/v1alpha1",
        "CanaryRoute",
        "default",
        "coolapp",
        json!({"weight": 100, "phase": "Promoted"}),
    );
    kube.apply(canary_route("default", "coolapp", json!({"weight": 60})));
    let got = routes.get("coolapp").await.unwrap();
    assert_eq!(
        (
            got.data["spec"]["weight"].as_i64(),
            got.data["status"]["phase"].as_str()
        ),
        (Some(60), Some("Promoted"))
    );
    assert_eq!(got.metadata.generation, Some(3));
    assert_eq!(kube.list("CanaryRoute").len(), 1);

    // A Service's load-balancer status is its status subresource too.
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let svc = services
        .create(
            &pp,
            &service("default", "web", &[("app", "web")], &[("http", 80)], Some("192.0.2.1")),
        )
        .await
        .unwrap();
    assert!(svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .is_none());
    let with_ip = service("default", "web", &[], &[], Some("192.0.2.10"));
    let mut body = svc.clone();
    body.status = with_ip.status;
    let svc = services.replace_status("web", &pp, &body).await.unwrap();
    let ip = svc.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
        .ip
        .clone();
    assert_eq!(ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(svc.spec.unwrap().selector.unwrap()["app"], "web");

    // Finalizers hold a delete until they are removed.
    let mut fin = DynamicObject::new("held", &ar)
        .within("default")
        .data(json!({"spec": {"weight": 0}}));
    fin.metadata.finalizers = Some(vec!["canaryd.dev/cleanup".into()]);
    routes.create(&pp, &fin).await.unwrap();
    routes.delete("held", &DeleteParams::default()).await.unwrap();
    let held = routes.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    routes.patch("held", &PatchParams::default(), &release).await.unwrap();
    assert!(routes.get_opt("held").await.unwrap().is_none());

    // A CRD that is not installed answers 404.
    kube.set_installed("canaryroutes", false);
    assert_eq!(api_code(routes.list(&ListParams::default()).await).0, 404);
}

#[tokio::test]
async fn watcher_recovers_after_server_restart() {
    let (kube, _dir, client) = setup().await;
    kube.apply(pod("default", "a", &[("app", "web")], "10.0.0.1", true));
    let pods: Api<Pod> = Api::default_namespaced(client);
    let mut events: Events<Pod> = spawn_watcher(watcher::watcher(pods, watcher::Config::default()).default_backoff());
    expect_events(&mut events, &["Init", "InitApply(a)", "InitDone"]).await;
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 1).await);
    kube.stop();
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 0).await);
    kube.apply(pod("default", "b", &[("app", "web")], "10.0.0.2", true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    kube.restart().await;
    // Errors while the server was down are fine; then the change made meanwhile arrives.
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(end, events.recv())
            .await
            .expect("recovered within 10 s")
            .unwrap()
        {
            Ok(e) => {
                assert_eq!(describe(&e), "Apply(b)");
                break;
            }
            Err(_) => continue,
        }
    }
}
