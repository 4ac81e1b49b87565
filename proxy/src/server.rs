//! Accept loop shared by the public and admin listeners: HTTP/1.1 and h2c, graceful drain.

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
use tokio::net::TcpListener;

/// Connection-level settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time to receive a request's headers, and the idle limit between keep-alive requests.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after the shutdown signal.
    pub drain: Duration,
}

/// Serves the services made by `make_service` (one per connection, given the peer
/// address) on `listener` until `shutdown` resolves, then stops accepting (the
/// listening socket is closed, so new connections are refused) and waits up to
/// `opts.drain` for in-flight requests to finish.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    make_service: M,
    opts: ServeOptions,
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
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
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
