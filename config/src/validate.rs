//! Semantic checks of a raw config; every error is collected with its field path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::FieldError;
use crate::model::*;
use crate::path::{EncodedSlashes, PathOptions};
use crate::raw::*;
use crate::Weight;

/// HTTP/2 flow-control windows allowed: below 16 KiB uploads crawl; above 16 MiB one
/// connection may make canaryd buffer that much.
const H2_WINDOW: std::ops::RangeInclusive<u32> = 16 * 1024..=16 * 1024 * 1024;

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
}

pub(crate) fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    let http = socket_addr(&mut errs, "listen.http", &raw.listen.http);
    let admin = socket_addr(&mut errs, "admin.listen", &raw.admin.listen);
    if let (Some(http), Some(admin)) = (http, admin) {
        if http.port() != 0
            && http.port() == admin.port()
            && (http.ip() == admin.ip() || http.ip().is_unspecified() || admin.ip().is_unspecified())
        {
            errs.push(
                "admin.listen",
                format!("{admin} would share the public listener {http}; the admin API never goes on the public port"),
            );
        }
    }
    let t = &raw.timeouts;
    let timeouts = Timeouts {
        connect: duration(&mut errs, "timeouts.connect", &t.connect),
        response_header: duration(&mut errs, "timeouts.response_header", &t.response_header),
        upstream_idle: duration(&mut errs, "timeouts.upstream_idle", &t.upstream_idle),
        header_read: duration(&mut errs, "timeouts.header_read", &t.header_read),
        idle: duration(&mut errs, "timeouts.idle", &t.idle),
        drain: duration(&mut errs, "timeouts.drain", &t.drain),
    };
    if raw.passive_health.failures == 0 {
        errs.push("passive_health.failures", "must be at least 1");
    }
    let passive_health = PassiveHealth {
        failures: raw.passive_health.failures,
        cooloff: duration(&mut errs, "passive_health.cooloff", &raw.passive_health.cooloff),
    };

    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    // (host pattern or None for any host, prefix) → route index, to find overlaps.
    let mut matchers: HashMap<(Option<HostPattern>, String, bool), usize> = HashMap::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Err(m) = route_name(&r.name) {
            errs.push(format!("{at}.name"), m);
        } else if let Some(first) = names.insert(r.name.clone(), i) {
            errs.push(
                format!("{at}.name"),
                format!("{:?} is already the name of routes[{first}]", r.name),
            );
        }
        let hosts = hosts(&mut errs, &at, &r.hosts);
        let path_prefix = match path_prefix(&r.path_prefix) {
            Ok(p) => p,
            Err(m) => {
                errs.push(format!("{at}.path_prefix"), m);
                String::new()
            }
        };
        if !path_prefix.is_empty() {
            let keys: Vec<Option<HostPattern>> = if hosts.is_empty() {
                vec![None]
            } else {
                hosts.iter().cloned().map(Some).collect()
            };
            for key in keys {
                let shown = key.as_ref().map_or_else(|| "any host".to_string(), |h| h.to_string());
                if let Some(other) = matchers.insert((key, path_prefix.clone(), r.path_exact), i) {
                    errs.push(
                        format!("{at}.path_prefix"),
                        format!("{shown} with prefix {path_prefix:?} is already served by routes[{other}]"),
                    );
                }
            }
        }
        routes.push(route_body(
            &mut errs,
            &at,
            r,
            hosts,
            path_prefix,
            raw.limits.max_body_bytes,
        ));
    }

    let mut trusted_proxies = Vec::with_capacity(raw.trusted_proxies.len());
    for (i, t) in raw.trusted_proxies.iter().enumerate() {
        let net = t
            .parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(n) => trusted_proxies.push(n.trunc()),
            Err(_) => errs.push(
                format!("trusted_proxies[{i}]"),
                format!("{t:?} is not a CIDR like 10.0.0.0/8 or an IP"),
            ),
        }
    }
    let https = raw
        .listen
        .https
        .as_ref()
        .and_then(|a| socket_addr(&mut errs, "listen.https", a));
    let tls = tls(&mut errs, &raw.tls);
    // Certificates may also come from the Ingresses' `tls:` sections (kubernetes mode).
    if https.is_some()
        && tls.certificates.is_empty()
        && tls.secrets.is_empty()
        && raw.kubernetes.ingress_class.is_none()
    {
        errs.push("tls.certificates", "listen.https needs at least one certificate");
    }
    if https.is_none() && routes.iter().any(|r| r.redirect_https) {
        errs.push(
            "listen.https",
            "a route redirects to HTTPS but there is no HTTPS listener",
        );
    }
    let limits = raw.limits;
    for (field, ok) in [
        ("max_connections", limits.max_connections >= 1),
        ("max_header_count", (1..=1000).contains(&limits.max_header_count)),
        (
            "max_header_bytes",
            (8 * 1024..=1024 * 1024).contains(&limits.max_header_bytes),
        ),
        (
            "max_request_line_bytes",
            (1024..=limits.max_header_bytes).contains(&limits.max_request_line_bytes),
        ),
        ("h2_max_concurrent_streams", limits.h2_max_concurrent_streams >= 1),
        ("h2_max_header_list_bytes", limits.h2_max_header_list_bytes >= 1024),
        (
            "h2_stream_window_bytes",
            H2_WINDOW.contains(&limits.h2_stream_window_bytes),
        ),
        (
            "h2_connection_window_bytes",
            H2_WINDOW.contains(&limits.h2_connection_window_bytes)
                && limits.h2_connection_window_bytes >= limits.h2_stream_window_bytes,
        ),
    ] {
        if !ok {
            errs.push(
                format!("limits.{field}"),
                "out of range (connections ≥ 1, header count 1..1000, header bytes 8 KiB..1 MiB, request line 1 KiB..header bytes, streams ≥ 1, header list ≥ 1 KiB, HTTP/2 windows 16 KiB..16 MiB with the connection's at least the stream's)",
            );
        }
    }
    let state_path = std::path::PathBuf::from(&raw.state.path);
    if raw.state.path.is_empty() || !state_path.is_absolute() || raw.state.path.contains('\0') {
        errs.push(
            "state.path",
            format!("{:?} must be an absolute file path", raw.state.path),
        );
    }

    let kubernetes = kubernetes(&mut errs, &raw.kubernetes);

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Config {
        kubernetes,
        listen: Listen {
            http: http.expect("checked above"),
            https,
        },
        admin: Admin {
            listen: admin.expect("checked above"),
            tokens_file: raw.admin.tokens_file.map(std::path::PathBuf::from),
        },
        timeouts,
        passive_health,
        state: State { path: state_path },
        tls,
        limits,
        trusted_proxies,
        access_log: raw.access_log,
        paths: PathOptions {
            merge_slashes: raw.paths.merge_slashes,
            encoded_slashes: match raw.paths.encoded_slashes {
                RawEncodedSlashes::Keep => EncodedSlashes::Keep,
                RawEncodedSlashes::Reject => EncodedSlashes::Reject,
            },
        },
        routes,
    })
}

