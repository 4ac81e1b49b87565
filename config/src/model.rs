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
    /// Standalone-mode state persistence.
    pub state: State,
    /// TLS termination.
    pub tls: Tls,
    /// Limits that protect the proxy from hostile or broken clients.
    pub limits: Limits,
    /// How request paths are normalised before routing.
    pub paths: crate::PathOptions,
    /// Peers whose `X-Forwarded-For` / `Forwarded` are believed for `client_ip` affinity.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// One log line per request at info level.
    pub access_log: bool,
    /// What kubernetes mode watches (ignored in standalone mode).
    pub kubernetes: Kubernetes,
    /// Routes in file order.
    pub routes: Vec<Route>,
}

/// Public listener addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// HTTP/1.1 and h2c.
    pub http: SocketAddr,
    /// HTTPS (TLS 1.2/1.3, ALPN h2 and http/1.1); needs `tls.certificates`.
    pub https: Option<SocketAddr>,
}

/// Limits on what clients may send; each default has its reason in the README. Read from
/// the file as it is (unknown keys refused); `validate.rs` checks the ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections per public listener; more are closed at once (and counted).
    pub max_connections: usize,
    /// Request headers per HTTP/1 request; more is a 431.
    pub max_header_count: usize,
    /// Bytes of an HTTP/1 request line plus headers; more is a 431.
    pub max_header_bytes: usize,
    /// Bytes of an HTTP/1 request line (method, target, version); more is a 414.
    pub max_request_line_bytes: usize,
    /// Default request body limit of routes (0: none); more is a 413.
    pub max_body_bytes: u64,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// Bytes of an HTTP/2 header list.
    pub h2_max_header_list_bytes: u32,
    /// Requests a client may cancel on one connection while they outnumber its completed
    /// ones; past it the connection gets GOAWAY and is closed (0: no limit).
    pub h2_max_cancelled_streams: u32,
    /// HTTP/2 stream flow-control window: request body bytes a client may send ahead of
    /// canaryd reading them.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 connection flow-control window: the same for all streams of a connection.
    pub h2_connection_window_bytes: u32,
    /// Requests per client connection before it is closed gracefully (0: no limit).
    pub max_requests_per_connection: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_count: 100,
            max_header_bytes: 32 * 1024,
            max_request_line_bytes: 8 * 1024,
            max_body_bytes: 0,
            h2_max_concurrent_streams: 100,
            h2_max_header_list_bytes: 32 * 1024,
            h2_max_cancelled_streams: 100,
            h2_stream_window_bytes: 64 * 1024,
            h2_connection_window_bytes: 1024 * 1024,
            max_requests_per_connection: 10_000,
        }
    }
}

/// TLS termination settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// Certificates, chosen by SNI.
    pub certificates: Vec<CertificateFiles>,
    /// `kubernetes.io/tls` Secrets (kubernetes mode), chosen by SNI like the files.
    pub secrets: Vec<CertificateSecret>,
    /// Refuse handshakes whose SNI matches no certificate (else the first certificate answers).
    pub reject_unknown_sni: bool,
}

/// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`), for some hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSecret {
    /// Hosts (exact or `*.` wildcard) this certificate answers for.
    pub hosts: Vec<HostPattern>,
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

/// A PEM certificate chain and key, for some hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// Hosts (exact or `*.` wildcard) this certificate answers for.
    pub hosts: Vec<HostPattern>,
    /// PEM chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// `Strict-Transport-Security` for responses over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// `max-age`.
    pub max_age: Duration,
    /// `includeSubDomains`.
    pub include_subdomains: bool,
}

/// Where standalone mode keeps its live state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The state file (written atomically).
    pub path: std::path::PathBuf,
}

