//! Semantic checks of a raw config; every error is collected with its field path.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::claims::{Matcher, RouteClaims};
use crate::error::FieldError;
use crate::field_path::{FieldCase, FieldPath};
use crate::model::*;
use crate::path::{EncodedSlashes, PathOptions};
use crate::raw::*;
use crate::route_spec::*;
use crate::Weight;

mod analysis;
mod kubernetes;
mod route;
mod syntax;
mod tls;

use analysis::*;
use kubernetes::*;
pub(crate) use route::single_route;
use route::*;
pub(crate) use syntax::endpoint;
use syntax::*;
use tls::*;

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

    let routes = routes(&mut errs, raw.routes, raw.limits.max_body_bytes);

    let trusted_proxies = trusted_proxies(&mut errs, &raw.trusted_proxies);
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
    check_limits(&mut errs, &limits);
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

/// Every route, with its name and its host + path matchers each held once.
fn routes(errs: &mut Errors, raw_routes: Vec<RouteSpec>, default_max_body_bytes: u64) -> Vec<Route> {
    let mut routes = Vec::with_capacity(raw_routes.len());
    // Names and host + path matchers held so far, by route index.
    let mut claims: RouteClaims<usize> = RouteClaims::default();
    for (i, r) in raw_routes.into_iter().enumerate() {
        let at = FieldPath::new(format!("routes[{i}]"), FieldCase::Snake);
        if let Err(m) = route_name(&r.name) {
            errs.push(at.field("name"), m);
        } else if let Some(first) = claims.name_holder(&r.name) {
            errs.push(
                at.field("name"),
                format!("{:?} is already the name of routes[{first}]", r.name),
            );
        }
        let hosts = hosts(errs, &at, &r.hosts);
        let path_prefix = match path_prefix(&r.path_prefix) {
            Ok(p) => p,
            Err(m) => {
                errs.push(at.field("path_prefix"), m);
                String::new()
            }
        };
        let matchers = if path_prefix.is_empty() {
            Vec::new()
        } else {
            Matcher::of(&hosts, &path_prefix, r.path_exact)
        };
        for m in &matchers {
            if let Some(other) = claims.matcher_holder(m) {
                errs.push(
                    at.field("path_prefix"),
                    format!(
                        "{} with prefix {path_prefix:?} is already served by routes[{other}]",
                        m.host_shown()
                    ),
                );
            }
        }
        claims.claim(&r.name, matchers, i);
        routes.push(route_body(errs, &at, r, hosts, path_prefix, default_max_body_bytes));
    }
    routes
}

/// `trusted_proxies`: CIDRs or single IPs.
fn trusted_proxies(errs: &mut Errors, raw: &[String]) -> Vec<ipnet::IpNet> {
    let mut trusted_proxies = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
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
    trusted_proxies
}

/// The ranges of `limits`.
fn check_limits(errs: &mut Errors, limits: &Limits) {
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
    fn a_baseline_is_a_backend_of_its_own() {
        let check = |baseline: &str| {
            crate::parse(&format!(
                "routes:\n  - name: app\n    stable: {{ endpoints: [\"10.0.0.1:80\"] }}\n    canary: {{ endpoints: [\"10.0.0.2:80\"] }}\n    baseline: {baseline}\n"
            ))
        };
        let c = check("{ endpoints: [\"10.0.0.3:80\"] }").unwrap();
        let b = c.routes[0].baseline.as_ref().expect("the baseline");
        assert_eq!(b.endpoints[0].authority(), "10.0.0.3:80");
        let names: Vec<&str> = c.routes[0].backends().map(|(v, _)| v).collect();
        assert_eq!(names, ["stable", "canary", "baseline"]);
        for (bad, field) in [
            ("{}", "routes[0].baseline"),
            ("{ endpoints: [\"nohost\"] }", "routes[0].baseline.endpoints[0]"),
        ] {
            let errs = check(bad).unwrap_err().field_errors();
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].path, field, "{bad}: {errs:?}");
        }
        let plain = crate::parse("routes:\n  - name: app\n    stable: { endpoints: [\"10.0.0.1:80\"] }\n").unwrap();
        assert!(plain.routes[0].baseline.is_none() && plain.routes[0].backends().count() == 2);
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