fn hosts(errs: &mut Errors, at: &str, raw: &[String]) -> Vec<HostPattern> {
    let mut hosts = Vec::with_capacity(raw.len());
    for (j, h) in raw.iter().enumerate() {
        match host_pattern(h) {
            Ok(p) if hosts.contains(&p) => errs.push(format!("{at}.hosts[{j}]"), format!("{h:?} is listed twice")),
            Ok(p) => hosts.push(p),
            Err(m) => errs.push(format!("{at}.hosts[{j}]"), m),
        }
    }
    hosts
}

/// The parts of a route checked alone (not against other routes).
fn route_body(
    errs: &mut Errors,
    at: &str,
    r: RawRoute,
    hosts: Vec<HostPattern>,
    path_prefix: String,
    default_max_body_bytes: u64,
) -> Route {
    let stable = backend(errs, &format!("{at}.stable"), &r.stable);
    let canary = backend(errs, &format!("{at}.canary"), &r.canary);
    let weight = match Weight::from_percent(r.weight) {
        Ok(w) => w,
        Err(e) => {
            errs.push(format!("{at}.weight"), e.to_string());
            Weight::ZERO
        }
    };
    let affinity = r
        .affinity
        .as_ref()
        .and_then(|a| affinity(errs, &format!("{at}.affinity"), a));
    let overrides = overrides(errs, &format!("{at}.override"), &r.overrides);
    let rollout = r.rollout.as_ref().map_or_else(RolloutPlan::default, |p| {
        rollout_plan(errs, &format!("{at}.rollout"), p)
    });
    Route {
        name: r.name,
        hosts,
        path_prefix,
        path_exact: r.path_exact,
        stable,
        canary,
        weight,
        affinity,
        overrides,
        canary_only: r.canary_only,
        expose_variant: r.expose_variant,
        normalize_path: r.normalize_path,
        rollout,
        redirect_https: r.redirect_https,
        max_body_bytes: r.max_body_bytes.unwrap_or(default_max_body_bytes),
        hsts: r.hsts.as_ref().map(|h| Hsts {
            max_age: duration(errs, &format!("{at}.hsts.max_age"), &h.max_age),
            include_subdomains: h.include_subdomains,
        }),
    }
}

