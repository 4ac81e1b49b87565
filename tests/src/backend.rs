//! A real HTTP backend on a loopback port, recording what it received.
//!
//! `Backend::new("v1").status(500).delay(ms).start().await` — every response carries
//! `x-backend: NAME` and the body `NAME`. Special paths:
//! `/echo-body` answers with the byte count of the request body (streamed, not buffered),
//! `/bytes/N` streams N bytes in 64 KiB chunks, `/sleep/MS` waits before answering.
//! `start_tls(server_config)` serves the same over TLS (HTTP/1.1 and h2 by the config's ALPN).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the backend saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Path and query.
    pub target: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// HTTP version.
    pub version: http::Version,
    /// The TLS connection it came on, for a backend started with [`Backend::start_tls`].
    pub tls: Option<TlsSeen>,
}

/// What a TLS backend saw of the client's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSeen {
    /// The server name the client sent (SNI); none for an IP address.
    pub sni: Option<String>,
    /// The ALPN protocol agreed, e.g. `http/1.1`.
    pub alpn: Option<String>,
}

/// Builder of a test backend.
#[derive(Debug, Clone)]
pub struct Backend {
    name: String,
    status: u16,
    delay: Duration,
    headers: Vec<(String, String)>,
}

/// What a running backend can be told to do differently, and what it noticed.
#[derive(Debug, Default)]
struct Live {
    /// Status of every response, changeable while running.
    status: AtomicU16,
    /// With N > 0, every Nth response is a 500.
    fail_every: AtomicU64,
    served: AtomicU64,
    first_error: Mutex<Option<Instant>>,
}

/// A running backend; stops when dropped.
pub struct BackendHandle {
    /// Its address.
    pub addr: SocketAddr,
    /// Every request it received.
    pub received: Arc<Mutex<Vec<Recorded>>>,
    live: Arc<Live>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendHandle {
    /// `ip:port` for a config file.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Answers every later request with `status`.
    pub fn set_status(&self, status: u16) {
        self.live.status.store(status, Ordering::SeqCst);
    }

    /// Makes every `n`th response a 500 (0: none).
    pub fn fail_every(&self, n: u64) {
        self.live.fail_every.store(n, Ordering::SeqCst);
    }

    /// When the first 5xx response was sent.
    pub fn first_error_at(&self) -> Option<Instant> {
        *self.live.first_error.lock().unwrap()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

impl Backend {
    /// A backend answering 200 with its name.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            status: 200,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Answer every request with this status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Wait this long before every response's headers.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Add this header to every response.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start(self) -> BackendHandle {
        self.start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Binds `addr` (say 127.0.0.2:PORT, to play a Pod: Pods of one Service share a port) and
    /// serves until dropped.
    pub async fn start_on(self, addr: std::net::SocketAddr) -> BackendHandle {
        self.serve(addr, None).await
    }

    /// Binds 127.0.0.1:0 and serves HTTPS with `config` until dropped. Handshakes that fail
    /// are dropped quietly (a client that refuses the certificate is what some tests want).
    pub async fn start_tls(self, config: Arc<rustls::ServerConfig>) -> BackendHandle {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        self.serve("127.0.0.1:0".parse().unwrap(), Some(acceptor)).await
    }

    async fn serve(self, addr: std::net::SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> BackendHandle {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let live = Arc::new(Live {
            status: AtomicU16::new(self.status),
            ..Live::default()
        });
        let this = Arc::new((self, live.clone()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (this, rec, tls) = (this.clone(), rec.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = |seen: Option<TlsSeen>| {
                        hyper::service::service_fn(move |req| {
                            let (this, rec, seen) = (this.clone(), rec.clone(), seen.clone());
                            async move { Ok::<_, Infallible>(this.0.respond(req, &rec, &this.1, seen).await) }
                        })
                    };
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service(None))
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let conn = stream.get_ref().1;
                            let seen = TlsSeen {
                                sni: conn.server_name().map(str::to_owned),
                                alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service(Some(seen)))
                                .await;
                        }
                    }
                });
            }
        });
        BackendHandle {
            addr,
            received,
            live,
            task,
        }
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        rec: &Mutex<Vec<Recorded>>,
        live: &Live,
        tls: Option<TlsSeen>,
    ) -> Response<Body> {
        let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        rec.lock().unwrap().push(Recorded {
            method: req.method().clone(),
            target: target.clone(),
            headers: req.headers().clone(),
            version: req.version(),
            tls,
        });
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let path = req.uri().path().to_owned();
        let body = if path == "/echo-body" {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            http_body_util::Either::Left(Full::new(Bytes::from(n.to_string())))
        } else if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok()) {
            // A lazily generated stream: the backend itself holds only one chunk at a time.
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let mut frames = Vec::with_capacity(n / chunk.len() + 1);
            let mut left = n;
            while left > 0 {
                let take = left.min(chunk.len());
                frames.push(Ok(Frame::data(chunk.slice(..take))));
                left -= take;
            }
            http_body_util::Either::Right(StreamBody::new(futures_util::stream::iter(frames)))
        } else if let Some(ms) = path.strip_prefix("/sleep/").and_then(|n| n.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            http_body_util::Either::Left(Full::new(Bytes::from(self.name.clone())))
        } else {
            http_body_util::Either::Left(Full::new(Bytes::from(self.name.clone())))
        };
        let n = live.served.fetch_add(1, Ordering::SeqCst) + 1;
        let every = live.fail_every.load(Ordering::SeqCst);
        let status = if every > 0 && n.is_multiple_of(every) {
            500
        } else {
            live.status.load(Ordering::SeqCst)
        };
        if status >= 500 {
            live.first_error.lock().unwrap().get_or_insert_with(Instant::now);
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        resp.headers_mut().insert("x-backend", self.name.parse().unwrap());
        for (k, v) in &self.headers {
            resp.headers_mut()
                .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        resp
    }
}
