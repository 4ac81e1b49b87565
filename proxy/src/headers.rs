//! Header hygiene between client and upstream: hop-by-hop removal and forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-canary-variant`: the decision, told to the backend.
pub const VARIANT_HEADER: HeaderName = HeaderName::from_static("x-canary-variant");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1, plus legacy ones).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True for a WebSocket upgrade, asked (request) or accepted (101 response): `Connection:
/// upgrade` plus `Upgrade: websocket`. Other upgrades (h2c above all, a known smuggling path)
/// are never passed on.
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    websocket && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Edge checks hyper does not make; the reason becomes the 400's body.
pub(crate) fn check_request<B>(req: &http::Request<B>) -> Result<(), &'static str> {
    if req.method() == http::Method::CONNECT {
        return Err("CONNECT is not served here");
    }
    // A Transfer-Encoding that survived hyper must be exactly one `chunked`.
    let mut codings = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim);
    if let Some(first) = codings.next() {
        if !first.eq_ignore_ascii_case("chunked") || codings.next().is_some() {
            return Err("only Transfer-Encoding: chunked is accepted");
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(h) = host {
        if !valid_authority(h.as_bytes()) {
            return Err("invalid Host header");
        }
    }
    if let Some(a) = req.uri().authority() {
        if !valid_authority(a.as_str().as_bytes()) {
            return Err("invalid authority in the request target");
        }
    }
    Ok(())
}

/// `host[:port]` with a DNS name or IP literal, a numeric port, no user info.
fn valid_authority(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => ("v6", tail.strip_prefix(':')),
            _ => return false,
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let host_ok = host == "v6"
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The index in [`HOP_BY_HOP`] of a (lower-case) header name, told apart by length first.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    let i = match (name.len(), name) {
        (10, "connection") => 0,
        (10, "keep-alive") => 1,
        (16, "proxy-connection") => 2,
        (18, "proxy-authenticate") => 3,
        (19, "proxy-authorization") => 4,
        (2, "te") => 5,
        (7, "trailer") => 6,
        (17, "transfer-encoding") => 7,
        (7, "upgrade") => 8,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i].as_str(), name);
    Some(i)
}

/// Removes hop-by-hop headers and every header named in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass of cheap name comparisons finds which are present, so the common request
    // (none of them) pays no hashed lookup, and a response pays only for those it has.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // HOP_BY_HOP[0] is Connection: the headers it names go too.
    if present & 1 != 0 {
        // Vec::new does not allocate; only a Connection header naming extra headers pays.
        let mut named: Vec<HeaderName> = Vec::new();
        for token in connection_tokens(headers) {
            if HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(token)) || token.eq_ignore_ascii_case("close")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Per-connection forwarding facts, computed once when the connection is accepted.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The socket peer's address.
    pub(crate) peer: std::net::IpAddr,
    /// True when the connection came over TLS.
    pub(crate) tls: bool,
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    pub(crate) peer_ip: HeaderValue,
    /// `http` or `https`.
    pub(crate) proto: HeaderValue,
}

impl ClientInfo {
    /// Facts for a connection from `peer`; `tls` when it arrived over TLS.
    pub fn new(peer: std::net::SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        Self {
            peer: peer.ip().to_canonical(),
            tls,
            peer_ip: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

/// Sets `X-Forwarded-For` (appending the peer), `-Proto`, `-Host` and the variant header.
pub(crate) fn set_forwarding(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host: Option<HeaderValue>,
    variant: &'static str,
) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        None => client.peer_ip.clone(),
        Some(_) => {
            let mut joined = Vec::with_capacity(64);
            for v in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.peer_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.peer_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, client.proto.clone());
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(VARIANT_HEADER, HeaderValue::from_static(variant));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_knows_every_name() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(h.as_str()), Some(i));
        }
        for other in ["host", "x-upgrade", "connections", "t", "cookie", "content-length"] {
            assert_eq!(hop_by_hop_index(other), None, "{other}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret, close".parse().unwrap());
        h.append(header::CONNECTION, "x-other".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn forwarding_appends_and_overwrites() {
        let client = ClientInfo::new("[::ffff:10.1.2.3]:5000".parse().unwrap(), false);
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.append(X_FORWARDED_FOR, "2.2.2.2".parse().unwrap());
        h.insert(VARIANT_HEADER, "canary".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        set_forwarding(&mut h, &client, Some("app.example.com".parse().unwrap()), "stable");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["x-canary-variant"], "stable");
    }

    #[test]
    fn detects_websocket_upgrades_only() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_websocket_upgrade(&h));
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_websocket_upgrade(&h));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_websocket_upgrade(&h));
    }

    #[test]
    fn authorities() {
        for ok in ["app", "app.example.com:8080", "[::1]:80", "10.0.0.1", "a_b.local"] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "app evil",
            "app, evil",
            "user@app",
            "app/evil",
            "app:80x",
            "app:",
            "[zz]:80",
            "app:123456",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
