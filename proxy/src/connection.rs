//! One accepted connection's life: which protocol it opens with, serving it with that
//! protocol's builder, and the timers, drain and cancellation budget that end it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::connection_budget::{ConnectionBudget, Spent};
use crate::request_framing::{FramingState, Phase};

/// How long a connection told to go away for spending its cancellation budget may take to
/// finish what it has before it is dropped.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client with prior knowledge opens with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// True when a plain-TCP client opens with the HTTP/2 preface (prior knowledge). Peeks, so
/// hyper reads every byte again.
pub(crate) async fn opens_with_h2_preface(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !H2_PREFACE.starts_with(&first[..n]) {
            return Ok(false);
        }
        if n == first.len() {
            return Ok(true);
        }
        // A part of the preface so far (a client writing it piecemeal, or an HTTP/1 head
        // that starts like it): peek does not wait for more than it has seen, so wait a
        // little before looking again. The caller's header-read timeout bounds this.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What [`drive`] watches a connection with, besides the connection.
pub(crate) struct ConnectionWatch<'a, F> {
    pub(crate) closing: F,
    pub(crate) budget: &'a ConnectionBudget,
    pub(crate) framing: &'a FramingState,
    pub(crate) timers: Timers,
    pub(crate) cut: Option<prometheus::IntCounter>,
    pub(crate) peer: SocketAddr,
}

/// Serves `io` with the builder of its protocol. The connection is boxed so that the
/// connection's task holds the state of the one protocol it speaks.
pub(crate) async fn serve_connection<I, S, B>(
    io: I,
    h2: bool,
    builders: &(http1::Builder, http2::Builder<TokioExecutor>),
    service: S,
    watch: ConnectionWatch<'_, impl Future<Output = ()>>,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    if h2 {
        let conn = Box::pin(builders.1.serve_connection(io, service));
        drive(conn, |c| c.graceful_shutdown(), watch).await
    } else {
        let conn = Box::pin(builders.0.serve_connection(io, service).with_upgrades());
        drive(conn, |c| c.graceful_shutdown(), watch).await
    }
}

/// A connection's client-side timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    pub(crate) accepted: tokio::time::Instant,
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
}

/// Runs one connection to its end: at shutdown, or when it has carried its requests, it is
/// closed gracefully (in-flight requests finish, at shutdown bounded by the drain in
/// `serve`); when it spends its cancellation budget it is sent GOAWAY and dropped after
/// [`CUT_GRACE`]. While it waits on its client with nothing in flight, an HTTP/1 request
/// head has `header_read` to arrive (from the accept for the first, from the end of the
/// last answer or the head's first byte for later ones: then it is dropped), and a
/// connection with no request started has `idle` (then it is closed gracefully; HTTP/2
/// gets GOAWAY, which hyper would never send by itself).
///
/// One timer per connection, ticking at half the shorter timeout, and no clock read per
/// request: a timeout fires when nothing changed for it over whole ticks, between 1 and
/// 1.5 times its length after the last change.
async fn drive<C, E>(
    mut conn: Pin<Box<C>>,
    shut_down: fn(Pin<&mut C>),
    watch: ConnectionWatch<'_, impl Future<Output = ()>>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let ConnectionWatch {
        closing,
        budget,
        framing,
        timers,
        cut,
        peer,
    } = watch;
    tokio::pin!(closing);
    let spent = budget.spent();
    tokio::pin!(spent);
    let period = (timers.header_read.min(timers.idle) / 2).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was seen at the last change, and when it was first seen.
    let mut seen = (framing.phase().1, budget.progress());
    let mut since = timers.accepted;
    let mut closed_idle = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            () = closing.as_mut() => {
                shut_down(conn.as_mut());
                return conn.await;
            }
            now = tick.tick() => {
                let (phase, changes) = framing.phase();
                let now_seen = (changes, budget.progress());
                if now_seen != seen {
                    (seen, since) = (now_seen, now);
                    continue;
                }
                let (started, finished) = now_seen.1;
                if started != finished {
                    // A request in flight: the proxy's own timeouts govern it.
                    continue;
                }
                let waited = now.saturating_duration_since(since);
                let head_wait = phase == Phase::InHead || (phase == Phase::BetweenRequests && started == 0);
                if head_wait && waited >= timers.header_read {
                    tracing::debug!(%peer, ?waited, "request headers too slow: closing");
                    return Ok(());
                }
                if !head_wait && waited >= timers.idle {
                    if closed_idle {
                        // Told to close an idle period ago and still open: drop it.
                        return Ok(());
                    }
                    shut_down(conn.as_mut());
                    closed_idle = true;
                    since = now;
                }
            }
            spent = spent.as_mut() => return cut_off(conn, shut_down, spent, cut, peer).await,
        }
    }
}

/// Ends a connection that spent a budget: gracefully for its request budget, within
/// [`CUT_GRACE`] for its cancellation budget.
async fn cut_off<C, E>(
    mut conn: Pin<Box<C>>,
    shut_down: fn(Pin<&mut C>),
    spent: Spent,
    cut: Option<prometheus::IntCounter>,
    peer: SocketAddr,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    shut_down(conn.as_mut());
    if spent == Spent::Requests {
        return conn.await;
    }
    if let Some(c) = &cut {
        c.inc();
    }
    tracing::info!(%peer, "connection cancelled too many requests (HTTP/2 rapid reset?): closing it");
    // Past the grace period the connection is dropped with whatever it still holds.
    tokio::time::timeout(CUT_GRACE, conn).await.unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// What `opens_with_h2_preface` says within 2 s of a client that writes `parts` with a
    /// pause between them, then closes.
    async fn sniff(parts: &[&[u8]]) -> Option<bool> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            for p in parts {
                s.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Closes: what was written stays readable.
        });
        let (server, _) = listener.accept().await.unwrap();
        let sniffed = tokio::time::timeout(Duration::from_secs(2), opens_with_h2_preface(&server)).await;
        client.await.unwrap();
        sniffed.ok().map(|r| r.expect("peek works"))
    }

    #[tokio::test]
    async fn only_the_whole_preface_means_http2() {
        assert_eq!(sniff(&[H2_PREFACE]).await, Some(true));
        let piecemeal: &[&[u8]] = &[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"];
        assert_eq!(sniff(piecemeal).await, Some(true), "piecemeal");
        assert_eq!(sniff(&[b"POST / HTTP/1.1\r\n"]).await, Some(false));
        assert_eq!(sniff(&[b"P", b"UT / HTTP/1.1\r\n"]).await, Some(false));
        let lookalike: &[&[u8]] = &[b"PRI * HTTP/1.1\r\n\r\n"];
        assert_eq!(sniff(lookalike).await, Some(false), "an HTTP/1 head starting like it");
        // Part of the preface and no more: undecided until the caller's header-read timeout.
        assert_eq!(sniff(&[b"PRI * HTTP"]).await, None);
    }
}
