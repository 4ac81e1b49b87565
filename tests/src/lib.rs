//! Support for the end-to-end tests: real backends on port 0, the real `canaryd`
//! binary, and HTTP clients — all on loopback.

pub mod api_tap;
pub mod backend;
pub mod canaryd;
pub mod client;
pub mod cluster;
pub mod fault_proxy;
pub mod h2_frames;
pub mod objects;
pub mod raw_http1;
pub mod rbac;
pub mod testbed;

pub use backend::{Backend, BackendHandle, Recorded, TlsSeen};
pub use canaryd::Canaryd;
pub use client::{admin_call, Client, Reply};

/// The two-sided 1-in-100,000 binomial bound (4.42 standard deviations) around `n * p`.
///
/// The suite makes a few dozen such checks per run on random draws; at 99.9 % (3.29 sd)
/// one of them failed a fair split every few runs.
pub fn binomial_bounds(n: u64, p: f64) -> (f64, f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 4.42 * sd, mean + 4.42 * sd)
}
