//! The data plane's coarse monotonic clock: milliseconds since the process first asked, in a
//! `u64` that fits an atomic (cool-off deadlines, certificate reload throttles). Not wall
//! time: the control plane's `state::now_ms` is milliseconds since the Unix epoch.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call, plus one, so that 0 can mean "never" or "healthy".
pub(crate) fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
