//! HTTP/2 (h2c prior knowledge) with hand-written frames.

use super::*;

/// The advertised SETTINGS_MAX_CONCURRENT_STREAMS is enforced: streams over it are refused
/// (REFUSED_STREAM) and never reach the backend, and while the limit is held open the admin
/// `/healthz` and fresh h1 and h2c clients are still answered 200 quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_advertises_and_enforces_max_concurrent_streams() {
    let (backend, proxy) = setup("").await;
    let (s, settings) = h2f::handshake(proxy.addr).await;
    eprintln!("canaryd h2 SETTINGS: {settings:?}");
    let limit = settings
        .iter()
        .rev()
        .find(|(id, _)| *id == h2f::SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v);
    let limit = limit.expect("SETTINGS_MAX_CONCURRENT_STREAMS must be advertised (unlimited otherwise)");
    assert!(
        (1..=1000).contains(&limit),
        "max concurrent streams {limit} is not a sane bound"
    );

    // Open the limit plus 20 streams that each stay open 6 s at the backend.
    let (r, mut w) = s.into_split();
    let started = Instant::now();
    let (seen, reader) = h2f::spawn_reader(r, started);
    let total = limit + 20;
    let mut burst = Vec::new();
    for i in 0..total {
        burst.extend(h2f::get(1 + 2 * i, "app", "/sleep/6000"));
    }
    w.write_all(&burst).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let at_backend = backend.count();
    let refused = seen.lock().unwrap().refused;
    eprintln!("max streams: {total} opened, {refused} refused, {at_backend} at the backend");
    // The limit is still held (no held stream has been answered): others are served.
    let probe = Instant::now();
    let serving = still_serving(&proxy).await;
    let probe_took = probe.elapsed();
    let answered_on_attack = seen.lock().unwrap().headers;
    eprintln!("max streams: probes {serving:?} in {probe_took:?}, {answered_on_attack} held streams answered");
    reader.abort();
    assert!(serving.is_ok(), "with {limit} streams held open: {serving:?}");
    assert!(
        probe_took < Duration::from_secs(4),
        "probes took {probe_took:?} while the streams were held"
    );
    assert_eq!(
        answered_on_attack, 0,
        "the held streams must still have been open during the probes"
    );
    let probes: Vec<String> = targets_since(&backend, 0)
        .into_iter()
        .filter(|t| t.contains("/probe"))
        .collect();
    assert_eq!(
        probes,
        ["GET /probe-h1", "GET /probe-h2"],
        "the probes reached the backend"
    );
    assert!(
        refused >= 20,
        "the 20 streams over the limit must be refused, got {refused}"
    );
    assert!(
        at_backend <= limit as usize,
        "{at_backend} requests in flight at the backend over a limit of {limit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_cut_off_and_others_keep_being_served() {
    let (backend, proxy) = setup("").await;
    // A probe on other connections the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (stop, addr) = (stop.clone(), proxy.addr);
        tokio::spawn(async move {
            let (mut ok, mut bad, mut worst) = (0, 0, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(3), Client::new().get(addr, "app", "/probe")).await {
                    Ok(Ok(r)) if r.status == 200 => ok += 1,
                    _ => bad += 1,
                }
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ok, bad, worst)
        })
    };

    let (s, _) = h2f::handshake(proxy.addr).await;
    let (r, mut w) = s.into_split();
    let started = Instant::now();
    let (seen, reader) = h2f::spawn_reader(r, started);
    let (max_streams, budget) = (10_000u32, Duration::from_secs(10));
    let mut sent = 0u32;
    let mut write_failed = false;
    while sent < max_streams && started.elapsed() < budget && !seen.lock().unwrap().cut() {
        let mut batch = Vec::with_capacity(200 * 40);
        for _ in 0..200 {
            let id = 1 + 2 * sent;
            batch.extend(h2f::get(id, "app", &format!("/rr/{id}")));
            batch.extend(h2f::rst(id, h2f::CANCEL));
            sent += 1;
        }
        let left = budget.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, w.write_all(&batch)).await {
            Ok(Ok(())) => {}
            _ => {
                write_failed = true;
                break;
            }
        }
    }
    let sent_in = started.elapsed();
    // Give the server a moment to react to what is already in its socket.
    let settle = Instant::now() + Duration::from_secs(2);
    while !seen.lock().unwrap().cut() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    drop(w);
    stop.store(true, Ordering::SeqCst);
    let (ok, bad, worst) = probe.await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let at_backend = targets_since(&backend, 0)
        .iter()
        .filter(|t| t.starts_with("GET /rr/"))
        .count();
    eprintln!(
        "rapid reset: {sent} HEADERS+RST_STREAM pairs in {sent_in:?} (write failed: {write_failed}); \
         server: {seen:?}; {at_backend} reached the backend; probe ok={ok} bad={bad} worst={worst:?}"
    );
    let serving = still_serving(&proxy).await;
    assert!(serving.is_ok(), "canaryd stopped serving others: {serving:?}");
    assert_eq!(bad, 0, "probe requests failed during the attack");
    assert!(
        worst < Duration::from_secs(2),
        "probe latency {worst:?} during the attack"
    );
    assert!(
        seen.cut(),
        "the attacking connection got neither GOAWAY nor a close after {sent} rapid resets"
    );
    assert!(
        at_backend <= 1000,
        "{at_backend} reset streams were still forwarded to the backend"
    );
}

