//! Accept loop shared by the public (HTTP and HTTPS) and admin listeners: HTTP/1.1 and
//! h2 (prior knowledge or ALPN), optional TLS handshake, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::net::TcpListener;

use crate::connection::{opens_with_h2_preface, serve_connection, ConnectionWatch, Timers};
use crate::connection_budget::ConnectionBudget;
use crate::linger::LingeringStream;
use crate::request_framing::{FramingState, ScannedStream, Scanner};

/// Connection-level settings of a listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time to receive an HTTP/1 request's headers: from the accept for the first request,
    /// from its first byte for later ones.
    pub header_read_timeout: Duration,
    /// How long a connection may wait for its next request with nothing in flight.
    pub idle_timeout: Duration,
    /// How long in-flight requests may run after the shutdown signal.
    pub drain: Duration,
    /// What clients may send: connections, header and request-line sizes, HTTP/2 streams and
    /// windows, requests per connection (`max_body_bytes` is per route, not used here).
    pub limits: canary_config::Limits,
    /// Counts connections closed because of `max_connections`.
    pub shed: Option<prometheus::IntCounter>,
    /// Counts connections cut for spending their cancellation budget.
    pub cut: Option<prometheus::IntCounter>,
}

impl ServeOptions {
    /// The settings of a public listener from the config's `limits` and `timeouts`
    /// (no metrics attached).
    pub fn public(config: &canary_config::Config) -> Self {
        Self {
            header_read_timeout: config.timeouts.header_read,
            idle_timeout: config.timeouts.idle,
            drain: config.timeouts.drain,
            limits: config.limits,
            shed: None,
            cut: None,
        }
    }

    /// Defaults for an internal listener (admin, demo backends).
    pub fn internal(drain: Duration) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            drain,
            limits: canary_config::Limits {
                max_connections: 1_024,
                max_header_bytes: 64 * 1024,
                max_request_line_bytes: 64 * 1024,
                h2_max_header_list_bytes: 64 * 1024,
                h2_stream_window_bytes: 1024 * 1024,
                max_requests_per_connection: 0,
                ..canary_config::Limits::default()
            },
            shed: None,
            cut: None,
        }
    }
}

/// Keeps a connection counted while it lives.
struct ConnectionSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// TLS for a listener: the acceptor and its handshake counters.
#[derive(Clone)]
pub struct TlsListener {
    /// rustls acceptor (its config's resolver picks certificates by SNI).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Handshake outcomes.
    pub metrics: TlsMetrics,
    /// A handshake not done by then is dropped.
    pub handshake_timeout: Duration,
}

/// `canaryd_tls_handshakes_total{result}`.
#[derive(Clone)]
pub struct TlsMetrics(IntCounterVec);

impl TlsMetrics {
    /// Creates and registers the family.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let v = IntCounterVec::new(
            Opts::new(
                "canaryd_tls_handshakes_total",
                "TLS handshakes by result: ok, incompatible (protocol version or ciphers), no_certificate, malformed, timeout, other.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(v.clone()))?;
        for r in ["ok", "incompatible", "no_certificate", "malformed", "timeout", "other"] {
            v.with_label_values(&[r]);
        }
        Ok(Self(v))
    }

    fn count(&self, result: &str) {
        self.0.with_label_values(&[result]).inc();
    }
}

/// The label of a failed handshake.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(rustls::Error::InvalidMessage(_)) => "malformed",
        Some(rustls::Error::General(m)) if m.contains("certificate") => "no_certificate",
        Some(other) if other.to_string().contains("no server certificate") => "no_certificate",
        _ => "other",
    }
}

