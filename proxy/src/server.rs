//! Accept loop shared by the public (HTTP and HTTPS) and admin listeners: HTTP/1.1 and
//! h2 (prior knowledge or ALPN), optional TLS handshake, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::net::TcpListener;

/// Connection-level settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time to receive a request's headers, and the idle limit between keep-alive requests.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after the shutdown signal.
    pub drain: Duration,
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
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
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let service = make_service(peer);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    watcher
                        .watch(
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .into_owned(),
                        )
                        .await
                }
                Some(tls) => {
                    let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await;
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
                    watcher
                        .watch(
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .into_owned(),
                        )
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(drain = ?opts.drain, "listener closed, draining in-flight requests");
    if tokio::time::timeout(opts.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout reached with requests still in flight");
    }
}