/// Checks one route given as JSON in the config file's shape (from a CanaryRoute or an
/// Ingress); `at` prefixes error paths. Overlaps with other routes are the caller's to check.
pub(crate) fn single_route(raw: RawRoute, at: &str, default_max_body_bytes: u64) -> Result<Route, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());
    if let Err(m) = route_name(&raw.name) {
        errs.push(format!("{at}.name"), m);
    }
    let hosts = hosts(&mut errs, at, &raw.hosts);
    let path_prefix = path_prefix(&raw.path_prefix).unwrap_or_else(|m| {
        errs.push(format!("{at}.path_prefix"), m);
        "/".into()
    });
    let route = route_body(&mut errs, at, raw, hosts, path_prefix, default_max_body_bytes);
    if errs.0.is_empty() {
        Ok(route)
    } else {
        Err(errs.0)
    }
}

fn affinity(errs: &mut Errors, at: &str, raw: &RawAffinity) -> Option<Affinity> {
    let before = errs.0.len();
    let key = match raw.key {
        RawAffinityKey::Cookie => {
            let name = raw.cookie.as_deref().unwrap_or("canary_id");
            if let Err(m) = cookie_name(name) {
                errs.push(format!("{at}.cookie"), m);
            }
            if raw.header.is_some() {
                errs.push(format!("{at}.header"), "only used with key: header");
            }
            AffinityKey::Cookie(name.into())
        }
        RawAffinityKey::Header => {
            let name = match raw.header.as_deref() {
                Some(h) => h,
                None => {
                    errs.push(
                        format!("{at}.header"),
                        "key: header needs the header's name, e.g. header: x-user-id",
                    );
                    ""
                }
            };
            if raw.header.is_some() {
                if let Err(m) = header_name(name) {
                    errs.push(format!("{at}.header"), m);
                }
            }
            if raw.cookie.is_some() {
                errs.push(format!("{at}.cookie"), "only used with key: cookie");
            }
            AffinityKey::Header(name.to_ascii_lowercase())
        }
        RawAffinityKey::ClientIp => {
            for (field, set) in [("cookie", raw.cookie.is_some()), ("header", raw.header.is_some())] {
                if set {
                    errs.push(format!("{at}.{field}"), "not used with key: client_ip");
                }
            }
            AffinityKey::ClientIp
        }
    };
    let max_age = match &raw.max_age {
        Some(text) if !matches!(key, AffinityKey::Cookie(_)) => {
            errs.push(format!("{at}.max_age"), format!("{text:?}: only used with key: cookie"));
            Duration::ZERO
        }
        Some(text) => duration(errs, &format!("{at}.max_age"), text),
        None => Duration::from_secs(30 * 24 * 3600),
    };
    (errs.0.len() == before).then_some(Affinity {
        key,
        cookie_max_age: max_age,
    })
}

/// The hosts of a certificate: at least one, each a valid host pattern.
fn certificate_hosts(errs: &mut Errors, at: &str, raw: &[String]) -> Vec<HostPattern> {
    if raw.is_empty() {
        errs.push(format!("{at}.hosts"), "list the hosts this certificate answers for");
    }
    hosts(errs, at, raw)
}