/// Serves the services made by `make_service` (one per connection, given the peer
/// address) on `listener` until `shutdown` resolves, then stops accepting (the
/// listening socket is closed, so new connections are refused) and waits up to
/// `opts.drain` for in-flight requests to finish. With `tls`, each connection first
/// completes a TLS handshake.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    make_service: M,
    opts: ServeOptions,
    tls: Option<TlsListener>,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // One builder per protocol rather than hyper-util's `auto`: its connection reserves room
    // for both protocols' state in every connection's task (≈ 9 KiB, most of it the HTTP/2
    // side an HTTP/1 connection never uses). The protocol is known before serving: ALPN
    // under TLS, the preface's first bytes (peeked) on plain TCP.
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Both the header-read and the idle timeout are run by `drive`, each on its own:
        // hyper's one timer would start at the end of the previous response.
        .header_read_timeout(None)
        .max_headers(opts.limits.max_header_count)
        // The read buffer's cap alone is not a head limit: how far past it a head gets
        // depends on how the bytes were split into reads. The head size check is exact.
        .max_header_size(opts.limits.max_header_bytes)
        .max_buf_size(opts.limits.max_header_bytes.max(8 * 1024));
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(opts.limits.h2_max_concurrent_streams)
        .initial_stream_window_size(opts.limits.h2_stream_window_bytes)
        .initial_connection_window_size(opts.limits.h2_connection_window_bytes)
        .max_header_list_size(opts.limits.h2_max_header_list_bytes);
    let builders = std::sync::Arc::new((h1, h2));
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let graceful = GracefulShutdown::new();
    // Tells connections still before their first request (silent, or in the TLS handshake)
    // to give up at shutdown instead of holding the drain until their own timeout.
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= opts.limits.max_connections {
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            // Shed: closing at once keeps what is admitted serving.
            if let Some(c) = &opts.shed {
                c.inc();
            }
            drop(stream);
            continue;
        }
        let slot = ConnectionSlot(open.clone());
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let accepted = tokio::time::Instant::now();
        let budget = ConnectionBudget::new(
            opts.limits.h2_max_cancelled_streams,
            opts.limits.max_requests_per_connection,
        );
        let framing = FramingState::new();
        let scanner = Scanner::new(
            framing.clone(),
            opts.limits.max_request_line_bytes,
            opts.limits.max_header_bytes,
        );
        let service = budget.wrap(make_service(peer), framing.clone());
        // Held until the connection ends, so the drain below waits for it.
        let drain_token = graceful.watcher();
        let builders = builders.clone();
        let tls = tls.clone();
        let first_byte_timeout = opts.header_read_timeout;
        let timers = Timers {
            accepted,
            header_read: opts.header_read_timeout,
            idle: opts.idle_timeout,
        };
        let cut = opts.cut.clone();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _drain_token = drain_token;
            let mut before_first_request = closing.clone();
            let before_first_request = async move {
                // An error means serve() is gone, which also means closing.
                let _gone = before_first_request.wait_for(|c| *c).await;
            };
            let closing = async move {
                let _gone = closing.wait_for(|c| *c).await;
            };
            let watch = ConnectionWatch {
                closing,
                budget: &budget,
                framing: &framing,
                timers,
                cut,
                peer,
            };
            let result = match tls {
                None => {
                    // The first bytes tell h1 from h2; a silent connection must not hold its
                    // slot for ever waiting for them.
                    let h2 = tokio::select! {
                        sniffed = tokio::time::timeout(first_byte_timeout, opens_with_h2_preface(&stream)) => match sniffed {
                            Ok(Ok(h2)) => h2,
                            _ => return,
                        },
                        () = before_first_request => return,
                    };
                    let stream = ScannedStream::new(LingeringStream::new(stream), scanner);
                    serve_connection(stream, h2, &builders, service, watch).await
                }
                Some(tls) => {
                    let handshake = tokio::select! {
                        h = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(LingeringStream::new(stream))) => h,
                        () = before_first_request => return,
                    };
                    let stream = match handshake {
                        Ok(Ok(s)) => {
                            tls.metrics.count("ok");
                            s
                        }
                        Ok(Err(e)) => {
                            tls.metrics.count(handshake_failure(&e));
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tls.metrics.count("timeout");
                            return;
                        }
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let stream = ScannedStream::new(stream, scanner);
                    serve_connection(stream, h2, &builders, service, watch).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    closing_tx.send_replace(true);
    tracing::info!(drain = ?opts.drain, "listener closed, draining in-flight requests");
    if tokio::time::timeout(opts.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout reached with requests still in flight");
    }
}
