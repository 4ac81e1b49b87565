//! The data plane's Prometheus metrics, registered on a registry passed in.
//!
//! Label children are resolved once per route when a table is built, so the
//! request path only does atomic adds.

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
pub struct ProxyMetrics {
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
        Ok(Self {
            requests,
            durations,
            upstream_errors,
            fallbacks,
            no_route,
        })
    }

    /// Totals of one route and variant since start (control plane reads; not for the hot path).
    pub fn variant_counts(&self, route: &str, variant: Variant) -> VariantCounts {
        let v = variant.as_str();
        let class = |c: &str| self.requests.with_label_values(&[route, v, c]).get();
        VariantCounts {
            requests: CODE_CLASSES.iter().map(|c| class(c)).sum(),
            server_errors: class("5xx"),
            upstream_errors: UpstreamErrorReason::ALL
                .iter()
                .map(|r| self.upstream_errors.with_label_values(&[route, v, r]).get())
                .sum(),
        }
    }

    pub(crate) fn no_route(&self) {
        self.no_route.inc();
    }

    /// Resolves the label children of one route.
    pub(crate) fn for_route(&self, route: &str) -> RouteMetrics {
        let variant = |v: Variant| VariantMetrics {
            responses: CODE_CLASSES.map(|c| self.requests.with_label_values(&[route, v.as_str(), c])),
            upstream_errors: UpstreamErrorReason::ALL
                .map(|r| self.upstream_errors.with_label_values(&[route, v.as_str(), r])),
            fallbacks: self.fallbacks.with_label_values(&[route, v.as_str()]),
            duration: self.durations.with_label_values(&[route, v.as_str()]),
        };
        RouteMetrics {
            variants: [variant(Variant::Stable), variant(Variant::Canary)],
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

/// Pre-resolved counters of one route.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    variants: [VariantMetrics; 2],
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
    pub(crate) fn response(&self, variant: Variant, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.variants[variant as usize].responses[class].inc();
    }

    #[inline]
    pub(crate) fn duration(&self, variant: Variant, seconds: f64) {
        self.variants[variant as usize].duration.observe(seconds);
    }

    #[inline]
    pub(crate) fn upstream_error(&self, variant: Variant, reason: UpstreamErrorReason) {
        self.variants[variant as usize].upstream_errors[reason as usize].inc();
    }

    #[inline]
    pub(crate) fn fallback(&self, chosen: Variant) {
        self.variants[chosen as usize].fallbacks.inc();
    }
}