fn tls(errs: &mut Errors, raw: &RawTls) -> Tls {
    let mut certificates = Vec::with_capacity(raw.certificates.len());
    for (i, c) in raw.certificates.iter().enumerate() {
        let at = format!("tls.certificates[{i}]");
        let hosts = certificate_hosts(errs, &at, &c.hosts);
        for (field, path) in [("cert", &c.cert), ("key", &c.key)] {
            if path.is_empty() || path.contains('\0') || path.contains('\n') {
                errs.push(format!("{at}.{field}"), format!("{path:?} is not a file path"));
            }
        }
        certificates.push(CertificateFiles {
            hosts,
            cert: c.cert.clone().into(),
            key: c.key.clone().into(),
        });
    }
    let mut secrets = Vec::with_capacity(raw.secrets.len());
    for (i, c) in raw.secrets.iter().enumerate() {
        let at = format!("tls.secrets[{i}]");
        let hosts = certificate_hosts(errs, &at, &c.hosts);
        match c.secret.split_once('/') {
            Some((ns, name)) if dns_label(ns) && dns_name(name) => secrets.push(CertificateSecret {
                hosts,
                namespace: ns.into(),
                name: name.into(),
            }),
            _ => errs.push(
                format!("{at}.secret"),
                format!("{:?} is not NAMESPACE/NAME of a Secret", c.secret),
            ),
        }
    }
    Tls {
        certificates,
        secrets,
        reject_unknown_sni: matches!(raw.unknown_sni, RawUnknownSni::Reject),
    }
}

fn rollout_plan(errs: &mut Errors, at: &str, raw: &RawRollout) -> RolloutPlan {
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, p) in raw.steps.iter().enumerate() {
        match Weight::from_percent(*p) {
            Ok(w) if w == Weight::ZERO => {
                errs.push(format!("{at}.steps[{i}]"), "a step of 0 sends nothing to the canary")
            }
            Ok(w) if steps.last().is_some_and(|last| *last >= w) => errs.push(
                format!("{at}.steps[{i}]"),
                format!("{p} does not rise above the step before it"),
            ),
            Ok(w) => steps.push(w),
            Err(e) => errs.push(format!("{at}.steps[{i}]"), e.to_string()),
        }
    }
    if raw.steps.is_empty() {
        errs.push(format!("{at}.steps"), "needs at least one step, e.g. [10, 25, 50, 100]");
    }
    let interval = raw
        .interval
        .as_ref()
        .map(|t| duration(errs, &format!("{at}.interval"), t));
    let analysis = raw
        .analysis
        .as_ref()
        .map(|a| analysis(errs, &format!("{at}.analysis"), a));
    RolloutPlan {
        steps,
        interval,
        analysis,
    }
}

fn analysis(errs: &mut Errors, at: &str, raw: &RawAnalysis) -> Analysis {
    let window = duration(errs, &format!("{at}.window"), &raw.window);
    if window > Duration::from_secs(900) {
        errs.push(format!("{at}.window"), "at most 15m");
    }
    let percent = |errs: &mut Errors, field: &str, v: Option<f64>| {
        if let Some(p) = v {
            if !(0.0..=100.0).contains(&p) {
                errs.push(
                    format!("{at}.{field}"),
                    format!("{p} is not a percent between 0 and 100"),
                );
            }
        }
        v
    };
    let max_error_rate = percent(errs, "max_error_rate", raw.max_error_rate);
    let max_error_rate_increase = percent(errs, "max_error_rate_increase", raw.max_error_rate_increase);
    if let Some(p) = raw.significance {
        if !(p > 0.0 && p < 0.5) {
            errs.push(
                format!("{at}.significance"),
                format!("{p} is not a p-value between 0 and 0.5, e.g. 0.05"),
            );
        }
    }
    if raw.failures_before_abort == 0 {
        errs.push(format!("{at}.failures_before_abort"), "must be at least 1");
    }
    let max_latency_p99 = raw
        .max_latency_p99
        .as_ref()
        .map(|t| duration(errs, &format!("{at}.max_latency_p99"), t));
    if let Some(alpha) = raw.alpha {
        if !(alpha > 0.0 && alpha <= 0.2) {
            errs.push(
                format!("{at}.alpha"),
                format!("{alpha} is not a false-abort rate between 0 and 0.2, e.g. 0.01"),
            );
        }
    }
    let max_latency_increase = raw.max_latency_increase.as_ref().and_then(|p| {
        let value = match p {
            RawPercent::Number(n) => Some(*n),
            RawPercent::Text(t) => t.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok()),
        };
        match value {
            Some(v) if v > 0.0 && v <= 1000.0 => Some(v),
            _ => {
                let shown = match p {
                    RawPercent::Number(n) => n.to_string(),
                    RawPercent::Text(t) => format!("{t:?}"),
                };
                errs.push(
                    format!("{at}.max_latency_increase"),
                    format!("{shown} is not a percent above 0 and at most 1000, e.g. 20 or \"20%\""),
                );
                None
            }
        }
    });
    let latency_quantile = raw.latency_quantile.unwrap_or(0.5);
    if !(0.5..=0.999).contains(&latency_quantile) {
        errs.push(
            format!("{at}.latency_quantile"),
            format!("{latency_quantile} is not a quantile between 0.5 and 0.999, e.g. 0.5 (the median) or 0.9"),
        );
    }
    if let Some(url) = &raw.webhook {
        if let Err(m) = http_url(url) {
            errs.push(format!("{at}.webhook"), m);
        }
    }
    let prometheus = raw.prometheus.as_ref().map(|p| {
        let at = format!("{at}.prometheus");
        if let Err(m) = http_url(&p.url) {
            errs.push(format!("{at}.url"), m);
        }
        if p.query.trim().is_empty() || p.query.contains('\0') {
            errs.push(format!("{at}.query"), "needs a PromQL expression");
        }
        if p.max.is_none() && p.min.is_none() {
            errs.push(format!("{at}.max"), "set max, min or both");
        }
        PrometheusCheck {
            url: p.url.trim_end_matches('/').to_string(),
            query: p.query.clone(),
            max: p.max,
            min: p.min,
            interval: duration(errs, &format!("{at}.interval"), &p.interval),
        }
    });
    Analysis {
        window,
        min_requests: raw.min_requests,
        max_error_rate,
        max_error_rate_increase,
        significance: raw.significance,
        max_latency_p99,
        max_latency_increase,
        latency_quantile,
        alpha: raw.alpha,
        failures_before_abort: raw.failures_before_abort,
        webhook: raw.webhook.clone(),
        prometheus,
    }
}

