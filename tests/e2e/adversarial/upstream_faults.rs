//! Upstream faults, with scripted raw TCP backends.

use super::*;

/// Sends a response head and 10,000 of the promised bytes, then resets the connection.
async fn reset_mid_body(mut s: TcpStream, heads: Arc<Mutex<Vec<String>>>, head: &'static [u8], first_part: Vec<u8>) {
    if read_head(&mut s, &heads).await.is_none() {
        return;
    }
    let _ = s.write_all(head).await;
    let _ = s.write_all(&first_part).await;
    let _ = s.flush().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = s.set_zero_linger();
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_gives_a_truncated_h1_response() {
    // Content-Length framing.
    let with_cl = raw_backend(|s, heads| {
        reset_mid_body(
            s,
            heads,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
            vec![b'a'; 10_000],
        )
    })
    .await;
    // Chunked framing: one 10,000-byte chunk, no last chunk.
    let chunked = raw_backend(|s, heads| {
        let mut part = b"2710\r\n".to_vec();
        part.extend(vec![b'a'; 10_000]);
        part.extend_from_slice(b"\r\n");
        reset_mid_body(s, heads, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", part)
    })
    .await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: cl\n    hosts: [cl]\n    stable: {{ endpoints: [\"{}\"] }}\n  - name: chunked\n    hosts: [chunked]\n    stable: {{ endpoints: [\"{}\"] }}\n",
        with_cl.endpoint(),
        chunked.endpoint()
    )));
    for host in ["cl", "chunked"] {
        // Keep-alive on purpose: only the proxy closing the connection can end the body.
        let ex = exchange(
            proxy.addr,
            format!("GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        let responses = parse_responses(&ex.bytes);
        assert_eq!(responses.len(), 1, "{host}: {}", show(&ex.bytes));
        let r = &responses[0];
        assert!(
            ex.closed,
            "{host}: the client connection must be closed, not left hanging"
        );
        if r.status != 502 {
            assert_eq!(r.status, 200, "{host}");
            assert!(
                !r.complete,
                "{host}: a truncated upstream body was delivered as a complete response ({} bytes, headers {:?})",
                r.body.len(),
                r.headers
            );
            assert!(
                r.header("content-length").is_some() || r.header("transfer-encoding").is_some(),
                "{host}: a close-delimited response cannot show truncation: {:?}",
                r.headers
            );
        }
    }
    assert_eq!(with_cl.count(), 1, "not retried");
    assert_eq!(chunked.count(), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_is_an_error_for_h2_clients() {
    let backend = raw_backend(|s, heads| {
        reset_mid_body(
            s,
            heads,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
            vec![b'a'; 10_000],
        )
    })
    .await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    let result = tokio::time::timeout(Duration::from_secs(5), Client::h2c().get(proxy.addr, "app", "/big"))
        .await
        .expect("answered or failed within 5 s");
    match result {
        Err(_) => {} // the stream was reset: the client knows the body is incomplete
        Ok(reply) => assert!(
            reply.status == 502,
            "h2 client got a complete-looking {} with {} of 100000 bytes",
            reply.status,
            reply.body.len()
        ),
    }
    assert_eq!(backend.count(), 1);
}

/// `n` of a request head for the path `/n` (0 for any other path).
fn script_number(head: &str) -> usize {
    head.split(' ')
        .nth(1)
        .and_then(|p| p.trim_start_matches('/').parse().ok())
        .unwrap_or(0)
}

/// A raw backend answering each request with `responses[n]` for the path `/n`, then closing.
async fn scripted_backend(responses: &'static [&'static [u8]]) -> RawBackend {
    raw_backend(move |mut s, heads| async move {
        let Some(head) = read_head(&mut s, &heads).await else {
            return;
        };
        let _ = s.write_all(responses[script_number(&head)]).await;
        let _ = s.shutdown().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await
}

/// GETs `/0`, `/1`, … on fresh connections and expects exactly one 502 each.
async fn expect_502s(proxy: &Canaryd, backend: &RawBackend, labels: &[&str]) {
    let mut failures = Vec::new();
    for (n, label) in labels.iter().enumerate() {
        let before = backend.count();
        let ex = exchange(
            proxy.addr,
            format!("GET /{n} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        let statuses: Vec<u16> = parse_responses(&ex.bytes).iter().map(|r| r.status).collect();
        if statuses != [502] {
            failures.push(format!("[{label}] client got {statuses:?}: {}", show(&ex.bytes)));
        }
        let attempts = backend.count() - before;
        if attempts != 1 {
            failures.push(format!("[{label}] backend saw {attempts} attempts"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_malformed_responses_give_502() {
    static RESPONSES: &[&[u8]] = &[
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header Line\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nok",
    ];
    let backend = scripted_backend(RESPONSES).await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    expect_502s(
        &proxy,
        &backend,
        &[
            "invalid status code",
            "not HTTP",
            "header line without colon",
            "NUL in header value",
            "obs-fold",
            "space before colon",
            "two differing Content-Length",
            "non-numeric Content-Length",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_content_length_with_transfer_encoding_gives_502() {
    static RESPONSES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ];
    let backend = scripted_backend(RESPONSES).await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    expect_502s(
        &proxy,
        &backend,
        &["CL 3 + chunked 11 bytes", "chunked 2 bytes + CL 40"],
    )
    .await;
}

/// What the backend of the unrequested-upgrade test saw after its 101 on each connection.
#[derive(Debug, Clone, PartialEq)]
enum AfterSwitch {
    /// canaryd closed the upstream connection.
    Closed,
    /// Bytes arrived on the switched connection: canaryd made it a tunnel.
    Tunnelled(String),
    /// Neither within the wait.
    Open,
}

/// A 101 is forwarded only for the switch the client asked for (RFC 9110 §15.2.2): a 101 to a
/// request without `Upgrade`, to another protocol than the one offered, without `Connection:
/// upgrade`, or to an HTTP/2 stream is a 502; the upstream connection is closed, never a tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrequested_switching_protocols_is_a_502_and_never_a_tunnel() {
    static SWITCHES: &[&[u8]] = &[
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nBACKEND-TUNNEL",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nBACKEND-TUNNEL",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nBACKEND-TUNNEL",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nBACKEND-TUNNEL",
    ];
    let after: Arc<Mutex<Vec<AfterSwitch>>> = Arc::default();
    let seen = after.clone();
    let backend = raw_backend(move |mut s, heads| {
        let seen = seen.clone();
        async move {
            let Some(head) = read_head(&mut s, &heads).await else {
                return;
            };
            let _ = s.write_all(SWITCHES[script_number(&head)]).await;
            let mut buf = [0u8; 256];
            let outcome = match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => AfterSwitch::Closed,
                Ok(Ok(k)) => AfterSwitch::Tunnelled(String::from_utf8_lossy(&buf[..k]).into_owned()),
                Err(_) => AfterSwitch::Open,
            };
            seen.lock().unwrap().push(outcome);
        }
    })
    .await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    let websocket = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        ("101 to a request without Upgrade", "/0", ""),
        ("101 to h2c when websocket was offered", "/1", websocket),
        ("101 without Connection: upgrade", "/2", websocket),
    ];
    let mut failures = Vec::new();
    for (label, path, upgrade) in cases {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n{upgrade}\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        // What a client sends next must never reach the backend's switched connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = s.write_all(b"CLIENT-AFTER-SWITCH\r\n\r\n").await;
        let started = Instant::now();
        let ex = read_until_close(&mut s, started, started + Duration::from_secs(4)).await;
        let statuses: Vec<u16> = parse_responses(&ex.bytes).iter().map(|r| r.status).collect();
        if statuses.first() != Some(&502) || find(&ex.bytes, b"BACKEND-TUNNEL").is_some() {
            failures.push(format!("[{label}] client got {}", show(&ex.bytes)));
        }
    }
    // HTTP/2 cannot switch protocols at all.
    match Client::h2c().get(proxy.addr, "app", "/3").await {
        Ok(reply) if reply.status == 502 => {}
        other => failures.push(format!("[101 to an HTTP/2 request] client got {other:?}")),
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    while after.lock().unwrap().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = after.lock().unwrap().clone();
    if after != vec![AfterSwitch::Closed; 4] {
        failures.push(format!("the backend's switched connections: {after:?}"));
    }
    let counted = proxy
        .metric(r#"canaryd_upstream_errors_total{reason="upgrade",route="app",variant="stable"}"#)
        .await;
    if counted != 4.0 {
        failures.push(format!(
            "canaryd_upstream_errors_total{{reason=\"upgrade\"}} is {counted}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_failing_upstream_are_never_retried() {
    // One endpoint closes after reading the request, the other resets it: neither answers.
    let closes = raw_backend(|mut s, heads| async move {
        let _ = read_head(&mut s, &heads).await;
        let _ = s.shutdown().await;
    })
    .await;
    let resets = raw_backend(|mut s, heads| async move {
        let _ = read_head(&mut s, &heads).await;
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "passive_health: {{ failures: 1000, cooloff: 1s }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\", \"{}\"] }}\n",
        closes.endpoint(),
        resets.endpoint()
    )));
    let mut failures = Vec::new();
    for i in 0..8 {
        let before = closes.count() + resets.count();
        let ex = exchange(
            proxy.addr,
            format!("POST /order/{i} HTTP/1.1\r\nHost: app\r\nContent-Length: 7\r\nConnection: close\r\n\r\norder=1")
                .as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        let statuses: Vec<u16> = parse_responses(&ex.bytes).iter().map(|r| r.status).collect();
        let attempts = closes.count() + resets.count() - before;
        if statuses != [502] || attempts != 1 {
            failures.push(format!(
                "POST {i}: client got {statuses:?}, upstream saw {attempts} attempts"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Response queue poisoning: bytes a backend sends past the end of a response must not
/// be taken as the response to the next request on that pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_bytes_after_a_response_do_not_poison_the_pool() {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let backend = raw_backend(move |mut s, heads| {
        let counter = counter.clone();
        async move {
            while read_head(&mut s, &heads).await.is_some() {
                let reply: &[u8] = if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst\
                      HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Poison: 1\r\n\r\npoisoned"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"
                };
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = Canaryd::start(&Canaryd::config(&app_route(&backend.endpoint())));
    let first = Client::new().get(proxy.addr, "app", "/1").await.unwrap();
    assert_eq!((first.status.as_u16(), first.text().as_str()), (200, "first"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 2..5 {
        // A different client each time: the poison would cross users.
        let reply = Client::new().get(proxy.addr, "app", &format!("/{i}")).await.unwrap();
        assert!(
            reply.text() != "poisoned" && reply.headers.get("x-poison").is_none(),
            "request {i} got the bytes the backend sent after response 1"
        );
        assert!(
            (reply.status == 200 && reply.text() == "second") || reply.status == 502,
            "request {i}: {} {:?}",
            reply.status,
            reply.text()
        );
    }
}

/// A backend may answer an upload before reading it (`413` at the head). The connection then
/// still carries the client's unfinished body: the next request must not wait behind it for a
/// connection that only the uploader can free, but go on one of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_unfinished_upload_does_not_hold_up_the_next_request() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let backend = raw_backend(move |mut s, heads| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            while let Some(head) = read_head(&mut s, &heads).await {
                if head.starts_with("POST /upload ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!")
                        .await;
                    // Reads nothing more: the rest of the body stays on the wire.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let top = "timeouts: { response_header: 2s, idle: 20s }\n";
    let proxy = Canaryd::start(&Canaryd::config(&format!("{top}{}", app_route(&backend.endpoint()))));

    // The uploader sends a head promising 1 MB and 1 KiB of it, then goes quiet.
    let mut uploader = TcpStream::connect(proxy.addr).await.unwrap();
    uploader
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    uploader.write_all(&[b'x'; 1024]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&got, b"big!").is_none() {
        match tokio::time::timeout(Duration::from_secs(5), uploader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no early answer to the upload: {other:?} after {}", show(&got)),
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 413"), "{}", show(&got));

    for i in 0..3 {
        let reply = Client::new()
            .get(proxy.addr, "app", &format!("/next/{i}"))
            .await
            .unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "whole"),
            "request {i} after the early answer"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the upload's connection, then one kept-alive connection for the rest"
    );
    drop(uploader);
}
