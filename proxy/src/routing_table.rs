//! The routing snapshot: host + path → route, rebuilt off the hot path and swapped in whole.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use canary_config::{path, Config, HostPattern, PathError, PathOptions};

use crate::balancer::EndpointSet;
use crate::endpoint::Endpoint;
use crate::metrics::ProxyMetrics;
use crate::route::Route;
use crate::running::Running;
use crate::split::Shares;
use crate::upstream_tls::{ClientKey, TlsClients, UpstreamTls};
use crate::window::Window;

/// Endpoints are shared by every variant that reaches the same address the same way: plain,
/// or over TLS with the same settings (so health seen over one TLS setting is not blamed on
/// another, nor on plain HTTP to that address).
type EndpointKey = (Box<str>, Option<canary_config::UpstreamTls>);

/// Settings the request path needs, carried in the snapshot so a reload changes them atomically.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Time allowed from sending a request to receiving the upstream's headers.
    pub response_header_timeout: Duration,
    /// A request body that sends nothing for this long is abandoned (408).
    pub body_idle_timeout: Duration,
    /// An upstream connection idle for this long is closed, not reused (keep it below the
    /// backends' keep-alive timeout).
    pub upstream_idle_timeout: Duration,
    /// Consecutive connect failures that take an endpoint out.
    pub health_failures: u32,
    /// How long an endpoint stays out.
    pub health_cooloff: Duration,
    /// One info log line per request.
    pub access_log: bool,
    /// How request paths are normalised before routing.
    pub paths: PathOptions,
}

/// The live part of a route that the control plane owns: its weight and sticky salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveRoute {
    /// Canary share.
    pub weight: canary_config::Weight,
    /// Salt of the current rollout (see [`crate::split`]).
    pub salt: u64,
}

impl LiveRoute {
    /// The config's weight with the salt of rollout generation 0 (no stored state).
    pub fn from_config(route: &canary_config::Route) -> Self {
        Self {
            weight: route.weight,
            salt: crate::split::salt_for(&route.name, 0),
        }
    }
}

/// Routes of one host pattern: (path, exact, route), longest path first, exact before prefix.
#[derive(Debug, Default)]
struct PrefixList(Vec<(Box<str>, bool, Arc<Route>)>);

impl PrefixList {
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.0
            .iter()
            .find(|(p, exact, _)| {
                if *exact {
                    exact_matches(p, path)
                } else {
                    prefix_matches(p, path)
                }
            })
            .map(|(_, _, r)| r)
    }

    fn sort(&mut self) {
        self.0
            .sort_by_key(|(prefix, exact, _)| (std::cmp::Reverse(prefix.len()), !exact));
    }
}

