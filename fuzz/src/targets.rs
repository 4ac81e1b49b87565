//! The fuzz targets, each a function over `&[u8]` that panics when an invariant breaks.
//!
//! Shared verbatim by the cargo-fuzz binaries (`fuzz/fuzz_targets/*.rs`) and the corpus
//! replay test (`tests/e2e/fuzz_corpus.rs`, which includes this file with `#[path]`), so it
//! may only use crates both have: canary-config, canary-proxy, tokio, hyper, hyper-util,
//! http, http-body-util, bytes and serde_json.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use canary_proxy::fuzzing::{self, FuzzKey};
use canary_proxy::{ClientInfo, LiveRoute, ProxyMetrics, RoutingTable};
use http::{HeaderMap, HeaderName, HeaderValue};

// ---------------------------------------------------------------------------------------
// 1. Config parser and validator.
// ---------------------------------------------------------------------------------------

/// Any text as a YAML config and any JSON as one route: never a panic. A config that
/// validates must build a routing table in which every route is reached by its own host
/// and path prefix.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = canary_config::parse(text) {
            check_config_routes(&config);
        }
    }
    if let Ok(spec) = serde_json::from_slice::<canary_config::RouteSpec>(data) {
        let at = canary_config::FieldPath::new("routes[0]", canary_config::FieldCase::Snake);
        let _ = spec.build(&at, &at.field("name"), 1024);
    }
}

fn check_config_routes(config: &canary_config::Config) {
    use canary_config::HostPattern;
    // A fresh registry per valid config: route names become label values.
    let metrics = ProxyMetrics::register(&Default::default()).expect("fresh registry");
    let Ok(table) = RoutingTable::build(config, LiveRoute::from_config, None, &metrics) else {
        // BuildError (an endpoint `http` refuses) is a reported error, not a panic.
        return;
    };
    let claimed = |host: &str| {
        config.routes.iter().flat_map(|r| &r.hosts).any(|h| match h {
            HostPattern::Exact(e) => e == host,
            HostPattern::Wildcard(s) => host.split_once('.').is_some_and(|(_, parent)| parent == s),
        })
    };
    for r in &config.routes {
        let mut probes = Vec::new();
        for h in &r.hosts {
            match h {
                HostPattern::Exact(name) => probes.push(name.clone()),
                HostPattern::Wildcard(suffix) => {
                    let probe = format!("a.{suffix}");
                    let exact_taken = config
                        .routes
                        .iter()
                        .flat_map(|o| &o.hosts)
                        .any(|o| matches!(o, HostPattern::Exact(e) if *e == probe));
                    if !exact_taken {
                        probes.push(probe);
                    }
                }
            }
        }
        if r.hosts.is_empty() && !claimed("fuzz-probe.invalid") {
            probes.push("fuzz-probe.invalid".into());
        }
        for host in probes {
            let found = table.lookup(&host, &r.path_prefix).map(|f| f.name().to_owned());
            let same_prefix = found
                .as_deref()
                .and_then(|n| config.routes.iter().find(|o| o.name == n))
                .is_some_and(|o| o.path_prefix == r.path_prefix);
            assert!(
                same_prefix,
                "route {:?} (host {host:?}, path_prefix {:?}) is not reached by its own host and prefix: lookup gave {found:?}",
                r.name, r.path_prefix
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Route table lookup.
// ---------------------------------------------------------------------------------------

const LOOKUP_CONFIG: &str = r#"
routes:
  - name: exact-root
    hosts: ["app.example.com"]
    stable: { endpoints: ["127.0.0.1:1"] }
  - name: exact-api
    hosts: ["APP.example.com", "api.example.org"]
    path_prefix: /api
    stable: { endpoints: ["127.0.0.1:2"] }
  - name: exact-api-v2
    hosts: ["app.example.com"]
    path_prefix: /api/v2/
    stable: { endpoints: ["127.0.0.1:2"] }
  - name: login-exact
    hosts: ["app.example.com"]
    path_prefix: /login
    path_exact: true
    stable: { endpoints: ["127.0.0.1:2"] }
  - name: login-prefix
    hosts: ["app.example.com"]
    path_prefix: /login
    stable: { endpoints: ["127.0.0.1:2"] }
  - name: wild
    hosts: ["*.example.com"]
    stable: { endpoints: ["127.0.0.1:3"] }
  - name: wild-static
    hosts: ["*.example.com", "*.b.example.com"]
    path_prefix: /static
    stable: { endpoints: ["127.0.0.1:3"] }
  - name: any-public
    path_prefix: /public/
    stable: { endpoints: ["127.0.0.1:4"] }
  - name: any-exact
    path_prefix: /healthz
    path_exact: true
    stable: { endpoints: ["127.0.0.1:4"] }
"#;

struct Lookup {
    config: canary_config::Config,
    table: RoutingTable,
}

fn lookup_env() -> &'static Lookup {
    static ENV: OnceLock<Lookup> = OnceLock::new();
    ENV.get_or_init(|| {
        let config = canary_config::parse(LOOKUP_CONFIG).expect("lookup config is valid");
        let metrics = ProxyMetrics::register(&Default::default()).expect("fresh registry");
        let table = RoutingTable::build(&config, LiveRoute::from_config, None, &metrics).expect("table builds");
        Lookup { config, table }
    })
}

/// Splits an input at its first NUL into two strings (lossy UTF-8); no NUL: all of it and `default`.
fn two_strings(data: &[u8], default: &str) -> (String, String) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            String::from_utf8_lossy(&data[i + 1..]).into_owned(),
        ),
        None => (String::from_utf8_lossy(data).into_owned(), default.to_owned()),
    }
}

