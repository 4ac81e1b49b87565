//! Routes from `networking.k8s.io/v1` Ingresses of canaryd's class, with the ingress-nginx canary annotations.
//!
//! Pure functions: the watcher hands in every Ingress it knows and gets the whole set of routes back, so a
//! rebuild never depends on the order events arrived in. Each (host, path) of an ordinary Ingress is a route
//! whose stable backend is the path's Service; an Ingress annotated `nginx.ingress.kubernetes.io/canary: "true"`
//! supplies the canary backend, weight and override of the routes with the same host and path in its namespace,
//! as ingress-nginx does. Whatever cannot be used is skipped and explained in [`IngressRoutes::problems`];
//! nothing here panics on cluster input.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use canary_config::{
    BackendSpec, FieldCase, FieldError, FieldPath, KubeSourceSpec, OverrideSpec, PortSpec, Route, RouteSpec,
};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Legacy class annotation, still set by many charts (GitLab Auto DevOps among them).
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
const CANARY_WEIGHT_TOTAL: &str = "nginx.ingress.kubernetes.io/canary-weight-total";
const CANARY_BY_HEADER: &str = "nginx.ingress.kubernetes.io/canary-by-header";
const CANARY_BY_HEADER_VALUE: &str = "nginx.ingress.kubernetes.io/canary-by-header-value";
const CANARY_BY_HEADER_PATTERN: &str = "nginx.ingress.kubernetes.io/canary-by-header-pattern";
const CANARY_BY_COOKIE: &str = "nginx.ingress.kubernetes.io/canary-by-cookie";

/// Longest route name: route names are DNS labels.
const MAX_NAME: usize = 63;

/// Routes built from Ingresses, the TLS secrets they name, and what could not be used and why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IngressRoutes {
    /// One per usable (host, path) of a non-canary Ingress, sorted by namespace, Ingress name, then rule order.
    pub routes: Vec<IngressRoute>,
    /// TLS sections of the Ingresses that gave at least one route, in the same order.
    pub tls: Vec<IngressTls>,
    /// Skipped Ingresses, paths and annotations, one sentence each, sorted.
    pub problems: Vec<String>,
}

/// One route and the Ingresses it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct IngressRoute {
    /// The validated route.
    pub route: Route,
    /// The Ingress whose path gave the route and its stable backend.
    pub stable: ObjectRef,
    /// The canary Ingress that gave the canary backend, weight and override, if any.
    pub canary: Option<ObjectRef>,
}

/// A TLS secret named by an Ingress (`spec.tls[]` with a `secretName`), in the Ingress's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressTls {
    /// The Ingress; the secret lives in its namespace.
    pub ingress: ObjectRef,
    /// The Secret's name.
    pub secret: String,
    /// Hosts the certificate is for, lower-cased as written (may be empty: the Ingress did not say).
    pub hosts: Vec<String>,
}

/// A namespaced object, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether an Ingress belongs to `class`: `spec.ingressClassName` or the legacy class annotation names it.
pub fn is_ours(ingress: &Ingress, class: &str) -> bool {
    let by_spec = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) == Some(class);
    by_spec || annotation(ingress, CLASS_ANNOTATION) == Some(class)
}

