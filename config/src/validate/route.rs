//! Routes: hosts, paths, backends, stickiness, overrides, rollout plans.

use super::*;

pub(super) fn hosts(errs: &mut Errors, at: &FieldPath, raw: &[String]) -> Vec<HostPattern> {
    let mut hosts = Vec::with_capacity(raw.len());
    for (j, h) in raw.iter().enumerate() {
        match host_pattern(h) {
            Ok(p) if hosts.contains(&p) => errs.push(at.field("hosts").index(j), format!("{h:?} is listed twice")),
            Ok(p) => hosts.push(p),
            Err(m) => errs.push(at.field("hosts").index(j), m),
        }
    }
    hosts
}

/// The parts of a route checked alone (not against other routes).
pub(super) fn route_body(
    errs: &mut Errors,
    at: &FieldPath,
    r: RouteSpec,
    hosts: Vec<HostPattern>,
    path_prefix: String,
    default_max_body_bytes: u64,
) -> Route {
    let stable = backend(errs, &at.field("stable"), &r.stable);
    let canary = backend(errs, &at.field("canary"), &r.canary);
    let baseline = r.baseline.as_ref().map(|b| {
        let at = at.field("baseline");
        if b.endpoints.is_empty() && b.kubernetes.is_none() {
            errs.push(
                at.clone(),
                "a baseline needs endpoints (or a kubernetes source); remove it to judge against stable",
            );
        }
        backend(errs, &at, b)
    });
    let weight = match Weight::from_percent(r.weight) {
        Ok(w) => w,
        Err(e) => {
            errs.push(at.field("weight"), e.to_string());
            Weight::ZERO
        }
    };
    let affinity = r
        .affinity
        .as_ref()
        .and_then(|a| affinity(errs, &at.field("affinity"), a));
    let overrides = overrides(errs, &at.field("override"), &r.overrides);
    let rollout = r
        .rollout
        .as_ref()
        .map_or_else(RolloutPlan::default, |p| rollout_plan(errs, &at.field("rollout"), p));
    Route {
        name: r.name,
        hosts,
        path_prefix,
        path_exact: r.path_exact,
        stable,
        canary,
        baseline,
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
            max_age: duration(errs, at.field("hsts").field("max_age"), &h.max_age),
            include_subdomains: h.include_subdomains,
        }),
    }
}

/// Checks one route alone (see [`RouteSpec::build`]): fields below `at`, the name at `name_at`.
pub(crate) fn single_route(
    raw: RouteSpec,
    at: &FieldPath,
    name_at: &FieldPath,
    default_max_body_bytes: u64,
) -> Result<Route, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());
    if let Err(m) = route_name(&raw.name) {
        errs.push(name_at, m);
    }
    let hosts = hosts(&mut errs, at, &raw.hosts);
    let path_prefix = path_prefix(&raw.path_prefix).unwrap_or_else(|m| {
        errs.push(at.field("path_prefix"), m);
        "/".into()
    });
    let route = route_body(&mut errs, at, raw, hosts, path_prefix, default_max_body_bytes);
    if errs.0.is_empty() {
        Ok(route)
    } else {
        Err(errs.0)
    }
}

pub(super) fn affinity(errs: &mut Errors, at: &FieldPath, raw: &AffinitySpec) -> Option<Affinity> {
    let before = errs.0.len();
    let key = match raw.key {
        AffinityKeySpec::Cookie => {
            let name = raw.cookie.as_deref().unwrap_or("canary_id");
            if let Err(m) = cookie_name(name) {
                errs.push(at.field("cookie"), m);
            }
            if raw.header.is_some() {
                errs.push(at.field("header"), "only used with key: header");
            }
            AffinityKey::Cookie(name.into())
        }
        AffinityKeySpec::Header => {
            let name = match raw.header.as_deref() {
                Some(h) => h,
                None => {
                    errs.push(
                        at.field("header"),
                        "key: header needs the header's name, e.g. header: x-user-id",
                    );
                    ""
                }
            };
            if raw.header.is_some() {
                if let Err(m) = header_name(name) {
                    errs.push(at.field("header"), m);
                }
            }
            if raw.cookie.is_some() {
                errs.push(at.field("cookie"), "only used with key: cookie");
            }
            AffinityKey::Header(name.to_ascii_lowercase())
        }
        AffinityKeySpec::ClientIp => {
            for (field, set) in [("cookie", raw.cookie.is_some()), ("header", raw.header.is_some())] {
                if set {
                    errs.push(at.field(field), "not used with key: client_ip");
                }
            }
            AffinityKey::ClientIp
        }
    };
    let max_age = match &raw.max_age {
        Some(text) if !matches!(key, AffinityKey::Cookie(_)) => {
            errs.push(at.field("max_age"), format!("{text:?}: only used with key: cookie"));
            Duration::ZERO
        }
        Some(text) => duration(errs, at.field("max_age"), text),
        None => Duration::from_secs(30 * 24 * 3600),
    };
    (errs.0.len() == before).then_some(Affinity {
        key,
        cookie_max_age: max_age,
    })
}

