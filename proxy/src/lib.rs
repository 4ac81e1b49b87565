//! canaryd's data plane: requests in, a stable or canary backend picked, bytes streamed through.
//!
//! The control plane builds a [`RoutingTable`] and stores it in a [`TableHandle`];
//! every request does exactly one atomic load of it.
#![forbid(unsafe_code)]

mod affinity;
mod balancer;
mod body;
mod clock;
mod connection;
mod connection_budget;
mod endpoint;
mod error;
mod forward;
mod headers;
mod linger;
mod metrics;
mod request_body;
mod request_framing;
mod route;
mod routing_table;
pub mod running;
mod server;
pub mod split;
pub mod tls;
mod upstream_pool;
pub mod upstream_tls;
pub mod window;

pub use endpoint::Endpoint;
pub use forward::{PoolOptions, Proxy, ProxyBody};
pub use headers::ClientInfo;
pub use metrics::{ProxyMetrics, VariantCounts};
pub use route::Route;
pub use routing_table::{BuildError, LiveRoute, RoutingTable, Settings, TableHandle};
pub use server::{serve, ServeOptions, TlsListener, TlsMetrics};
pub use split::Variant;

#[doc(hidden)]
pub mod fuzzing;