/// The documented routing rule, for hosts of the plain `name[:port]` shape: the most
/// specific host group (exact, then a one-label `*.` wildcard, then routes without hosts)
/// decides; inside it the longest matching path prefix, an exact path before a prefix.
fn model_lookup<'a>(config: &'a canary_config::Config, host: &str, path: &str) -> Option<&'a str> {
    use canary_config::HostPattern;
    let name = host.split_once(':').map_or(host, |(h, _)| h);
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let in_group = |r: &&canary_config::Route, group: &HostPattern| r.hosts.contains(group);
    let exact = HostPattern::Exact(name.clone());
    let group: Vec<&canary_config::Route> = if config.routes.iter().any(|r| r.hosts.contains(&exact)) {
        config.routes.iter().filter(|r| in_group(r, &exact)).collect()
    } else {
        let wild = name
            .split_once('.')
            .map(|(_, parent)| HostPattern::Wildcard(parent.to_owned()));
        match wild {
            Some(w) if config.routes.iter().any(|r| r.hosts.contains(&w)) => {
                config.routes.iter().filter(|r| in_group(r, &w)).collect()
            }
            _ => config.routes.iter().filter(|r| r.hosts.is_empty()).collect(),
        }
    };
    let matches = |r: &canary_config::Route| {
        let p = r.path_prefix.as_str();
        let rest = path.strip_prefix(p);
        if r.path_exact {
            rest.is_some_and(|t| t.is_empty() || t.starts_with('?'))
        } else {
            p == "/" || rest.is_some_and(|t| t.is_empty() || t.starts_with('/') || t.starts_with('?'))
        }
    };
    group
        .into_iter()
        .filter(|r| matches(r))
        .max_by_key(|r| (r.path_prefix.len(), r.path_exact))
        .map(|r| r.name.as_str())
}