/// An exact path (Ingress `pathType: Exact`) matches itself, with or without a query.
#[inline]
fn exact_matches(exact: &str, path: &str) -> bool {
    match path.strip_prefix(exact) {
        Some(rest) => rest.is_empty() || rest.starts_with('?'),
        None => false,
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; `/` matches everything.
#[inline]
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// Where a request goes: its route and the path its backend gets, or no route.
#[derive(Debug)]
pub(crate) enum Resolved<'t, 'p> {
    /// The route, and the normalised path (the client's own for a route with
    /// `normalize_path: false`).
    Route(&'t Arc<Route>, Cow<'p, str>),
    /// No route serves the host and the normalised path.
    NoRoute(Cow<'p, str>),
}

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct RoutingTable {
    exact: HashMap<Box<str>, PrefixList>,
    wildcard: HashMap<Box<str>, PrefixList>,
    any_host: PrefixList,
    routes: Vec<Arc<Route>>,
    /// Route name → index in `routes` (names are unique).
    by_name: HashMap<Box<str>, usize>,
    endpoints: HashMap<EndpointKey, Arc<Endpoint>>,
    /// HTTPS clients of the variants with `tls:`, handed on to the next table.
    tls_clients: HashMap<ClientKey, Arc<UpstreamTls>>,
    trusted_proxies: Box<[ipnet::IpNet]>,
    settings: Settings,
}

/// Why a table could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An endpoint address the config crate accepted but `http` did not.
    #[error("routes[{route}]: endpoint {endpoint:?} is not a valid authority")]
    Endpoint {
        /// Route name.
        route: String,
        /// The endpoint as written.
        endpoint: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A variant's `tls:` could not be set up (its CA file went missing since the config was checked).
    #[error("route {route}: {variant}.tls: {message}")]
    UpstreamTls {
        /// Route name.
        route: String,
        /// `stable` or `canary`.
        variant: &'static str,
        /// Why.
        message: String,
    },
}

impl RoutingTable {
    /// Builds a table; `live` gives each route's weight and salt; endpoints also present
    /// in `previous` keep their live state, and variants' TLS clients their pools.
    pub fn build(
        config: &Config,
        live: impl Fn(&canary_config::Route) -> LiveRoute,
        previous: Option<&RoutingTable>,
        metrics: &ProxyMetrics,
    ) -> Result<Self, BuildError> {
        let mut endpoints: HashMap<EndpointKey, Arc<Endpoint>> = HashMap::new();
        let mut endpoint = |route: &str,
                            authority: &str,
                            tls: Option<&canary_config::UpstreamTls>|
         -> Result<Arc<Endpoint>, BuildError> {
            let key: EndpointKey = (authority.into(), tls.cloned());
            if let Some(e) = endpoints.get(&key) {
                return Ok(e.clone());
            }
            let e = match previous.and_then(|p| p.endpoints.get(&key)) {
                Some(e) => e.clone(),
                None => Arc::new(Endpoint::with_scheme(authority, tls.is_some()).map_err(|source| {
                    BuildError::Endpoint {
                        route: route.to_string(),
                        endpoint: authority.to_string(),
                        source,
                    }
                })?),
            };
            endpoints.insert(key, e.clone());
            Ok(e)
        };
        let mut tls_clients = TlsClients::new(previous.map(|p| &p.tls_clients));

        let mut table = RoutingTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any_host: PrefixList::default(),
            routes: Vec::with_capacity(config.routes.len()),
            by_name: HashMap::with_capacity(config.routes.len()),
            endpoints: HashMap::new(),
            tls_clients: HashMap::new(),
            trusted_proxies: config.trusted_proxies.clone().into_boxed_slice(),
            settings: Settings {
                response_header_timeout: config.timeouts.response_header,
                body_idle_timeout: config.timeouts.idle,
                upstream_idle_timeout: config.timeouts.upstream_idle,
                health_failures: config.passive_health.failures,
                health_cooloff: config.passive_health.cooloff,
                access_log: config.access_log,
                paths: config.paths,
            },
        };
        for r in &config.routes {
            let mut set = |b: &canary_config::Backend, variant: &'static str| -> Result<EndpointSet, BuildError> {
                let tls = match &b.tls {
                    None => None,
                    Some(t) => Some(tls_clients.get(t, config.timeouts.connect).map_err(|message| {
                        BuildError::UpstreamTls {
                            route: r.name.clone(),
                            variant,
                            message,
                        }
                    })?),
                };
                let eps = b
                    .endpoints
                    .iter()
                    .map(|e| endpoint(&r.name, e.authority(), b.tls.as_ref()))
                    .collect::<Result<_, _>>()?;
                Ok(EndpointSet::new(eps, tls))
            };
            let state = live(r);
            let route = Arc::new(Route {
                name: r.name.as_str().into(),
                shares: if r.baseline.is_some() {
                    Shares::with_baseline(state.weight.ppm())
                } else {
                    Shares::canary(state.weight.ppm())
                },
                salt: state.salt,
                affinity: r.affinity.clone(),
                overrides: r.overrides.clone(),
                canary_only: r.canary_only,
                expose_variant: r.expose_variant,
                normalize_path: r.normalize_path,
                redirect_https: r.redirect_https,
                max_body_bytes: r.max_body_bytes,
                hsts: r.hsts.as_ref().map(|h| {
                    let sub = if h.include_subdomains {
                        "; includeSubDomains"
                    } else {
                        ""
                    };
                    http::HeaderValue::from_str(&format!("max-age={}{sub}", h.max_age.as_secs()))
                        .expect("digits and ASCII make a header value")
                }),
                variants: [
                    set(&r.stable, "stable")?,
                    set(&r.canary, "canary")?,
                    match &r.baseline {
                        Some(b) => set(b, "baseline")?,
                        None => EndpointSet::new(Vec::new(), None),
                    },
                ],
                has_baseline: r.baseline.is_some(),
                metrics: previous
                    .and_then(|p| p.route(&r.name))
                    .map_or_else(|| Arc::new(metrics.for_route(&r.name)), |p| p.metrics.clone()),
                windows: windows_for(r, previous),
                running: running_for(r, previous),
            });
            let entry = (Box::<str>::from(r.path_prefix.as_str()), r.path_exact, route.clone());
            if r.hosts.is_empty() {
                table.any_host.0.push(entry);
            } else {
                for h in &r.hosts {
                    let list = match h {
                        HostPattern::Exact(name) => table.exact.entry(name.as_str().into()).or_default(),
                        HostPattern::Wildcard(suffix) => table.wildcard.entry(suffix.as_str().into()).or_default(),
                    };
                    list.0.push(entry.clone());
                }
            }
            table.by_name.insert(r.name.as_str().into(), table.routes.len());
            table.routes.push(route);
        }
        table.endpoints = endpoints;
        table.tls_clients = tls_clients.built;
        table.any_host.sort();
        table
            .exact
            .values_mut()
            .chain(table.wildcard.values_mut())
            .for_each(PrefixList::sort);
        Ok(table)
    }

    /// The route for a request: the most specific host group (exact, then `*.` wildcard,
    /// then routes without hosts) decides, then the longest path prefix inside it.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let mut buf = [0u8; 256];
        let host = normalize_host(host, &mut buf);
        if let Some(host) = host {
            if let Some(list) = self.exact.get(host) {
                return list.find(path);
            }
            if let Some((_, parent)) = host.split_once('.') {
                if let Some(list) = self.wildcard.get(parent) {
                    return list.find(path);
                }
            }
        }
        self.any_host.find(path)
    }

    /// The route of a request by its normalised path (without `;` parameters), and the path to
    /// forward. A path without a normal form is refused, unless the client's own path finds a
    /// route that asked for the raw bytes (`normalize_path: false`).
    pub(crate) fn resolve<'t, 'p>(&'t self, host: &str, path: &'p str) -> Result<Resolved<'t, 'p>, PathError> {
        match path::normalize(path, self.settings.paths) {
            Ok(normal) => Ok(
                match self.lookup(host, &path::routing_key(&normal, self.settings.paths)) {
                    Some(route) if route.normalize_path => Resolved::Route(route, normal),
                    Some(route) => Resolved::Route(route, Cow::Borrowed(path)),
                    None => Resolved::NoRoute(normal),
                },
            ),
            Err(e) => match self.lookup(host, path) {
                Some(route) if !route.normalize_path => Ok(Resolved::Route(route, Cow::Borrowed(path))),
                _ => Err(e),
            },
        }
    }

    /// Routes in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route of that name.
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.by_name.get(name).map(|&i| &self.routes[i])
    }

    /// Peers whose forwarding headers are believed.
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.trusted_proxies
    }

    /// Request-path settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The route's windows: the previous table's when the window length is unchanged
