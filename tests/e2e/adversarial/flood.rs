//! Connection flood.

use super::*;

/// Readers that never open their window: HTTP/2 clients that advertise a zero stream
/// window and HTTP/1.1 clients that never read, each asking for a 20 MB body. canaryd must
/// not buffer those bodies (backpressure reaches the backend instead), and everyone else
/// keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_readers_stall_alone() {
    let (backend, proxy) = setup("").await;
    let rss_before = proxy.rss_kib();
    let (h2_conns, h2_streams, h1_conns, size) = (4u32, 10u32, 8usize, 20_000_000usize);
    let mut held = Vec::new();
    for _ in 0..h2_conns {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut hello = h2f::PREFACE.to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE = 0: canaryd may send no DATA at all.
        let zero_window = [
            &h2f::SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes()[..],
            &0u32.to_be_bytes()[..],
        ]
        .concat();
        hello.extend(h2f::frame(h2f::SETTINGS, 0, 0, &zero_window));
        hello.extend(h2f::frame(h2f::SETTINGS, h2f::ACK, 0, &[]));
        for i in 0..h2_streams {
            hello.extend(h2f::get(1 + 2 * i, "app", &format!("/bytes/{size}")));
        }
        s.write_all(&hello).await.unwrap();
        held.push(s);
    }
    for _ in 0..h1_conns {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(proxy.addr).await.unwrap();
        s.write_all(format!("GET /bytes/{size} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    let asked = (h2_conns * h2_streams) as usize + h1_conns;
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.count() < asked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.count(), asked, "every stalled request reached the backend");
    // Long enough for a proxy that buffers to have read megabytes per request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let serving = still_serving(&proxy).await;
    let grown_kib = proxy.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "zero window: {asked} stalled requests for {} MB in all; canaryd RSS grew {grown_kib} KiB",
        asked * size / 1_000_000
    );
    assert!(
        serving.is_ok(),
        "others not served next to stalled readers: {serving:?}"
    );
    // 960 MB were asked for; a proxy that buffers would hold a large part of it.
    assert!(
        grown_kib < 64 * 1024,
        "canaryd buffered {grown_kib} KiB for readers that read nothing"
    );
    drop(held);
}

/// An HTTP/2 connection with nothing to do is closed (GOAWAY) after one to two
/// `timeouts.idle` periods, so idle h2 clients cannot hold connection slots for ever; one
/// with a request waiting for its answer is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_are_closed_and_busy_ones_are_not() {
    let (_backend, proxy) = setup("timeouts: { idle: 1s }\n").await;
    let started = Instant::now();
    let (idle, _) = h2f::handshake(proxy.addr).await;
    let (busy, _) = h2f::handshake(proxy.addr).await;
    let (idle_r, _idle_w) = idle.into_split();
    let (busy_r, mut busy_w) = busy.into_split();
    let (idle_seen, idle_reader) = h2f::spawn_reader(idle_r, started);
    let (busy_seen, busy_reader) = h2f::spawn_reader(busy_r, started);
    // Waits 3.5 s at the backend: more than three idle periods with a request in flight.
    busy_w.write_all(&h2f::get(1, "app", "/sleep/3500")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline && !(idle_seen.lock().unwrap().cut() && busy_seen.lock().unwrap().headers == 1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    idle_reader.abort();
    busy_reader.abort();
    let (idle_seen, busy_seen) = (
        std::mem::take(&mut *idle_seen.lock().unwrap()),
        std::mem::take(&mut *busy_seen.lock().unwrap()),
    );
    eprintln!("idle h2: {idle_seen:?}; busy h2: {busy_seen:?}");
    let cut_at = idle_seen
        .goaway_at
        .or(idle_seen.closed_at)
        .expect("the idle h2 connection was not closed");
    assert!(
        cut_at >= Duration::from_millis(900) && cut_at <= Duration::from_secs(4),
        "idle connection closed after {cut_at:?}, not within one to two idle periods"
    );
    assert_eq!(busy_seen.headers, 1, "the waiting request was answered: {busy_seen:?}");
    if let Some(at) = busy_seen.goaway_at {
        assert!(
            at >= Duration::from_millis(3400),
            "GOAWAY at {at:?} while a request was still waiting for its answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_does_not_starve_new_clients_or_admin() {
    let (backend, proxy) = setup("").await;
    // Generous time: on a loaded 2-core machine the other tests of this suite compete for the accept loop.
    let (target, budget) = (2_000usize, Duration::from_secs(30));
    let started = Instant::now();
    let mut conns = Vec::with_capacity(target);
    while conns.len() < target && started.elapsed() < budget {
        let batch: Vec<_> = (0..100).map(|_| tokio::spawn(TcpStream::connect(proxy.addr))).collect();
        for t in batch {
            if let Ok(Ok(s)) = t.await {
                conns.push(s);
            }
        }
    }
    eprintln!(
        "flood: {} idle connections open after {:?}",
        conns.len(),
        started.elapsed()
    );
    assert_eq!(conns.len(), target, "could not open {target} connections");
    let t = Instant::now();
    let serving = still_serving(&proxy).await;
    eprintln!("flood: probes answered in {:?}", t.elapsed());
    assert!(serving.is_ok(), "with {target} idle connections open: {serving:?}");
    assert_eq!(targets_since(&backend, 0), ["GET /probe-h1", "GET /probe-h2"]);
    drop(conns);
}