/// `host NUL path`: a lookup never panics, is deterministic, ignores the host's case, port
/// and trailing dot, and (for plain host names) agrees with the documented rule.
pub fn route_lookup(data: &[u8]) {
    let env = lookup_env();
    let (host, path) = two_strings(data, "/");
    let name = |h: &str, p: &str| env.table.lookup(h, p).map(|r| r.name().to_owned());
    let first = env.table.lookup(&host, &path);
    let again = env.table.lookup(&host, &path);
    assert!(
        match (first, again) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        },
        "lookup({host:?}, {path:?}) not deterministic"
    );
    let got = first.map(|r| r.name().to_owned());
    assert_eq!(
        name(&host.to_ascii_uppercase(), &path),
        got,
        "host case changed the route for {host:?} {path:?}"
    );
    let plain = !host.is_empty()
        && host.len() < 200
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if plain {
        assert_eq!(
            name(&format!("{host}:8080"), &path),
            got,
            "a port changed the route for {host:?} {path:?}"
        );
        if !host.ends_with('.') {
            assert_eq!(
                name(&format!("{host}."), &path),
                got,
                "a trailing dot changed the route for {host:?} {path:?}"
            );
        }
        let want = model_lookup(&env.config, &host, &path);
        assert_eq!(
            got.as_deref(),
            want,
            "lookup({host:?}, {path:?}) differs from the documented rule"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2b. Request path normalisation.
// ---------------------------------------------------------------------------------------

/// Any bytes as a request target that hyper would accept. Under every `paths:` setting: no
/// panic; a normal form is normal (a second pass returns it borrowed and unchanged), starts
/// with `/`, holds no `.`/`..` segment, no `\`, no `//` when merging, and only upper-case
/// escapes of bytes other than NUL and the unreserved characters; and the route a request goes
/// to is the route its forwarded path goes to, with that same path.
pub fn path(data: &[u8]) {
    use canary_config::path::normalize;
    use canary_config::{EncodedSlashes, PathOptions};
    use std::borrow::Cow;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(target) = http::uri::PathAndQuery::try_from(text) else {
        return;
    };
    let path = target.path();
    for merge_slashes in [true, false] {
        for encoded_slashes in [EncodedSlashes::Keep, EncodedSlashes::Reject] {
            let options = PathOptions {
                merge_slashes,
                encoded_slashes,
            };
            let Ok(normal) = normalize(path, options) else {
                continue;
            };
            assert!(
                matches!(normalize(&normal, options), Ok(Cow::Borrowed(again)) if again == normal),
                "{path:?} -> {normal:?} is not normal under {options:?}"
            );
            if normal == "*" {
                continue;
            }
            assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
            assert!(!normal.contains('\\'), "{path:?} -> {normal:?}");
            assert!(
                !normal.split('/').any(|s| s == "." || s == ".."),
                "{path:?} -> {normal:?} keeps a dot segment"
            );
            assert!(!(merge_slashes && normal.contains("//")), "{path:?} -> {normal:?}");
            let bytes = normal.as_bytes();
            for (i, _) in normal.match_indices('%') {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("two ASCII digits follow '%'");
                let byte = u8::from_str_radix(hex, 16).expect("an escape is hex");
                assert!(
                    hex == hex.to_ascii_uppercase()
                        && byte != 0
                        && !(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)),
                    "{path:?} -> {normal:?} keeps %{hex}"
                );
            }
        }
    }
    let table = &lookup_env().table;
    for host in ["app.example.com", "other.org"] {
        if let Ok(Some((route, forwarded))) = fuzzing::resolve(table, host, path) {
            let again = fuzzing::resolve(table, host, &forwarded);
            assert_eq!(
                again,
                Ok(Some((route.clone(), forwarded.clone()))),
                "{host} {path:?} goes to {route} as {forwarded:?}, which goes elsewhere"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. Cookie / affinity key parsing.
// ---------------------------------------------------------------------------------------

const AFFINITY_CONFIG: &str = r#"
trusted_proxies: ["10.0.0.0/8", "2001:db8::/32"]
routes:
  - name: by-cookie
    hosts: ["cookie.test"]
    weight: 50
    affinity: { key: cookie, cookie: canary_id }
    stable: { endpoints: ["127.0.0.1:1"] }
  - name: by-header
    hosts: ["header.test"]
    weight: 50
    affinity: { key: header, header: x-user-id }
    override: { header: x-canary, header_value: "yes please", cookie: null }
    stable: { endpoints: ["127.0.0.1:1"] }
  - name: by-ip
    hosts: ["ip.test"]
    weight: 50
    affinity: { key: client_ip }
    override: { header: x-beta, header_pattern: "(beta|canary)-[0-9]+" }
    stable: { endpoints: ["127.0.0.1:1"] }
"#;

struct Affinity {
    config: canary_config::Config,
    table: RoutingTable,
}

fn affinity_env() -> &'static Affinity {
    static ENV: OnceLock<Affinity> = OnceLock::new();
    ENV.get_or_init(|| {
        let config = canary_config::parse(AFFINITY_CONFIG).expect("affinity config is valid");
        let metrics = ProxyMetrics::register(&Default::default()).expect("fresh registry");
        let table = RoutingTable::build(&config, LiveRoute::from_config, None, &metrics).expect("table builds");
        Affinity { config, table }
    })
}

/// Header lines `name: value` separated by `\n`; lines `http` refuses are skipped.
fn header_map(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    headers
}

fn is_hex_id(id: &[u8]) -> bool {
    id.len() == 32 && id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Header lines: cookie lookup, user keys (cookie, header, client address), the client
/// address behind trusted proxies and the sticky decision never panic and keep their rules.
pub fn affinity(data: &[u8]) {
    let env = affinity_env();
    let headers = header_map(data);
    let trusted = env.table.trusted_proxies();

    // Cookie lookup: a value from one of the Cookie headers; the first match wins.
    for name in ["canary_id", "canary", "a"] {
        let found = fuzzing::cookie(&headers, name);
        if let Some(v) = found {
            assert!(!v.contains(';'), "cookie {name} = {v:?} holds a ';'");
            assert!(
                headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .any(|h| h.to_str().is_ok_and(|s| s.contains(v))),
                "cookie {name} = {v:?} is not in any Cookie header"
            );
        }
        let mut more = headers.clone();
        more.append(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("{name}=appended")).expect("valid"),
        );
        let after = fuzzing::cookie(&more, name);
        match found {
            Some(v) => assert_eq!(after, Some(v), "a later Cookie header overrode {name}"),
            None => assert_eq!(after, Some("appended"), "an appended {name} cookie was not found"),
        }
    }

    for peer in [
        SocketAddr::from(([10, 9, 9, 9], 4000)),
        SocketAddr::from(([192, 0, 2, 1], 4000)),
        "[::ffff:10.1.1.1]:4000".parse().expect("addr"),
        "[2001:db8::9]:4000".parse().expect("addr"),
    ] {
        let client = ClientInfo::new(peer, false);
        let peer_ip = peer.ip().to_canonical();

        // The client address: the peer unless it is trusted; then an untrusted forwarded address.
        let ip = fuzzing::client_ip(&headers, peer_ip, trusted);
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
        if !is_trusted(&peer_ip) {
            assert_eq!(ip, peer_ip, "an untrusted peer's forwarding headers were believed");
        } else if ip != peer_ip {
            assert!(!is_trusted(&ip), "client address {ip} is itself a trusted proxy");
        }
        assert_eq!(
            ip,
            fuzzing::client_ip(&headers, peer_ip, trusted),
            "client_ip not deterministic"
        );
        let ip_octets = match ip.to_canonical() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };

        let cookie_key = canary_config::AffinityKey::Cookie("canary_id".into());
        match fuzzing::user_key(&cookie_key, &headers, &client, trusted) {
            FuzzKey::Borrowed(b) => {
                assert_eq!(Some(&b[..]), fuzzing::cookie(&headers, "canary_id").map(str::as_bytes));
                assert!(
                    (1..=128).contains(&b.len())
                        && b.iter()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')),
                    "cookie key {b:?} kept though not 1..=128 URL-safe characters"
                );
            }
            FuzzKey::Minted(id) => assert!(is_hex_id(&id), "minted id {id:?}"),
            FuzzKey::Ip(o) => panic!("a cookie key fell back to the address {o:?}"),
        }

        let header_key = canary_config::AffinityKey::Header("x-user-id".into());
        match fuzzing::user_key(&header_key, &headers, &client, trusted) {
            FuzzKey::Borrowed(b) => {
                assert!(!b.is_empty());
                assert_eq!(Some(&b[..]), headers.get("x-user-id").map(HeaderValue::as_bytes));
            }
            FuzzKey::Ip(o) => {
                assert!(headers.get("x-user-id").is_none_or(|v| v.is_empty()));
                assert_eq!(o, ip_octets, "header key fallback is not the client address");
            }
            FuzzKey::Minted(_) => panic!("a header key minted a cookie"),
        }

        match fuzzing::user_key(&canary_config::AffinityKey::ClientIp, &headers, &client, trusted) {
            FuzzKey::Ip(o) => assert_eq!(o, ip_octets, "client_ip key is not the client address"),
            other => panic!("client_ip key gave {other:?}"),
        }

        // The sticky decision: the same request decides the same, unless a cookie was minted.
        for r in &env.config.routes {
            let route = env.table.route(&r.name).expect("route");
            let (v1, set1) = fuzzing::decide(route, &headers, &client, trusted);
            let (v2, set2) = fuzzing::decide(route, &headers, &client, trusted);
            match (&set1, &set2) {
                (None, None) => assert_eq!(v1, v2, "route {}: the same request decided differently", r.name),
                (Some(a), Some(b)) => {
                    for c in [a, b] {
                        let c = c.to_str().expect("ASCII Set-Cookie");
                        let id = c.strip_prefix("canary_id=").and_then(|t| t.split(';').next());
                        assert!(id.is_some_and(|id| is_hex_id(id.as_bytes())), "Set-Cookie {c:?}");
                        assert!(c.contains("; HttpOnly; SameSite=Lax"), "Set-Cookie {c:?}");
                    }
                }
                _ => panic!("route {}: a cookie minted on one call only", r.name),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. The HTTP/1 request path: raw bytes into a real proxy listener, a recording backend.
// ---------------------------------------------------------------------------------------

/// Marker the backend puts on every response: its count of requests from this input.
const SEQ_HEADER: &str = "x-fuzz-seq";
/// Time allowed for one input.
const H1_DEADLINE: Duration = Duration::from_secs(3);

struct H1 {
    rt: tokio::runtime::Runtime,
    proxy: SocketAddr,
    /// Complete requests (head and whole body) the backend received, by client address.
    seen: Arc<Mutex<HashMap<IpAddr, u32>>>,
    next_client: AtomicU32,
}

/// Set when a thread of the fuzz runtime panicked (tokio would otherwise swallow it).
static RUNTIME_PANICKED: AtomicBool = AtomicBool::new(false);
const RT_THREAD: &str = "canary-fuzz-rt";

fn h1_env() -> &'static H1 {
    static ENV: OnceLock<H1> = OnceLock::new();
    ENV.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(RT_THREAD) {
                RUNTIME_PANICKED.store(true, Ordering::SeqCst);
            }
            previous(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(RT_THREAD)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let proxy = rt.block_on(start_h1(seen.clone()));
        H1 {
            rt,
            proxy,
            seen,
            next_client: AtomicU32::new(0),
        }
    })
}

/// The recording backend and canaryd's public listener in front of it.
async fn start_h1(seen: Arc<Mutex<HashMap<IpAddr, u32>>>) -> SocketAddr {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let backend_addr = backend.local_addr().expect("backend addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = backend.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move { backend_answer(req, &seen).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let yaml = format!(
        r#"
timeouts: {{ connect: 1s, response_header: 2s, header_read: 2s, idle: 2s, drain: 1s }}
limits: {{ max_header_count: 24, max_header_bytes: 8192, max_body_bytes: 64 }}
routes:
  - name: app
    hosts: ["app", "app.example.com"]
    stable: {{ endpoints: ["{backend_addr}"] }}
    canary: {{ endpoints: ["{backend_addr}"] }}
    weight: 50
    affinity: {{ key: cookie, cookie: canary_id }}
    expose_variant: true
  - name: upload
    hosts: ["app"]
    path_prefix: /upload
    max_body_bytes: 1000
    stable: {{ endpoints: ["{backend_addr}"] }}
  - name: sticky-header
    hosts: ["api.example.com"]
    affinity: {{ key: header, header: x-user-id }}
    canary_only: true
    stable: {{ endpoints: ["{backend_addr}"] }}
    canary: {{ endpoints: ["{backend_addr}"] }}
  - name: any
    stable: {{ endpoints: ["{backend_addr}"] }}
"#
    );
    let config = canary_config::parse(&yaml).expect("h1 config is valid");
    let metrics = ProxyMetrics::register(&Default::default()).expect("fresh registry");
    let table = RoutingTable::build(&config, LiveRoute::from_config, None, &metrics).expect("table builds");
    let proxy = canary_proxy::Proxy::new(
        canary_proxy::TableHandle::new(table),
        metrics,
        canary_proxy::PoolOptions {
            connect_timeout: config.timeouts.connect,
        },
    );
    let opts = canary_proxy::ServeOptions::public(&config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(canary_proxy::serve(
        listener,
        move |peer| proxy.connection_service(peer, false),
        opts,
        None,
        std::future::pending(),
    ));
    addr
}

/// Reads the whole body, then counts the request against the client address canaryd put
/// last in `X-Forwarded-For`, and answers with that count in `x-fuzz-seq`.
async fn backend_answer(
    req: http::Request<hyper::body::Incoming>,
    seen: &Mutex<HashMap<IpAddr, u32>>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::io::Error> {
    use http_body_util::BodyExt;
    let client = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    let (_, body) = req.into_parts();
    // A body cut short (a request canaryd gave up on) is not a request that reached us.
    body.collect().await.map_err(std::io::Error::other)?;
    let seq = match client {
        Some(ip) => {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(ip).or_insert(0);
            *n += 1;
            *n
        }
        None => 0,
    };
    Ok(http::Response::builder()
        .header(SEQ_HEADER, seq)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
        .expect("response"))
}

/// How the read of canaryd's answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// canaryd closed the connection (EOF).
    Closed,
    /// A read error, in practice a reset.
    Reset(std::io::ErrorKind),
    /// [`H1_DEADLINE`] passed.
    Deadline,
}

/// One parsed response of the proxy.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `x-fuzz-seq` when the response came from the backend.
    seq: Option<u32>,
}

/// Splits what the client received into HTTP/1 responses. Errors (with the responses parsed
/// before) when the bytes are not a sequence of well-formed, complete responses. A response whose framing announces a
/// body that does not follow (a HEAD answer) is taken as bodiless when the next bytes start
/// another response.
fn parse_responses(bytes: &[u8]) -> Result<Vec<Answer>, (String, Vec<Answer>)> {
    let mut out = Vec::new();
    match parse_into(bytes, &mut out) {
        Ok(()) => Ok(out),
        Err(e) => Err((e, out)),
    }
}

fn parse_into(mut bytes: &[u8], out: &mut Vec<Answer>) -> Result<(), String> {
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    let next_is_response = |rest: &[u8]| rest.is_empty() || rest.starts_with(b"HTTP/1.");
    while !bytes.is_empty() {
        let Some(end) = find(bytes, b"\r\n\r\n") else {
            return Err(format!("incomplete response head {:?}", String::from_utf8_lossy(bytes)));
        };
        let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let rest = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let code = rest.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
        let status: u16 = code
            .and_then(|c| c.parse().ok())
            .filter(|s| (100..=599).contains(s) && (rest.len() == 3 || rest.as_bytes()[3] == b' '))
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked, mut seq) = (None, false, None);
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return Err(format!("bad header name {name:?}"));
            }
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
                if length.is_some_and(|m| m != n) {
                    return Err("two different Content-Length headers".into());
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
                if !chunked {
                    return Err(format!("Transfer-Encoding {value:?}"));
                }
            } else if name.eq_ignore_ascii_case(SEQ_HEADER) {
                seq = value.parse().ok();
            }
        }
        if chunked && length.is_some() {
            return Err("Content-Length with Transfer-Encoding".into());
        }
        bytes = &bytes[end + 4..];
        let bodiless = status < 200 || status == 204 || status == 304;
        // A HEAD answer announces a body it does not send: the next response follows at once.
        let head_answer = |rest: &[u8]| rest.is_empty() || rest.starts_with(b"HTTP/1.");
        if !bodiless {
            if chunked {
                if !head_answer(bytes) {
                    bytes = skip_chunked(bytes)?;
                }
            } else if let Some(n) = length {
                if bytes.len() >= n && next_is_response(&bytes[n..]) {
                    bytes = &bytes[n..];
                } else if !head_answer(bytes) {
                    if bytes.len() < n {
                        return Err(format!("body cut short: {} of {n} bytes", bytes.len()));
                    }
                    return Err(format!(
                        "bytes after a {n}-byte body: {:?}",
                        String::from_utf8_lossy(&bytes[n..])
                    ));
                }
            } else if !next_is_response(bytes) {
                // Delimited by the close.
                bytes = &[];
            }
        }
        out.push(Answer { status, seq });
    }
    Ok(())
}

fn skip_chunked(mut bytes: &[u8]) -> Result<&[u8], String> {
    loop {
        let eol = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("body cut short: chunk size line")?;
        let size_text = std::str::from_utf8(&bytes[..eol]).map_err(|_| "chunk size not UTF-8")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        bytes = &bytes[eol + 2..];
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let eol = bytes
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("body cut short: trailers")?;
                bytes = &bytes[eol + 2..];
                if eol == 0 {
                    return Ok(bytes);
                }
            }
        }
        if bytes.len() < size + 2 {
            return Err("body cut short: chunk data".into());
        }
        if &bytes[size..size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        bytes = &bytes[size + 2..];
    }
}

/// `CANARY_FUZZ_DEBUG=1`: print what each HTTP/1 input got.
fn debug_h1() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("CANARY_FUZZ_DEBUG").is_some_and(|v| v == "1"))
}

