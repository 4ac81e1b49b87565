//! Running totals of a route's variant since it was first built: the sequential analysis reads
//! them at the start of a rollout and at every judgement, and judges the difference.
//!
//! Unlike the window's ring they never forget, and their latency histogram is fine: sixteen
//! buckets per doubling (each at most 6.25 % wider than the one below), from 64 µs to 16.8 s.
//! A quantile is only known to a bucket, so a ratio of two quantiles is known to within the
//! two buckets around each: with eight per doubling that was up to 25 %, and a canary a few
//! percent slower than stable, its median one bucket above, could never be shown within a
//! 20 % limit; with sixteen it is at most 12.5 %. Writers only do atomic adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const PER_OCTAVE: u32 = 16;
const SUB_BITS: u32 = PER_OCTAVE.trailing_zeros();
const FIRST_OCTAVE: u32 = 6; // 2^6 µs = 64 µs
const OCTAVES: u32 = 18; // up to 2^24 µs = 16.8 s
/// Latency buckets: one below 64 µs, sixteen per doubling, one above 16.8 s.
pub const BUCKETS: usize = 2 + (PER_OCTAVE * OCTAVES) as usize;

/// The bucket of a response time: integer operations only (the hot path).
#[inline]
pub fn bucket(latency: Duration) -> usize {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if us < 1 << FIRST_OCTAVE {
        return 0;
    }
    let msb = 63 - us.leading_zeros();
    let sub = (us >> (msb - SUB_BITS)) & u64::from(PER_OCTAVE - 1);
    (1 + ((msb - FIRST_OCTAVE) * PER_OCTAVE) as usize + sub as usize).min(BUCKETS - 1)
}

/// The exclusive upper bound of a bucket; `None` for the last, open one.
pub fn bucket_upper(bucket: usize) -> Option<Duration> {
    if bucket == 0 {
        return Some(Duration::from_micros(1 << FIRST_OCTAVE));
    }
    if bucket >= BUCKETS - 1 {
        return None;
    }
    let (octave, sub) = ((bucket - 1) as u32 / PER_OCTAVE, (bucket - 1) as u32 % PER_OCTAVE);
    let msb = FIRST_OCTAVE + octave;
    Some(Duration::from_micros(
        u64::from(PER_OCTAVE + 1 + sub) << (msb - SUB_BITS),
    ))
}

/// One variant's running totals.
#[derive(Debug)]
pub struct Running {
    requests: AtomicU64,
    server_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Running {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Running {
    /// Records one response.
    #[inline]
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            self.server_errors.fetch_add(1, Relaxed);
        }
        self.latency[bucket(latency)].fetch_add(1, Relaxed);
    }

    /// The totals now.
    pub fn read(&self) -> Totals {
        Totals {
            requests: self.requests.load(Relaxed),
            server_errors: self.server_errors.load(Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Relaxed)),
        }
    }
}

/// Responses, 5xx and the latency histogram over some span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Responses.
    pub requests: u64,
    /// 5xx responses (the proxy's own 502/503/504 included).
    pub server_errors: u64,
    /// Responses per latency bucket (see [`bucket`]).
    pub latency: [u64; BUCKETS],
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            requests: 0,
            server_errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Totals {
    /// Records one response (for simulations and tests; the proxy uses [`Running`]).
    pub fn record(&mut self, status: u16, latency: Duration) {
        self.requests += 1;
        self.server_errors += u64::from(status >= 500);
        self.latency[bucket(latency)] += 1;
    }

    /// What was added since `earlier` (a reading of the same totals); `None` when `earlier`
    /// is not an earlier reading of them.
    pub fn since(&self, earlier: &Totals) -> Option<Totals> {
        let mut latency = [0; BUCKETS];
        for (i, out) in latency.iter_mut().enumerate() {
            *out = self.latency[i].checked_sub(earlier.latency[i])?;
        }
        Some(Totals {
            requests: self.requests.checked_sub(earlier.requests)?,
            server_errors: self.server_errors.checked_sub(earlier.server_errors)?,
            latency,
        })
    }

    /// The time below which `q` of the responses fell: the upper bound of its bucket (at most
    /// 6.25 % above it); `None` without responses or in the open last bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        bucket_upper(crate::window::quantile_bucket(&self.latency, q)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_at_most_6_25_percent_wide() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(63)), 0);
        assert_eq!(bucket(Duration::from_micros(64)), 1);
        assert_eq!(bucket(Duration::from_secs(3_600)), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), None);
        let mut last = Duration::ZERO;
        for b in 0..BUCKETS - 1 {
            let upper = bucket_upper(b).unwrap();
            assert!(upper > last, "bucket {b}");
            if b > 0 {
                assert!(upper.as_secs_f64() / last.as_secs_f64() <= 1.0625 + 1e-9, "bucket {b}");
            }
            // The bucket holds everything from the bound below up to its own, exclusive.
            assert_eq!(bucket(upper - Duration::from_micros(1)), b, "bucket {b}");
            assert_eq!(bucket(upper), b + 1, "bucket {b}");
            last = upper;
        }
        assert!(bucket_upper(BUCKETS - 2).unwrap() >= Duration::from_secs(16));
    }

    #[test]
    fn differences_and_quantiles() {
        let r = Running::default();
        for i in 0..1_000u64 {
            r.record(
                if i < 10 { 503 } else { 200 },
                Duration::from_millis(if i < 990 { 20 } else { 800 }),
            );
        }
        let first = r.read();
        r.record(200, Duration::from_millis(5));
        let later = r.read();
        let diff = later.since(&first).unwrap();
        assert_eq!((diff.requests, diff.server_errors), (1, 0));
        assert!(first.since(&later).is_none());
        let median = first.quantile(0.5).unwrap();
        assert!(median > Duration::from_millis(20) && median.as_secs_f64() <= 0.020 * 1.0625);
        let p995 = first.quantile(0.995).unwrap();
        assert!(p995 > Duration::from_millis(800) && p995.as_secs_f64() <= 0.8 * 1.0625);
        assert_eq!(Totals::default().quantile(0.5), None);
    }
}
