//! Adversarial clients and upstreams against the real `canaryd` on loopback.
//!
//! Every case speaks raw bytes (HTTP/1.1) or hand-written frames (HTTP/2, h2c prior
//! knowledge) and checks both what the client got back and what the recording backend
//! received. The assertions state what a production edge proxy must do (RFC 9110 /
//! RFC 9112 / RFC 9113 and the usual hardening), not what canaryd happens to do.
//! Every load loop is bounded in count and in time.
//!
//! Deliberately not asserted here: a bare LF ends a header line (RFC 9112 §2.2 allows it;
//! the backend only ever sees our own serialisation).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_tests::{Backend, BackendHandle, Canaryd, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use canary_tests::h2_frames as h2f;
use canary_tests::raw_http1::{exchange, find, parse_responses, read_until_close, show, Resp};

mod downgrade;
mod flood;
mod h2;
mod header_limits;
mod hop_by_hop;
mod pipelining;
mod slow_clients;
mod smuggling;
mod upstream_faults;

// ---------------------------------------------------------------------------------------
// Support: configs, raw HTTP/1.1 exchanges and a small response parser.
// ---------------------------------------------------------------------------------------

/// One catch-all route `app` to `endpoint`.
fn app_route(endpoint: &str) -> String {
    format!("routes:\n  - name: app\n    stable: {{ endpoints: [\"{endpoint}\"] }}\n")
}

/// A recording backend behind canaryd with one catch-all route; `top` is extra top-level YAML.
async fn setup(top: &str) -> (BackendHandle, Canaryd) {
    let backend = Backend::new("app").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!("{top}{}", app_route(&backend.endpoint()))));
    (backend, proxy)
}

/// The targets the backend received after the first `since` requests.
fn targets_since(backend: &BackendHandle, since: usize) -> Vec<String> {
    backend.requests()[since..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect()
}

/// A request line that must never be seen by any backend: it only reaches one if the
/// proxy and the backend disagreed about where the previous request ended.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";

/// Sends `request` on a fresh connection and checks that the client got exactly one
/// response with a status in `allowed`, that the connection was closed, and that the
/// backend received nothing. Returns a description of every deviation.
async fn check_rejected(
    proxy: &Canaryd,
    backend: &BackendHandle,
    label: &str,
    request: &[u8],
    allowed: &[u16],
) -> Result<(), String> {
    let before = backend.count();
    let ex = exchange(proxy.addr, request, Duration::from_secs(3)).await;
    // Let a forwarded request land in the recorder before counting.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let responses = parse_responses(&ex.bytes);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    let mut problems = Vec::new();
    if statuses.len() != 1 || !allowed.contains(&statuses[0]) {
        problems.push(format!(
            "client got statuses {statuses:?}, want exactly one of {allowed:?}"
        ));
    }
    if !ex.closed {
        problems.push("connection left open".to_string());
    }
    let reached = targets_since(backend, before);
    if !reached.is_empty() {
        problems.push(format!("backend received {reached:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "[{label}] {} — response bytes: {}",
            problems.join("; "),
            show(&ex.bytes)
        ))
    }
}

/// Runs `check_rejected` for every `(label, request)` and panics listing all failures.
async fn expect_all_rejected(proxy: &Canaryd, backend: &BackendHandle, cases: &[(&str, Vec<u8>)], allowed: &[u16]) {
    let mut failures = Vec::new();
    for (label, request) in cases {
        if let Err(e) = check_rejected(proxy, backend, label, request, allowed).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases not rejected as required:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A chunked body of "hello", followed by the smuggling probe.
fn chunked_hello_then_smuggle() -> String {
    format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")
}

/// GETs through a fresh h1 and a fresh h2c connection, and the admin /healthz.
async fn still_serving(proxy: &Canaryd) -> Result<(), String> {
    let limit = Duration::from_secs(3);
    let h1 = tokio::time::timeout(limit, Client::new().get(proxy.addr, "app", "/probe-h1")).await;
    let h2 = tokio::time::timeout(limit, Client::h2c().get(proxy.addr, "app", "/probe-h2")).await;
    let health = tokio::time::timeout(limit, Client::new().get(proxy.admin, "admin", "/healthz")).await;
    let ok = |r: &Result<Result<canary_tests::Reply, String>, _>| matches!(r, Ok(Ok(reply)) if reply.status == 200);
    if ok(&h1) && ok(&h2) && ok(&health) {
        Ok(())
    } else {
        Err(format!(
            "h1: {:?} / h2c: {:?} / healthz: {:?}",
            h1.map(|r| r.map(|x| x.status)),
            h2.map(|r| r.map(|x| x.status)),
            health.map(|r| r.map(|x| x.status))
        ))
    }
}

/// A raw TCP backend: every accepted connection runs `script`; request heads are recorded.
struct RawBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_backend<F, Fut>(script: F) -> RawBackend
where
    F: Fn(TcpStream, Arc<Mutex<Vec<String>>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(script(stream, h.clone()));
        }
    });
    RawBackend { addr, heads, task }
}

/// Reads one request head (up to the blank line) and records it; None at EOF.
async fn read_head(s: &mut TcpStream, heads: &Mutex<Vec<String>>) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    heads.lock().unwrap().push(head.clone());
    Some(head)
}
