//! Endpoint pick inside a variant: power of two choices on in-flight requests.

use std::sync::Arc;

use crate::endpoint::Endpoint;
use crate::upstream_tls::UpstreamTls;

/// The endpoints of one variant of one route, and how they are spoken to.
#[derive(Debug, Default)]
pub(crate) struct EndpointSet {
    endpoints: Box<[Arc<Endpoint>]>,
    /// The variant's HTTPS client; `None`: plain HTTP, connections opened by the proxy's connector.
    tls: Option<Arc<UpstreamTls>>,
}

impl EndpointSet {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, tls: Option<Arc<UpstreamTls>>) -> Self {
        Self {
            endpoints: endpoints.into_boxed_slice(),
            tls,
        }
    }

    /// The variant's HTTPS client, when it has `tls:`.
    #[inline]
    pub(crate) fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_deref()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    #[cfg(test)]
    pub(crate) fn all(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub(crate) fn healthy_count(&self) -> usize {
        self.endpoints.iter().filter(|e| e.is_healthy()).count()
    }

    /// True when at least one endpoint is not cooling off.
    pub(crate) fn has_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_healthy())
    }

    /// Picks the less loaded of two random healthy endpoints, skipping `exclude`.
    ///
    /// With every endpoint cooling off it still returns one (the cool-off may be
    /// stale, and a try beats a certain 503); `None` only when nothing is left.
    pub(crate) fn pick(&self, exclude: Option<&Endpoint>) -> Option<&Arc<Endpoint>> {
        let eps = &self.endpoints;
        let allowed = |e: &Arc<Endpoint>| exclude.is_none_or(|x| !std::ptr::eq(x, e.as_ref()));
        match eps.len() {
            0 => None,
            1 => eps.first().filter(|e| allowed(e)),
            n => {
                let a = fastrand::usize(0..n);
                let mut b = fastrand::usize(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&eps[a], &eps[b]);
                let ok = |e: &Arc<Endpoint>| allowed(e) && e.is_healthy();
                match (ok(ea), ok(eb)) {
                    (true, true) => Some(if eb.in_flight() < ea.in_flight() { eb } else { ea }),
                    (true, false) => Some(ea),
                    (false, true) => Some(eb),
                    // Both draws unusable: scan from a random start for a healthy one, then any allowed one.
                    (false, false) => {
                        let start = a;
                        let ring = || (0..n).map(move |i| &eps[(start + i) % n]);
                        ring().find(|e| ok(e)).or_else(|| ring().find(|e| allowed(e)))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(n: usize) -> EndpointSet {
        EndpointSet::new(
            (0..n)
                .map(|i| Arc::new(Endpoint::new(&format!("127.0.0.1:{}", 1000 + i)).unwrap()))
                .collect(),
            None,
        )
    }

    #[test]
    fn empty_and_single() {
        assert!(set(0).pick(None).is_none());
        let one = set(1);
        assert!(one.pick(None).is_some());
        assert!(one.pick(Some(&one.all()[0])).is_none());
    }

    #[test]
    fn prefers_less_loaded() {
        let s = set(2);
        let _busy = s.all()[0].start();
        for _ in 0..100 {
            assert_eq!(s.pick(None).unwrap().authority(), s.all()[1].authority());
        }
    }

    #[test]
    fn skips_unhealthy_and_excluded() {
        let s = set(3);
        s.all()[0].record_connect_failure(1, Duration::from_secs(60));
        for _ in 0..200 {
            let e = s.pick(Some(&s.all()[1])).unwrap();
            assert_eq!(e.authority(), s.all()[2].authority());
        }
        // All down: still returns something rather than nothing.
        s.all()[2].record_connect_failure(1, Duration::from_secs(60));
        s.all()[1].record_connect_failure(1, Duration::from_secs(60));
        assert!(s.pick(None).is_some());
        assert!(!s.has_healthy());
    }

    #[test]
    fn spreads_load() {
        let s = set(4);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let e = s.pick(None).unwrap();
            let i = s.all().iter().position(|x| Arc::ptr_eq(x, e)).unwrap();
            counts[i] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }
}