/// The variant of Rapid Reset that the "pending accept" counter of the h2 crate does not
/// see: each round's streams are opened, left until the backend has them (so they were
/// accepted and forwarded), then reset. A server doing that work for every cancelled
/// stream forever can be kept busy at no cost to the attacker; canaryd's cancellation
/// budget (limits.h2_max_cancelled_streams, 100) must cut such a connection off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_paced_rapid_reset_is_cut_off() {
    // A slow backend, so every stream is still in flight upstream when it is reset.
    let backend = Backend::new("app").delay(Duration::from_secs(2)).start().await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    let (s, _) = h2f::handshake(proxy.addr).await;
    let (r, mut w) = s.into_split();
    let started = Instant::now();
    let (seen, reader) = h2f::spawn_reader(r, started);
    let (max_streams, per_round, budget) = (4_000u32, 50u32, Duration::from_secs(10));
    let mut sent = 0u32;
    let mut write_failed = false;
    let mut not_forwarded = 0u32;
    while sent < max_streams && started.elapsed() < budget && !seen.lock().unwrap().cut() {
        let ids: Vec<u32> = (sent..sent + per_round).map(|n| 1 + 2 * n).collect();
        let opens: Vec<u8> = ids
            .iter()
            .flat_map(|&id| h2f::get(id, "app", &format!("/rr/{id}")))
            .collect();
        let resets: Vec<u8> = ids.iter().flat_map(|&id| h2f::rst(id, h2f::CANCEL)).collect();
        if w.write_all(&opens).await.is_err() {
            write_failed = true;
            break;
        }
        // Reset only once the backend has the round: accepted, forwarded, still in flight.
        let round_seen = Instant::now() + Duration::from_secs(1);
        while backend.count() < (sent + per_round) as usize && Instant::now() < round_seen {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if backend.count() < (sent + per_round) as usize {
            not_forwarded += 1;
        }
        if w.write_all(&resets).await.is_err() {
            write_failed = true;
            break;
        }
        sent += per_round;
    }
    let sent_in = started.elapsed();
    let settle = Instant::now() + Duration::from_secs(2);
    while !seen.lock().unwrap().cut() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    drop(w);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let at_backend = targets_since(&backend, 0)
        .iter()
        .filter(|t| t.starts_with("GET /rr/"))
        .count();
    eprintln!(
        "paced rapid reset: {sent} streams opened, forwarded and reset in {sent_in:?} \
         (rounds not fully forwarded within 1 s: {not_forwarded}; write failed: {write_failed}); \
         server: {seen:?}; {at_backend} reached the backend"
    );
    let serving = still_serving(&proxy).await;
    assert!(serving.is_ok(), "canaryd stopped serving others: {serving:?}");
    assert!(
        seen.cut() || write_failed,
        "the connection was neither closed nor sent GOAWAY after {sent} opened-then-reset streams"
    );
    // The budget trips at the 100th cancellation; one more round may be in flight by then.
    assert!(
        at_backend <= 200,
        "{at_backend} cancelled streams were forwarded to the backend"
    );
    assert_eq!(
        proxy.metric("canaryd_connections_cut_total{listener=\"http\"}").await,
        1.0,
        "the cut connection is counted"
    );
}

