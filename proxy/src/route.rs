//! A route as the data plane sees it: its weight, its two endpoint sets, its counters.

use crate::balancer::EndpointSet;
use crate::metrics::RouteMetrics;
use crate::split::{self, Variant};

/// One immutable route of a [`crate::RoutingTable`].
#[derive(Debug)]
pub struct Route {
    pub(crate) name: Box<str>,
    pub(crate) weight_ppm: u32,
    pub(crate) variants: [EndpointSet; 2],
    pub(crate) metrics: RouteMetrics,
}

impl Route {
    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Canary share in parts per million.
    pub fn weight_ppm(&self) -> u32 {
        self.weight_ppm
    }

    /// Number of endpoints configured for a variant.
    pub fn endpoint_count(&self, variant: Variant) -> usize {
        self.variants[variant as usize].len()
    }

    pub(crate) fn endpoints(&self, variant: Variant) -> &EndpointSet {
        &self.variants[variant as usize]
    }

    /// The variant this request is decided to, before endpoint availability.
    #[inline]
    pub(crate) fn decide(&self) -> Variant {
        split::weighted(self.weight_ppm)
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