pub(super) fn rollout_plan(errs: &mut Errors, at: &FieldPath, raw: &RolloutSpec) -> RolloutPlan {
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, p) in raw.steps.iter().enumerate() {
        match Weight::from_percent(*p) {
            Ok(w) if w == Weight::ZERO => {
                errs.push(at.field("steps").index(i), "a step of 0 sends nothing to the canary")
            }
            Ok(w) if steps.last().is_some_and(|last| *last >= w) => errs.push(
                at.field("steps").index(i),
                format!("{p} does not rise above the step before it"),
            ),
            Ok(w) => steps.push(w),
            Err(e) => errs.push(at.field("steps").index(i), e.to_string()),
        }
    }
    if raw.steps.is_empty() {
        errs.push(at.field("steps"), "needs at least one step, e.g. [10, 25, 50, 100]");
    }
    let interval = raw.interval.as_ref().map(|t| duration(errs, at.field("interval"), t));
    let analysis = raw.analysis.as_ref().map(|a| analysis(errs, &at.field("analysis"), a));
    RolloutPlan {
        steps,
        interval,
        analysis,
    }
}

pub(super) fn overrides(errs: &mut Errors, at: &FieldPath, raw: &OverrideSpec) -> Overrides {
    if !raw.enabled {
        return Overrides {
            header: None,
            header_match: None,
            cookie: None,
        };
    }
    if let Some(Err(m)) = raw.header.as_deref().map(header_name) {
        errs.push(at.field("header"), m);
    }
    if let Some(Err(m)) = raw.cookie.as_deref().map(cookie_name) {
        errs.push(at.field("cookie"), m);
    }
    if raw.header.is_none() && (raw.header_value.is_some() || raw.header_pattern.is_some()) {
        errs.push(
            at.field("header"),
            format!(
                "{} and {} need a header name",
                at.word("header_value"),
                at.word("header_pattern")
            ),
        );
    }
    // As in ingress-nginx, an exact value wins over a pattern.
    let header_match = match (&raw.header_value, &raw.header_pattern) {
        (Some(v), _) if v.is_empty() => {
            errs.push(at.field("header_value"), "must not be empty");
            None
        }
        (Some(v), _) => Some(HeaderMatch::Value(v.clone())),
        (None, Some(p)) => match regex::Regex::new(&format!("^(?:{p})$")) {
            Ok(re) => Some(HeaderMatch::Pattern(re)),
            Err(e) => {
                errs.push(at.field("header_pattern"), format!("not a regular expression: {e}"));
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

pub(super) fn backend(errs: &mut Errors, at: &FieldPath, raw: &BackendSpec) -> Backend {
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.endpoints.len());
    for (k, e) in raw.endpoints.iter().enumerate() {
        match endpoint(e) {
            Ok(ep) if endpoints.contains(&ep) => {
                errs.push(at.field("endpoints").index(k), format!("{e:?} is listed twice"))
            }
            Ok(ep) => endpoints.push(ep),
            Err(m) => errs.push(at.field("endpoints").index(k), m),
        }
    }
    let kubernetes = raw.kubernetes.as_ref().and_then(|k| {
        if !endpoints.is_empty() {
            errs.push(
                at.field("kubernetes"),
                "give either endpoints or a kubernetes source, not both",
            );
        }
        kube_source(errs, &at.field("kubernetes"), k)
    });
    let tls = raw.tls.as_ref().map(|t| upstream_tls(errs, &at.field("tls"), t));
    Backend {
        endpoints,
        kubernetes,
        tls,
    }
}

/// A variant's `tls:`. The CA file's contents are checked where it is loaded (the data plane
/// builds its client from it), not here: this crate does no I/O.
pub(super) fn upstream_tls(errs: &mut Errors, at: &FieldPath, raw: &UpstreamTlsSpec) -> UpstreamTls {
    if let Some(ca) = &raw.ca {
        if ca.is_empty() || ca.contains('\0') || ca.contains('\n') {
            errs.push(at.field("ca"), format!("{ca:?} is not a file path"));
        } else if !raw.verify {
            errs.push(
                at.field("ca"),
                "not used with verify: false, which checks no certificate; remove one of them",
            );
        }
    }
    let sni = raw.sni.as_ref().map(|name| {
        let lower = name.to_ascii_lowercase();
        if !dns_name(&lower) || lower.parse::<IpAddr>().is_ok() {
            errs.push(
                at.field("sni"),
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