/// A fresh loopback source address per input, so the backend can tell inputs apart.
fn client_address(n: u32) -> IpAddr {
    let n = n % (62 * 254 * 254);
    let (a, rest) = (n / (254 * 254), n % (254 * 254));
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + a as u8,
        1 + (rest / 254) as u8,
        1 + (rest % 254) as u8,
    ))
}

/// Raw bytes (plus a final CRLF, so hyper does not cancel the last request when it sees the
/// client's half-close) on one connection to canaryd. Never a panic (in canaryd's tasks
/// too); what comes back is a sequence of valid HTTP/1 responses or nothing; and a request
/// canaryd answered with 400, 413 or 431 never reached the backend complete.
pub fn h1_request(data: &[u8]) {
    let env = h1_env();
    let client = client_address(env.next_client.fetch_add(1, Ordering::Relaxed));
    let mut input = data.to_vec();
    input.extend_from_slice(b"\r\n");
    let (received, end) = env.rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(client, 0))
            .expect("bind a loopback source address");
        let mut stream = socket.connect(env.proxy).await.expect("connect to canaryd");
        let deadline = Instant::now() + H1_DEADLINE;
        let (mut rd, mut wr) = stream.split();
        let write = async {
            // canaryd may close before reading everything: not an error here.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut received = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await {
                    Err(_) => return (received, End::Deadline),
                    Ok(Ok(0)) => return (received, End::Closed),
                    Ok(Err(e)) => return (received, End::Reset(e.kind())),
                    Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                }
            }
        };
        let ((), result) = tokio::join!(write, read);
        result
    });
    let backend_saw = env
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client)
        .unwrap_or(0);
    assert!(
        !RUNTIME_PANICKED.load(Ordering::SeqCst),
        "a canaryd task panicked on input {:?}",
        String::from_utf8_lossy(data)
    );
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if input.starts_with(PREFACE) {
        return; // HTTP/2 prior knowledge: the answer is frames, not HTTP/1.
    }
    let show = || {
        format!(
            "input {:?}\nreceived {:?}\nbackend saw {backend_saw} complete request(s)",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&received)
        )
    };
    let parsed = parse_responses(&received);
    if debug_h1() {
        eprintln!("end={end:?} backend_saw={backend_saw} answers={parsed:?}");
    }
    let answers = match parsed {
        Ok(a) => a,
        // A response still streaming at the deadline, or cut by a reset, is not a broken one.
        Err((e, a)) if end != End::Closed && (e.starts_with("body cut short") || e.starts_with("incomplete")) => a,
        Err((e, _)) => panic!("not a valid HTTP/1 response stream: {e}\n{}", show()),
    };
    // Backend answers arrive in order, numbered 1, 2, ... with no request of ours skipped.
    let mut expected = 1;
    for a in &answers {
        if let Some(seq) = a.seq {
            assert_eq!(
                seq,
                expected,
                "backend request {expected} was answered by something else\n{}",
                show()
            );
            expected += 1;
        }
    }
    let answered = expected - 1;
    if end != End::Closed {
        // Still running at the deadline, or reset: canaryd closed with input unread, and
        // the kernel's RST may have destroyed responses already sent. The tail is unknown.
        return;
    }
    assert!(
        backend_saw >= answered,
        "more backend answers than backend requests\n{}",
        show()
    );
    // At most the last request may have reached the backend unanswered (the client's
    // half-close can cancel it), and then canaryd must not have refused it.
    assert!(
        backend_saw <= answered + 1,
        "{} backend requests without an answer\n{}",
        backend_saw - answered,
        show()
    );
    if backend_saw == answered + 1 {
        let after_last: Vec<u16> = answers
            .iter()
            .rev()
            .take_while(|a| a.seq.is_none())
            .map(|a| a.status)
            .collect();
        assert!(
            !after_last.iter().any(|s| matches!(s, 400 | 413 | 431)),
            "a request answered {after_last:?} by canaryd reached the backend\n{}",
            show()
        );
    }
}
