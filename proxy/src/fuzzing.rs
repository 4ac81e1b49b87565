//! Thin, allocation-tolerant entry points into crate-private parsing code, for the fuzz
//! targets in `fuzz/` and their corpus replay test. Not a stable API: hidden from the docs.

use std::net::IpAddr;

use canary_config::AffinityKey;
use http::{HeaderMap, HeaderValue};

use crate::affinity::{self, UserKey};
use crate::headers::ClientInfo;
use crate::route::Route;
use crate::routing_table::{Resolved, RoutingTable};
use crate::split::Variant;

/// A user key as [`user_key`] found or made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuzzKey {
    /// Bytes taken from the request (cookie or header value).
    Borrowed(Vec<u8>),
    /// The client address's octets.
    Ip(Vec<u8>),
    /// A freshly minted cookie id.
    Minted([u8; 32]),
}

/// A cookie's value from the request's `Cookie` headers (see `affinity::cookie`).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    affinity::cookie(headers, name)
}

/// The sticky user key of a request (see `affinity::user_key`).
pub fn user_key(source: &AffinityKey, headers: &HeaderMap, client: &ClientInfo, trusted: &[ipnet::IpNet]) -> FuzzKey {
    match affinity::user_key(source, headers, client, trusted) {
        UserKey::Borrowed(b) => FuzzKey::Borrowed(b.to_vec()),
        UserKey::Ip(octets, len) => FuzzKey::Ip(octets[..len].to_vec()),
        UserKey::Minted(id) => FuzzKey::Minted(id),
    }
}

/// The client address believed for a request (see `affinity::client_ip`).
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    affinity::client_ip(headers, peer, trusted)
}

/// A route's variant decision for a request and the `Set-Cookie` it would add.
pub fn decide(
    route: &Route,
    headers: &HeaderMap,
    client: &ClientInfo,
    trusted: &[ipnet::IpNet],
) -> (Variant, Option<HeaderValue>) {
    let d = route.decide(headers, client, trusted);
    (d.variant, d.set_cookie)
}

/// The route a request for `host` and `path` goes to and the path forwarded (see
/// `RoutingTable::resolve`); `Ok(None)` when no route serves it, `Err` when it is refused.
pub fn resolve(
    table: &RoutingTable,
    host: &str,
    path: &str,
) -> Result<Option<(String, String)>, canary_config::PathError> {
    Ok(match table.resolve(host, path)? {
        Resolved::Route(route, forwarded) => Some((route.name().to_owned(), forwarded.into_owned())),
        Resolved::NoRoute(_) => None,
    })
}
