//! The validated config: every value here has passed [`crate::parse`]'s checks.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Weight;

/// A whole, valid canaryd config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Public listeners.
    pub listen: Listen,
    /// The admin listener (health, readiness).
    pub admin: Admin,
    /// Upstream and connection timeouts.
    pub timeouts: Timeouts,
    /// When an endpoint is skipped after connect failures.
    pub passive_health: PassiveHealth,
    /// One log line per request at info level.
    pub access_log: bool,
    /// Routes in file order.
    pub routes: Vec<Route>,
}

/// Public listener addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// HTTP/1.1 and h2c.
    pub http: SocketAddr,
}

/// Admin listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Address of `/healthz` and `/readyz`; never the public port.
    pub listen: SocketAddr,
}

/// Timeouts, all non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to an upstream endpoint.
    pub connect: Duration,
    /// From sending the request to the upstream's response headers.
    pub response_header: Duration,
    /// Idle pooled upstream connections are closed after this; keep it below the backends' keep-alive timeout.
    pub upstream_idle: Duration,
    /// Idle keep-alive connections (client side) are closed after this.
    pub idle: Duration,
    /// How long in-flight requests may run after a shutdown signal.
    pub drain: Duration,
}

/// Passive health checking of endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive connect failures that take an endpoint out.
    pub failures: u32,
    /// How long it stays out before it is tried again.
    pub cooloff: Duration,
}

/// One route: hosts + path prefix → stable and canary backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Unique name (DNS-label syntax), used in the API and metrics.
    pub name: String,
    /// Hosts served; empty means any host.
    pub hosts: Vec<HostPattern>,
    /// Normalised path prefix: starts with `/`, no trailing `/` except the root.
    pub path_prefix: String,
    /// The stable variant's backend.
    pub stable: Backend,
    /// The canary variant's backend.
    pub canary: Backend,
    /// Share of requests sent to the canary.
    pub weight: Weight,
}

/// A host to match, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `coolapp.example.com`
    Exact(String),
    /// `*.coolapp.example.com`, holding `coolapp.example.com`; matches exactly one more label.
    Wildcard(String),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(h) => write!(f, "*.{h}"),
        }
    }
}

/// Where a variant's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Backend {
    /// Static endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// An upstream address `host:port` (IP literal or DNS name), as written in an HTTP authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint(pub(crate) String);

impl Endpoint {
    /// The authority form, e.g. `10.0.0.1:8080` or `[::1]:8080`.
    pub fn authority(&self) -> &str {
        &self.0
    }

    /// Parses and checks `host:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        crate::validate::endpoint(text)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
