//! Sliding windows of per-second traffic figures per route and variant, for the analysis.
//!
//! A ring of one-second buckets, each holding the second it counts, requests, 5xx,
//! upstream errors and a latency histogram. Writers only do atomic adds; the bucket of a
//! new second is claimed with a compare-and-swap and cleared by the claimer (a request
//! landing in that instant may be lost from the window — never from the Prometheus counters).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets in milliseconds (time to response headers);
/// the same bounds as `canaryd_request_duration_seconds`. The last bucket is open.
pub const LATENCY_BOUNDS_MS: [u64; 18] = [
    1, 3, 5, 10, 25, 50, 75, 100, 150, 250, 350, 500, 750, 1_000, 1_500, 2_500, 5_000, 10_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

#[derive(Debug, Default)]
struct Second {
    second: AtomicU64,
    requests: AtomicU64,
    server_errors: AtomicU64,
    upstream_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// The traffic of one variant over the last seconds.
#[derive(Debug)]
pub struct Window {
    ring: Box<[Second]>,
}

/// Totals over a span of seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowTotals {
    /// Responses.
    pub requests: u64,
    /// 5xx responses (the proxy's own 502/503/504 included).
    pub server_errors: u64,
    /// Requests that got no upstream response.
    pub upstream_errors: u64,
    /// Requests per latency bucket (see [`LATENCY_BOUNDS_MS`]).
    pub latency: [u64; BUCKETS],
}

impl WindowTotals {
    /// Share of responses that were 5xx, 0..=1 (0 with no requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.server_errors as f64 / self.requests as f64
        }
    }

    /// The latency below which `q` of the requests fell: the upper bound of the bucket
    /// where the running count reaches `q` (an over-estimate by at most one bucket).
    /// `None` with no requests; `Duration::MAX` when it falls in the open last bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let i = quantile_bucket(&self.latency, q)?;
        Some(
            LATENCY_BOUNDS_MS
                .get(i)
                .map_or(Duration::MAX, |ms| Duration::from_millis(*ms)),
        )
    }
}

/// The bucket in which the running count of a histogram reaches the share `q` of its total;
/// `None` when it is empty.
pub fn quantile_bucket(counts: &[u64], q: f64) -> Option<usize> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    counts.iter().position(|n| {
        seen += n;
        seen >= rank
    })
}

/// Seconds since the process's clock origin, from an `Instant` the caller already has.
#[inline]
pub fn second_of(at: Instant) -> u64 {
    // +1 keeps 0 meaning "never used".
    at.saturating_duration_since(origin()).as_secs() + 1
}

/// The current second on the same clock as [`second_of`].
pub fn now_second() -> u64 {
    second_of(Instant::now())
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Window {
    /// A window able to look `seconds` back.
    pub fn new(seconds: u64) -> Self {
        let len = seconds.clamp(1, 3_600) as usize + 1;
        Self {
            ring: (0..len).map(|_| Second::default()).collect(),
        }
    }

    /// How many seconds it can look back.
    pub fn seconds(&self) -> u64 {
        self.ring.len() as u64 - 1
    }

    #[inline]
    fn slot(&self, second: u64) -> &Second {
        let s = &self.ring[(second % self.ring.len() as u64) as usize];
        let seen = s.second.load(Relaxed);
        if seen != second && seen < second && s.second.compare_exchange(seen, second, Relaxed, Relaxed).is_ok() {
            s.requests.store(0, Relaxed);
            s.server_errors.store(0, Relaxed);
            s.upstream_errors.store(0, Relaxed);
            for b in &s.latency {
                b.store(0, Relaxed);
            }
        }
        s
    }

    /// Records one response (atomic adds only).
    #[inline]
    pub fn record(&self, second: u64, status: u16, upstream_error: bool, latency: Duration) {
        let s = self.slot(second);
        s.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            s.server_errors.fetch_add(1, Relaxed);
        }
        if upstream_error {
            s.upstream_errors.fetch_add(1, Relaxed);
        }
        let ms = latency.as_millis() as u64;
        let bucket = LATENCY_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS - 1);
        s.latency[bucket].fetch_add(1, Relaxed);
    }

    /// Totals of the `seconds` seconds up to and including `now`.
    pub fn totals(&self, now: u64, seconds: u64) -> WindowTotals {
        let from = now.saturating_sub(seconds.min(self.seconds()).saturating_sub(1));
        let mut t = WindowTotals::default();
        for s in self.ring.iter() {
            let second = s.second.load(Relaxed);
            if second < from || second > now || second == 0 {
                continue;
            }
            t.requests += s.requests.load(Relaxed);
            t.server_errors += s.server_errors.load(Relaxed);
            t.upstream_errors += s.upstream_errors.load(Relaxed);
            for (sum, b) in t.latency.iter_mut().zip(&s.latency) {
                *sum += b.load(Relaxed);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_only() {
        let w = Window::new(10);
        for second in 1..=30 {
            w.record(second, 200, false, Duration::from_millis(4));
            w.record(second, 503, true, Duration::from_millis(800));
        }
        let t = w.totals(30, 10);
        assert_eq!((t.requests, t.server_errors, t.upstream_errors), (20, 10, 10));
        assert!((t.error_rate() - 0.5).abs() < 1e-9);
        assert_eq!(w.totals(30, 3).requests, 6);
        assert_eq!(w.totals(100, 10).requests, 0, "old seconds fall out");
    }

    #[test]
    fn quantiles_from_buckets() {
        let w = Window::new(5);
        for i in 0..1_000u64 {
            let ms = if i < 985 { 20 } else { 800 };
            w.record(1, 200, false, Duration::from_millis(ms));
        }
        let t = w.totals(1, 5);
        assert_eq!(t.quantile(0.5), Some(Duration::from_millis(25)));
        assert_eq!(
            t.quantile(0.99),
            Some(Duration::from_millis(1_000)),
            "800 ms lands in the ≤1 s bucket"
        );
        assert_eq!(WindowTotals::default().quantile(0.99), None);
        w.record(1, 200, false, Duration::from_secs(60));
        assert_eq!(w.totals(1, 5).quantile(1.0), Some(Duration::MAX));
    }

    #[test]
    fn concurrent_writers_lose_nothing_within_a_second() {
        let w = std::sync::Arc::new(Window::new(5));
        w.record(7, 200, false, Duration::ZERO);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        w.record(7, 500, false, Duration::from_millis(1));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let t = w.totals(7, 1);
        assert_eq!((t.requests, t.server_errors), (40_001, 40_000));
    }
}
