//! Where a request's user key comes from: a cookie, a header or the client address,
//! and the cookie minted for a first-time user.

use std::net::IpAddr;

use canary_config::AffinityKey;
use http::header::{HeaderMap, HeaderValue, COOKIE};

use crate::headers::ClientInfo;

/// Longest cookie value accepted as an existing user key.
const MAX_KEY_LEN: usize = 128;

/// A user key found in (or made for) a request.
pub(crate) enum UserKey<'a> {
    /// Bytes borrowed from the request.
    Borrowed(&'a [u8]),
    /// The client address's octets (4 for IPv4, 16 for IPv6).
    Ip([u8; 16], usize),
    /// A freshly minted cookie id (32 lower-case hex digits) that must be set on the response.
    Minted([u8; 32]),
}

impl UserKey<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            UserKey::Borrowed(b) => b,
            UserKey::Ip(octets, len) => &octets[..*len],
            UserKey::Minted(id) => id,
        }
    }
}

/// The key for `source`; a cookie source with no valid cookie mints one, a missing
/// header falls back to the client address.
pub(crate) fn user_key<'a>(
    source: &AffinityKey,
    headers: &'a HeaderMap,
    client: &ClientInfo,
    trusted: &[ipnet::IpNet],
) -> UserKey<'a> {
    match source {
        AffinityKey::Cookie(name) => match cookie(headers, name) {
            Some(v) if is_valid_key(v) => UserKey::Borrowed(v.as_bytes()),
            _ => UserKey::Minted(mint_id()),
        },
        AffinityKey::Header(name) => match headers.get(name.as_str()).map(HeaderValue::as_bytes) {
            Some(v) if !v.is_empty() => UserKey::Borrowed(v),
            _ => ip_key(client_ip(headers, client.peer, trusted)),
        },
        AffinityKey::ClientIp => ip_key(client_ip(headers, client.peer, trusted)),
    }
}

fn ip_key(ip: IpAddr) -> UserKey<'static> {
    let mut octets = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            octets[..4].copy_from_slice(&v4.octets());
            UserKey::Ip(octets, 4)
        }
        IpAddr::V6(v6) => {
            octets.copy_from_slice(&v6.octets());
            UserKey::Ip(octets, 16)
        }
    }
}

/// A cookie's value from the request's `Cookie` headers, without allocating.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // Byte-level: `to_str` leaves only visible ASCII, space and tab, where `trim` and
    // `trim_ascii` agree, and every slice taken at an ASCII byte is a valid str.
    for value in headers.get_all(COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text.as_bytes();
        loop {
            let (pair, next) = match memchr::memchr(b';', rest) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            let pair = pair.trim_ascii();
            if let Some(eq) = memchr::memchr(b'=', pair) {
                if &pair[..eq] == name.as_bytes() {
                    let v = pair[eq + 1..].trim_ascii();
                    let start = v.iter().position(|&b| b != b'"').unwrap_or(v.len());
                    let end = v.iter().rposition(|&b| b != b'"').map_or(start, |i| i + 1);
                    return std::str::from_utf8(&v[start..end]).ok();
                }
            }
            match next {
                Some(n) => rest = n,
                None => break,
            }
        }
    }
    None
}

/// An existing cookie is kept when it is 1..=128 URL-safe characters; anything else is replaced.
fn is_valid_key(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_KEY_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A random 128-bit id as 32 lower-case hex digits.
fn mint_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    out
}

/// The `Set-Cookie` value for a minted id: `HttpOnly; SameSite=Lax; Path=/`, `Secure` over TLS.
pub(crate) fn set_cookie(name: &str, id: &[u8; 32], max_age_secs: u64, tls: bool) -> HeaderValue {
    let id = std::str::from_utf8(id).expect("hex is ASCII");
    let secure = if tls { "; Secure" } else { "" };
    let value = format!("{name}={id}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&value).expect("token name and hex id make a valid header value")
}

/// The client address: the socket peer, or — only when the peer is a trusted proxy — the
/// right-most untrusted address of `X-Forwarded-For` (or `Forwarded: for=`).
pub(crate) fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let forwarded_for = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let candidates: Vec<&str> = if forwarded_for.is_empty() {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|p| p.trim().strip_prefix("for=").or_else(|| p.trim().strip_prefix("For=")))
            .collect()
    } else {
        forwarded_for
    };
    for text in candidates.iter().rev() {
        match parse_forwarded_ip(text) {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return ip,
            // Garbage in the chain: stop believing it and use the last hop we trust.
            None => break,
        }
    }
    peer
}