/// Admin listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Address of the control API, `/metrics`, `/healthz` and `/readyz`; never the public port.
    pub listen: SocketAddr,
    /// Bearer tokens, `NAME ROLE TOKEN` per line; without it the API only runs on loopback.
    pub tokens_file: Option<std::path::PathBuf>,
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
    /// A client's request headers must arrive within this, counted from the accept for the
    /// first request and from its first byte for later ones.
    pub header_read: Duration,
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
    /// `path_prefix` is an exact path, not a prefix (Ingress `pathType: Exact`).
    pub path_exact: bool,
    /// The stable variant's backend.
    pub stable: Backend,
    /// The canary variant's backend.
    pub canary: Backend,
    /// Fresh pods of the stable version that get as much traffic as the canary, for the
    /// analysis to judge the canary against (instead of long-running stable pods).
    pub baseline: Option<Backend>,
    /// Share of requests (or of users, with affinity) sent to the canary.
    pub weight: Weight,
    /// Sticky assignment; `None` decides per request.
    pub affinity: Option<Affinity>,
    /// Tester overrides (`x-canary: always|never`).
    pub overrides: Overrides,
    /// Everyone goes to the canary (a tester's entry point such as `canary.app.example.com`).
    pub canary_only: bool,
    /// Also tell the client its variant in `x-canary-variant`.
    pub expose_variant: bool,
    /// Forward the normalised path (else the client's own bytes, though the route was
    /// chosen by the normalised one).
    pub normalize_path: bool,
    /// The rollout plan used when a rollout is started without its own.
    pub rollout: RolloutPlan,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    pub redirect_https: bool,
    /// Largest request body in bytes (0: none); more is a 413 before the backend sees it.
    pub max_body_bytes: u64,
    /// HSTS on responses over TLS.
    pub hsts: Option<Hsts>,
}

impl Route {
    /// The route's backends by variant name: stable, canary, and the baseline when it has one.
    pub fn backends(&self) -> impl Iterator<Item = (&'static str, &Backend)> {
        [("stable", &self.stable), ("canary", &self.canary)]
            .into_iter()
            .chain(self.baseline.as_ref().map(|b| ("baseline", b)))
    }
}

/// Steps and pace of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// Rising weights; the last one is usually 100.
    pub steps: Vec<Weight>,
    /// Time per step when steps advance by themselves; `None`: only by API call.
    pub interval: Option<Duration>,
    /// Automatic judgement of the canary; `None`: no automatic rollback.
    pub analysis: Option<Analysis>,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        let steps = [10.0, 25.0, 50.0, 100.0].map(|p| Weight::from_percent(p).expect("valid default steps"));
        Self {
            steps: steps.to_vec(),
            interval: None,
            analysis: None,
        }
    }
}

/// How the canary is judged every second, and when it is rolled back.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The sliding window judged.
    pub window: Duration,
    /// Canary responses in the window before any judgement; fewer is "inconclusive".
    pub min_requests: u64,
    /// Fail above this percent of canary 5xx (upstream errors included).
    pub max_error_rate: Option<f64>,
    /// Fail when the canary's error percent exceeds the stable's by more than this many points.
    pub max_error_rate_increase: Option<f64>,
    /// With it, the increase rule also needs a one-sided two-proportion z-test below this p-value.
    pub significance: Option<f64>,
    /// Fail when the canary's p99 time to response headers is above this.
    pub max_latency_p99: Option<Duration>,
    /// Fail when the canary's `latency_quantile` is more than this many percent above stable's.
    pub max_latency_increase: Option<f64>,
    /// The quantile of response times the latency increase rule compares (0.5..=0.999; default
    /// the median, which shows a general slowdown soonest).
    pub latency_quantile: f64,
    /// With it, every rule is judged sequentially on all traffic since the rollout began, with
    /// anytime-valid bounds: false aborts of a canary no worse than allowed stay below `alpha`
    /// however long and often it is judged (see the control crate's `sequential` module).
    pub alpha: Option<f64>,
    /// Consecutive failing judgements that abort the rollout.
    pub failures_before_abort: u32,
    /// POSTed a JSON body on abort.
    pub webhook: Option<String>,
    /// A PromQL check, for judging the canary across many replicas.
    pub prometheus: Option<PrometheusCheck>,
}

/// A PromQL instant query whose value must stay within bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusCheck {
    /// Prometheus base URL (`http://prometheus:9090`).
    pub url: String,
    /// The query; its first sample is judged.
    pub query: String,
    /// Fail above this.
    pub max: Option<f64>,
    /// Fail below this.
    pub min: Option<f64>,
    /// How often the query runs.
    pub interval: Duration,
}