/// An `http://host:port/path` URL (no TLS client yet; no credentials in URLs).
fn http_url(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("http://")
        .ok_or_else(|| format!("{text:?} must start with http://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} is not a plain http://host:port/path URL"));
    }
    Ok(())
}

fn overrides(errs: &mut Errors, at: &str, raw: &RawOverride) -> Overrides {
    if !raw.enabled {
        return Overrides {
            header: None,
            header_match: None,
            cookie: None,
        };
    }
    if let Some(Err(m)) = raw.header.as_deref().map(header_name) {
        errs.push(format!("{at}.header"), m);
    }
    if let Some(Err(m)) = raw.cookie.as_deref().map(cookie_name) {
        errs.push(format!("{at}.cookie"), m);
    }
    if raw.header.is_none() && (raw.header_value.is_some() || raw.header_pattern.is_some()) {
        errs.push(
            format!("{at}.header"),
            "header_value and header_pattern need a header name",
        );
    }
    // As in ingress-nginx, an exact value wins over a pattern.
    let header_match = match (&raw.header_value, &raw.header_pattern) {
        (Some(v), _) if v.is_empty() => {
            errs.push(format!("{at}.header_value"), "must not be empty");
            None
        }
        (Some(v), _) => Some(HeaderMatch::Value(v.clone())),
        (None, Some(p)) => match regex::Regex::new(&format!("^(?:{p})$")) {
            Ok(re) => Some(HeaderMatch::Pattern(re)),
            Err(e) => {
                errs.push(format!("{at}.header_pattern"), format!("not a regular expression: {e}"));
                None
            }
        },
        (None, None) => None,
    };
    Overrides {
        header: raw.header.as_deref().map(str::to_ascii_lowercase),
        header_match,
        cookie: raw.cookie.clone(),
    }
}

/// RFC 9110 token characters: what a header or cookie name may contain.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_name(name: &str) -> Result<(), String> {
    if is_token(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a header name (letters, digits and -, at most 64)"
        ))
    }
}

fn cookie_name(name: &str) -> Result<(), String> {
    if is_token(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a cookie name (letters, digits and -_, at most 64)"
        ))
    }
}

fn socket_addr(errs: &mut Errors, path: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("{text:?} is not an address like 0.0.0.0:8080 or [::]:8080"),
            );
            None
        }
    }
}

