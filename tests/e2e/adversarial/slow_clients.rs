//! Slow and silent clients.

use super::*;

/// Trickles `bytes` one per 500 ms on `s`, watching for the server giving up; returns when
/// it closed (from `started`) and what it sent.
async fn trickle(s: &mut TcpStream, bytes: &[u8], started: Instant, budget: Duration) -> (Option<Duration>, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for &byte in bytes {
        if started.elapsed() > budget {
            break;
        }
        if s.write_all(&[byte]).await.is_err() {
            return (Some(started.elapsed()), got);
        }
        let next = Instant::now() + Duration::from_millis(500);
        loop {
            match tokio::time::timeout(next.saturating_duration_since(Instant::now()), s.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => return (Some(started.elapsed()), got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
    (None, got)
}

/// Slowloris: a head trickled one byte per 500 ms is cut at `timeouts.header_read` (2 s),
/// long before the idle timeout (30 s); on a fresh connection (from the accept) and on a
/// keep-alive one after an answered request (from the head's first byte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off_at_the_header_read_timeout() {
    let (backend, proxy) = setup("timeouts: { header_read: 2s, idle: 30s }\n").await;
    let request = format!("GET / HTTP/1.1\r\nHost: app\r\nX-Slow: {}", "a".repeat(64));
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let (closed_at, got) = trickle(&mut s, request.as_bytes(), Instant::now(), Duration::from_secs(8)).await;
    eprintln!(
        "slowloris (first request): closed after {closed_at:?}; server sent {}",
        show(&got)
    );
    let closed_at = closed_at.expect("canaryd never closed a connection trickling one header byte per 500 ms");
    assert!(
        (Duration::from_millis(1900)..=Duration::from_millis(3500)).contains(&closed_at),
        "closed after {closed_at:?} with header_read: 2s"
    );
    assert!(got.is_empty(), "nothing may be sent: {}", show(&got));
    assert_eq!(backend.count(), 0);

    // Second request: 3 s idle first (longer than header_read: the head timer is not running
    // between requests), then a trickled head.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "first request: {}",
        show(&buf[..n])
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let (closed_at, got) = trickle(&mut s, request.as_bytes(), started, Duration::from_secs(8)).await;
    eprintln!(
        "slowloris (after 3 s idle): closed {closed_at:?} after the first byte; server sent {}",
        show(&got)
    );
    let closed_at = closed_at.expect("the trickled second head was never cut");
    assert!(
        (Duration::from_millis(1900)..=Duration::from_millis(3500)).contains(&closed_at),
        "second head cut {closed_at:?} after its first byte with header_read: 2s"
    );
    assert!(got.is_empty(), "nothing may be sent: {}", show(&got));
    assert_eq!(backend.count(), 1);
}

/// Connections that never send a byte are closed at `header_read` (1 s) from the accept,
/// not at the idle timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_at_the_header_read_timeout() {
    let (backend, proxy) = setup("timeouts: { header_read: 1s, idle: 30s }\n").await;
    let started = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let deadline = started + Duration::from_millis(4000);
    let outcomes = futures_util::future::join_all(
        conns
            .iter_mut()
            .map(|s| async move { read_until_close(s, started, deadline).await }),
    )
    .await;
    let open = outcomes.iter().filter(|e| !e.closed).count();
    let first = outcomes.iter().filter(|e| e.closed).map(|e| e.elapsed).min();
    let latest = outcomes.iter().filter(|e| e.closed).map(|e| e.elapsed).max();
    eprintln!("silent connections: {open} of 20 still open after 4 s; closed between {first:?} and {latest:?}");
    assert_eq!(
        open, 0,
        "silent connections still open 4 s after connect with header_read: 1s"
    );
    assert!(
        first.unwrap() >= Duration::from_millis(900),
        "closed before header_read: {first:?}"
    );
    assert_eq!(backend.count(), 0);
}

/// Between requests the idle timeout runs, not the header-read one: with header_read 1 s
/// and idle 3 s, a keep-alive connection silent for 2 s is still served, and one silent
/// for longer is closed 3–4.5 s after its last answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_closed_at_the_idle_timeout() {
    let (backend, proxy) = setup("timeouts: { header_read: 1s, idle: 3s }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for (i, pause) in [Duration::ZERO, Duration::from_secs(2)].into_iter().enumerate() {
        tokio::time::sleep(pause).await;
        s.write_all(format!("GET /r{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("request {i} after {pause:?} idle: {e}"));
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "request {i} after {pause:?} idle: {}",
            show(&buf[..n])
        );
    }
    let answered = Instant::now();
    let ex = read_until_close(&mut s, answered, answered + Duration::from_secs(6)).await;
    eprintln!("keep-alive idle: closed {:?} after the last answer", ex.elapsed);
    assert!(ex.closed, "still open 6 s after the last answer with idle: 3s");
    assert!(
        (Duration::from_millis(2900)..=Duration::from_millis(4600)).contains(&ex.elapsed),
        "closed {:?} after the last answer with idle: 3s",
        ex.elapsed
    );
    assert!(ex.bytes.is_empty(), "an idle close sends nothing: {}", show(&ex.bytes));
    assert_eq!(backend.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_abandoned_near_the_idle_timeout() {
    let (backend, proxy) = setup("timeouts: { idle: 2s, response_header: 20s }\n").await;
    let ex = exchange(
        proxy.addr,
        b"POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nx",
        Duration::from_secs(6),
    )
    .await;
    eprintln!(
        "stalled body: closed={} after {:?}; client got {}; backend saw {:?}",
        ex.closed,
        ex.elapsed,
        show(&ex.bytes),
        targets_since(&backend, 0)
    );
    let responses = parse_responses(&ex.bytes);
    assert!(
        responses.iter().all(|r| r.status == 408 || r.status == 400),
        "only a 408/400 may answer a stalled body: {}",
        show(&ex.bytes)
    );
    assert!(
        ex.closed && ex.elapsed <= Duration::from_secs(5),
        "a body stalled for more than idle (2s) still holds the connection after {:?}",
        ex.elapsed
    );
}