/// Sticky assignment of users to variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// Where the user key comes from.
    pub key: AffinityKey,
    /// `Max-Age` of a minted cookie.
    pub cookie_max_age: Duration,
}

/// The source of a user's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityKey {
    /// A cookie of this name; minted when absent.
    Cookie(String),
    /// A request header of this (lower-case) name.
    Header(String),
    /// The client address (from trusted proxies' headers when the peer is one).
    ClientIp,
}

/// Names that force a variant with the values `always` or `never`; `None` = not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrides {
    /// Request header name, lower-case.
    pub header: Option<String>,
    /// With it, the header sends to the canary only when it has this value (else it is ignored),
    /// instead of `always` / `never` (ingress-nginx's `canary-by-header-value`/`-pattern`).
    pub header_match: Option<HeaderMatch>,
    /// Cookie name.
    pub cookie: Option<String>,
}

/// A header value that means "canary".
#[derive(Debug, Clone)]
pub enum HeaderMatch {
    /// Exactly this value.
    Value(String),
    /// A whole-value regular expression match.
    Pattern(regex::Regex),
}

impl HeaderMatch {
    /// Whether a header value asks for the canary.
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            HeaderMatch::Value(v) => v == value,
            HeaderMatch::Pattern(p) => p.is_match(value),
        }
    }
}

impl PartialEq for HeaderMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (HeaderMatch::Value(a), HeaderMatch::Value(b)) => a == b,
            (HeaderMatch::Pattern(a), HeaderMatch::Pattern(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for HeaderMatch {}

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
    /// Static endpoints; for a `kubernetes` source, the ones discovered so far.
    pub endpoints: Vec<Endpoint>,
    /// Endpoints discovered from the cluster (kubernetes mode).
    pub kubernetes: Option<KubeSource>,
    /// HTTPS to the endpoints; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
}

/// How canaryd speaks HTTPS to a variant's endpoints (`tls:` on `stable` / `canary`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamTls {
    /// Check the certificate chain and name. `false` is for testing only: anyone on the path
    /// can read and change the traffic.
    pub verify: bool,
    /// PEM file of the CA certificates trusted for these endpoints, instead of the built-in
    /// (Mozilla) roots. Never set when `verify` is false.
    pub ca: Option<std::path::PathBuf>,
    /// Name sent as SNI and that the certificate must carry; `None`: the endpoint's host
    /// (an IP endpoint then needs the IP as a subjectAltName).
    pub sni: Option<String>,
}

/// Endpoints watched in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubeSource {
    /// Namespace; `None`: the route's (a CanaryRoute's) or `kubernetes.namespace`.
    pub namespace: Option<String>,
    /// What to watch.
    pub target: KubeTarget,
}

/// The objects whose addresses are a variant's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KubeTarget {
    /// EndpointSlices labelled `kubernetes.io/service-name: NAME`, at a port of the Service.
    Service {
        /// The Service.
        name: String,
        /// The port, by name or number.
        port: PortRef,
    },
    /// Ready Pods matching a label selector (`id=app,type=canary`), at a container port.
    Selector {
        /// The label selector, as Kubernetes writes it.
        selector: String,
        /// The port.
        port: u16,
    },
}

/// A Service port by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// `http`
    Name(String),
    /// `8080`
    Number(u16),
}

/// Kubernetes-mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    /// Namespace of sources that name none, and of the leader Lease.
    pub namespace: String,
    /// Ingresses of this class become routes; `None`: Ingresses are not watched.
    pub ingress_class: Option<String>,
    /// Watch `CanaryRoute` custom resources.
    pub canary_routes: bool,
    /// Watch CanaryRoutes and Ingresses in this namespace only; `None`: all namespaces.
    pub watch_namespace: Option<String>,
    /// `namespace/name` of canaryd's own LoadBalancer Service, whose address goes in Ingress status.
    pub publish_service: Option<(String, String)>,
    /// Name of the leader-election Lease.
    pub lease_name: String,
    /// How long a leader's Lease lasts without renewal.
    pub lease_duration: Duration,
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