fn duration(errs: &mut Errors, path: &str, text: &str) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            errs.push(path, "must be longer than zero");
            d
        }
        Ok(d) => d,
        Err(e) => {
            errs.push(path, format!("{text:?} is not a duration like 500ms, 2s or 5m ({e})"));
            Duration::ZERO
        }
    }
}

fn backend(errs: &mut Errors, at: &str, raw: &RawBackend) -> Backend {
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.endpoints.len());
    for (k, e) in raw.endpoints.iter().enumerate() {
        match endpoint(e) {
            Ok(ep) if endpoints.contains(&ep) => {
                errs.push(format!("{at}.endpoints[{k}]"), format!("{e:?} is listed twice"))
            }
            Ok(ep) => endpoints.push(ep),
            Err(m) => errs.push(format!("{at}.endpoints[{k}]"), m),
        }
    }
    let kubernetes = raw.kubernetes.as_ref().and_then(|k| {
        if !endpoints.is_empty() {
            errs.push(
                format!("{at}.kubernetes"),
                "give either endpoints or a kubernetes source, not both",
            );
        }
        kube_source(errs, &format!("{at}.kubernetes"), k)
    });
    let tls = raw.tls.as_ref().map(|t| upstream_tls(errs, &format!("{at}.tls"), t));
    Backend {
        endpoints,
        kubernetes,
        tls,
    }
}

/// A variant's `tls:`. The CA file's contents are checked where it is loaded (the data plane
/// builds its client from it), not here: this crate does no I/O.
fn upstream_tls(errs: &mut Errors, at: &str, raw: &RawUpstreamTls) -> UpstreamTls {
    if let Some(ca) = &raw.ca {
        if ca.is_empty() || ca.contains('\0') || ca.contains('\n') {
            errs.push(format!("{at}.ca"), format!("{ca:?} is not a file path"));
        } else if !raw.verify {
            errs.push(
                format!("{at}.ca"),
                "not used with verify: false, which checks no certificate; remove one of them",
            );
        }
    }
    let sni = raw.sni.as_ref().map(|name| {
        let lower = name.to_ascii_lowercase();
        if !dns_name(&lower) || lower.parse::<IpAddr>().is_ok() {
            errs.push(
                format!("{at}.sni"),
                format!(
                    "{name:?} is not a DNS name like api.internal (no IP, port, wildcard or scheme); \
                     without sni an IP endpoint is verified against the certificate's IP subjectAltName"
                ),
            );
        }
        lower
    });
    UpstreamTls {
        verify: raw.verify,
        ca: raw.ca.as_ref().map(std::path::PathBuf::from),
        sni,
    }
}

fn kubernetes(errs: &mut Errors, raw: &RawKubernetes) -> Kubernetes {
    let at = "kubernetes";
    for (field, value) in [
        ("namespace", Some(&raw.namespace)),
        ("watch_namespace", raw.watch_namespace.as_ref()),
    ] {
        if let Some(v) = value {
            if !dns_label(v) {
                errs.push(format!("{at}.{field}"), format!("{v:?} is not a namespace name"));
            }
        }
    }
    if let Some(class) = &raw.ingress_class {
        if !dns_name(class) {
            errs.push(
                format!("{at}.ingress_class"),
                format!("{class:?} is not an IngressClass name"),
            );
        }
    }
    let publish_service = raw.publish_service.as_ref().and_then(|s| match s.split_once('/') {
        Some((ns, name)) if dns_label(ns) && dns_label(name) => Some((ns.to_string(), name.to_string())),
        _ => {
            errs.push(
                format!("{at}.publish_service"),
                format!("{s:?} is not NAMESPACE/NAME of a Service"),
            );
            None
        }
    });
    if !dns_name(&raw.lease_name) {
        errs.push(
            format!("{at}.lease_name"),
            format!("{:?} is not a Lease name", raw.lease_name),
        );
    }
    let lease_duration = duration(errs, &format!("{at}.lease_duration"), &raw.lease_duration);
    if lease_duration < Duration::from_secs(2) {
        errs.push(format!("{at}.lease_duration"), "must be at least 2s");
    }
    Kubernetes {
        namespace: raw.namespace.clone(),
        ingress_class: raw.ingress_class.clone(),
        canary_routes: raw.canary_routes,
        watch_namespace: raw.watch_namespace.clone(),
        publish_service,
        lease_name: raw.lease_name.clone(),
        lease_duration,
    }
}

