//! Leaf syntax shared by every section: names, hosts, paths, addresses, durations.

use super::*;

/// RFC 9110 token characters: what a header or cookie name may contain.
pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn header_name(name: &str) -> Result<(), String> {
    if is_token(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a header name (letters, digits and -, at most 64)"
        ))
    }
}

pub(super) fn cookie_name(name: &str) -> Result<(), String> {
    if is_token(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a cookie name (letters, digits and -_, at most 64)"
        ))
    }
}

pub(super) fn socket_addr(errs: &mut Errors, path: impl AsRef<str>, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path.as_ref(),
                format!("{text:?} is not an address like 0.0.0.0:8080 or [::]:8080"),
            );
            None
        }
    }
}

pub(super) fn duration(errs: &mut Errors, path: impl AsRef<str>, text: &str) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            errs.push(path.as_ref(), "must be longer than zero");
            d
        }
        Ok(d) => d,
        Err(e) => {
            errs.push(
                path.as_ref(),
                format!("{text:?} is not a duration like 500ms, 2s or 5m ({e})"),
            );
            Duration::ZERO
        }
    }
}

/// Route names appear in URLs, metric labels and logs: DNS-label syntax keeps them safe everywhere.
pub(super) fn route_name(name: &str) -> Result<(), String> {
    if dns_label(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid name: use 1 to 63 lower-case letters, digits and '-', not starting or ending with '-'"))
    }
}

pub(super) fn dns_name(host: &str) -> bool {
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

pub(super) fn host_pattern(text: &str) -> Result<HostPattern, String> {
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

pub(super) fn path_prefix(text: &str) -> Result<String, String> {
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
