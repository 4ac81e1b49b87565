//! Pipelining and requests per connection.

use super::*;

/// Pipelined requests, then one refused with a 400 (which closes the connection), then
/// 256 KiB the proxy never reads: every answer before the close arrives, the stream ends
/// with a clean EOF (no reset), and nothing after the refused request reaches a backend.
/// (The lingering close in proxy/src/linger.rs guards the reset case of RFC 9112 §9.6; this
/// shape passed without it too on loopback, so it is a regression check of the close, not
/// a proof of the linger — see fuzz/README.md for the input where the linger shows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_with_unread_pipelined_input_loses_no_answer() {
    let (backend, proxy) = setup("").await;
    let pipelined = 30;
    let mut request = String::new();
    for i in 0..pipelined {
        request.push_str(&format!("GET /p/{i} HTTP/1.1\r\nHost: app\r\n\r\n"));
    }
    request.push_str("GET /refused HTTP/1.1\r\nHost: app\r\nHost: other\r\n\r\n");
    let tail = format!(
        "GET /never HTTP/1.1\r\nHost: app\r\nX-Pad: {}\r\n\r\n",
        "x".repeat(4000)
    )
    .repeat(64);
    request.push_str(&tail);
    let mut lost = Vec::new();
    for run in 0..10 {
        let before = backend.count();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut r, mut w) = s.split();
        let bytes = request.as_bytes();
        // Written while reading, so neither side waits on a full socket buffer.
        let (_, got) = tokio::join!(
            async {
                let _ = w.write_all(bytes).await;
            },
            async {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let end = loop {
                    match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
                        Ok(Ok(0)) => break "eof".to_string(),
                        Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                        Ok(Err(e)) => break format!("{:?}", e.kind()),
                        Err(_) => break "timeout".to_string(),
                    }
                };
                (got, end)
            }
        );
        let (got, end) = got;
        let responses = parse_responses(&got);
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        let ok = statuses.len() == pipelined + 1
            && statuses[..pipelined].iter().all(|&s| s == 200)
            && statuses[pipelined] == 400
            && end == "eof";
        if !ok {
            lost.push(format!(
                "run {run}: {} answers, last {:?}, ended by {end}",
                statuses.len(),
                statuses.last()
            ));
        }
        let seen = targets_since(&backend, before);
        assert!(
            seen.iter().all(|t| t.starts_with("GET /p/")),
            "something after the refused request reached the backend: {seen:?}"
        );
    }
    assert!(lost.is_empty(), "answers lost to a reset: {lost:?}");
}

/// `limits.max_requests_per_connection` closes a connection gracefully after that many
/// requests: HTTP/1.1 ends the connection after the last answer, HTTP/2 sends GOAWAY; the
/// advertised HTTP/2 windows are the configured ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_connection_and_h2_windows_follow_the_limits() {
    let (backend, proxy) = setup(
        "limits:\n  max_requests_per_connection: 5\n  h2_stream_window_bytes: 131072\n  h2_connection_window_bytes: 4194304\n",
    )
    .await;
    // HTTP/1.1: six pipelined requests, five answered, then the end of the connection.
    let request = (0..6)
        .map(|i| format!("GET /k/{i} HTTP/1.1\r\nHost: app\r\n\r\n"))
        .collect::<String>();
    let ex = exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let statuses: Vec<u16> = parse_responses(&ex.bytes).iter().map(|r| r.status).collect();
    assert!(ex.closed, "the connection stays open after its 5 requests");
    assert_eq!(statuses, vec![200; 5], "five answers, then the close");
    assert_eq!(targets_since(&backend, 0).len(), 5, "the sixth request was forwarded");

    // HTTP/2: the windows as configured, then GOAWAY once five streams are answered.
    let (s, settings) = h2f::handshake(proxy.addr).await;
    let window = settings
        .iter()
        .rev()
        .find(|(id, _)| *id == h2f::SETTINGS_INITIAL_WINDOW_SIZE)
        .map(|(_, v)| *v);
    assert_eq!(window, Some(131_072), "stream window in SETTINGS: {settings:?}");
    let (mut r, mut w) = s.into_split();
    let mut burst = Vec::new();
    for i in 0..5u32 {
        burst.extend(h2f::get(1 + 2 * i, "app", &format!("/h2/{i}")));
    }
    w.write_all(&burst).await.unwrap();
    let (mut conn_window, mut answered, mut goaway) = (None, 0, false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !(goaway && conn_window.is_some() && answered == 5) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(f)) = tokio::time::timeout(left, h2f::read_frame(&mut r)).await else {
            break;
        };
        match f.ty {
            h2f::WINDOW_UPDATE if f.stream == 0 => {
                let inc = u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]) & 0x7fff_ffff;
                conn_window = Some(65_535 + inc);
            }
            h2f::HEADERS => answered += 1,
            h2f::GOAWAY => goaway = true,
            _ => {}
        }
    }
    assert_eq!(
        conn_window,
        Some(4_194_304),
        "connection window after the first WINDOW_UPDATE"
    );
    assert_eq!(answered, 5, "all five streams answered");
    assert!(goaway, "no GOAWAY after the connection's 5 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_forwarded_once() {
    // The first backend is slow, so an out-of-order proxy would answer "two" first.
    let one = Backend::new("one").delay(Duration::from_millis(300)).start().await;
    let two = Backend::new("two").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: one\n    hosts: [one]\n    stable: {{ endpoints: [\"{}\"] }}\n  - name: two\n    hosts: [two]\n    stable: {{ endpoints: [\"{}\"] }}\n",
        one.endpoint(),
        two.endpoint()
    )));
    let request = "GET /a HTTP/1.1\r\nHost: one\r\n\r\n\
                   POST /echo-body HTTP/1.1\r\nHost: two\r\nContent-Length: 5\r\n\r\nhello\
                   GET /c HTTP/1.1\r\nHost: one\r\n\r\n\
                   POST /echo-body HTTP/1.1\r\nHost: two\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                   GET /e HTTP/1.1\r\nHost: two\r\nConnection: close\r\n\r\n";
    let ex = exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(ex.closed, "closed after the last request: {}", show(&ex.bytes));
    let bodies: Vec<(u16, String)> = parse_responses(&ex.bytes)
        .iter()
        .map(|r| (r.status, r.text()))
        .collect();
    assert_eq!(
        bodies,
        [
            (200, "one".to_string()),
            (200, "5".to_string()),
            (200, "one".to_string()),
            (200, "3".to_string()),
            (200, "two".to_string())
        ]
    );
    assert_eq!(targets_since(&one, 0), ["GET /a", "GET /c"]);
    assert_eq!(targets_since(&two, 0), ["POST /echo-body", "POST /echo-body", "GET /e"]);
}