fn kube_source(errs: &mut Errors, at: &str, raw: &RawKubeSource) -> Option<KubeSource> {
    if let Some(ns) = &raw.namespace {
        if !dns_label(ns) {
            errs.push(format!("{at}.namespace"), format!("{ns:?} is not a namespace name"));
        }
    }
    let target = match (&raw.service, &raw.selector, &raw.port) {
        (Some(_), Some(_), _) | (None, None, _) => {
            errs.push(at.to_string(), "give exactly one of service or selector");
            return None;
        }
        (Some(name), None, port) => {
            if !dns_label(name) {
                errs.push(format!("{at}.service"), format!("{name:?} is not a Service name"));
            }
            let port = match port {
                RawPort::Number(n) => PortRef::Number(port_number(errs, at, *n)?),
                RawPort::Name(n) if dns_label(n) && n.len() <= 15 => PortRef::Name(n.clone()),
                RawPort::Name(n) => match n.parse::<u32>() {
                    Ok(num) => PortRef::Number(port_number(errs, at, num)?),
                    Err(_) => {
                        errs.push(format!("{at}.port"), format!("{n:?} is not a port name or number"));
                        return None;
                    }
                },
            };
            KubeTarget::Service {
                name: name.clone(),
                port,
            }
        }
        (None, Some(selector), port) => {
            if let Err(m) = label_selector(selector) {
                errs.push(format!("{at}.selector"), m);
            }
            let port = match port {
                RawPort::Number(n) => port_number(errs, at, *n)?,
                RawPort::Name(n) => match n.parse::<u32>() {
                    Ok(num) => port_number(errs, at, num)?,
                    Err(_) => {
                        errs.push(
                            format!("{at}.port"),
                            format!("{n:?}: a selector source needs a port number (Pods have no named Service port)"),
                        );
                        return None;
                    }
                },
            };
            KubeTarget::Selector {
                selector: selector.clone(),
                port,
            }
        }
    };
    Some(KubeSource {
        namespace: raw.namespace.clone(),
        target,
    })
}

fn port_number(errs: &mut Errors, at: &str, n: u32) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.push(format!("{at}.port"), format!("{n} is not a port number (1..65535)"));
            None
        }
    }
}