/// Builds the routes of every Ingress of `class` (others are ignored); `default_max_body_bytes` is the
/// routes' body limit, as for routes of the config file.
pub fn routes_from_ingresses(ingresses: &[Ingress], class: &str, default_max_body_bytes: u64) -> IngressRoutes {
    let mut problems = Vec::new();
    let mut stables = Vec::new();
    let mut canaries = Vec::new();
    for ingress in ingresses.iter().filter(|i| is_ours(i, class)) {
        let Some(name) = ingress.metadata.name.clone() else {
            problems.push("an Ingress without metadata.name was skipped".to_string());
            continue;
        };
        let obj = ObjectRef {
            // The API server always sets it; "default" is where kubectl would have put it.
            namespace: ingress.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name,
        };
        match annotation(ingress, CANARY).map(parse_bool) {
            None | Some(Ok(false)) => stables.push((obj, ingress)),
            Some(Ok(true)) => canaries.push((obj, ingress)),
            // Serving it as a stable Ingress could take over the real stable's paths: skip it altogether.
            Some(Err(v)) => problems.push(format!(
                "Ingress {obj}: {CANARY}: {v:?} is not true or false; Ingress skipped"
            )),
        }
    }

    // Oldest first, so that when two Ingresses claim the same path the older keeps it (as ingress-nginx
    // does) and its route keeps its name; creating a newer Ingress never takes traffic from a running one.
    stables.sort_by(|(a, ai), (b, bi)| {
        let (at, bt) = (created(ai), created(bi));
        (at.is_none(), at, a).cmp(&(bt.is_none(), bt, b))
    });
    let mut claims: BTreeMap<PathKey, usize> = BTreeMap::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut entries: Vec<Entry> = Vec::new();
    for (obj, ingress) in &stables {
        let pairs = pairs(&obj.namespace, ingress);
        let single = pairs.len() == 1;
        for pair in pairs {
            let backend = match pair.backend {
                Ok(b) => b,
                Err(why) => {
                    problems.push(format!("Ingress {obj} {}: {why}; path skipped", pair.at));
                    continue;
                }
            };
            if let Some(&owner) = claims.get(&pair.key) {
                let owner = &entries[owner];
                problems.push(format!(
                    "Ingress {obj} {}: {} is already served by Ingress {} ({}); path skipped",
                    pair.at, pair.key, owner.stable, owner.at
                ));
                continue;
            }
            let (base, identity) = if single {
                (format!("{}-{}", obj.namespace, obj.name), obj.to_string())
            } else {
                (
                    format!("{}-{}-{}", obj.namespace, obj.name, pair.index),
                    format!("{obj}#{}", pair.index),
                )
            };
            let name = unique_name(&base, &identity, &names);
            let mut spec = RouteSpec::new(name.clone(), backend);
            if !pair.key.host.is_empty() {
                spec.hosts = vec![pair.key.host.clone()];
            }
            spec.path_prefix = pair.path;
            spec.path_exact = pair.key.exact;
            // ingress-nginx has no override unless a canary annotation asks for one.
            spec.overrides.header = None;
            spec.overrides.cookie = None;
            match build(spec.clone(), &format!("Ingress {obj}"), default_max_body_bytes) {
                Ok(route) => {
                    names.insert(name);
                    claims.insert(pair.key, entries.len());
                    entries.push(Entry {
                        stable: obj.clone(),
                        index: pair.index,
                        at: pair.at,
                        spec,
                        route,
                        canary: None,
                    });
                }
                Err(e) => problems.push(format!(
                    "Ingress {obj} {}: {}; path skipped",
                    pair.at,
                    config_errors(&e)
                )),
            }
        }
    }

    // Canaries in name order: ingress-nginx documents no tie-break, a fixed one keeps rebuilds stable.
    canaries.sort_by(|(a, _), (b, _)| a.cmp(b));
    for (obj, ingress) in &canaries {
        let settings = canary_settings(obj, ingress, &mut problems);
        for pair in pairs(&obj.namespace, ingress) {
            let backend = match pair.backend {
                Ok(b) => b,
                Err(why) => {
                    problems.push(format!("canary Ingress {obj} {}: {why}; path skipped", pair.at));
                    continue;
                }
            };
            // ingress-nginx pairs a canary only with a stable Ingress of its own namespace.
            let Some(&i) = claims
                .get(&pair.key)
                .filter(|&&i| entries[i].stable.namespace == obj.namespace)
            else {
                problems.push(format!(
                    "canary Ingress {obj} {}: no Ingress in namespace {} serves {}; path skipped",
                    pair.at, obj.namespace, pair.key
                ));
                continue;
            };
            let entry = &mut entries[i];
            if let Some(first) = &entry.canary {
                problems.push(format!(
                    "canary Ingress {obj} {}: {} already has canary Ingress {first}; path skipped",
                    pair.at, pair.key
                ));
                continue;
            }
            let mut spec = entry.spec.clone();
            spec.canary = backend;
            spec.weight = settings.weight_percent();
            spec.overrides = settings.overrides();
            match build(spec, &format!("canary Ingress {obj}"), default_max_body_bytes) {
                Ok(route) => {
                    entry.route = route;
                    entry.canary = Some(obj.clone());
                }
                // A broken canary must never take the stable route down with it.
                Err(e) => problems.push(format!(
                    "canary Ingress {obj} {}: {}; canary ignored, route {} serves stable only",
                    pair.at,
                    config_errors(&e),
                    entry.route.name
                )),
            }
        }
    }

    entries.sort_by(|a, b| (&a.stable, a.index).cmp(&(&b.stable, b.index)));
    let mut used: Vec<&ObjectRef> = entries.iter().map(|e| &e.stable).collect();
    used.dedup();
    let mut by_ref: Vec<(&ObjectRef, &Ingress)> = stables.iter().map(|(o, i)| (o, *i)).collect();
    by_ref.sort_by(|a, b| a.0.cmp(b.0));
    let tls = by_ref
        .into_iter()
        .filter(|(obj, _)| used.binary_search(obj).is_ok())
        .flat_map(|(obj, ingress)| {
            let sections = ingress.spec.as_ref().and_then(|s| s.tls.as_ref());
            sections.into_iter().flatten().filter_map(move |t| {
                Some(IngressTls {
                    ingress: obj.clone(),
                    // Without a secret ingress-nginx serves its default certificate; that is the caller's too.
                    secret: t.secret_name.clone().filter(|s| !s.is_empty())?,
                    hosts: t.hosts.iter().flatten().map(|h| h.to_ascii_lowercase()).collect(),
                })
            })
        })
        .collect();
    problems.sort();
    IngressRoutes {
        routes: entries
            .into_iter()
            .map(|e| IngressRoute {
                route: e.route,
                stable: e.stable,
                canary: e.canary,
            })
            .collect(),
        tls,
        problems,
    }
}

/// A route being built: the stable Ingress's path, its spec (to add a canary to) and the validated route.
struct Entry {
    stable: ObjectRef,
    index: usize,
    at: String,
    spec: RouteSpec,
    route: Route,
    canary: Option<ObjectRef>,
}

/// What two Ingresses must share to be the same route: host, path (normalised as routes normalise it,
/// so `/app` and `/app/` cannot become two routes with one prefix) and whether it is exact.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PathKey {
    host: String,
    path: String,
    exact: bool,
}

impl fmt::Display for PathKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.is_empty() { "any host" } else { &self.host };
        let kind = if self.exact { "exact path" } else { "path prefix" };
        write!(f, "{host} {kind} {}", self.path)
    }
}

/// One (host, path) of an Ingress, or its default backend.
struct Pair {
    /// Position among the Ingress's paths (rules in order, the default backend last): names the route.
    index: usize,
    /// Where it is in the Ingress, for problems: `spec.rules[0].http.paths[1]`.
    at: String,
    key: PathKey,
    /// The path as written (`/` when absent).
    path: String,
    /// The `stable`/`canary` backend, or why there is none.
    backend: Result<BackendSpec, String>,
}

/// Every (host, path) of an Ingress in rule order, then `spec.defaultBackend` as any host, prefix `/`.
fn pairs(namespace: &str, ingress: &Ingress) -> Vec<Pair> {
    let Some(spec) = &ingress.spec else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.as_deref().unwrap_or("").to_ascii_lowercase();
        for (p, path) in rule.http.iter().flat_map(|h| &h.paths).enumerate() {
            let written = path
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            let exact = match path.path_type.as_str() {
                "Exact" => Ok(true),
                // canaryd has no regex paths: ImplementationSpecific is served as a prefix, as ingress-nginx
                // does without its use-regex annotation.
                "Prefix" | "ImplementationSpecific" => Ok(false),
                other => Err(format!(
                    "pathType {other:?} is not Exact, Prefix or ImplementationSpecific"
                )),
            };
            out.push(Pair {
                index: out.len(),
                at: format!("spec.rules[{r}].http.paths[{p}]"),
                key: PathKey {
                    host: host.clone(),
                    path: normalise(&written),
                    exact: *exact.as_ref().unwrap_or(&false),
                },
                path: written,
                backend: exact.and_then(|_| backend(namespace, &path.backend)),
            });
        }
    }
    if let Some(default) = &spec.default_backend {
        out.push(Pair {
            index: out.len(),
            at: "spec.defaultBackend".into(),
            key: PathKey {
                host: String::new(),
                path: "/".into(),
                exact: false,
            },
            path: "/".into(),
            backend: backend(namespace, default),
        });
    }
    out
}