/// `1.2.3.4`, `"[2001:db8::1]:4711"`, `1.2.3.4:80` → the address.
fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Ok(ip) = t.parse() {
        return Some(ip);
    }
    if let Some(rest) = t.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    t.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    /// The straightforward reading `cookie` must agree with.
    fn cookie_by_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.trim().trim_matches('"'))
    }

    proptest::proptest! {
        #[test]
        fn cookie_agrees_with_the_str_reading(
            values in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(
                b"ab=; \t\"x\x80\xff".to_vec()), 0..24), 1..4),
            name in proptest::sample::select(vec!["a", "b", "ab", "", "x"]),
        ) {
            let mut h = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    h.append(COOKIE, v);
                }
            }
            proptest::prop_assert_eq!(cookie(&h, name), cookie_by_str(&h, name));
        }
    }

    #[test]
    fn finds_cookie_among_many() {
        let h = headers(&[("cookie", "a=1; canary_id=abc-123"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "canary_id"), Some("abc-123"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "canary"), None);
    }

    #[test]
    fn valid_cookie_kept_malformed_replaced() {
        let client = ClientInfo::new("127.0.0.1:1".parse().unwrap(), false);
        let src = AffinityKey::Cookie("canary_id".into());
        let h = headers(&[("cookie", "canary_id=user-7")]);
        assert_eq!(user_key(&src, &h, &client, &[]).bytes(), b"user-7");
        for bad in [
            "canary_id=",
            "canary_id=a<b>",
            &format!("canary_id={}", "x".repeat(129)),
        ] {
            let h = headers(&[("cookie", bad)]);
            assert!(matches!(user_key(&src, &h, &client, &[]), UserKey::Minted(_)), "{bad}");
        }
        assert!(matches!(
            user_key(&src, &HeaderMap::new(), &client, &[]),
            UserKey::Minted(_)
        ));
    }

    #[test]
    fn minted_ids_are_distinct_hex() {
        let a = mint_id();
        let b = mint_id();
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn secure_only_over_tls() {
        let id = *b"0123456789abcdef0123456789abcdef";
        let plain = set_cookie("canary_id", &id, 60, false);
        assert_eq!(
            plain,
            "canary_id=0123456789abcdef0123456789abcdef; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        let tls = set_cookie("canary_id", &id, 60, true);
        assert!(tls.to_str().unwrap().ends_with("; SameSite=Lax; Secure"));
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        let untrusted_peer: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(&h, untrusted_peer, &trusted),
            untrusted_peer,
            "spoofed header ignored"
        );
        let proxy_peer: IpAddr = "10.2.2.2".parse().unwrap();
        assert_eq!(
            client_ip(&h, proxy_peer, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&h, proxy_peer, &[]),
            proxy_peer,
            "no trusted proxies: the peer"
        );
        let fwd = headers(&[("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")]);
        assert_eq!(
            client_ip(&fwd, proxy_peer, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let garbage = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(client_ip(&garbage, proxy_peer, &trusted), proxy_peer);
    }

    #[test]
    fn missing_header_key_falls_back_to_client_address() {
        let client = ClientInfo::new("192.0.2.5:1".parse().unwrap(), false);
        let src = AffinityKey::Header("x-user-id".into());
        assert_eq!(user_key(&src, &HeaderMap::new(), &client, &[]).bytes(), &[192, 0, 2, 5]);
        let h = headers(&[("x-user-id", "u1")]);
        assert_eq!(user_key(&src, &h, &client, &[]).bytes(), b"u1");
    }
}
