//! h2 → h1 downgrade framing, seen as raw bytes by the backend.

use super::*;

/// One request as a raw backend read it off the wire.
#[derive(Debug, Clone)]
struct RawRequest {
    head: String,
    body: Vec<u8>,
    /// The body ended where its framing said it would.
    complete: bool,
}

impl RawRequest {
    fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    fn path(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or("")
    }

    /// Every header field as (lowercase name, trimmed value).
    fn fields(&self) -> Vec<(String, String)> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.fields()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }
}

/// Reads one CRLF-terminated line (without the CRLF); None at EOF or past 8 KiB.
async fn read_line(s: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if s.read(&mut byte).await.ok()? != 1 || line.len() > 8 * 1024 {
            return None;
        }
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    Some(String::from_utf8_lossy(&line).into_owned())
}

/// Reads the body `req`'s head announces (Content-Length or chunked; none means empty),
/// filling `req.body` and setting `req.complete`.
async fn read_raw_body(s: &mut TcpStream, req: &mut RawRequest) {
    let cl = req.all("content-length");
    let chunked = req
        .all("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let Some(line) = read_line(s).await else { return };
            let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16) else {
                return;
            };
            if size == 0 {
                // Trailer section up to the blank line.
                loop {
                    match read_line(s).await {
                        Some(l) if l.is_empty() => break,
                        Some(_) => {}
                        None => return,
                    }
                }
                req.complete = true;
                return;
            }
            let mut chunk = vec![0u8; size + 2];
            if s.read_exact(&mut chunk).await.is_err() || !chunk.ends_with(b"\r\n") {
                return;
            }
            req.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = cl.first().and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match s.read(&mut body[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        body.truncate(got);
        req.complete = got == n;
        req.body = body;
    } else {
        req.complete = true;
    }
}

/// A keep-alive raw backend recording each request's head and body bytes as received;
/// answers `200 ok` to every complete request and closes on anything else.
async fn framing_backend() -> (RawBackend, Arc<Mutex<Vec<RawRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let backend = raw_backend(move |mut s, heads| {
        let record = record.clone();
        async move {
            while let Some(head) = read_head(&mut s, &heads).await {
                let mut req = RawRequest {
                    head,
                    body: Vec::new(),
                    complete: false,
                };
                let _ = tokio::time::timeout(Duration::from_secs(3), read_raw_body(&mut s, &mut req)).await;
                let complete = req.complete;
                record.lock().unwrap().push(req);
                if !complete
                    || s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    (backend, seen)
}

/// HTTP/2 requests with bodies reach an HTTP/1.1 backend with framing canaryd generated:
/// one of Content-Length (equal to the body) or `Transfer-Encoding: chunked`, never both,
/// no `te`/`connection`/`keep-alive`/`upgrade`/`trailer` fields, the body byte for byte,
/// whether the client sent a matching content-length or split the body over several DATA
/// frames without one. A content-length the DATA frames contradict is a malformed h2
/// request: it must not be answered 200 nor arrive complete at the backend. Connection-
/// specific fields (illegal in h2, RFC 9113 §8.2.2) get the stream reset and never reach the
/// backend, while the connection's other streams are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_h1_downgrade_carries_only_our_framing() {
    use h2f::{frame, post_block, DATA, END_HEADERS, END_STREAM, HEADERS};
    let (backend, seen) = framing_backend().await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    let (mut s, _) = h2f::handshake(proxy.addr).await;

    let headers = |id: u32, path: &str, extra: &[(&str, &str)], flags: u8| {
        frame(HEADERS, END_HEADERS | flags, id, &post_block("app", path, extra))
    };
    // Good requests: (stream, path, expected body at the backend).
    let good: [(u32, &str, &[u8]); 3] = [
        (1, "/cl", b"hello world"),
        (3, "/split", b"hello world"),
        (5, "/split-empty-end", b"helloworld"),
    ];
    let mut w = headers(
        1,
        "/cl",
        &[
            ("content-length", "11"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
        ],
        0,
    );
    w.extend(frame(DATA, END_STREAM, 1, b"hello world"));
    s.write_all(&w).await.unwrap();
    // Several DATA frames, no content-length, paced so the proxy cannot see them as one.
    s.write_all(&headers(3, "/split", &[("te", "trailers")], 0))
        .await
        .unwrap();
    for (i, part) in [&b"hel"[..], b"lo ", b"world"].iter().enumerate() {
        let flags = if i == 2 { END_STREAM } else { 0 };
        s.write_all(&frame(DATA, flags, 3, part)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut w = headers(5, "/split-empty-end", &[], 0);
    w.extend(frame(DATA, 0, 5, b"hello"));
    w.extend(frame(DATA, 0, 5, b"world"));
    w.extend(frame(DATA, END_STREAM, 5, b""));
    // content-length contradicted by the DATA frames (RFC 9113 §8.1.1: malformed).
    w.extend(headers(7, "/cl-short", &[("content-length", "5")], 0));
    w.extend(frame(DATA, END_STREAM, 7, b"hello world"));
    w.extend(headers(9, "/cl-long", &[("content-length", "20")], 0));
    w.extend(frame(DATA, END_STREAM, 9, b"hello world"));
    // Connection-specific fields, illegal in HTTP/2.
    let illegal: [(u32, &str, (&str, &str)); 6] = [
        (11, "/bad-connection", ("connection", "keep-alive")),
        (13, "/bad-keep-alive", ("keep-alive", "timeout=5")),
        (15, "/bad-proxy-connection", ("proxy-connection", "keep-alive")),
        (17, "/bad-transfer-encoding", ("transfer-encoding", "chunked")),
        (19, "/bad-upgrade", ("upgrade", "websocket")),
        (21, "/bad-te", ("te", "gzip")),
    ];
    for (id, path, field) in &illegal {
        w.extend(headers(*id, path, &[*field, ("content-length", "0")], END_STREAM));
    }
    // A good request after all of that, on the same connection.
    w.extend(headers(23, "/after", &[("content-length", "2")], 0));
    w.extend(frame(DATA, END_STREAM, 23, b"ok"));
    s.write_all(&w).await.unwrap();

    let ids: Vec<u32> = (1..=23).step_by(2).collect();
    let (streams, goaway) = h2f::collect(&mut s, &ids, Instant::now() + Duration::from_secs(8)).await;
    let mut ids_sorted: Vec<_> = streams.iter().collect();
    ids_sorted.sort_by_key(|(id, _)| **id);
    for (id, st) in &ids_sorted {
        eprintln!("stream {id}: {st:?}");
    }
    eprintln!("goaway: {goaway:?}");
    let recorded = seen.lock().unwrap().clone();
    for r in &recorded {
        eprintln!(
            "backend got: {:?} body {:?} complete {}",
            r.head,
            show(&r.body),
            r.complete
        );
    }

    let mut failures = Vec::new();
    let mut check_good = |id: u32, path: &str, body: &[u8]| {
        let st = &streams[&id];
        if st.status != Some(200) || !st.ended || st.body != b"ok" {
            failures.push(format!("{path}: client got {st:?}"));
        }
        let at_backend: Vec<_> = recorded.iter().filter(|r| r.path() == path).collect();
        let [r] = at_backend[..] else {
            failures.push(format!("{path}: backend got {} requests", at_backend.len()));
            return;
        };
        if !r.request_line().ends_with(" HTTP/1.1") {
            failures.push(format!("{path}: request line {:?}", r.request_line()));
        }
        let cl = r.all("content-length");
        let te = r.all("transfer-encoding");
        let framing_ok = match (&cl[..], &te[..]) {
            ([n], []) => n.parse::<usize>().ok() == Some(body.len()),
            ([], [t]) => t.eq_ignore_ascii_case("chunked"),
            _ => false,
        };
        if !framing_ok {
            failures.push(format!(
                "{path}: framing content-length {cl:?} transfer-encoding {te:?}"
            ));
        }
        for name in [
            "te",
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "trailer",
        ] {
            if !r.all(name).is_empty() {
                failures.push(format!("{path}: backend got {name}: {:?}", r.all(name)));
            }
        }
        if !r.complete || r.body != body {
            failures.push(format!(
                "{path}: body {:?} (complete {}), sent {:?}",
                show(&r.body),
                r.complete,
                show(body)
            ));
        }
    };
    for (id, path, body) in good {
        check_good(id, path, body);
    }
    check_good(23, "/after", b"ok");
    for (id, path) in [(7, "/cl-short"), (9, "/cl-long")] {
        let st = &streams[&id];
        if st.status == Some(200) && st.ended {
            failures.push(format!("{path}: a malformed h2 body was answered 200: {st:?}"));
        }
        if let Some(r) = recorded.iter().find(|r| r.path() == path && r.complete) {
            failures.push(format!("{path}: arrived complete at the backend: {r:?}"));
        }
    }
    for (id, path, field) in &illegal {
        let st = &streams[id];
        let refused = st.rst.is_some() || st.status == Some(400);
        if !refused {
            failures.push(format!("{path} ({field:?}): not refused: {st:?}"));
        }
        if recorded.iter().any(|r| r.path() == *path) {
            failures.push(format!("{path} ({field:?}) reached the backend"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// After a response whose body the backend cut (reset mid-body, or a broken chunk on a
/// connection the backend keeps open), that upstream connection is never used again: the
/// next request goes over a new upstream connection and gets its full answer, while an
/// intact keep-alive connection is still pooled as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_cut_mid_body_is_not_reused() {
    let accepted = Arc::new(AtomicUsize::new(0));
    // (connection number, path) of every request, in arrival order.
    let log = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let (counter, record) = (accepted.clone(), log.clone());
    let backend = raw_backend(move |mut s, heads| {
        let conn = counter.fetch_add(1, Ordering::SeqCst);
        let record = record.clone();
        async move {
            while let Some(head) = read_head(&mut s, &heads).await {
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                record.lock().unwrap().push((conn, path.clone()));
                if path == "/cut-reset" {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n").await;
                    let _ = s.write_all(&[b'a'; 10_000]).await;
                    let _ = s.flush().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = s.set_zero_linger();
                    return;
                }
                let reply: &[u8] = if path == "/cut-garbage" {
                    // One good chunk, then a chunk size that is not hex; the socket stays open,
                    // so only the proxy can decide not to send another request on it.
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole"
                };
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    let conn_of = |path: &str| {
        let log = log.lock().unwrap();
        let conns: Vec<usize> = log.iter().filter(|(_, p)| p == path).map(|(c, _)| *c).collect();
        assert_eq!(
            conns.len(),
            1,
            "{path} reached the backend {} times: {log:?}",
            conns.len()
        );
        conns[0]
    };

    let cut = |path: &'static str| {
        let addr = proxy.addr;
        async move {
            // Keep-alive on purpose: only the proxy closing the connection can end the body.
            let ex = exchange(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes(),
                Duration::from_secs(5),
            )
            .await;
            let responses = parse_responses(&ex.bytes);
            assert_eq!(responses.len(), 1, "{path}: {}", show(&ex.bytes));
            let r = &responses[0];
            assert!(
                r.status == 502 || (r.status == 200 && !r.complete),
                "{path}: a cut body was delivered as complete: {} {:?} {} bytes",
                r.status,
                r.headers,
                r.body.len()
            );
            assert!(ex.closed, "{path}: the client connection must be closed");
        }
    };
    let whole = |path: &'static str| {
        let addr = proxy.addr;
        async move {
            // A fresh client each time: the proxy's upstream pool is what is under test.
            let reply = tokio::time::timeout(Duration::from_secs(5), Client::new().get(addr, "app", path))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer within 5 s"))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "whole"), "{path}");
        }
    };

    cut("/cut-reset").await;
    whole("/after-reset").await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one new upstream connection after the reset"
    );
    assert_ne!(conn_of("/after-reset"), conn_of("/cut-reset"));

    // The pooled connection from /after-reset may carry the next request; after its body is
    // cut it must be dropped, even though the backend keeps it open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    cut("/cut-garbage").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    whole("/after-garbage").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    whole("/after-garbage-2").await;
    let log_now = log.lock().unwrap().clone();
    eprintln!("upstream connections {}: {log_now:?}", accepted.load(Ordering::SeqCst));
    let garbage_conn = conn_of("/cut-garbage");
    assert!(
        log_now
            .iter()
            .skip_while(|(_, p)| p != "/cut-garbage")
            .skip(1)
            .all(|(c, _)| *c != garbage_conn),
        "a request was sent on the connection whose body was cut: {log_now:?}"
    );
    assert_eq!(
        conn_of("/after-garbage-2"),
        conn_of("/after-garbage"),
        "intact upstream connections are still reused: {log_now:?}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 3, "{log_now:?}");
}
