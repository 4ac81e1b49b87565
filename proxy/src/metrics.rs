//! The data plane's Prometheus metrics, registered on a registry passed in.
//!
//! A route's label children are resolved on its first request per variant and kept
//! across table builds, so an idle route has no series (thousands of routes make no
//! scrape of their own) and the request path does atomic adds after one atomic load.

use std::sync::{Arc, OnceLock};

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::split::Variant;

/// HTTP status classes, in `code_class` label order.
pub(crate) const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why a request never got a response from an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorReason {
    /// TCP connect refused or timed out.
    Connect = 0,
    /// No response headers within `timeouts.response_header`.
    Timeout = 1,
    /// The connection broke or the response was malformed.
    Protocol = 2,
    /// The TLS handshake with an HTTPS upstream failed (certificate, name, version, timeout).
    Tls = 3,
    /// The upstream switched protocols (101) although the request did not ask for that switch.
    Upgrade = 4,
}

impl UpstreamErrorReason {
    const ALL: [&'static str; 5] = ["connect", "timeout", "protocol", "tls", "upgrade"];
}

/// The data plane's metric families.
#[derive(Clone)]
pub struct ProxyMetrics(Arc<Families>);

struct Families {
    requests: IntCounterVec,
    durations: HistogramVec,
    upstream_errors: IntCounterVec,
    fallbacks: IntCounterVec,
    no_route: IntCounter,
}

impl ProxyMetrics {
    /// Creates the families and registers them on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "canaryd_requests_total",
                "Responses sent, by route, serving variant and status class.",
            ),
            &["route", "variant", "code_class"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "canaryd_upstream_errors_total",
                "Requests that got no upstream response, by reason.",
            ),
            &["route", "variant", "reason"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "canaryd_fallbacks_total",
                "Requests whose chosen variant had no usable endpoint and went to the other variant; variant is the one chosen.",
            ),
            &["route", "variant"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "canaryd_request_duration_seconds",
                "Time from receiving a request to sending the response headers, by route and serving variant.",
            )
            .buckets(
                crate::window::LATENCY_BOUNDS_MS
                    .iter()
                    .map(|ms| *ms as f64 / 1000.0)
                    .collect(),
            ),
            &["route", "variant"],
        )?;
        let no_route = IntCounter::new("canaryd_no_route_total", "Requests that matched no route (404).")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(no_route.clone()))?;
        Ok(Self(Arc::new(Families {
            requests,
            durations,
            upstream_errors,
            fallbacks,
            no_route,
        })))
    }

    pub(crate) fn no_route(&self) {
        self.0.no_route.inc();
    }

    /// The (not yet resolved) counters of route `route`.
    pub(crate) fn for_route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            families: self.clone(),
            variants: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        }
    }
}

impl Families {
    /// Creates (or finds) every series of one route's variant, all at once, so that ratios
    /// such as 5xx / all have both terms from the first request on.
    fn variant(&self, route: &str, v: Variant) -> VariantMetrics {
        VariantMetrics {
            responses: CODE_CLASSES.map(|c| self.requests.with_label_values(&[route, v.as_str(), c])),
            upstream_errors: UpstreamErrorReason::ALL
                .map(|r| self.upstream_errors.with_label_values(&[route, v.as_str(), r])),
            fallbacks: self.fallbacks.with_label_values(&[route, v.as_str()]),
            duration: self.durations.with_label_values(&[route, v.as_str()]),
        }
    }
}

/// Request totals of one route and variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariantCounts {
    /// Responses sent.
    pub requests: u64,
    /// Of which 5xx (including the proxy's own 502/503/504).
    pub server_errors: u64,
    /// Requests that got no upstream response.
    pub upstream_errors: u64,
}

/// The counters of one route, resolved per variant on first use.
pub(crate) struct RouteMetrics {
    route: Box<str>,
    families: ProxyMetrics,
    variants: [OnceLock<VariantMetrics>; 3],
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .field("used", &self.used())
            .finish()
    }
}

#[derive(Debug)]
struct VariantMetrics {
    responses: [IntCounter; 5],
    upstream_errors: [IntCounter; 5],
    fallbacks: IntCounter,
    duration: Histogram,
}

impl RouteMetrics {
    #[inline]
    fn variant(&self, v: Variant) -> &VariantMetrics {
        self.variants[v as usize].get_or_init(|| self.families.0.variant(&self.route, v))
    }

    /// Whether any request of this route was counted (its series exist).
    pub(crate) fn used(&self) -> bool {
        self.variants.iter().any(|v| v.get().is_some())
    }

    /// Totals of one variant since start; zero, without creating series, before its first request.
    pub(crate) fn counts(&self, v: Variant) -> VariantCounts {
        let Some(m) = self.variants[v as usize].get() else {
            return VariantCounts::default();
        };
        VariantCounts {
            requests: m.responses.iter().map(IntCounter::get).sum(),
            server_errors: m.responses[4].get(),
            upstream_errors: m.upstream_errors.iter().map(IntCounter::get).sum(),
        }
    }

    /// Counts a response and its latency (one lookup of the variant's counters for both).
    #[inline]
    pub(crate) fn response(&self, variant: Variant, status: http::StatusCode, seconds: f64) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        let m = self.variant(variant);
        m.responses[class].inc();
        m.duration.observe(seconds);
    }

    #[inline]
    pub(crate) fn upstream_error(&self, variant: Variant, reason: UpstreamErrorReason) {
        self.variant(variant).upstream_errors[reason as usize].inc();
    }

    #[inline]
    pub(crate) fn fallback(&self, chosen: Variant) {
        self.variant(chosen).fallbacks.inc();
    }
}