/// RFC 1123 label: namespaces, Service names and port names.
fn dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Equality-based label selectors (`a=b,c!=d`) and existence (`a`, `!a`), as `kubectl -l` takes them.
fn label_selector(text: &str) -> Result<(), String> {
    let key_ok = |k: &str| {
        let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
        !name.is_empty() && name.len() <= 63 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let value_ok = |v: &str| v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if text.trim().is_empty() {
        return Err("an empty selector would match every Pod of the namespace".into());
    }
    for term in text.split(',') {
        let term = term.trim();
        let ok = if let Some((k, v)) = term.split_once("!=") {
            key_ok(k.trim()) && value_ok(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            key_ok(k.trim()) && value_ok(v.trim())
        } else {
            key_ok(term.strip_prefix('!').unwrap_or(term))
        };
        if !ok {
            return Err(format!(
                "{term:?} is not a selector term (key=value, key!=value, key or !key, joined by commas)"
            ));
        }
    }
    Ok(())
}

/// Route names appear in URLs, metric labels and logs: DNS-label syntax keeps them safe everywhere.
fn route_name(name: &str) -> Result<(), String> {
    if dns_label(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid name: use 1 to 63 lower-case letters, digits and '-', not starting or ending with '-'"))
    }
}

fn dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn host_pattern(text: &str) -> Result<HostPattern, String> {
    let lower = text.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if !dns_name(name) || (name.parse::<IpAddr>().is_ok() && wild) {
        return Err(format!(
            "{text:?} is not a host name; use a name like app.example.com or a wildcard like *.example.com, without port"
        ));
    }
    Ok(if wild {
        HostPattern::Wildcard(name.into())
    } else {
        HostPattern::Exact(name.into())
    })
}

fn path_prefix(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with '/'"));
    }
    // Letters, digits and the few URI path characters a route needs, like ingress-nginx's
    // strict path validation: no query, fragment, escape, space, quote, brace or `;`, so a
    // prefix cannot carry anything into a log line, a label or an object built from it.
    if let Some(c) = text.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(c, '/' | '-' | '.' | '_' | '~' | ':' | '@' | '!' | '*' | '+' | ',' | '='))
    }) {
        return Err(format!(
            "{text:?} contains {c:?}; a prefix is a plain path of letters, digits and / - . _ ~ : @ ! * + , ="
        ));
    }
    let trimmed = text.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    // A prefix must be a request path's normal form, or no normalised request could match it.
    match crate::path::normalize(trimmed, PathOptions::default()) {
        Ok(normal) if normal == trimmed => Ok(trimmed.into()),
        Ok(normal) => Err(format!(
            "{text:?} is not a normalised path (no '.' or '..' segment, no '//'); write {normal:?}"
        )),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

pub(crate) fn endpoint(text: &str) -> Result<Endpoint, String> {
    let bad = || format!("{text:?} is not an endpoint like 10.0.0.1:8080, [fd00::1]:8080 or app.local:8080");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{text:?} has port 0"));
        }
        return Ok(Endpoint(addr.to_string()));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(format!("{text:?} has port 0"));
    }
    if !dns_name(host) || host.parse::<IpAddr>().is_ok() {
        return Err(bad());
    }
    Ok(Endpoint(format!("{}:{port}", host.to_ascii_lowercase())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("10.0.0.1:8080").unwrap().authority(), "10.0.0.1:8080");
        assert_eq!(endpoint("[::1]:80").unwrap().authority(), "[::1]:80");
        assert_eq!(endpoint("App.local:81").unwrap().authority(), "app.local:81");
        for bad in [
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "a b:80",
            ":80",
            "http://x:80",
            "x:80/",
            "::1:80",
        ] {
            assert!(endpoint(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            host_pattern("Example.COM").unwrap(),
            HostPattern::Exact("example.com".into())
        );
        assert_eq!(
            host_pattern("*.example.com").unwrap(),
            HostPattern::Wildcard("example.com".into())
        );
        for bad in [
            "",
            "*",
            "a..b",
            "ex ample.com",
            "a.com:80",
            "*.*.a.com",
            "a{b}.com",
            "x;y",
            "../a",
        ] {
            assert!(host_pattern(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn upstream_tls_fields() {
        let check = |yaml: &str| {
            let text =
                format!("routes:\n  - name: app\n    stable: {{ endpoints: [\"10.0.0.1:8443\"], tls: {yaml} }}\n");
            crate::parse(&text)
        };
        let tls = |c: crate::Config| c.routes[0].stable.tls.clone().unwrap();
        assert_eq!(
            tls(check("{}").unwrap()),
            UpstreamTls {
                verify: true,
                ca: None,
                sni: None
            },
            "verify defaults to true"
        );
        let t = tls(check("{ ca: /etc/ca.pem, sni: API.Internal }").unwrap());
        assert_eq!(t.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(t.sni.as_deref(), Some("api.internal"));
        assert!(!tls(check("{ verify: false, sni: a.b }").unwrap()).verify);
        for (bad, field) in [
            ("{ sni: 10.0.0.1 }", "routes[0].stable.tls.sni"),
            ("{ sni: \"*.example.com\" }", "routes[0].stable.tls.sni"),
            ("{ sni: \"a.com:443\" }", "routes[0].stable.tls.sni"),
            ("{ sni: \"\" }", "routes[0].stable.tls.sni"),
            ("{ ca: \"\" }", "routes[0].stable.tls.ca"),
            ("{ verify: false, ca: /etc/ca.pem }", "routes[0].stable.tls.ca"),
        ] {
            let errs = check(bad).unwrap_err().field_errors();
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].path, field, "{bad}: {errs:?}");
        }
        let err = check("{ verfy: false }").unwrap_err().to_string();
        assert!(err.contains("routes[0].stable.tls") && err.contains("verfy"), "{err}");
    }

    #[test]
    fn prefixes() {
        assert_eq!(path_prefix("/").unwrap(), "/");
        assert_eq!(path_prefix("/api/").unwrap(), "/api");
        assert_eq!(path_prefix("//").unwrap(), "/");
        for bad in ["api", "/a b", "/a?b", "/../etc", "/a\nb", "/a%2f"] {
            assert!(path_prefix(bad).is_err(), "{bad} accepted");
        }
    }
}
