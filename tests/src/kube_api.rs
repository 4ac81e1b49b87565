//! A test Kubernetes API server on loopback that speaks the real wire protocol (JSON over
//! plain HTTP/1.1, or h2c), for driving kube-rs clients and kube-runtime watchers in
//! end-to-end tests.
//!
//! Kept only for what the real API server of the test bed (tests/src/testbed.rs) cannot be
//! made to do on cue: a rival write landing between canaryd's read of a CanaryRoute and its
//! status update ([`KubeApi::race_writes`], with an injected 409 from
//! [`KubeApi::fail_writes`]; tests/e2e/kubernetes.rs). Discovery, 410 Gone after a real
//! compaction, outages, RBAC, status writes, Leases, Ingresses, Secrets, Events and the Helm
//! install all run against real components now; tests/e2e/kube_api.rs keeps this server
//! honest against kube-rs for as long as it is used.
//!
//! Objects are stored generically as `serde_json::Value`, keyed by (API group, plural),
//! namespace and name, under one etcd-like resourceVersion counter, so any resource works.
//! Lists (label/field selectors, `limit`/`continue`), gets, watches (bookmarks, streaming
//! lists, `timeoutSeconds`, an ERROR 410 event for a compacted resourceVersion), create
//! (`generateName`), replace (resourceVersion preconditions), merge / strategic / JSON /
//! apply patches, status subresources, finalizers and delete behave like a real
//! kube-apiserver as far as kube-rs can tell. Tests seed and inspect the state directly
//! ([`KubeApi::apply`], [`KubeApi::get`], [`KubeApi::list`], [`KubeApi::set_status`]),
//! break watches ([`KubeApi::drop_watches`], [`KubeApi::compact`]), inject faults
//! ([`KubeApi::fail_writes`]) and lose write races to a rival writer ([`KubeApi::race_writes`]).
//!
//! Not modelled: authentication and authorization (any token is accepted), admission and
//! schema validation, `dryRun`, strategic-merge list semantics (treated as a JSON merge
//! patch), field ownership in server-side apply (treated as a merge patch), consistent
//! snapshots across list pages (later pages show current objects), protobuf, aggregated
//! discovery (`/apis` answers the plain `APIGroupList`), and one storage shared by several
//! versions of a resource (each (group, plural) is one store, whatever the version).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Container, LoadBalancerIngress, LoadBalancerStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The bearer token written into the kubeconfig (the server accepts any token).
pub const TOKEN: &str = "canary-test-token";

/// Known resource types: (group, version, kind, plural, namespaced). Others are learned on
/// first create, with the plural guessed like Kubernetes does (`UnsafeGuessKindToResource`).
const KNOWN_KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "Endpoints", "endpoints", true),
    ("", "v1", "Event", "events", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "Namespace", "namespaces", false),
    ("", "v1", "Node", "nodes", false),
    ("apps", "v1", "Deployment", "deployments", true),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true),
    ("networking.k8s.io", "v1", "Ingress", "ingresses", true),
    ("networking.k8s.io", "v1", "IngressClass", "ingressclasses", false),
    ("coordination.k8s.io", "v1", "Lease", "leases", true),
    ("events.k8s.io", "v1", "Event", "events", true),
    ("canaryd.dev", "v1alpha1", "CanaryRoute", "canaryroutes", true),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
];

/// Plurals that have a `/status` subresource unless changed with
/// [`KubeApi::set_status_subresource`].
const DEFAULT_STATUS_SUBRESOURCES: &[&str] = &[
    "canaryroutes",
    "ingresses",
    "pods",
    "services",
    "deployments",
    "nodes",
    "namespaces",
    "customresourcedefinitions",
];

/// (group, plural): one store of objects.
type ResKey = (String, String);
/// (namespace, name); the namespace is "" for cluster-scoped objects.
type ObjKey = (String, String);

/// What the server knows about one resource type.
#[derive(Debug, Clone)]
struct TypeInfo {
    version: String,
    kind: String,
    namespaced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One entry of the event history that watches replay from.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    res: ResKey,
    kind: ChangeType,
    object: Value,
    /// The object before a modification (to turn selector transitions into ADDED/DELETED).
    old: Option<Value>,
}

/// An injected failure for the next `remaining` matching requests.
#[derive(Debug, Clone)]
struct Fault {
    /// `None`: any write (every method but GET).
    method: Option<Method>,
    path_contains: String,
    remaining: usize,
    code: u16,
}

/// A rival writer that wins the race against the next `remaining` matching writes: just
/// before such a write is handled, `rival` rewrites the stored object's `status` (a new
/// resourceVersion, as another replica's write makes), so a write carrying the
/// resourceVersion it read gets the server's own 409 Conflict.
struct Race {
    path_contains: String,
    remaining: usize,
    /// (API version, kind, namespace, name) of the object the rival writes.
    object: (String, String, String, String),
    /// The old status → the rival's status.
    rival: Box<dyn FnMut(Value) -> Value + Send>,
}

/// A Kubernetes `Status` failure, as an error of an operation.
#[derive(Debug, Clone)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason_for(code),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, res: &ResKey, name: &str) -> ApiError {
        self.details = Some(json!({"name": name, "group": res.0, "kind": res.1}));
        self
    }

    fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// `pods` or `leases.coordination.k8s.io`, as the real server names resources in messages.
fn qualified(res: &ResKey) -> String {
    if res.0.is_empty() {
        res.1.clone()
    } else {
        format!("{}.{}", res.1, res.0)
    }
}

fn not_found(res: &ResKey, name: &str) -> ApiError {
    ApiError::new(404, format!("{} \"{name}\" not found", qualified(res))).with_details(res, name)
}

fn conflict(res: &ResKey, name: &str) -> ApiError {
    ApiError::new(
        409,
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
             changes to the latest version and try again",
            qualified(res)
        ),
    )
    .with_details(res, name)
}

fn already_exists(res: &ResKey, name: &str) -> ApiError {
    let mut e = ApiError::new(409, format!("{} \"{name}\" already exists", qualified(res))).with_details(res, name);
    e.reason = "AlreadyExists";
    e
}

fn too_old(rv: u64, floor: u64) -> ApiError {
    ApiError::new(410, format!("too old resource version: {rv} ({floor})"))
}

/// The whole state of the fake cluster.
struct Store {
    rv: u64,
    /// Compaction floor: watches from below it get 410.
    floor: u64,
    seed: u64,
    counter: u64,
    objects: BTreeMap<ResKey, BTreeMap<ObjKey, Value>>,
    history: Vec<Change>,
    types: BTreeMap<ResKey, TypeInfo>,
    status_subresources: BTreeSet<String>,
    uninstalled: BTreeSet<String>,
    requests: Vec<(String, String)>,
    faults: Vec<Fault>,
    races: Vec<Race>,
    /// Carries the current resourceVersion to wake watches.
    changed: watch::Sender<u64>,
}