/// A client that cancels fewer requests than the budget keeps its connection: the next
/// request on it is answered and no GOAWAY is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cancellations_under_the_budget_keep_the_connection() {
    let backend = Backend::new("app").delay(Duration::from_millis(300)).start().await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    let (s, _) = h2f::handshake(proxy.addr).await;
    let (r, mut w) = s.into_split();
    let (seen, reader) = h2f::spawn_reader(r, Instant::now());
    let ids: Vec<u32> = (0..90).map(|n| 1 + 2 * n).collect();
    let opens: Vec<u8> = ids
        .iter()
        .flat_map(|&id| h2f::get(id, "app", &format!("/c/{id}")))
        .collect();
    w.write_all(&opens).await.unwrap();
    let forwarded = Instant::now() + Duration::from_secs(5);
    while backend.count() < ids.len() && Instant::now() < forwarded {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        backend.count(),
        ids.len(),
        "every stream reached the backend before its reset"
    );
    let resets: Vec<u8> = ids.iter().flat_map(|&id| h2f::rst(id, h2f::CANCEL)).collect();
    w.write_all(&resets).await.unwrap();
    w.write_all(&h2f::get(1 + 2 * 90, "app", "/after")).await.unwrap();
    let answered = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().headers == 0 && Instant::now() < answered {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Time the server would take to react to a spent budget.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        seen.headers, 1,
        "the request after 90 cancellations is answered: {seen:?}"
    );
    assert!(!seen.cut(), "a connection under the budget was cut: {seen:?}");
    assert_eq!(
        proxy.metric("canaryd_connections_cut_total{listener=\"http\"}").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_is_cut_off() {
    let (backend, proxy) = setup("").await;
    let rss_before = proxy.rss_kib();
    let (s, _) = h2f::handshake(proxy.addr).await;
    let (r, mut w) = s.into_split();
    let started = Instant::now();
    let (seen, reader) = h2f::spawn_reader(r, started);
    // HEADERS without END_HEADERS, then CONTINUATION frames of ~1 KiB of literal headers each.
    let mut opening = h2f::frame(h2f::HEADERS, h2f::END_STREAM, 1, &h2f::get_block("app", "/flood"));
    let mut fragment = Vec::new();
    h2f::literal(&mut fragment, b"x-flood", &[b'a'; 1000]);
    let continuation = h2f::frame(h2f::CONTINUATION, 0, 1, &fragment);
    let (max_frames, budget) = (20_000usize, Duration::from_secs(6));
    let mut sent = 0usize;
    let mut write_failed = false;
    w.write_all(&opening).await.unwrap();
    opening.clear();
    while sent < max_frames && started.elapsed() < budget && !seen.lock().unwrap().cut() {
        let batch: Vec<u8> = continuation.repeat(100);
        let left = budget.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, w.write_all(&batch)).await {
            Ok(Ok(())) => sent += 100,
            _ => {
                write_failed = true;
                break;
            }
        }
    }
    let settle = Instant::now() + Duration::from_secs(2);
    while !seen.lock().unwrap().cut() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    drop(w);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let rss_after = proxy.rss_kib();
    eprintln!(
        "continuation flood: {sent} CONTINUATION frames (~{} KiB) in {:?} (write failed: {write_failed}); \
         server: {seen:?}; RSS {rss_before} → {rss_after} KiB",
        sent * continuation.len() / 1024,
        started.elapsed()
    );
    assert!(
        seen.cut() || write_failed,
        "the connection was neither closed nor sent GOAWAY after {sent} CONTINUATION frames"
    );
    assert!(sent < max_frames, "all {sent} CONTINUATION frames were accepted");
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(
        backend.count(),
        0,
        "the never-finished header block reached the backend"
    );
    let serving = still_serving(&proxy).await;
    assert!(serving.is_ok(), "canaryd stopped serving others: {serving:?}");
}