/// The route backend of an Ingress backend: the Service's EndpointSlices at its port.
fn backend(namespace: &str, backend: &IngressBackend) -> Result<BackendSpec, String> {
    if let Some(r) = &backend.resource {
        return Err(format!(
            "backend is a resource ({} {}); only Service backends can be proxied to",
            r.kind, r.name
        ));
    }
    let Some(service) = &backend.service else {
        return Err("backend names no Service".into());
    };
    let port = match service.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
        // A negative number is refused by the port's validation, named as written.
        Some((Some(n), _)) => u32::try_from(n).map_or_else(|_| PortSpec::Name(n.to_string()), PortSpec::Number),
        Some((None, Some(name))) if !name.is_empty() => PortSpec::Name(name.to_string()),
        _ => return Err(format!("backend Service {} has no port name or number", service.name)),
    };
    Ok(BackendSpec::kubernetes(KubeSourceSpec {
        namespace: Some(namespace.to_string()),
        service: Some(service.name.clone()),
        selector: None,
        port,
    }))
}

/// A path as routes keep it: no trailing `/` except the root.
fn normalise(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// What a canary Ingress's annotations ask for.
struct CanarySettings {
    /// Share of requests in parts per million.
    weight_ppm: u32,
    header: Option<String>,
    header_value: Option<String>,
    header_pattern: Option<String>,
    cookie: Option<String>,
}

impl CanarySettings {
    /// The weight as the config's percent; exact, since ppm is the config's own resolution.
    fn weight_percent(&self) -> f64 {
        f64::from(self.weight_ppm) / 10_000.0
    }

    /// The route's overrides.
    fn overrides(&self) -> OverrideSpec {
        OverrideSpec {
            enabled: true,
            header: self.header.clone(),
            header_value: self.header_value.clone(),
            // As ingress-nginx documents, an exact value wins over a pattern; the pattern is then not even checked.
            header_pattern: self.header_pattern.clone().filter(|_| self.header_value.is_none()),
            cookie: self.cookie.clone(),
        }
    }
}

fn canary_settings(obj: &ObjectRef, ingress: &Ingress, problems: &mut Vec<String>) -> CanarySettings {
    let mut integer = |key: &str, default: i64| match annotation(ingress, key) {
        None => Some(default),
        Some(text) => match text.trim().parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(format!(
                    "canary Ingress {obj}: {key}: {text:?} is not an integer; weight 0 used"
                ));
                None
            }
        },
    };
    let weight = integer(CANARY_WEIGHT, 0);
    let total = integer(CANARY_WEIGHT_TOTAL, 100);
    let weight_ppm = match (weight, total) {
        (Some(w), Some(t)) if t > 0 => {
            // Integer arithmetic rounds half up exactly; i128 cannot overflow for any i64 inputs.
            let w = i128::from(w.clamp(0, t));
            let t = i128::from(t);
            u32::try_from((w * 2_000_000 + t) / (2 * t)).unwrap_or(1_000_000)
        }
        (Some(_), Some(t)) => {
            problems.push(format!(
                "canary Ingress {obj}: {CANARY_WEIGHT_TOTAL}: {t} must be above 0; weight 0 used"
            ));
            0
        }
        _ => 0,
    };
    let header = annotation(ingress, CANARY_BY_HEADER).map(str::to_string);
    let header_value = annotation(ingress, CANARY_BY_HEADER_VALUE).map(str::to_string);
    let header_pattern = annotation(ingress, CANARY_BY_HEADER_PATTERN).map(str::to_string);
    if header.is_none() {
        for (key, set) in [
            (CANARY_BY_HEADER_VALUE, header_value.is_some()),
            (CANARY_BY_HEADER_PATTERN, header_pattern.is_some()),
        ] {
            if set {
                problems.push(format!("canary Ingress {obj}: {key} needs {CANARY_BY_HEADER}; ignored"));
            }
        }
    }
    CanarySettings {
        weight_ppm,
        header_value: header_value.filter(|_| header.is_some()),
        header_pattern: header_pattern.filter(|_| header.is_some()),
        header,
        cookie: annotation(ingress, CANARY_BY_COOKIE).map(str::to_string),
    }
}

/// An annotation's value without surrounding blanks; an empty one counts as absent, as in ingress-nginx.
fn annotation<'a>(ingress: &'a Ingress, key: &str) -> Option<&'a str> {
    let value = ingress.metadata.annotations.as_ref()?.get(key)?.trim();
    (!value.is_empty()).then_some(value)
}

fn created(ingress: &Ingress) -> Option<&Time> {
    ingress.metadata.creation_timestamp.as_ref()
}

/// Go's `strconv.ParseBool`, which ingress-nginx reads boolean annotations with.
fn parse_bool(text: &str) -> Result<bool, &str> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(other),
    }
}

/// The route `spec` makes, its errors named below `at` as the file's fields are.
fn build(spec: RouteSpec, at: &str, default_max_body_bytes: u64) -> Result<Route, Vec<FieldError>> {
    let at = FieldPath::new(at, FieldCase::Snake);
    spec.build(&at, &at.field("name"), default_max_body_bytes)
}

fn config_errors(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A route name from `base`, a DNS label unused so far. Long names are cut and marked with a hash of
/// `identity` (the Ingress and path), so they stay unique and the same on every rebuild; a name already
/// taken by an older route gets the hashed form too instead of replacing it.
fn unique_name(base: &str, identity: &str, taken: &HashSet<String>) -> String {
    let clean = sanitise(base);
    if clean.len() <= MAX_NAME && !taken.contains(&clean) {
        return clean;
    }
    // Salted retries only matter on a 32-bit hash collision between two taken names.
    let mut name = hashed(&clean, identity);
    let mut attempt = 0u64;
    while taken.contains(&name) {
        attempt += 1;
        name = hashed(&clean, &format!("{identity}#{attempt}"));
    }
    name
}

/// Lower case, anything but letters, digits and `-` as `-`, no leading or trailing `-`.
fn sanitise(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "ingress".into()
    } else {
        trimmed.into()
    }
}