/// How an update treats `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdateMode {
    /// The main resource: status kept from storage when there is a status subresource.
    Main,
    /// The `/status` subresource: only `status` changes.
    Status,
    /// Test control: take the object as given.
    Raw,
}

impl Store {
    fn new() -> Store {
        let mut types = BTreeMap::new();
        for (group, version, kind, plural, namespaced) in KNOWN_KINDS {
            types
                .entry((group.to_string(), plural.to_string()))
                .or_insert(TypeInfo {
                    version: version.to_string(),
                    kind: kind.to_string(),
                    namespaced: *namespaced,
                });
        }
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Store {
            rv: 1,
            floor: 0,
            seed,
            counter: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            types,
            status_subresources: DEFAULT_STATUS_SUBRESOURCES.iter().map(|s| s.to_string()).collect(),
            uninstalled: BTreeSet::new(),
            requests: Vec::new(),
            faults: Vec::new(),
            races: Vec::new(),
            changed: watch::channel(1).0,
        }
    }

    fn random(&mut self) -> u64 {
        self.counter += 1;
        splitmix64(self.seed ^ self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn uid(&mut self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn kind_of(&self, res: &ResKey) -> String {
        match self.types.get(res) {
            Some(t) => t.kind.clone(),
            None => {
                let mut s = res.1.trim_end_matches('s').to_string();
                if let Some(first) = s.get(0..1) {
                    s = first.to_uppercase() + &s[1..];
                }
                s
            }
        }
    }

    fn has_status(&self, res: &ResKey) -> bool {
        self.status_subresources.contains(&res.1)
    }

    /// The resource and scope of `apiVersion` + `kind`, learning unknown kinds.
    fn resolve(&mut self, api_version: &str, kind: &str, has_namespace: bool) -> (ResKey, bool) {
        let (group, version) = split_api_version(api_version);
        if let Some((res, t)) = self.types.iter().find(|(r, t)| r.0 == group && t.kind == kind) {
            return (res.clone(), t.namespaced);
        }
        let res = (group.to_string(), guess_plural(kind));
        let info = TypeInfo {
            version: version.to_string(),
            kind: kind.to_string(),
            namespaced: has_namespace,
        };
        self.types.insert(res.clone(), info);
        (res, has_namespace)
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn push(&mut self, change: Change) {
        let rv = change.rv;
        self.history.push(change);
        self.changed.send_replace(rv);
    }

    fn object(&self, res: &ResKey, key: &ObjKey) -> Option<&Value> {
        self.objects.get(res).and_then(|m| m.get(key))
    }

    /// Creates an object; `namespace` is `None` for cluster-scoped resources.
    fn create(
        &mut self,
        res: &ResKey,
        api_version: &str,
        namespace: Option<&str>,
        mut body: Value,
        strip_status: bool,
    ) -> Result<Value, ApiError> {
        let kind = self.kind_of(res);
        let obj = body
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "the body must be a JSON object"))?;
        obj.entry("apiVersion").or_insert_with(|| json!(api_version));
        obj.entry("kind").or_insert_with(|| json!(kind));
        if let (Some(k), false) = (obj.get("kind").and_then(Value::as_str), self.types.contains_key(res)) {
            let (_, version) = split_api_version(api_version);
            let info = TypeInfo {
                version: version.to_string(),
                kind: k.to_string(),
                namespaced: namespace.is_some(),
            };
            self.types.insert(res.clone(), info);
        }
        if strip_status {
            obj.remove("status");
        }
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        let meta = meta
            .as_object_mut()
            .ok_or_else(|| ApiError::new(400, "metadata must be an object"))?;
        let ns = match namespace {
            Some(ns) => {
                if let Some(given) = meta.get("namespace").and_then(Value::as_str) {
                    if !given.is_empty() && given != ns {
                        return Err(ApiError::new(
                            400,
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                }
                meta.insert("namespace".into(), json!(ns));
                ns.to_string()
            }
            None => {
                meta.remove("namespace");
                String::new()
            }
        };
        let name = match meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => {
                let prefix = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty());
                let prefix = prefix.map(str::to_string).ok_or_else(|| {
                    ApiError::new(
                        422,
                        format!(
                            "{} is invalid: metadata.name: Required value: name or generateName is required",
                            kind
                        ),
                    )
                })?;
                loop {
                    let r = self.random();
                    let candidate = format!("{prefix}{}", random_suffix(r));
                    if self.object(res, &(ns.clone(), candidate.clone())).is_none() {
                        break candidate;
                    }
                }
            }
        };
        let key = (ns, name.clone());
        if self.object(res, &key).is_some() {
            return Err(already_exists(res, &name));
        }
        let uid = self.uid();
        let rv = self.next_rv();
        let meta = body["metadata"].as_object_mut().expect("metadata checked above");
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.remove("deletionTimestamp");
        self.objects.entry(res.clone()).or_default().insert(key, body.clone());
        self.push(Change {
            rv,
            res: res.clone(),
            kind: ChangeType::Added,
            object: body.clone(),
            old: None,
        });
        Ok(body)
    }

    /// Stores `new` as the next state of an existing object (preconditions already checked).
    fn update(&mut self, res: &ResKey, key: &ObjKey, mut new: Value, mode: UpdateMode) -> Result<Value, ApiError> {
        let old = self.object(res, key).cloned().ok_or_else(|| not_found(res, &key.1))?;
        if !new.is_object() {
            return Err(ApiError::new(400, "the body must be a JSON object"));
        }
        match mode {
            UpdateMode::Status => {
                let mut merged = old.clone();
                set_or_remove(&mut merged, "status", new.get("status").cloned());
                new = merged;
            }
            UpdateMode::Main if self.has_status(res) => set_or_remove(&mut new, "status", old.get("status").cloned()),
            _ => {}
        }
        for f in ["apiVersion", "kind"] {
            if new.get(f).is_none() {
                set_or_remove(&mut new, f, old.get(f).cloned());
            }
        }
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "resourceVersion",
        ] {
            set_or_remove(&mut new["metadata"], f, old["metadata"].get(f).cloned());
        }
        if spec_of(&old) != spec_of(&new) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if new == old {
            return Ok(old);
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects
            .entry(res.clone())
            .or_default()
            .insert(key.clone(), new.clone());
        self.push(Change {
            rv,
            res: res.clone(),
            kind: ChangeType::Modified,
            object: new.clone(),
            old: Some(old),
        });
        let finalizing = new["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null())
            && new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if finalizing {
            return Ok(self.remove(res, key).unwrap_or(new));
        }
        Ok(new)
    }

    /// Removes an object at once, emitting DELETED.
    fn remove(&mut self, res: &ResKey, key: &ObjKey) -> Option<Value> {
        let mut obj = self.objects.get_mut(res)?.remove(key)?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.push(Change {
            rv,
            res: res.clone(),
            kind: ChangeType::Deleted,
            object: obj.clone(),
            old: None,
        });
        Some(obj)
    }

    /// DELETE: checks `DeleteOptions.preconditions`, honours finalizers.
    fn delete(&mut self, res: &ResKey, key: &ObjKey, options: &Value) -> Result<Value, ApiError> {
        let old = self.object(res, key).cloned().ok_or_else(|| not_found(res, &key.1))?;
        let pre = &options["preconditions"];
        for (field, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
            if let Some(want) = pre.get(field).and_then(Value::as_str) {
                let have = old["metadata"][field].as_str().unwrap_or("");
                if want != have {
                    let msg =
                        format!("Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}");
                    return Err(ApiError::new(409, msg).with_details(res, &key.1));
                }
            }
        }
        if old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
            if old["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null()) {
                return Ok(old);
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            // update() keeps the stored deletionTimestamp, so store it directly.
            let rv = self.next_rv();
            new["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.objects
                .entry(res.clone())
                .or_default()
                .insert(key.clone(), new.clone());
            self.push(Change {
                rv,
                res: res.clone(),
                kind: ChangeType::Modified,
                object: new.clone(),
                old: Some(old),
            });
            return Ok(new);
        }
        Ok(self.remove(res, key).expect("object checked above"))
    }

    /// The watch events after `last` that `filter` lets through, and the current resourceVersion.
    fn events_since(&self, filter: &Filter, last: u64, meta_only: bool) -> (Vec<Bytes>, u64) {
        let start = self.history.partition_point(|c| c.rv <= last);
        let mut lines = Vec::new();
        for c in &self.history[start..] {
            if c.res != filter.res {
                continue;
            }
            let now = filter.matches(&c.object);
            let typ = match c.kind {
                ChangeType::Added => now.then_some("ADDED"),
                ChangeType::Deleted => now.then_some("DELETED"),
                ChangeType::Modified => match (c.old.as_ref().is_some_and(|o| filter.matches(o)), now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                },
            };
            if let Some(t) = typ {
                lines.push(event_line(t, &present(&c.object, meta_only)));
            }
        }
        (lines, self.rv)
    }

    /// The matching objects in (namespace, name) order.
    fn matching(&self, filter: &Filter) -> Vec<(&ObjKey, &Value)> {
        match self.objects.get(&filter.res) {
            Some(m) => m.iter().filter(|(_, o)| filter.matches(o)).collect(),
            None => Vec::new(),
        }
    }

    /// Makes the rival write of the first race matching this write, if any.
    fn run_race(&mut self, method: &Method, target: &str) {
        if method == Method::GET {
            return;
        }
        let Some(i) = self
            .races
            .iter()
            .position(|r| r.remaining > 0 && target.contains(&r.path_contains))
        else {
            return;
        };
        let race = &mut self.races[i];
        race.remaining -= 1;
        let (api_version, kind, ns, name) = race.object.clone();
        let (res, _) = self.resolve(&api_version, &kind, !ns.is_empty());
        let key = (ns, name);
        let old = self
            .object(&res, &key)
            .and_then(|o| o.get("status").cloned())
            .unwrap_or(Value::Null);
        let status = (self.races[i].rival)(old);
        if self.races[i].remaining == 0 {
            self.races.remove(i);
        }
        self.update(&res, &key, json!({ "status": status }), UpdateMode::Status)
            .expect("the raced object exists");
    }

    /// Takes one use of the first fault matching the request.
    fn take_fault(&mut self, method: &Method, target: &str) -> Option<ApiError> {
        let i = self.faults.iter().position(|f| {
            f.remaining > 0
                && target.contains(&f.path_contains)
                && match &f.method {
                    Some(m) => m == method,
                    None => method != Method::GET,
                }
        })?;
        let f = &mut self.faults[i];
        f.remaining -= 1;
        let code = f.code;
        if f.remaining == 0 {
            self.faults.remove(i);
        }
        Some(ApiError::new(
            code,
            format!("injected fault: {} {method} {target}", reason_for(code)),
        ))
    }
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    if let Some(m) = obj.as_object_mut() {
        match value {
            Some(v) => {
                m.insert(field.to_string(), v);
            }
            None => {
                m.remove(field);
            }
        }
    }
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

fn api_version_of(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// A kind's plural: lower-case, `s` → `ses`, consonant + `y` → `ies`, else `+s`.
fn guess_plural(kind: &str) -> String {
    let k = kind.to_lowercase();
    if k.ends_with('s') {
        format!("{k}es")
    } else if let Some(stem) = k.strip_suffix('y').filter(|s| !s.ends_with(['a', 'e', 'i', 'o', 'u'])) {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Five characters from the alphabet the real server uses for `generateName`.
fn random_suffix(mut r: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The current time as RFC 3339 in UTC, second precision (like `metav1.Time`).
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------
// Selectors

/// One requirement of a label selector.
#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

impl LabelReq {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            LabelReq::Eq(k, v) => get(k) == Some(v),
            LabelReq::Ne(k, v) => get(k) != Some(v),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Gt(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
            LabelReq::Lt(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
        }
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses a label selector (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`).
fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for part in split_top_level(s) {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        let key = |k: &str| -> Result<String, String> {
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                Err(format!("invalid label key {k:?} in selector {s:?}"))
            } else {
                Ok(k.to_string())
            }
        };
        if let Some(k) = p.strip_prefix('!') {
            out.push(LabelReq::NotExists(key(k)?));
        } else if let Some(open) = p.find('(') {
            let close = p
                .rfind(')')
                .filter(|c| *c > open)
                .ok_or_else(|| format!("unclosed '(' in {p:?}"))?;
            let values: Vec<String> = p[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            match p[..open].split_whitespace().collect::<Vec<_>>().as_slice() {
                [k, "in"] => out.push(LabelReq::In(key(k)?, values)),
                [k, "notin"] => out.push(LabelReq::NotIn(key(k)?, values)),
                _ => return Err(format!("invalid set requirement {p:?}")),
            }
        } else if let Some((k, v)) = p.split_once("!=") {
            out.push(LabelReq::Ne(key(k)?, v.trim().to_string()));
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            out.push(LabelReq::Eq(key(k)?, v.trim().to_string()));
        } else if let Some((k, v)) = p.split_once('>') {
            let n = v.trim().parse().map_err(|_| format!("invalid number in {p:?}"))?;
            out.push(LabelReq::Gt(key(k)?, n));
        } else if let Some((k, v)) = p.split_once('<') {
            let n = v.trim().parse().map_err(|_| format!("invalid number in {p:?}"))?;
            out.push(LabelReq::Lt(key(k)?, n));
        } else {
            out.push(LabelReq::Exists(key(p)?));
        }
    }
    Ok(out)
}

/// One requirement of a field selector: (dotted path, value, equal?).
type FieldReq = (String, String, bool);

/// Parses a field selector (`metadata.name=x`, `metadata.namespace==x`, `status.phase!=Failed`).
fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (path, value, eq) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (k, v, true)
        } else {
            return Err(format!("invalid field selector requirement {part:?}"));
        };
        out.push((path.trim().to_string(), value.trim().to_string(), eq));
    }
    Ok(out)
}

/// A field of an object as a string ("" when absent), by dotted path.
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Which objects a list or watch sees.
#[derive(Debug, Clone)]
struct Filter {
    res: ResKey,
    namespace: Option<String>,
    name: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace {
            if meta["namespace"].as_str().unwrap_or("") != ns {
                return false;
            }
        }
        if let Some(name) = &self.name {
            if meta["name"].as_str() != Some(name) {
                return false;
            }
        }
        let labels = meta["labels"].as_object();
        self.labels.iter().all(|r| r.matches(labels))
            && self
                .fields
                .iter()
                .all(|(path, value, eq)| (field_value(obj, path) == *value) == *eq)
    }
}

// ---------------------------------------------------------------------------------------
// Patches

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Splits a JSON pointer into its (still escaped) parent and its unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let i = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((&path[..i], path[i + 1..].replace("~1", "/").replace("~0", "~")))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, key) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key, value);
        }
        Some(Value::Array(a)) if key == "-" => a.push(value),
        Some(Value::Array(a)) => {
            let i: usize = key.parse().map_err(|_| format!("invalid array index in {path:?}"))?;
            if i > a.len() {
                return Err(format!("array index out of range in {path:?}"));
            }
            a.insert(i, value);
        }
        _ => return Err(format!("missing parent of {path:?}")),
    }
    Ok(())
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split_pointer(path)?;
    let removed = match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&key),
        Some(Value::Array(a)) => key.parse::<usize>().ok().filter(|i| *i < a.len()).map(|i| a.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| format!("no value at {path:?}"))
}

/// RFC 6902 JSON patch.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("a JSON patch operation needs a path")?;
        let from = || op["from"].as_str().ok_or("a JSON patch move/copy needs from");
        match op["op"].as_str() {
            Some("add") => pointer_add(doc, path, op["value"].clone())?,
            Some("remove") => {
                pointer_remove(doc, path)?;
            }
            Some("replace") => {
                pointer_remove(doc, path)?;
                pointer_add(doc, path, op["value"].clone())?;
            }
            Some("move") => {
                let v = pointer_remove(doc, from()?)?;
                pointer_add(doc, path, v)?;
            }
            Some("copy") => {
                let v = doc.pointer(from()?).cloned().ok_or("no value at from")?;
                pointer_add(doc, path, v)?;
            }
            Some("test") => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test operation failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown JSON patch op {other:?}")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// HTTP plumbing

/// Response body of the test server: a whole JSON document or a watch stream.
enum ApiBody {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl hyper::body::Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ApiBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ApiBody::Full(None) => SizeHint::with_exact(0),
            ApiBody::Stream(_) => SizeHint::default(),
        }
    }
}

fn json_response(code: u16, v: &Value) -> Response<ApiBody> {
    let body = serde_json::to_vec(v).expect("JSON values serialize");
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(ApiBody::Full(Some(Bytes::from(body))))
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<ApiBody> {
    json_response(e.code, &e.to_status())
}

fn event_line(typ: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": typ, "object": object})).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// The object as sent: whole, or as `PartialObjectMetadata` for metadata-only requests.
fn present(obj: &Value, meta_only: bool) -> Value {
    if meta_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
    } else {
        obj.clone()
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(c) => {
                        out.push(c);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed resource URL.
#[derive(Debug, Clone)]
struct Target {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    /// The legacy `/api/v1/watch/...` form.
    watch_path: bool,
}

impl Target {
    fn res(&self) -> ResKey {
        (self.group.clone(), self.plural.clone())
    }

    fn api_version(&self) -> String {
        api_version_of(&self.group, &self.version)
    }

    fn key(&self) -> ObjKey {
        (
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }
}

/// What a URL path addresses.
enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Resource(Target),
    NotFound,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resource = |group: &str, version: &str, rest: &[&str]| {
        let (watch_path, rest) = match rest.split_first() {
            Some((&"watch", tail)) => (true, tail),
            _ => (false, rest),
        };
        let namespaced = rest.len() >= 3
            && rest[0] == "namespaces"
            && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
        let (namespace, rest) = if namespaced {
            (Some(rest[1].to_string()), &rest[2..])
        } else {
            (None, rest)
        };
        let (plural, name, sub) = match rest {
            [p] => (p, None, None),
            [p, n] => (p, Some(n.to_string()), None),
            [p, n, s] => (p, Some(n.to_string()), Some(s.to_string())),
            _ => return Route::NotFound,
        };
        Route::Resource(Target {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            namespace,
            name,
            sub,
            watch_path,
        })
    };
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez"] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["api", v] => Route::Resources(String::new(), v.to_string()),
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::Resources(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => resource("", v, rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Route::NotFound,
    }
}

/// Shared between the server tasks and the [`KubeApi`] handle.
struct Shared {
    store: Mutex<Store>,
    /// Bumped by `drop_watches()`: every open watch ends.
    drops: watch::Sender<u64>,
    open_watches: AtomicUsize,
    bookmark_interval: Mutex<Duration>,
    addr: Mutex<SocketAddr>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Decrements the open-watch count when a watch task ends.
struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "the server could not find the requested resource")
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ApiBody> {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let header_str = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let accept = header_str(header::ACCEPT);
    let content_type = header_str(header::CONTENT_TYPE);
    let meta_only = accept.contains("as=PartialObjectMetadata");
    let fault = {
        let mut store = shared.lock();
        store.requests.push((method.to_string(), target.clone()));
        let fault = store.take_fault(&method, &target);
        if fault.is_none() {
            store.run_race(&method, &target);
        }
        fault
    };
    if let Some(e) = fault {
        return error_response(&e);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_response(&ApiError::new(400, format!("reading the body: {e}"))),
    };
    let t = match route(&path) {
        Route::Version => return json_response(200, &version_info()),
        Route::Health => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(ApiBody::Full(Some(Bytes::from_static(b"ok"))))
                .expect("valid response")
        }
        Route::CoreVersions => {
            let addr = *shared.addr.lock().unwrap_or_else(|e| e.into_inner());
            return json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}]}),
            );
        }
        Route::Groups => return json_response(200, &group_list(&shared.lock())),
        Route::Group(g) => {
            let list = group_list(&shared.lock());
            return match list["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == g.as_str()))
            {
                Some(group) => {
                    let mut group = group.clone();
                    group["kind"] = json!("APIGroup");
                    group["apiVersion"] = json!("v1");
                    json_response(200, &group)
                }
                None => error_response(&not_found_path()),
            };
        }
        Route::Resources(g, v) => {
            return match resource_list(&shared.lock(), &g, &v) {
                Some(list) => json_response(200, &list),
                None => error_response(&not_found_path()),
            }
        }
        Route::NotFound => return error_response(&not_found_path()),
        Route::Resource(t) => t,
    };
    let res = t.res();
    {
        let store = shared.lock();
        if store.uninstalled.contains(&t.plural) {
            return error_response(&not_found_path());
        }
        match t.sub.as_deref() {
            None => {}
            Some("status") if store.has_status(&res) => {}
            Some(_) => return error_response(&not_found_path()),
        }
    }
    let watch = t.watch_path || matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let result = match (&method, &t.name) {
        (&Method::GET, _) if watch => return start_watch(&shared, &t, &query, meta_only),
        (&Method::GET, None) => list(&shared.lock(), &t, &query, meta_only).map(|v| (200, v)),
        (&Method::GET, Some(name)) => {
            let store = shared.lock();
            store
                .object(&res, &t.key())
                .map(|o| (200, present(o, meta_only)))
                .ok_or_else(|| not_found(&res, name))
        }
        (&Method::POST, None) => parse_json(&body).and_then(|obj| {
            let mut store = shared.lock();
            let strip = store.has_status(&res);
            store
                .create(&res, &t.api_version(), t.namespace.as_deref(), obj, strip)
                .map(|o| (201, o))
        }),
        (&Method::PUT, Some(name)) => parse_json(&body).and_then(|obj| replace(&mut shared.lock(), &t, name, obj)),
        (&Method::PATCH, Some(name)) => patch(&mut shared.lock(), &t, name, &content_type, &body),
        (&Method::DELETE, Some(_)) => {
            let options = if body.is_empty() {
                Ok(json!({}))
            } else {
                parse_json(&body)
            };
            options
                .and_then(|o| shared.lock().delete(&res, &t.key(), &o))
                .map(|o| (200, o))
        }
        (&Method::DELETE, None) => delete_collection(&mut shared.lock(), &t, &query).map(|v| (200, v)),
        _ => Err(ApiError::new(
            405,
            format!("the server does not allow this method on the requested resource: {method}"),
        )),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error_response(&e),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
}

fn filter_for(t: &Target, query: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let labels = parse_label_selector(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::new(400, format!("unable to parse requirement: {e}")))?;
    let fields = parse_field_selector(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::new(400, e))?;
    Ok(Filter {
        res: t.res(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        labels,
        fields,
    })
}

fn list(store: &Store, t: &Target, query: &HashMap<String, String>, meta_only: bool) -> Result<Value, ApiError> {
    let filter = filter_for(t, query)?;
    let requested_rv = query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if query.get("resourceVersionMatch").map(String::as_str) == Some("Exact") && requested_rv < store.floor {
        return Err(too_old(requested_rv, store.floor));
    }
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let (rv, ns, name) = (parts.next(), parts.next(), parts.next());
            let rv = rv.and_then(|r| r.parse::<u64>().ok());
            match (rv, ns, name) {
                (Some(rv), Some(ns), Some(name)) => {
                    if rv < store.floor {
                        return Err(ApiError::new(
                            410,
                            "The provided continue parameter is too old to display a consistent list result. You \
                             can start a new list without the continue parameter.",
                        ));
                    }
                    (rv, Some((ns.to_string(), name.to_string())))
                }
                _ => return Err(ApiError::new(400, format!("invalid continue token {token:?}"))),
            }
        }
        None => (store.rv, None),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let all: Vec<_> = store
        .matching(&filter)
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
        .collect();
    let take = limit.unwrap_or(all.len()).min(all.len());
    let items: Vec<Value> = all[..take].iter().map(|(_, o)| present(o, meta_only)).collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if take < all.len() {
        let (ns, name) = all[take - 1].0;
        metadata["continue"] = json!(format!("{list_rv}/{ns}/{name}"));
        metadata["remainingItemCount"] = json!(all.len() - take);
    }
    let (api_version, kind) = if meta_only {
        ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string())
    } else {
        (t.api_version(), format!("{}List", store.kind_of(&t.res())))
    };
    Ok(json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}))
}

fn delete_collection(store: &mut Store, t: &Target, query: &HashMap<String, String>) -> Result<Value, ApiError> {
    let mut filter = filter_for(t, query)?;
    filter.name = None;
    let keys: Vec<ObjKey> = store.matching(&filter).into_iter().map(|(k, _)| k.clone()).collect();
    let res = t.res();
    let items: Vec<Value> = keys
        .iter()
        .filter_map(|k| store.delete(&res, k, &json!({})).ok())
        .collect();
    let kind = format!("{}List", store.kind_of(&res));
    Ok(
        json!({"apiVersion": t.api_version(), "kind": kind, "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
    )
}

/// Fails with 409 Conflict when `given` carries a resourceVersion other than the stored one.
fn check_rv(store: &Store, res: &ResKey, key: &ObjKey, given: &Value) -> Result<(), ApiError> {
    let Some(want) = given["metadata"]["resourceVersion"].as_str().filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let have = store
        .object(res, key)
        .and_then(|o| o["metadata"]["resourceVersion"].as_str());
    if have.is_some_and(|h| h != want) {
        return Err(conflict(res, &key.1));
    }
    Ok(())
}

fn update_mode(t: &Target) -> UpdateMode {
    if t.sub.as_deref() == Some("status") {
        UpdateMode::Status
    } else {
        UpdateMode::Main
    }
}

fn replace(store: &mut Store, t: &Target, name: &str, obj: Value) -> Result<(u16, Value), ApiError> {
    let (res, key) = (t.res(), t.key());
    if let Some(given) = obj["metadata"]["name"].as_str().filter(|n| !n.is_empty() && *n != name) {
        let msg = format!("the name of the object ({given}) does not match the name on the URL ({name})");
        return Err(ApiError::new(400, msg));
    }
    if store.object(&res, &key).is_none() {
        return Err(not_found(&res, name));
    }
    check_rv(store, &res, &key, &obj)?;
    store.update(&res, &key, obj, update_mode(t)).map(|o| (200, o))
}

fn patch(store: &mut Store, t: &Target, name: &str, content_type: &str, body: &[u8]) -> Result<(u16, Value), ApiError> {
    let (res, key) = (t.res(), t.key());
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let patch: Value = match mime {
        "application/apply-patch+yaml" => serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::new(400, format!("invalid apply patch: {e}")))?,
        "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/json-patch+json" => {
            parse_json(body)?
        }
        other => return Err(ApiError::new(415, format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"))),
    };
    let Some(old) = store.object(&res, &key).cloned() else {
        if mime == "application/apply-patch+yaml" && t.sub.is_none() {
            let mut obj = patch;
            if !obj.is_object() {
                return Err(ApiError::new(400, "an apply patch must be an object"));
            }
            obj["metadata"]["name"] = json!(name);
            let strip = store.has_status(&res);
            return store
                .create(&res, &t.api_version(), t.namespace.as_deref(), obj, strip)
                .map(|o| (201, o));
        }
        return Err(not_found(&res, name));
    };
    let mut new = old;
    if mime == "application/json-patch+json" {
        json_patch(&mut new, &patch).map_err(|e| ApiError::new(422, e).with_details(&res, name))?;
    } else {
        check_rv(store, &res, &key, &patch)?;
        merge_patch(&mut new, &patch);
    }
    store.update(&res, &key, new, update_mode(t)).map(|o| (200, o))
}

/// Sets up a watch stream: replays from the requested resourceVersion, then follows.
fn start_watch(
    shared: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    meta_only: bool,
) -> Response<ApiBody> {
    let filter = match filter_for(t, query) {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    let rv_param = query.get("resourceVersion").map(String::as_str).unwrap_or("");
    let send_initial = query.get("sendInitialEvents").map(|v| v == "true");
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0);
    let (tx, rx) = mpsc::unbounded_channel();
    let api_version = t.api_version();
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(ApiBody::Stream(rx))
        .expect("valid response");
    let (changed, last) = {
        let store = shared.lock();
        let kind = store.kind_of(&filter.res);
        let from = match rv_param {
            "" | "0" => None,
            other => match other.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return error_response(&ApiError::new(400, format!("invalid resourceVersion {other:?}"))),
            },
        };
        let initial = send_initial.unwrap_or(from.is_none());
        if let (Some(n), false) = (from, initial) {
            if n < store.floor {
                let _ = tx.send(event_line("ERROR", &too_old(n, store.floor).to_status()));
                return response;
            }
        }
        let last = if initial {
            for (_, obj) in store.matching(&filter) {
                let _ = tx.send(event_line("ADDED", &present(obj, meta_only)));
            }
            if send_initial == Some(true) && bookmarks {
                let mut bm = bookmark(&api_version, &kind, store.rv, meta_only);
                bm["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                let _ = tx.send(event_line("BOOKMARK", &bm));
            }
            store.rv
        } else {
            from.unwrap_or(store.rv)
        };
        (store.changed.subscribe(), last)
    };
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let w = WatchTask {
        shared: shared.clone(),
        filter,
        api_version,
        meta_only,
        bookmarks,
        deadline: timeout.map(|s| Instant::now() + Duration::from_secs(s)),
        last,
    };
    tokio::spawn(w.run(tx, changed));
    response
}

fn bookmark(api_version: &str, kind: &str, rv: u64, meta_only: bool) -> Value {
    if meta_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"resourceVersion": rv.to_string()}})
    } else {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}})
    }
}

/// One open watch stream, following the event history.
struct WatchTask {
    shared: Arc<Shared>,
    filter: Filter,
    api_version: String,
    meta_only: bool,
    bookmarks: bool,
    deadline: Option<Instant>,
    /// Every matching event up to this resourceVersion has been sent.
    last: u64,
}

impl WatchTask {
    async fn run(mut self, tx: mpsc::UnboundedSender<Bytes>, mut changed: watch::Receiver<u64>) {
        let _guard = WatchGuard(self.shared.clone());
        let mut drops = self.shared.drops.subscribe();
        let interval = *self.shared.bookmark_interval.lock().unwrap_or_else(|e| e.into_inner());
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            // A drop ordered before a write must win over sending that write's event, or a
            // test that drops the watch and then writes could see the event arrive anyway.
            if drops.has_changed().unwrap_or(true) {
                return;
            }
            let (lines, kind) = {
                let store = self.shared.lock();
                let (lines, rv) = store.events_since(&self.filter, self.last, self.meta_only);
                self.last = rv;
                (lines, store.kind_of(&self.filter.res))
            };
            for line in lines {
                if tx.send(line).is_err() {
                    return;
                }
            }
            tokio::select! {
                biased;
                _ = drops.changed() => return,
                r = changed.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
                _ = &mut deadline => return,
                _ = ticks.tick(), if self.bookmarks => {
                    let bm = bookmark(&self.api_version, &kind, self.last, self.meta_only);
                    if tx.send(event_line("BOOKMARK", &bm)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-canary-test",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn group_list(store: &Store) -> Value {
    let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for ((g, plural), t) in &store.types {
        if !g.is_empty() && !store.uninstalled.contains(plural) {
            groups.entry(g).or_default().insert(&t.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for ((g, plural), t) in &store.types {
        if g != group || t.version != version || store.uninstalled.contains(plural) {
            continue;
        }
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        resources.push(
            json!({"name": plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
            "kind": t.kind, "verbs": verbs}),
        );
        if store.status_subresources.contains(plural) {
            resources.push(
                json!({"name": format!("{plural}/status"), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version_of(group, version),
        "resources": resources}),
    )
}

// ---------------------------------------------------------------------------------------
// The server handle

/// The accept loop of a running server and the switch that drops its connections.
struct ServerTask {
    accept: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

/// A running test API server on `127.0.0.1`; stops when dropped.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<ServerTask>>,
}

impl KubeApi {
    /// Starts a server with an empty cluster on a free loopback port.
    pub async fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test API server");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            drops: watch::channel(0).0,
            open_watches: AtomicUsize::new(0),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            addr: Mutex::new(addr),
        });
        let server = serve(shared.clone(), listener);
        KubeApi {
            shared,
            addr,
            server: Mutex::new(Some(server)),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for this server (cluster, user with [`TOKEN`], context `canary-test`,
    /// namespace `default`, current-context set).
    fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: canary-test\n  cluster:\n    server: {}\n\
             users:\n- name: canary-test\n  user:\n    token: {TOKEN}\n\
             contexts:\n- name: canary-test\n  context:\n    cluster: canary-test\n    user: canary-test\n    namespace: default\n\
             current-context: canary-test\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Writes [`KubeApi::kubeconfig_yaml`] to `dir/kubeconfig` and returns the path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml()).expect("write the kubeconfig");
        path
    }

    /// A kube-rs client configured from this server's kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml()).expect("parse the kubeconfig");
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }

    /// Stops serving: closes the listener and cuts every connection (open watches end
    /// abruptly). The stored objects stay; see [`KubeApi::restart`].
    pub fn stop(&self) {
        if let Some(s) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            s.shutdown.send_replace(true);
            s.accept.abort();
        }
    }

    /// Serves again on the same port with the same objects (after [`KubeApi::stop`]).
    pub async fn restart(&self) {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        let server = serve(self.shared.clone(), listener);
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
    }

    /// Creates or replaces an object given as JSON or as a typed k8s-openapi object (it needs
    /// `apiVersion` and `kind`; a namespaced object without a namespace goes to `default`).
    /// Replacing skips resourceVersion checks and keeps the stored `status` when the new
    /// object has none. Emits ADDED or MODIFIED (nothing if unchanged). Returns the stored object.
    pub fn apply<T: Serialize>(&self, object: T) -> Value {
        let mut v = serde_json::to_value(object).expect("serialize the object");
        let api_version = v["apiVersion"]
            .as_str()
            .expect("the object needs apiVersion")
            .to_string();
        let kind = v["kind"].as_str().expect("the object needs kind").to_string();
        let name = v["metadata"]["name"]
            .as_str()
            .expect("the object needs metadata.name")
            .to_string();
        let mut store = self.shared.lock();
        let has_ns = v["metadata"]["namespace"].as_str().is_some_and(|n| !n.is_empty());
        let (res, namespaced) = store.resolve(&api_version, &kind, has_ns);
        let ns = if namespaced {
            v["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let key = (ns.clone(), name);
        if store.object(&res, &key).is_some() {
            if namespaced {
                v["metadata"]["namespace"] = json!(ns);
            }
            if v.get("status").is_none() {
                let old_status = store.object(&res, &key).and_then(|o| o.get("status").cloned());
                set_or_remove(&mut v, "status", old_status);
            }
            store
                .update(&res, &key, v, UpdateMode::Raw)
                .expect("replace the object")
        } else {
            let namespace = namespaced.then_some(ns.as_str());
            store
                .create(&res, &api_version, namespace, v, false)
                .expect("create the object")
        }
    }

    /// The stored object, if any (`namespace` "" for cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut store = self.shared.lock();
        let (res, _) = store.resolve(api_version, kind, !namespace.is_empty());
        store.object(&res, &(namespace.to_string(), name.to_string())).cloned()
    }

    /// Every stored object of this kind (any group, any namespace), by namespace and name.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let store = self.shared.lock();
        let mut out = Vec::new();
        for (res, objects) in &store.objects {
            if store.types.get(res).is_some_and(|t| t.kind == kind) {
                out.extend(objects.values().cloned());
            }
        }
        out
    }

    /// Deletes an object at once, ignoring finalizers; emits DELETED. Returns it, if it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut store = self.shared.lock();
        let (res, _) = store.resolve(api_version, kind, !namespace.is_empty());
        store.remove(&res, &(namespace.to_string(), name.to_string()))
    }

    /// Replaces the `status` of a stored object (emits MODIFIED); `None` if it does not exist.
    pub fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Option<Value> {
        let mut store = self.shared.lock();
        let (res, _) = store.resolve(api_version, kind, !namespace.is_empty());
        let key = (namespace.to_string(), name.to_string());
        store
            .update(&res, &key, json!({ "status": status }), UpdateMode::Status)
            .ok()
    }

    /// The current (last written) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Compacts history at the current resourceVersion: later watches (and `Exact` lists or
    /// `continue` tokens) from an older resourceVersion get 410 Gone. Open watches go on, and
    /// a client that has seen the current resourceVersion can still resume (as with etcd).
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        store.floor = store.rv;
    }

    /// Ends every open watch stream at once (cleanly, like a dropped apiserver connection);
    /// clients re-watch from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Drops every watch and makes every resourceVersion handed out so far too old: the
    /// resourceVersion advances (as writes to other resources would), history is compacted
    /// there, and watches end. Each re-watch gets 410 Gone, so kube-runtime watchers re-list.
    pub fn expire_watches(&self) {
        {
            let mut store = self.shared.lock();
            let rv = store.next_rv();
            store.floor = rv;
        }
        self.drop_watches();
    }

    /// The number of watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Every request received so far, as (method, path and query), oldest first.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().requests.clone()
    }

    /// The next `times` writes (any method but GET) whose path and query contain
    /// `path_contains` fail with `code` (409 Conflict, 500 InternalError, ...) and a Status body.
    pub fn fail_writes(&self, path_contains: &str, times: usize, code: u16) {
        let fault = Fault {
            method: None,
            path_contains: path_contains.to_string(),
            remaining: times,
            code,
        };
        self.shared.lock().faults.push(fault);
    }

    /// The next `times` writes whose path and query contain `path_contains` lose a race:
    /// just before each is handled, the status of the object `api_version`/`kind`
    /// `namespace`/`name` becomes `rival(old status)`, as if another replica had written it
    /// first, so a write at the resourceVersion read before gets a real 409 Conflict (and a
    /// retry that reads again sees the rival's status).
    pub fn race_writes(
        &self,
        path_contains: &str,
        times: usize,
        (api_version, kind, namespace, name): (&str, &str, &str, &str),
        rival: impl FnMut(Value) -> Value + Send + 'static,
    ) {
        let race = Race {
            path_contains: path_contains.to_string(),
            remaining: times,
            object: (api_version.into(), kind.into(), namespace.into(), name.into()),
            rival: Box::new(rival),
        };
        self.shared.lock().races.push(race);
    }

    /// The next `times` requests with this method (e.g. "GET" for lists and watches) whose
    /// path and query contain `path_contains` fail with `code`.
    pub fn fail_requests(&self, method: &str, path_contains: &str, times: usize, code: u16) {
        let method = Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let fault = Fault {
            method: Some(method),
            path_contains: path_contains.to_string(),
            remaining: times,
            code,
        };
        self.shared.lock().faults.push(fault);
    }

    /// Makes resources with this plural answer 404 like a CRD that is not installed, or serves them again.
    pub fn set_installed(&self, plural: &str, installed: bool) {
        let mut store = self.shared.lock();
        if installed {
            store.uninstalled.remove(plural);
        } else {
            store.uninstalled.insert(plural.to_string());
        }
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s);
    /// applies to watches opened afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self.shared.bookmark_interval.lock().unwrap_or_else(|e| e.into_inner()) = interval;
    }

    /// Polls `condition` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_until(&self, timeout: Duration, mut condition: impl FnMut(&KubeApi) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Accepts connections (HTTP/1.1 or h2c) until the returned task is stopped.
fn serve(shared: Arc<Shared>, listener: TcpListener) -> ServerTask {
    let (shutdown, _) = watch::channel(false);
    let stop = shutdown.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            let mut stop = stop.subscribe();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(shared, req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
    });
    ServerTask { accept, shutdown }
}

// ---------------------------------------------------------------------------------------
// Typed test objects

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

/// A running Pod with `status.podIP = ip` and a Ready condition `True`/`False`.
pub fn pod(ns: &str, name: &str, pod_labels: &[(&str, &str)], ip: &str, ready: bool) -> Pod {
    let condition = |type_: &str, ok: bool| PodCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            labels: Some(labels(pod_labels)),
            ..meta(ns, name)
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("example/app:1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.to_string()),
            pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
            conditions: Some(vec![
                condition("PodScheduled", true),
                condition("Initialized", true),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ]),
            ..Default::default()
        }),
    }
}

/// A Service selecting `selector` with ports `(name, port)`; with `load_balancer_ip` it is
/// of type LoadBalancer and has `status.loadBalancer.ingress[0].ip` set (as MetalLB would).
pub fn service(
    ns: &str,
    name: &str,
    selector: &[(&str, &str)],
    ports: &[(&str, i32)],
    load_balancer_ip: Option<&str>,
) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            selector: Some(labels(selector)),
            ports: Some(
                ports
                    .iter()
                    .map(|(pname, port)| ServicePort {
                        name: Some(pname.to_string()),
                        port: *port,
                        protocol: Some("TCP".into()),
                        target_port: Some(IntOrString::Int(*port)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            type_: Some(
                if load_balancer_ip.is_some() {
                    "LoadBalancer"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            ..Default::default()
        }),
        status: load_balancer_ip.map(|ip| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        }),
    }
}

/// An Ingress with rules `(host, path prefix, service, port)`; the port is a number or a name.
pub fn ingress(ns: &str, name: &str, class: Option<&str>, rules: &[(&str, &str, &str, &str)]) -> Ingress {
    let rules = rules
        .iter()
        .map(|(host, path, svc, port)| {
            let port = match port.parse::<i32>() {
                Ok(n) => ServiceBackendPort {
                    number: Some(n),
                    name: None,
                },
                Err(_) => ServiceBackendPort {
                    name: Some(port.to_string()),
                    number: None,
                },
            };
            IngressRule {
                host: Some(host.to_string()).filter(|h| !h.is_empty()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(path.to_string()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: svc.to_string(),
                                port: Some(port),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }
        })
        .collect();
    Ingress {
        metadata: meta(ns, name),
        spec: Some(IngressSpec {
            ingress_class_name: class.map(str::to_string),
            rules: Some(rules),
            ..Default::default()
        }),
        status: None,
    }
}

/// A cluster-scoped IngressClass for `controller` (e.g. `canaryd.dev/controller`).
pub fn ingress_class(name: &str, controller: &str) -> IngressClass {
    IngressClass {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(controller.to_string()),
            parameters: None,
        }),
    }
}

/// A Lease, optionally held by `holder`, with the given duration.
pub fn lease(ns: &str, name: &str, holder: Option<&str>, duration_seconds: i32) -> Lease {
    Lease {
        metadata: meta(ns, name),
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration_seconds),
            ..Default::default()
        }),
    }
}

/// A `canaryd.dev/v1alpha1` CanaryRoute with the given spec, as JSON.
pub fn canary_route(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "canaryd.dev/v1alpha1",
        "kind": "CanaryRoute",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "track": "canary", "n": "5"}}});
        let labels = obj["metadata"]["labels"].as_object();
        let check = |s: &str| parse_label_selector(s).unwrap().iter().all(|r| r.matches(labels));
        assert!(check("app=web"));
        assert!(check("app==web,track in (canary, stable)"));
        assert!(check("app!=api,missing notin (x),!missing,track,n>4,n<6"));
        assert!(!check("app=api"));
        assert!(!check("track notin (canary)"));
        assert!(!check("!app"));
        assert!(!check("missing"));
        assert!(check(""));
        assert!(parse_label_selector("a in (x").is_err());
        assert!(parse_label_selector("a b").is_err());
    }

    #[test]
    fn merge_and_json_patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
        let ops = json!([
            {"op": "add", "path": "/l/-", "value": 4},
            {"op": "replace", "path": "/a/c", "value": 5},
            {"op": "test", "path": "/a/d", "value": 3},
            {"op": "remove", "path": "/a/d"},
            {"op": "copy", "from": "/a/c", "path": "/x~1y"}
        ]);
        json_patch(&mut v, &ops).unwrap();
        assert_eq!(v, json!({"a": {"c": 5}, "l": [3, 4], "x/y": 5}));
        assert!(json_patch(&mut v, &json!([{"op": "test", "path": "/a/c", "value": 0}])).is_err());
    }

    #[test]
    fn routes() {
        let Route::Resource(t) = route("/api/v1/namespaces/prod/pods/web-1/status") else {
            panic!()
        };
        assert_eq!(
            (t.namespace.as_deref(), t.plural.as_str(), t.name.as_deref()),
            (Some("prod"), "pods", Some("web-1"))
        );
        assert_eq!(t.sub.as_deref(), Some("status"));
        let Route::Resource(t) = route("/api/v1/namespaces/prod") else {
            panic!()
        };
        assert_eq!(
            (t.namespace, t.plural.as_str(), t.name.as_deref()),
            (None, "namespaces", Some("prod"))
        );
        let Route::Resource(t) = route("/apis/networking.k8s.io/v1/ingressclasses") else {
            panic!()
        };
        assert_eq!(
            (t.group.as_str(), t.namespace, t.name),
            ("networking.k8s.io", None, None)
        );
        let Route::Resource(t) = route("/api/v1/watch/namespaces/a/pods") else {
            panic!()
        };
        assert!(t.watch_path);
        assert_eq!(percent_decode("app%3Dweb%2Ctrack+in+%28a%29"), "app=web,track in (a)");
        assert_eq!(guess_plural("Policy"), "policies");
        assert_eq!(guess_plural("Gateway"), "gateways");
        assert_eq!(now_rfc3339().len(), 20);
    }
}
