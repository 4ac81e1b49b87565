//! Keep-alive HTTP/1.1 connections to one endpoint, handed from request to request without locks.
//!
//! Each endpoint owns one pool (a [`PoolOwner`]): a lock-free queue of idle connections. A request takes one
//! (or opens one), and the response body gives it back once it has been read to its end, so a
//! connection is only ever reused in a state where HTTP/1.1 framing says the next response is
//! the next request's. It replaces hyper-util's legacy client, whose pool takes a mutex, hashes
//! the scheme and authority, and spawns a task per request to wait for the connection to be
//! idle again (measured: 45,958 → 37,742 instructions per proxied request).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};

use crate::request_body::UpstreamBody;

/// Idle connections kept per endpoint; a connection given back past this is closed.
/// (Small under test, so the bound is reached within the file-descriptor limit.)
pub(crate) const MAX_IDLE_PER_ENDPOINT: usize = if cfg!(test) { 8 } else { 1024 };

/// One HTTP/1.1 connection to an endpoint, with what decides whether it may be reused.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    sender: SendRequest<UpstreamBody>,
    /// The TLS client it was made with (0: plain TCP): a connection of a replaced client
    /// (a rotated CA) is never reused.
    generation: u64,
    /// How long it may stay idle before the reaper closes it (the setting at its last use).
    idle_timeout: Duration,
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// The idle connections of one endpoint.
#[derive(Default)]
pub(crate) struct UpstreamPool {
    idle: SegQueue<Idle>,
    /// Entries in `idle` (the queue's own length is costlier to read).
    len: AtomicUsize,
    /// True while a task is closing this pool's expired connections.
    reaper: AtomicBool,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("idle", &self.len.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why [`send`] got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened (TCP connect or TLS handshake).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// A connection was there, the exchange on it failed.
    Exchange(hyper::Error),
}

impl UpstreamPool {
    /// Idle connections now held.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// An idle connection of `generation` that is still open and not idle for `idle_timeout`
    /// (the current setting: a reload applies from each connection's next use); the others
    /// met on the way are closed.
    fn checkout(&self, generation: u64, idle_timeout: Duration) -> Option<UpstreamConn> {
        let mut now = None;
        while let Some(idle) = self.idle.pop() {
            self.len.fetch_sub(1, Ordering::SeqCst);
            let now = *now.get_or_insert_with(Instant::now);
            if idle.conn.generation == generation
                && !idle.conn.sender.is_closed()
                && now.saturating_duration_since(idle.since) < idle_timeout
            {
                let mut conn = idle.conn;
                conn.idle_timeout = idle_timeout;
                return Some(conn);
            }
        }
        None
    }

