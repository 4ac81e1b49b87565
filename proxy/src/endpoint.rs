//! One upstream endpoint's live state: in-flight count and passive health.
//!
//! Endpoints outlive routing tables: a rebuilt table reuses the `Arc<Endpoint>`
//! of every address it still has, so health and load survive reloads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::clock::monotonic_ms;
use crate::upstream_pool::{PoolOwner, UpstreamConn, UpstreamPool};

/// An upstream address with its load and health counters.
#[derive(Debug)]
pub struct Endpoint {
    authority: Authority,
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Milliseconds since [`epoch`] until which the endpoint is skipped; 0 = healthy.
    down_until_ms: AtomicU64,
    /// `scheme://authority`, what the connector dials.
    connect_uri: Uri,
    /// Idle keep-alive connections to it.
    pool: UpstreamPool,
}

impl Endpoint {
    /// A fresh, healthy endpoint. `authority` is already validated by the config crate.
    pub fn new(authority: &str) -> Result<Self, http::uri::InvalidUri> {
        Self::with_scheme(authority, false)
    }

    /// A fresh endpoint reached over HTTPS when `https`.
    pub(crate) fn with_scheme(authority: &str, https: bool) -> Result<Self, http::uri::InvalidUri> {
        let authority: Authority = authority.parse()?;
        let connect_uri = Uri::builder()
            .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme, valid authority and / make a URI");
        Ok(Self {
            authority,
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            connect_uri,
            pool: UpstreamPool::default(),
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `http://host:port` or `https://host:port`: what a connection is opened to.
    pub(crate) fn connect_uri(&self) -> &Uri {
        &self.connect_uri
    }

    /// Requests currently sent to this endpoint and not finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub(crate) fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// False while the endpoint is in its cool-off after repeated connect failures.
    pub fn is_healthy(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || monotonic_ms() >= until
    }

    /// A connect failure; after `threshold` in a row the endpoint is skipped for `cooloff`.
    pub(crate) fn record_connect_failure(&self, threshold: u32, cooloff: Duration) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= threshold {
            let until = monotonic_ms() + cooloff.as_millis() as u64;
            self.down_until_ms.store(until.max(1), Ordering::Relaxed);
            // The next probe after the cool-off gets a fresh count of one failure to trip again.
            self.consecutive_failures
                .store(threshold.saturating_sub(1), Ordering::Relaxed);
            tracing::warn!(endpoint = %self.authority, failures, cooloff = ?cooloff, "endpoint taken out after connect failures");
        }
    }

    /// A successful exchange resets the failure count.
    #[inline]
    pub(crate) fn record_success(&self) {
        // Plain loads first: the common healthy case does no writes to shared cache lines.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// Its idle keep-alive connections.
impl PoolOwner for Endpoint {
    #[inline]
    fn pool(&self) -> &UpstreamPool {
        &self.pool
    }
}

/// Guard that keeps a request counted in its endpoint's in-flight total.
#[derive(Debug)]
pub(crate) struct InFlight(std::sync::Arc<Endpoint>);

impl InFlight {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.0
    }

    /// Gives `conn` back to this endpoint's pool (its response was read to the end).
    pub(crate) fn checkin(&self, conn: UpstreamConn) {
        crate::upstream_pool::checkin(&self.0, conn);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn trips_after_threshold_and_recovers() {
        let ep = Endpoint::new("127.0.0.1:1").unwrap();
        ep.record_connect_failure(3, Duration::from_millis(50));
        ep.record_connect_failure(3, Duration::from_millis(50));
        assert!(ep.is_healthy());
        ep.record_connect_failure(3, Duration::from_millis(50));
        assert!(!ep.is_healthy());
        std::thread::sleep(Duration::from_millis(60));
        assert!(ep.is_healthy(), "back after cool-off");
        // One more failure after the cool-off trips it again at once.
        ep.record_connect_failure(3, Duration::from_millis(50));
        assert!(!ep.is_healthy());
        ep.record_success();
        assert!(ep.is_healthy());
    }

    #[test]
    fn in_flight_guard() {
        let ep = Arc::new(Endpoint::new("127.0.0.1:1").unwrap());
        let a = ep.start();
        let b = ep.start();
        assert_eq!(ep.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(ep.in_flight(), 0);
    }
}