/// (so the analysis keeps its history across reloads), new ones otherwise.
fn windows_for(route: &canary_config::Route, previous: Option<&RoutingTable>) -> Option<Arc<[Window]>> {
    let seconds = route.rollout.analysis.as_ref()?.window.as_secs().max(1);
    let kept = previous
        .and_then(|p| p.route(&route.name))
        .and_then(|r| r.windows.clone());
    let variants = variant_count(route);
    match kept {
        Some(w) if w[0].seconds() == seconds && w.len() == variants => Some(w),
        _ => Some((0..variants).map(|_| Window::new(seconds)).collect()),
    }
}

/// Stable and canary, and the baseline when the route has one.
fn variant_count(route: &canary_config::Route) -> usize {
    2 + usize::from(route.baseline.is_some())
}

/// The route's running totals: the previous table's (a reload never restarts them), new ones
/// for a route that just got an analysis.
fn running_for(route: &canary_config::Route, previous: Option<&RoutingTable>) -> Option<Arc<[Running]>> {
    route.rollout.analysis.as_ref()?;
    let kept = previous
        .and_then(|p| p.route(&route.name))
        .and_then(|r| r.running.clone());
    let variants = variant_count(route);
    match kept {
        Some(r) if r.len() == variants => Some(r),
        _ => Some((0..variants).map(|_| Running::default()).collect()),
    }
}