    /// Closes the connections idle for longer than their timeout; keeps the others.
    fn evict_expired(&self) {
        let now = Instant::now();
        for _ in 0..self.len.load(Ordering::SeqCst) {
            let Some(idle) = self.idle.pop() else { break };
            if !idle.conn.sender.is_closed() && now.saturating_duration_since(idle.since) < idle.conn.idle_timeout {
                self.idle.push(idle);
            } else {
                self.len.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// What owns a pool (an endpoint). Its reaper holds the owner weakly, so the pool of a
/// removed owner closes with it; a trait so this module needs no endpoint type.
pub(crate) trait PoolOwner: Send + Sync + 'static {
    /// The owner's pool.
    fn pool(&self) -> &UpstreamPool;
}

/// Gives a connection whose last response was read to its end back to `owner`'s pool.
pub(crate) fn checkin<O: PoolOwner>(owner: &Arc<O>, conn: UpstreamConn) {
    let pool = owner.pool();
    if conn.sender.is_closed() {
        return;
    }
    if pool.len.fetch_add(1, Ordering::SeqCst) >= MAX_IDLE_PER_ENDPOINT {
        pool.len.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let every = conn.idle_timeout;
    pool.idle.push(Idle {
        conn,
        since: Instant::now(),
    });
    // A plain load first: the common case (a reaper runs) writes nothing shared.
    if !pool.reaper.load(Ordering::SeqCst) && !pool.reaper.swap(true, Ordering::SeqCst) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(reap(Arc::downgrade(owner), every));
            }
            Err(_) => pool.reaper.store(false, Ordering::SeqCst),
        }
    }
}

/// Closes `owner`'s expired idle connections every half idle timeout, until the pool is
/// empty or the owner is gone (a pool of a removed endpoint closes with it).
async fn reap<O: PoolOwner>(owner: Weak<O>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(owner) = owner.upgrade() else { return };
        let pool = owner.pool();
        pool.evict_expired();
        if pool.len.load(Ordering::SeqCst) == 0 {
            pool.reaper.store(false, Ordering::SeqCst);
            // A connection given back meanwhile saw the flag set and started no reaper: go on
            // unless one was started after the flag was cleared.
            if pool.len.load(Ordering::SeqCst) == 0 || pool.reaper.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// Sends `request` on an idle connection of `pool` of `generation`, or on a new one from
/// `connect`. A request that a reused connection refused before sending any of it (the
/// backend closed it meanwhile) goes on a new connection.
pub(crate) async fn send<C, F, Io>(
    pool: &UpstreamPool,
    generation: u64,
    idle_timeout: Duration,
    mut request: Request<UpstreamBody>,
    connect: C,
) -> Result<(Response<Incoming>, UpstreamConn), SendError>
where
    C: FnOnce() -> F,
    F: std::future::Future<Output = Result<Io, Box<dyn std::error::Error + Send + Sync>>>,
    Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    while let Some(mut conn) = pool.checkout(generation, idle_timeout) {
        // Not ready: the connection is still sending the last request's body (the backend
        // answered before reading it all). Waiting could take as long as the client's upload;
        // it is closed instead.
        if !conn.sender.is_ready() {
            continue;
        }
        match conn.sender.try_send_request(request).await {
            Ok(response) => return Ok((response, conn)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(SendError::Exchange(e.into_error())),
            },
        }
    }
    let io = connect().await.map_err(SendError::Connect)?;
    let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(SendError::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    let mut conn = UpstreamConn {
        sender,
        generation,
        idle_timeout,
    };
    match conn.sender.send_request(request).await {
        Ok(response) => Ok((response, conn)),
        Err(e) => Err(SendError::Exchange(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use bytes::Bytes;
    use http_body_util::{Either, Empty};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every request on a connection with `200`, counting connections.
    async fn backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<UpstreamBody> {
        Request::builder()
            .uri("/")
            .header("host", "app")
            .body(Either::Right(Empty::<Bytes>::new()))
            .unwrap()
    }

    async fn exchange(ep: &Arc<Endpoint>, generation: u64, idle: Duration) -> UpstreamConn {
        let addr = ep.authority().as_str().to_owned();
        let connect = || async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(tcp))
        };
        let (resp, conn) = send(ep.pool(), generation, idle, get(), connect).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
        assert_eq!(body.to_bytes(), "ok");
        conn
    }

    #[tokio::test]
    async fn reuses_a_connection_given_back_and_not_one_of_another_generation() {
        let (addr, accepted) = backend().await;
        let ep = Arc::new(Endpoint::new(&addr.to_string()).unwrap());
        let idle = Duration::from_secs(30);
        for _ in 0..5 {
            let conn = exchange(&ep, 0, idle).await;
            checkin(&ep, conn);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for five requests");
        assert_eq!(ep.pool().idle(), 1);

        // A connection not given back (body not read to its end) is not reused.
        let _kept = exchange(&ep, 0, idle).await;
        let _second = exchange(&ep, 0, idle).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // A new TLS client generation never gets the old connections.
        let conn = exchange(&ep, 7, idle).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        checkin(&ep, conn);
        let conn = exchange(&ep, 7, idle).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "same generation reused");
        drop(conn);
    }

    #[tokio::test]
    async fn expired_and_closed_connections_are_not_reused_and_the_reaper_closes_idle_ones() {
        let (addr, accepted) = backend().await;
        let ep = Arc::new(Endpoint::new(&addr.to_string()).unwrap());
        let idle = Duration::from_millis(300);
        let conn = exchange(&ep, 0, idle).await;
        checkin(&ep, conn);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let conn = exchange(&ep, 0, idle).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "an expired connection is not reused"
        );
        checkin(&ep, conn);
        // A shorter timeout (a reload) applies to connections already idle.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let conn = exchange(&ep, 0, Duration::from_millis(50)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "idle for longer than the new timeout"
        );
        drop(conn);
        let conn = exchange(&ep, 0, idle).await;
        checkin(&ep, conn);
        assert_eq!(ep.pool().idle(), 1);
        // The reaper runs every 150 ms and closes what is older than 300 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ep.pool().idle() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ep.pool().idle(), 0, "the reaper closed the idle connection");
        assert!(!ep.pool().reaper.load(Ordering::SeqCst), "and stopped");
        // It starts again with the next idle connection.
        let conn = exchange(&ep, 0, idle).await;
        checkin(&ep, conn);
        assert!(ep.pool().reaper.load(Ordering::SeqCst));
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_backend_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Answers one request per connection, then closes without saying so.
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                drop(s);
            }
        });
        let ep = Arc::new(Endpoint::new(&addr.to_string()).unwrap());
        for _ in 0..3 {
            let conn = exchange(&ep, 0, Duration::from_secs(30)).await;
            // Give the connection task time to see the close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            checkin(&ep, conn);
        }
        assert_eq!(ep.pool().idle(), 0, "closed connections are not kept");
    }

    #[tokio::test]
    async fn the_pool_is_bounded() {
        let (addr, _) = backend().await;
        let ep = Arc::new(Endpoint::new(&addr.to_string()).unwrap());
        let idle = Duration::from_secs(30);
        let mut conns = Vec::new();
        for _ in 0..MAX_IDLE_PER_ENDPOINT + 3 {
            let conn = exchange(&ep, 0, idle).await;
            conns.push(conn);
        }
        for conn in conns {
            checkin(&ep, conn);
        }
        assert_eq!(ep.pool().idle(), MAX_IDLE_PER_ENDPOINT);
    }
}