/// `clean` cut to leave room for `-` and 8 hex digits of the identity's hash.
fn hashed(clean: &str, identity: &str) -> String {
    let head = clean[..clean.len().min(MAX_NAME - 9)].trim_end_matches('-');
    format!("{head}-{:08x}", fnv1a32(identity.as_bytes()))
}

/// 32-bit FNV-1a: tiny, fixed (no per-process seed), so names are the same on every replica and rebuild.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0x811c_9dc5_u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_config::{HeaderMatch, KubeSource, KubeTarget, PortRef, Weight};
    use serde_json::{json, Value};

    const CLASS: &str = "canaryd";

    /// An Ingress of class `canaryd` created at `day` (of January 2024), with annotations and a spec.
    fn ingress(ns: &str, name: &str, day: u32, annotations: &[(&str, &str)], spec: Value) -> Ingress {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let mut spec = spec;
        if spec.get("ingressClassName").is_none() && !annotations.contains_key(CLASS_ANNOTATION) {
            spec["ingressClassName"] = json!(CLASS);
        }
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "namespace": ns,
                "name": name,
                "creationTimestamp": format!("2024-01-{day:02}T00:00:00Z"),
                "annotations": annotations,
            },
            "spec": spec,
        }))
        .expect("a valid Ingress")
    }

    fn service(name: &str, port: Value) -> Value {
        let port = if port.is_string() {
            json!({ "name": port })
        } else {
            json!({ "number": port })
        };
        json!({ "service": { "name": name, "port": port } })
    }

    /// A spec with one host, one path.
    fn one_path(host: &str, path: &str, path_type: &str, svc: &str, port: Value) -> Value {
        json!({ "rules": [{ "host": host, "http": { "paths": [
            { "path": path, "pathType": path_type, "backend": service(svc, port) }
        ] } }] })
    }

    fn stable(ns: &str, name: &str, day: u32, host: &str, svc: &str) -> Ingress {
        ingress(ns, name, day, &[], one_path(host, "/", "Prefix", svc, json!(5000)))
    }

    fn canary(ns: &str, name: &str, host: &str, svc: &str, annotations: &[(&str, &str)]) -> Ingress {
        let mut all = vec![(CANARY, "true")];
        all.extend_from_slice(annotations);
        ingress(ns, name, 9, &all, one_path(host, "/", "Prefix", svc, json!(5000)))
    }

    fn build(ingresses: &[Ingress]) -> IngressRoutes {
        routes_from_ingresses(ingresses, CLASS, 0)
    }

    fn obj(ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn kube(ns: &str, svc: &str, port: PortRef) -> Option<KubeSource> {
        Some(KubeSource {
            namespace: Some(ns.into()),
            target: KubeTarget::Service { name: svc.into(), port },
        })
    }

    fn names(out: &IngressRoutes) -> Vec<&str> {
        out.routes.iter().map(|r| r.route.name.as_str()).collect()
    }

    fn percent(p: f64) -> Weight {
        Weight::from_percent(p).unwrap()
    }

    fn has_problem(out: &IngressRoutes, parts: &[&str]) -> bool {
        out.problems.iter().any(|p| parts.iter().all(|part| p.contains(part)))
    }

    #[test]
    fn gitlab_auto_devops_canary() {
        let out = build(&[
            stable(
                "app-42-production",
                "production",
                1,
                "app.example.com",
                "production-auto-deploy",
            ),
            canary(
                "app-42-production",
                "production-canary",
                "app.example.com",
                "production-canary-auto-deploy",
                &[(CANARY_WEIGHT, "25"), (CANARY_BY_HEADER, "canary")],
            ),
        ]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.routes.len(), 1);
        let r = &out.routes[0];
        assert_eq!(r.stable, obj("app-42-production", "production"));
        assert_eq!(r.canary, Some(obj("app-42-production", "production-canary")));
        assert_eq!(r.route.name, "app-42-production-production");
        assert_eq!(
            r.route.hosts,
            vec![canary_config::HostPattern::Exact("app.example.com".into())]
        );
        assert_eq!(r.route.path_prefix, "/");
        assert!(!r.route.path_exact);
        assert_eq!(r.route.weight, percent(25.0));
        assert_eq!(r.route.overrides.header.as_deref(), Some("canary"));
        assert_eq!(r.route.overrides.header_match, None);
        assert_eq!(r.route.overrides.cookie, None);
        assert_eq!(
            r.route.stable.kubernetes,
            kube("app-42-production", "production-auto-deploy", PortRef::Number(5000))
        );
        assert_eq!(
            r.route.canary.kubernetes,
            kube(
                "app-42-production",
                "production-canary-auto-deploy",
                PortRef::Number(5000)
            )
        );
        assert!(r.route.stable.endpoints.is_empty() && r.route.canary.endpoints.is_empty());
    }

    #[test]
    fn weight_over_total_rounds_to_four_decimals_and_clamps() {
        let weight = |annotations: &[(&str, &str)]| {
            let out = build(&[
                stable("ns", "app", 1, "a.example", "app"),
                canary("ns", "app-canary", "a.example", "app-canary", annotations),
            ]);
            assert_eq!(out.routes[0].canary, Some(obj("ns", "app-canary")));
            (out.routes[0].route.weight, out.problems)
        };
        let total = |w: &'static str, t: &'static str| weight(&[(CANARY_WEIGHT, w), (CANARY_WEIGHT_TOTAL, t)]);
        assert_eq!(total("125", "1000"), (percent(12.5), vec![]));
        assert_eq!(total("1", "3"), (percent(33.3333), vec![]));
        assert_eq!(total("2", "3"), (percent(66.6667), vec![]));
        assert_eq!(total("1", "10000000"), (percent(0.0), vec![]));
        assert_eq!(total("1", "2000000"), (percent(0.0001), vec![]), "half a ppm rounds up");
        assert_eq!(total("150", "100"), (percent(100.0), vec![]));
        assert_eq!(total("-5", "100"), (Weight::ZERO, vec![]));
        assert_eq!(weight(&[]), (Weight::ZERO, vec![]), "no weight annotation: 0");
        assert_eq!(weight(&[(CANARY_WEIGHT, " 10 ")]).0, percent(10.0));

        let (w, problems) = weight(&[(CANARY_WEIGHT, "ten")]);
        assert_eq!(w, Weight::ZERO);
        assert!(
            problems[0].contains("canary-weight") && problems[0].contains("\"ten\""),
            "{problems:?}"
        );
        let (w, problems) = total("10", "0");
        assert_eq!(w, Weight::ZERO);
        assert!(problems[0].contains("canary-weight-total"), "{problems:?}");
        let (w, problems) = total("10", "1.5");
        assert_eq!(w, Weight::ZERO);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn header_value_and_pattern() {
        let route = |annotations: &[(&str, &str)]| {
            let out = build(&[
                stable("ns", "app", 1, "a.example", "app"),
                canary("ns", "app-canary", "a.example", "app-canary", annotations),
            ]);
            (out.routes[0].route.clone(), out.problems)
        };
        let (r, problems) = route(&[(CANARY_BY_HEADER, "X-Canary"), (CANARY_BY_HEADER_VALUE, "yes")]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(r.overrides.header.as_deref(), Some("x-canary"));
        assert_eq!(r.overrides.header_match, Some(HeaderMatch::Value("yes".into())));
        assert_eq!(r.weight, Weight::ZERO);

        let (r, _) = route(&[(CANARY_BY_HEADER, "x-canary"), (CANARY_BY_HEADER_PATTERN, "beta-.*")]);
        let m = r.overrides.header_match.expect("a pattern");
        assert!(matches!(m, HeaderMatch::Pattern(_)));
        assert!(m.matches("beta-7") && !m.matches("gamma"));

        // The value wins, and a pattern that would not even compile is then not looked at.
        let (r, problems) = route(&[
            (CANARY_BY_HEADER, "x-canary"),
            (CANARY_BY_HEADER_VALUE, "yes"),
            (CANARY_BY_HEADER_PATTERN, "(unclosed"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(r.overrides.header_match, Some(HeaderMatch::Value("yes".into())));

        // A value without a header name is ignored (and said so); the canary still applies.
        let (r, problems) = route(&[(CANARY_BY_HEADER_VALUE, "yes"), (CANARY_WEIGHT, "5")]);
        assert_eq!(r.overrides.header, None);
        assert_eq!(r.overrides.header_match, None);
        assert_eq!(r.weight, percent(5.0));
        assert!(problems[0].contains("canary-by-header-value needs"), "{problems:?}");
    }

    #[test]
    fn cookie_override() {
        let out = build(&[
            stable("ns", "app", 1, "a.example", "app"),
            canary(
                "ns",
                "app-canary",
                "a.example",
                "app-canary",
                &[(CANARY_BY_COOKIE, "beta_tester")],
            ),
        ]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let o = &out.routes[0].route.overrides;
        assert_eq!(o.cookie.as_deref(), Some("beta_tester"));
        assert_eq!(o.header, None);
        assert_eq!(o.header_match, None);
    }

    #[test]
    fn header_and_cookie_together() {
        let out = build(&[
            stable("ns", "app", 1, "a.example", "app"),
            canary(
                "ns",
                "app-canary",
                "a.example",
                "app-canary",
                &[
                    (CANARY_BY_HEADER, "x-beta"),
                    (CANARY_BY_COOKIE, "beta"),
                    (CANARY_WEIGHT, "30"),
                ],
            ),
        ]);
        let r = &out.routes[0].route;
        assert_eq!(r.overrides.header.as_deref(), Some("x-beta"));
        assert_eq!(r.overrides.cookie.as_deref(), Some("beta"));
        assert_eq!(r.weight, percent(30.0));
    }

    #[test]
    fn class_filtering() {
        let other_spec = json!({ "ingressClassName": "nginx", "defaultBackend": service("x", json!(80)) });
        let legacy = ingress(
            "ns",
            "legacy",
            1,
            &[(CLASS_ANNOTATION, CLASS)],
            one_path("legacy.example", "/", "Prefix", "legacy", json!(80)),
        );
        let legacy_other = ingress(
            "ns",
            "legacy-nginx",
            1,
            &[(CLASS_ANNOTATION, "nginx")],
            one_path("other.example", "/", "Prefix", "svc", json!(80)),
        );
        let mut classless: Ingress = stable("ns", "classless", 1, "c.example", "svc");
        classless.spec.as_mut().unwrap().ingress_class_name = None;
        let ours = stable("ns", "ours", 1, "ours.example", "svc");
        let other = ingress("ns", "other", 1, &[], other_spec);
        // A canary of another class must not attach to our route either.
        let mut other_canary = canary("ns", "ours-canary", "ours.example", "canary", &[(CANARY_WEIGHT, "50")]);
        other_canary.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());

        let all = [
            legacy.clone(),
            legacy_other.clone(),
            classless.clone(),
            ours.clone(),
            other.clone(),
            other_canary,
        ];
        let out = build(&all);
        assert!(out.problems.is_empty(), "ignored silently: {:?}", out.problems);
        assert_eq!(names(&out), ["ns-legacy", "ns-ours"]);
        assert_eq!(out.routes[1].canary, None);
        assert_eq!(out.routes[1].route.weight, Weight::ZERO);

        assert!(is_ours(&legacy, CLASS) && is_ours(&ours, CLASS));
        assert!(!is_ours(&legacy_other, CLASS) && !is_ours(&classless, CLASS) && !is_ours(&other, CLASS));
        assert!(is_ours(&other, "nginx") && is_ours(&legacy_other, "nginx"));
    }

    #[test]
    fn path_types() {
        let spec = json!({ "rules": [{ "host": "a.example", "http": { "paths": [
            { "path": "/exact", "pathType": "Exact", "backend": service("svc", json!(80)) },
            { "path": "/prefix/", "pathType": "Prefix", "backend": service("svc", json!(80)) },
            { "path": "/impl", "pathType": "ImplementationSpecific", "backend": service("svc", json!(80)) },
            { "pathType": "Prefix", "backend": service("svc", json!(80)) },
            { "path": "/odd", "pathType": "Regex", "backend": service("svc", json!(80)) },
        ] } }] });
        let out = build(&[ingress("ns", "app", 1, &[], spec)]);
        let got: Vec<(&str, bool)> = out
            .routes
            .iter()
            .map(|r| (r.route.path_prefix.as_str(), r.route.path_exact))
            .collect();
        assert_eq!(
            got,
            [("/exact", true), ("/prefix", false), ("/impl", false), ("/", false)]
        );
        assert_eq!(names(&out), ["ns-app-0", "ns-app-1", "ns-app-2", "ns-app-3"]);
        assert_eq!(out.problems.len(), 1);
        assert!(
            has_problem(&out, &["ns/app", "paths[4]", "\"Regex\""]),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn exact_and_prefix_of_one_path_are_two_routes_and_canaries_match_the_type() {
        let spec = |t: &str| one_path("a.example", "/api", t, "svc", json!(80));
        let out = build(&[
            ingress("ns", "exact", 1, &[], spec("Exact")),
            ingress("ns", "prefix", 2, &[], spec("Prefix")),
            ingress("ns", "exact-canary", 3, &[(CANARY, "true")], {
                let mut s = spec("Exact");
                s["rules"][0]["http"]["paths"][0]["backend"] = service("canary", json!(80));
                s
            }),
        ]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(names(&out), ["ns-exact", "ns-prefix"]);
        assert_eq!(out.routes[0].canary, Some(obj("ns", "exact-canary")));
        assert_eq!(out.routes[1].canary, None);

        // A Prefix canary has no Prefix stable to join when only the Exact one exists.
        let out = build(&[
            ingress("ns", "exact", 1, &[], spec("Exact")),
            ingress("ns", "prefix-canary", 3, &[(CANARY, "true")], spec("Prefix")),
        ]);
        assert_eq!(out.routes[0].canary, None);
        assert!(
            has_problem(&out, &["canary Ingress ns/prefix-canary", "no Ingress"]),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn default_backend_and_hostless_rules() {
        let spec = json!({
            "defaultBackend": service("fallback", json!("http")),
            "rules": [
                { "host": "a.example", "http": { "paths": [
                    { "path": "/", "pathType": "Prefix", "backend": service("a", json!(80)) } ] } },
                { "http": { "paths": [
                    { "path": "/api", "pathType": "Prefix", "backend": service("api", json!(80)) } ] } },
            ],
        });
        let out = build(&[ingress("ns", "site", 1, &[], spec)]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(names(&out), ["ns-site-0", "ns-site-1", "ns-site-2"]);
        let last = &out.routes[2].route;
        assert!(last.hosts.is_empty());
        assert_eq!((last.path_prefix.as_str(), last.path_exact), ("/", false));
        assert_eq!(
            last.stable.kubernetes,
            kube("ns", "fallback", PortRef::Name("http".into()))
        );
        assert!(out.routes[1].route.hosts.is_empty());
        assert_eq!(out.routes[1].route.path_prefix, "/api");

        // Only a default backend: one route, named after the Ingress alone.
        let out = build(&[ingress(
            "ns",
            "catch-all",
            1,
            &[],
            json!({ "defaultBackend": service("x", json!(80)) }),
        )]);
        assert_eq!(names(&out), ["ns-catch-all"]);

        // A hostless "/" rule and the default backend are the same route: the rule, listed first, wins.
        let spec = json!({
            "defaultBackend": service("fallback", json!(80)),
            "rules": [{ "http": { "paths": [
                { "path": "/", "pathType": "Prefix", "backend": service("root", json!(80)) } ] } }],
        });
        let out = build(&[ingress("ns", "both", 1, &[], spec)]);
        assert_eq!(out.routes.len(), 1);
        assert_eq!(
            out.routes[0].route.stable.kubernetes,
            kube("ns", "root", PortRef::Number(80))
        );
        assert!(has_problem(
            &out,
            &["ns/both spec.defaultBackend", "already served by Ingress ns/both"]
        ));
    }

    #[test]
    fn ports_by_name_and_number() {
        let spec = json!({ "rules": [{ "host": "a.example", "http": { "paths": [
            { "path": "/n", "pathType": "Prefix", "backend": service("svc", json!(8080)) },
            { "path": "/s", "pathType": "Prefix", "backend": service("svc", json!("web")) },
            { "path": "/none", "pathType": "Prefix", "backend": { "service": { "name": "svc" } } },
            { "path": "/bad", "pathType": "Prefix", "backend": service("svc", json!(70000)) },
        ] } }] });
        let out = build(&[ingress("ns", "app", 1, &[], spec)]);
        let sources: Vec<_> = out.routes.iter().map(|r| r.route.stable.kubernetes.clone()).collect();
        assert_eq!(
            sources,
            [
                kube("ns", "svc", PortRef::Number(8080)),
                kube("ns", "svc", PortRef::Name("web".into()))
            ]
        );
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(has_problem(&out, &["paths[2]", "no port"]));
        assert!(has_problem(&out, &["paths[3]", "Ingress ns/app.stable.kubernetes"]));
    }

    #[test]
    fn older_ingress_keeps_a_contested_path() {
        // "a/first" sorts first by name but is newer: the older "z/second" keeps the path.
        let newer = stable("a", "first", 5, "shop.example", "new");
        let older = stable("z", "second", 2, "shop.example", "old");
        let out = build(&[newer.clone(), older.clone()]);
        assert_eq!(out.routes.len(), 1);
        assert_eq!(out.routes[0].stable, obj("z", "second"));
        assert_eq!(out.problems.len(), 1);
        assert!(
            has_problem(&out, &["Ingress a/first", "already served by Ingress z/second"]),
            "{:?}",
            out.problems
        );

        // Same age: namespace/name decides.
        let out = build(&[
            stable("b", "x", 1, "shop.example", "b"),
            stable("a", "y", 1, "shop.example", "a"),
        ]);
        assert_eq!(out.routes[0].stable, obj("a", "y"));
        assert!(has_problem(&out, &["Ingress b/x", "already served by Ingress a/y"]));

        // Case of the host and a trailing slash do not make a second route.
        let out = build(&[
            stable("ns", "one", 1, "shop.example", "a"),
            ingress(
                "ns",
                "two",
                2,
                &[],
                one_path("shop.example", "//", "Prefix", "b", json!(80)),
            ),
        ]);
        assert_eq!(out.routes.len(), 1);
        assert_eq!(out.problems.len(), 1);
    }

    #[test]
    fn canary_conflicts_and_orphans() {
        let out = build(&[
            stable("ns", "app", 1, "a.example", "app"),
            canary("ns", "b-canary", "a.example", "b", &[(CANARY_WEIGHT, "20")]),
            canary("ns", "a-canary", "a.example", "a", &[(CANARY_WEIGHT, "10")]),
            canary("ns", "lost-canary", "nowhere.example", "c", &[]),
            // ingress-nginx pairs canaries within one namespace only.
            canary("other", "app-canary", "a.example", "d", &[]),
        ]);
        assert_eq!(out.routes.len(), 1);
        let r = &out.routes[0];
        assert_eq!(r.canary, Some(obj("ns", "a-canary")));
        assert_eq!(r.route.weight, percent(10.0));
        assert_eq!(r.route.canary.kubernetes, kube("ns", "a", PortRef::Number(5000)));
        assert_eq!(out.problems.len(), 3, "{:?}", out.problems);
        assert!(has_problem(
            &out,
            &["ns/b-canary", "already has canary Ingress ns/a-canary"]
        ));
        assert!(has_problem(
            &out,
            &["ns/lost-canary", "no Ingress in namespace ns serves nowhere.example"]
        ));
        assert!(has_problem(
            &out,
            &["other/app-canary", "no Ingress in namespace other"]
        ));
    }

    #[test]
    fn bad_input_is_a_problem_never_a_panic() {
        let resource = json!({ "rules": [{ "host": "a.example", "http": { "paths": [
            { "path": "/", "pathType": "Prefix",
              "backend": { "resource": { "apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "assets" } } },
            { "path": "/ok", "pathType": "Prefix", "backend": service("svc", json!(80)) },
        ] } }] });
        let out = build(&[
            ingress("ns", "resource", 1, &[], resource),
            ingress(
                "ns",
                "bad-svc",
                1,
                &[],
                one_path("b.example", "/", "Prefix", "Bad_Service", json!(80)),
            ),
            ingress(
                "ns",
                "bad-host",
                1,
                &[],
                one_path("bad host", "/", "Prefix", "svc", json!(80)),
            ),
            ingress(
                "ns",
                "bad-path",
                1,
                &[],
                one_path("c.example", "/a?b", "Prefix", "svc", json!(80)),
            ),
            ingress(
                "ns",
                "bad-canary-flag",
                1,
                &[(CANARY, "yes")],
                one_path("d.example", "/", "Prefix", "s", json!(80)),
            ),
            ingress("ns", "no-spec", 1, &[], json!({})),
            // Not a request path's normal form: no normalised request could ever match it.
            ingress(
                "ns",
                "dot-path",
                1,
                &[],
                one_path("e.example", "/app/../admin", "Prefix", "svc", json!(80)),
            ),
            ingress(
                "ns",
                "double-slash",
                1,
                &[],
                one_path("f.example", "/app//admin", "Exact", "svc", json!(80)),
            ),
        ]);
        assert_eq!(names(&out), ["ns-resource-1"]);
        assert_eq!(out.problems.len(), 7, "{:?}", out.problems);
        assert!(has_problem(
            &out,
            &["ns/dot-path", "path_prefix", "not a normalised path"]
        ));
        assert!(has_problem(
            &out,
            &["ns/double-slash", "path_prefix", "write \"/app/admin\""]
        ));
        assert!(has_problem(
            &out,
            &["ns/resource spec.rules[0].http.paths[0]", "StorageBucket assets"]
        ));
        assert!(has_problem(
            &out,
            &["ns/bad-svc", "\"Bad_Service\" is not a Service name"]
        ));
        assert!(has_problem(&out, &["ns/bad-host", "hosts[0]"]));
        assert!(has_problem(&out, &["ns/bad-path", "path_prefix"]));
        assert!(has_problem(
            &out,
            &["ns/bad-canary-flag", "\"yes\" is not true or false"]
        ));
        // A bad "canary" flag is not served as stable either.
        assert!(out.routes.iter().all(|r| r.stable.name != "bad-canary-flag"));
    }

    #[test]
    fn canary_flag_false_is_an_ordinary_ingress() {
        let out = build(&[ingress(
            "ns",
            "app",
            1,
            &[(CANARY, "false"), (CANARY_WEIGHT, "50")],
            one_path("a.example", "/", "Prefix", "svc", json!(80)),
        )]);
        assert_eq!(names(&out), ["ns-app"]);
        assert_eq!(out.routes[0].route.weight, Weight::ZERO);
    }

    #[test]
    fn broken_canary_leaves_the_stable_route_serving() {
        let out = build(&[
            stable("ns", "app", 1, "a.example", "app"),
            canary(
                "ns",
                "app-canary",
                "a.example",
                "app-canary",
                &[(CANARY_BY_HEADER, "bad header"), (CANARY_WEIGHT, "50")],
            ),
        ]);
        assert_eq!(out.routes.len(), 1);
        let r = &out.routes[0];
        assert_eq!(r.canary, None);
        assert_eq!(r.route.weight, Weight::ZERO);
        assert_eq!(r.route.canary, canary_config::Backend::default());
        assert_eq!(r.route.stable.kubernetes, kube("ns", "app", PortRef::Number(5000)));
        assert!(has_problem(
            &out,
            &["canary Ingress ns/app-canary", "override.header", "serves stable only"]
        ));

        let out = build(&[
            stable("ns", "app", 1, "a.example", "app"),
            canary(
                "ns",
                "app-canary",
                "a.example",
                "app-canary",
                &[(CANARY_BY_HEADER, "x"), (CANARY_BY_HEADER_PATTERN, "(")],
            ),
        ]);
        assert_eq!(out.routes[0].canary, None);
        assert!(has_problem(&out, &["override.header_pattern"]));
    }

    #[test]
    fn deleting_the_canary_sends_everything_to_stable() {
        let app = stable("ns", "app", 1, "a.example", "app");
        let with = build(&[
            app.clone(),
            canary(
                "ns",
                "app-canary",
                "a.example",
                "app-canary",
                &[(CANARY_WEIGHT, "40"), (CANARY_BY_HEADER, "x-canary")],
            ),
        ]);
        assert_eq!(with.routes[0].route.weight, percent(40.0));
        let without = build(&[app]);
        assert!(without.problems.is_empty());
        let r = &without.routes[0];
        assert_eq!(r.route.name, with.routes[0].route.name, "the route keeps its name");
        assert_eq!(r.canary, None);
        assert_eq!(r.route.weight, Weight::ZERO);
        assert_eq!(r.route.canary, canary_config::Backend::default());
        assert_eq!(
            r.route.overrides,
            canary_config::Overrides {
                header: None,
                header_match: None,
                cookie: None
            }
        );
        assert_eq!(r.route.stable, with.routes[0].route.stable);
    }

    #[test]
    fn canary_with_several_paths_joins_each() {
        let paths = |svc: &str| {
            json!({ "rules": [{ "host": "a.example", "http": { "paths": [
                { "path": "/", "pathType": "Prefix", "backend": service(svc, json!(80)) },
                { "path": "/api", "pathType": "Prefix", "backend": service(svc, json!(80)) },
            ] } }] })
        };
        let out = build(&[
            ingress("ns", "app", 1, &[], paths("app")),
            ingress(
                "ns",
                "app-canary",
                2,
                &[(CANARY, "true"), (CANARY_WEIGHT, "10")],
                paths("canary"),
            ),
        ]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(names(&out), ["ns-app-0", "ns-app-1"]);
        for r in &out.routes {
            assert_eq!(r.canary, Some(obj("ns", "app-canary")));
            assert_eq!(r.route.weight, percent(10.0));
            assert_eq!(r.route.canary.kubernetes, kube("ns", "canary", PortRef::Number(80)));
        }
    }

    #[test]
    fn names_are_sanitised_unique_and_stable() {
        let long = "a".repeat(70);
        let all = [
            stable("team-one", "Web.App_v2", 1, "a.example", "svc"),
            stable("ns", &long, 1, "b.example", "svc"),
            stable("ns", &format!("{long}-x"), 1, "c.example", "svc"),
            // "a-b" + "c" and "a" + "b-c" both make "a-b-c": the older keeps it.
            stable("a-b", "c", 3, "d.example", "svc"),
            stable("a", "b-c", 2, "e.example", "svc"),
        ];
        let out = build(&all);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let by_stable = |ns: &str, name: &str| {
            out.routes
                .iter()
                .find(|r| r.stable == obj(ns, name))
                .map(|r| r.route.name.clone())
                .unwrap()
        };
        assert_eq!(by_stable("team-one", "Web.App_v2"), "team-one-web-app-v2");
        assert_eq!(by_stable("a", "b-c"), "a-b-c");
        let hashed_collision = by_stable("a-b", "c");
        assert!(hashed_collision.starts_with("a-b-c-") && hashed_collision.len() == "a-b-c-".len() + 8);
        let long1 = by_stable("ns", &long);
        let long2 = by_stable("ns", &format!("{long}-x"));
        assert_ne!(long1, long2);
        for n in [&long1, &long2] {
            assert_eq!(n.len(), 63);
            assert!(n.starts_with(&format!("ns-{}", &long[..50])));
        }
        let mut seen: Vec<&str> = names(&out);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), all.len(), "unique");
        for n in names(&out) {
            assert!(
                n.len() <= 63
                    && !n.starts_with('-')
                    && !n.ends_with('-')
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{n:?} is a DNS label"
            );
        }

        // Stable across rebuilds: another input order, and other Ingresses coming and going.
        let mut shuffled = all.to_vec();
        shuffled.reverse();
        shuffled.push(stable("zz", "unrelated", 1, "z.example", "svc"));
        let again = build(&shuffled);
        assert_eq!(
            long1,
            again
                .routes
                .iter()
                .find(|r| r.stable == obj("ns", &long))
                .unwrap()
                .route
                .name
        );
        assert_eq!(
            hashed_collision,
            again
                .routes
                .iter()
                .find(|r| r.stable == obj("a-b", "c"))
                .unwrap()
                .route
                .name
        );
        assert_eq!(&names(&again)[..all.len()], &names(&out)[..]);
        // The hash is fixed, not seeded per process.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(sanitise("--.."), "ingress");
    }

    #[test]
    fn output_is_sorted_and_independent_of_input_order() {
        let mut all = vec![
            stable("b", "web", 1, "b.example", "svc"),
            stable("a", "web", 3, "a.example", "svc"),
            stable("a", "api", 2, "api.example", "svc"),
            canary("a", "web-canary", "a.example", "svc2", &[(CANARY_WEIGHT, "5")]),
            canary("b", "nothing", "x.example", "svc2", &[]),
            stable("c", "dup", 4, "a.example", "svc"),
        ];
        let first = build(&all);
        assert_eq!(names(&first), ["a-api", "a-web", "b-web"]);
        for _ in 0..5 {
            all.rotate_left(2);
            all.swap(0, 3);
            assert_eq!(build(&all), first);
        }
    }

    #[test]
    fn tls_secrets_of_the_used_ingresses() {
        let mut web = stable("ns", "web", 1, "a.example", "svc");
        web.spec.as_mut().unwrap().tls = Some(vec![
            serde_json::from_value(json!({ "hosts": ["A.example"], "secretName": "web-tls" })).unwrap(),
            serde_json::from_value(json!({ "hosts": ["b.example"] })).unwrap(),
        ]);
        let mut loser = stable("ns", "loser", 5, "a.example", "svc");
        loser.spec.as_mut().unwrap().tls = Some(vec![
            serde_json::from_value(json!({ "secretName": "loser-tls" })).unwrap()
        ]);
        let mut canary_tls = canary("ns", "web-canary", "a.example", "svc2", &[]);
        canary_tls.spec.as_mut().unwrap().tls =
            Some(vec![
                serde_json::from_value(json!({ "secretName": "canary-tls" })).unwrap()
            ]);
        let out = build(&[canary_tls, loser, web]);
        assert_eq!(
            out.tls,
            [IngressTls {
                ingress: obj("ns", "web"),
                secret: "web-tls".into(),
                hosts: vec!["a.example".into()],
            }]
        );
    }

    #[test]
    fn body_limit_default_is_passed_through() {
        let out = routes_from_ingresses(&[stable("ns", "app", 1, "a.example", "svc")], CLASS, 1 << 20);
        assert_eq!(out.routes[0].route.max_body_bytes, 1 << 20);
    }
}