/// Lower-cases a Host value into `buf` without allocating; strips the port and a trailing dot.
fn normalize_host<'a>(host: &str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    let name = if host.starts_with('[') {
        // IPv6 literal: keep the brackets' content only up to the closing bracket.
        &host[..host.find(']').map_or(host.len(), |i| i + 1)]
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// The shared, atomically swapped pointer to the current table.
#[derive(Debug, Clone)]
pub struct TableHandle(Arc<ArcSwap<RoutingTable>>);

impl TableHandle {
    /// A handle holding `table`.
    pub fn new(table: RoutingTable) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// The current table (one atomic load).
    #[inline]
    pub fn load(&self) -> Guard<Arc<RoutingTable>> {
        self.0.load()
    }

    /// The current table as an owned `Arc`, for the control plane.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }

    /// Swaps in a new table; in-flight requests finish on the one they started with.
    pub fn store(&self, table: RoutingTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Variant;

    fn table(yaml: &str) -> RoutingTable {
        let config = canary_config::parse(yaml).unwrap();
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        RoutingTable::build(&config, LiveRoute::from_config, None, &metrics).unwrap()
    }

    const ROUTES: &str = r#"
routes:
  - name: exact-root
    hosts: ["app.example.com"]
    stable: { endpoints: ["127.0.0.1:1"] }
  - name: exact-api
    hosts: ["APP.example.com"]
    path_prefix: /api
    stable: { endpoints: ["127.0.0.1:2"] }
  - name: wild
    hosts: ["*.example.com"]
    stable: { endpoints: ["127.0.0.1:3"] }
  - name: any
    path_prefix: /public/
    stable: { endpoints: ["127.0.0.1:4"] }
"#;

    fn name<'a>(t: &'a RoutingTable, host: &str, path: &str) -> Option<&'a str> {
        t.lookup(host, path).map(|r| r.name())
    }

    #[test]
    fn host_then_longest_prefix() {
        let t = table(ROUTES);
        assert_eq!(name(&t, "app.example.com", "/"), Some("exact-root"));
        assert_eq!(name(&t, "App.Example.Com:8080", "/api/v1"), Some("exact-api"));
        assert_eq!(name(&t, "app.example.com.", "/api"), Some("exact-api"));
        assert_eq!(
            name(&t, "app.example.com", "/apix"),
            Some("exact-root"),
            "segment boundary"
        );
        assert_eq!(name(&t, "x.example.com", "/anything"), Some("wild"));
        assert_eq!(name(&t, "a.b.example.com", "/"), None, "wildcard covers one label only");
        assert_eq!(name(&t, "other.org", "/public/x"), Some("any"));
        assert_eq!(name(&t, "other.org", "/public"), Some("any"));
        assert_eq!(name(&t, "other.org", "/private"), None);
        assert_eq!(name(&t, "[::1]:8080", "/public/a"), Some("any"));
    }

    #[test]
    fn exact_paths_match_only_themselves_and_win_over_prefixes() {
        let t = table(
            r#"
routes:
  - { name: prefix, path_prefix: /login, stable: { endpoints: ["127.0.0.1:1"] } }
  - { name: exact, path_prefix: /login, path_exact: true, stable: { endpoints: ["127.0.0.1:2"] } }
"#,
        );
        assert_eq!(name(&t, "x", "/login"), Some("exact"));
        assert_eq!(name(&t, "x", "/login?next=/"), Some("exact"));
        assert_eq!(name(&t, "x", "/login/"), Some("prefix"));
        assert_eq!(name(&t, "x", "/login/sso"), Some("prefix"));
    }

    #[test]
    fn a_baseline_has_the_canary_s_share_its_own_counters_and_falls_back_to_stable() {
        let yaml = |baseline: &str, weight: u32| {
            format!(
                "routes:\n  - name: app\n    stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n    canary: {{ endpoints: [\"127.0.0.1:2\"] }}\n    baseline: {baseline}\n    weight: {weight}\n    rollout: {{ analysis: {{ alpha: 0.01 }} }}\n"
            )
        };
        let t = table(&yaml("{ endpoints: [\"127.0.0.1:3\"] }", 10));
        let r = t.route("app").unwrap();
        assert_eq!(
            r.shares(),
            Shares {
                canary: 100_000,
                baseline: 100_000
            }
        );
        assert_eq!(r.variants(), &Variant::ALL);
        assert!(r.window(Variant::Baseline).is_some() && r.running(Variant::Baseline).is_some());
        assert_eq!(r.serving_variant(Variant::Baseline), Some(Variant::Baseline));
        let t = table(&yaml("{ endpoints: [\"127.0.0.1:3\"] }", 80));
        assert_eq!(
            t.route("app").unwrap().shares(),
            Shares {
                canary: 800_000,
                baseline: 200_000
            }
        );
        // A baseline with no endpoints (none discovered yet) sends its share to stable, the same version.
        let t = table(&yaml("{ kubernetes: { service: app-baseline, port: 80 } }", 10));
        let r = t.route("app").unwrap();
        assert_eq!(r.serving_variant(Variant::Baseline), Some(Variant::Stable));
        // Without a baseline: two variants, no baseline counters.
        let t = table(&yaml("null", 10).replace("    baseline: null\n", ""));
        let r = t.route("app").unwrap();
        assert_eq!(r.shares(), Shares::canary(100_000));
        assert_eq!(r.variants(), &Variant::ALL[..2]);
        assert!(r.window(Variant::Baseline).is_none() && r.running(Variant::Baseline).is_none());
    }

    #[test]
    fn reuses_endpoint_state_across_builds() {
        let config = canary_config::parse(ROUTES).unwrap();
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let a = RoutingTable::build(&config, LiveRoute::from_config, None, &metrics).unwrap();
        let b = RoutingTable::build(&config, LiveRoute::from_config, Some(&a), &metrics).unwrap();
        for (k, e) in &a.endpoints {
            assert!(Arc::ptr_eq(e, &b.endpoints[k]));
        }
    }

    const PATHS: &str = r#"
routes:
  - { name: root, stable: { endpoints: ["127.0.0.1:1"] } }
  - { name: pub, path_prefix: /public, stable: { endpoints: ["127.0.0.1:2"] } }
  - { name: int, path_prefix: /internal, stable: { endpoints: ["127.0.0.1:3"] } }
  - { name: deep, path_prefix: /public/x, stable: { endpoints: ["127.0.0.1:4"] } }
  - { name: exact, path_prefix: /internal/secret, path_exact: true, stable: { endpoints: ["127.0.0.1:5"] } }
  - { name: raw, path_prefix: /raw, normalize_path: false, stable: { endpoints: ["127.0.0.1:6"] } }
"#;

    /// (route, forwarded path) of a request, or the refusal.
    fn resolve(t: &RoutingTable, path: &str) -> Result<(String, String), PathError> {
        match t.resolve("app", path)? {
            Resolved::Route(r, p) => Ok((r.name().to_owned(), p.into_owned())),
            Resolved::NoRoute(p) => Ok(("<none>".to_owned(), p.into_owned())),
        }
    }

    #[test]
    fn requests_are_routed_and_forwarded_by_their_normal_path() {
        let t = table(PATHS);
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), PathError>);
        let cases: &[Case] = &[
            ("/public/a", Ok(("pub", "/public/a"))),
            ("/public/../internal/secret", Ok(("exact", "/internal/secret"))),
            ("/public/%2e%2e/internal/x", Ok(("int", "/internal/x"))),
            ("/public/./../internal/", Ok(("int", "/internal/"))),
            ("/public//x/y", Ok(("deep", "/public/x/y"))),
            ("/internal;jsessionid=1/x", Ok(("int", "/internal;jsessionid=1/x"))),
            ("/public;a/x/y", Ok(("deep", "/public;a/x/y"))),
            ("//internal", Ok(("int", "/internal"))),
            ("/%70ublic", Ok(("pub", "/public"))),
            ("/public/..;/internal", Err(PathError::AmbiguousDotSegment)),
            ("/..", Err(PathError::AboveRoot)),
            // The raw route routes by the normal path but forwards the client's bytes, and takes
            // what has no normal form when its own raw prefix matches.
            ("/raw/a/../b", Ok(("raw", "/raw/a/../b"))),
            ("/raw/%00", Ok(("raw", "/raw/%00"))),
            ("/public/%00", Err(PathError::EncodedNul)),
        ];
        for (path, want) in cases {
            let got = resolve(&t, path);
            let want = want.map(|(r, p)| (r.to_owned(), p.to_owned()));
            assert_eq!(got, want, "{path}");
        }
    }

    /// How a lenient backend reads a forwarded path: `;` parameters dropped from each raw
    /// segment (Tomcat), every escape decoded once (with `decode_slashes`, `%2F` and `%5C` too,
    /// as separators), dot segments resolved, empty segments merged.
    fn backend_reads(path: &str, decode_slashes: bool) -> String {
        let bare: Vec<&str> = path.split('/').map(|s| s.split(';').next().unwrap_or("")).collect();
        let bare = bare.join("/");
        let (raw, mut bytes, mut i) = (bare.as_bytes(), Vec::new(), 0);
        while i < raw.len() {
            let escape = raw
                .get(i + 1..i + 3)
                .filter(|_| raw[i] == b'%')
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
            match escape {
                Some(b'/' | b'\\') if !decode_slashes => bytes.extend_from_slice(&raw[i..i + 3]),
                Some(b'/' | b'\\') => bytes.push(b'/'),
                Some(b) => bytes.push(b),
                None if raw[i] == b'\\' => bytes.push(b'/'),
                None => bytes.push(raw[i]),
            }
            i += if escape.is_some() { 3 } else { 1 };
        }
        let decoded = String::from_utf8_lossy(&bytes).into_owned();
        let mut kept: Vec<&str> = Vec::new();
        let segments: Vec<&str> = decoded.split('/').skip(1).collect();
        for (n, seg) in segments.iter().enumerate() {
            match *seg {
                "." => {}
                ".." => {
                    kept.pop();
                }
                "" if n + 1 < segments.len() => {}
                s => kept.push(s),
            }
        }
        let trailing = matches!(segments.last(), Some(&"." | &".."));
        format!(
            "/{}{}",
            kept.join("/"),
            if trailing && !kept.is_empty() { "/" } else { "" }
        )
    }

    const TOKENS: &[&str] = &[
        "public",
        "internal",
        "secret",
        "x",
        "raw2",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        "",
        "%2F",
        "%2f..",
        "a%2Fb",
        "%5C",
        "%5c..",
        ";",
        ";x",
        "..;",
        ".;a",
        "%3B",
        "..%3b",
        "%25",
        "%252e%252e",
        "%41",
        "%7e",
        "caf%C3%A9",
        "%zz",
        "%00",
        "\\",
        "p%75blic",
        "intern%61l",
    ];

    fn generated_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(proptest::sample::select(TOKENS), 0..8),
            any::<bool>(),
        )
            .prop_map(|(segments, trailing)| format!("/{}{}", segments.join("/"), if trailing { "/" } else { "" }))
    }

    /// Checks one generated path against a table: the forwarded path is normal, routes to the
    /// same route, and a lenient backend reading it lands in that same route.
    fn check_routing(t: &RoutingTable, path: &str, decode_slashes: bool) -> Result<(), String> {
        let Ok((route, forwarded)) = resolve(t, path) else {
            return Ok(());
        };
        if route == "raw" {
            return Ok(());
        }
        let again = resolve(t, &forwarded).map_err(|e| format!("{path} -> {forwarded} refused: {e}"))?;
        if again != (route.clone(), forwarded.clone()) {
            return Err(format!("{path} -> {route} {forwarded}, which resolves to {again:?}"));
        }
        let read = backend_reads(&forwarded, decode_slashes);
        let backend_route = name(t, "app", &read).unwrap_or("<none>");
        if backend_route != route {
            return Err(format!(
                "{path}: routed to {route} as {forwarded}, a backend reads {read} ({backend_route})"
            ));
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        #[test]
        fn the_route_chosen_is_the_route_of_what_the_backend_reads(path in generated_path()) {
            let t = table(PATHS);
            check_routing(&t, &path, false).map_err(proptest::test_runner::TestCaseError::fail)?;
            let strict = table(&format!("paths: {{ encoded_slashes: reject }}\n{PATHS}"));
            check_routing(&strict, &path, true).map_err(proptest::test_runner::TestCaseError::fail)?;
        }
    }
}
