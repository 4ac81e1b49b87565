//! A route as the data plane sees it: its shares, its endpoint sets (stable, canary and, when
//! it has one, baseline), its counters.

use std::sync::Arc;
use std::time::Instant;

use canary_config::{Affinity, AffinityKey, Overrides};
use http::{HeaderMap, HeaderValue};

use crate::affinity::{self, UserKey};
use crate::balancer::EndpointSet;
use crate::headers::ClientInfo;
use crate::metrics::{RouteMetrics, VariantCounts};
use crate::running::Running;
use crate::split::{self, Shares, Variant};
use crate::window::{self, Window};

/// The variant decided for a request, and the cookie to set when a user key was minted.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) variant: Variant,
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// One immutable route of a [`crate::RoutingTable`].
#[derive(Debug)]
pub struct Route {
    pub(crate) name: Box<str>,
    pub(crate) shares: Shares,
    pub(crate) salt: u64,
    pub(crate) affinity: Option<Affinity>,
    pub(crate) overrides: Overrides,
    pub(crate) canary_only: bool,
    pub(crate) expose_variant: bool,
    /// Forward the normalised path (else the client's bytes; routing used the normalised one).
    pub(crate) normalize_path: bool,
    pub(crate) redirect_https: bool,
    /// Largest request body forwarded (0: none).
    pub(crate) max_body_bytes: u64,
    /// The `Strict-Transport-Security` value sent over TLS.
    pub(crate) hsts: Option<HeaderValue>,
    /// Indexed by `variant as usize`; the baseline's set is empty on a route without one.
    pub(crate) variants: [EndpointSet; 3],
    /// Whether the route has a baseline backend.
    pub(crate) has_baseline: bool,
    /// Kept from table to table (series resolve once, on a variant's first request).
    pub(crate) metrics: Arc<RouteMetrics>,
    /// Per-variant sliding windows, when the route has an analysis (one per variant it has).
    pub(crate) windows: Option<Arc<[Window]>>,
    /// Per-variant running totals, when the route has an analysis (one per variant it has).
    pub(crate) running: Option<Arc<[Running]>>,
}

impl Route {
    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn endpoints(&self, variant: Variant) -> &EndpointSet {
        &self.variants[variant as usize]
    }

    /// The variants this route has: stable and canary, and baseline when configured.
    pub fn variants(&self) -> &'static [Variant] {
        if self.has_baseline {
            &Variant::ALL
        } else {
            &Variant::ALL[..2]
        }
    }

    /// The canary's and the baseline's shares of the traffic.
    pub fn shares(&self) -> Shares {
        self.shares
    }

    /// The sliding window of a variant, when the route has an analysis and that variant.
    pub fn window(&self, variant: Variant) -> Option<&Window> {
        self.windows.as_ref().and_then(|w| w.get(variant as usize))
    }

    /// The running totals of a variant, when the route has an analysis and that variant.
    pub fn running(&self, variant: Variant) -> Option<&Running> {
        self.running.as_ref().and_then(|r| r.get(variant as usize))
    }

    /// Totals of one variant since start (zero before its first request).
    pub fn counts(&self, variant: Variant) -> VariantCounts {
        self.metrics.counts(variant)
    }

    /// Whether the route has served a request since start (its request series exist).
    pub fn has_served(&self) -> bool {
        self.metrics.used()
    }

    /// Endpoints of a variant that are not cooling off, and all of them.
    pub fn healthy_endpoints(&self, variant: Variant) -> (usize, usize) {
        let set = self.endpoints(variant);
        (set.healthy_count(), set.len())
    }

    /// Records a finished exchange: counters, latency histogram and window (atomics only).
    #[inline]
    pub fn observe(&self, variant: Variant, status: http::StatusCode, upstream_error: bool, started: Instant) {
        let latency = started.elapsed();
        self.metrics.response(variant, status, latency.as_secs_f64());
        if let Some(w) = self.window(variant) {
            w.record(window::second_of(started), status.as_u16(), upstream_error, latency);
        }
        if let Some(r) = self.running(variant) {
            r.record(status.as_u16(), latency);
        }
    }

    /// The variant this request is decided to, before endpoint availability.
    /// First match wins: `canary_only`, override header, override cookie, affinity, weight.
    #[inline]
    pub(crate) fn decide(&self, headers: &HeaderMap, client: &ClientInfo, trusted: &[ipnet::IpNet]) -> Decision {
        let decided = |variant| Decision {
            variant,
            set_cookie: None,
        };
        if self.canary_only {
            return decided(Variant::Canary);
        }
        if let Some(forced) = self.forced(headers) {
            return decided(forced);
        }
        let Some(affinity) = &self.affinity else {
            return decided(split::weighted(self.shares));
        };
        let key = affinity::user_key(&affinity.key, headers, client, trusted);
        let variant = split::sticky(self.shares, self.salt, key.bytes());
        let set_cookie = match (&key, &affinity.key) {
            (UserKey::Minted(id), AffinityKey::Cookie(name)) => Some(affinity::set_cookie(
                name,
                id,
                affinity.cookie_max_age.as_secs(),
                client.tls,
            )),
            _ => None,
        };
        Decision { variant, set_cookie }
    }

    /// A tester's `always` / `never` in the override header, then the override cookie.
    fn forced(&self, headers: &HeaderMap) -> Option<Variant> {
        let parse = |v: &str| {
            if v.eq_ignore_ascii_case("always") {
                Some(Variant::Canary)
            } else if v.eq_ignore_ascii_case("never") {
                Some(Variant::Stable)
            } else {
                None // other values are ignored, not errors
            }
        };
        let header = self
            .overrides
            .header
            .as_deref()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok());
        let by_header = header.and_then(|v| match &self.overrides.header_match {
            // With a value or pattern (ingress-nginx style), a match means canary and anything else is ignored.
            Some(m) => m.matches(v).then_some(Variant::Canary),
            None => parse(v.trim()),
        });
        by_header.or_else(|| {
            let name = self.overrides.cookie.as_deref()?;
            affinity::cookie(headers, name).and_then(parse)
        })
    }

    /// The variant that will actually serve: the decided one if it has a usable
    /// endpoint, else the other one if that has (counted as a fallback).
    /// `None` when the route has no endpoints at all.
    #[inline]
    pub(crate) fn serving_variant(&self, decided: Variant) -> Option<Variant> {
        let chosen = self.endpoints(decided);
        let other = self.endpoints(decided.other());
        if !chosen.is_empty() && (chosen.has_healthy() || !other.has_healthy()) {
            return Some(decided);
        }
        if other.is_empty() {
            return None;
        }
        self.metrics.fallback(decided);
        Some(decided.other())
    }
}
