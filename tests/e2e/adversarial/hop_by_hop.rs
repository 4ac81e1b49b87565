//! Hop-by-hop headers.

use super::*;

/// Sends `request` (which should say `Connection: close`) and returns the single response
/// and the one request the backend received.
async fn forward_one(proxy: &Canaryd, backend: &BackendHandle, request: &str) -> (Resp, canary_tests::Recorded) {
    let before = backend.count();
    let ex = exchange(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
    let mut responses = parse_responses(&ex.bytes);
    assert_eq!(responses.len(), 1, "one response: {}", show(&ex.bytes));
    let seen = backend.requests();
    assert_eq!(seen.len(), before + 1, "backend got exactly one request");
    (responses.remove(0), seen[before].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_are_not_forwarded() {
    let (backend, proxy) = setup("").await;
    let (resp, r) = forward_one(
        &proxy,
        &backend,
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close, x-foo\r\nConnection: X-Bar\r\n\
         X-Foo: secret\r\nX-Bar: secret\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    for gone in ["connection", "x-foo", "x-bar"] {
        assert!(!r.headers.contains_key(gone), "backend got {gone}: {:?}", r.headers);
    }
    assert_eq!(r.headers["x-kept"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailer_and_upgrade_without_connection_upgrade_are_not_forwarded() {
    let (backend, proxy) = setup("").await;
    let (resp, r) = forward_one(
        &proxy,
        &backend,
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nTE: trailers, deflate\r\nTrailer: x-sum\r\n\
         Upgrade: websocket\r\nKeep-Alive: timeout=99\r\nProxy-Connection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "an Upgrade without Connection: upgrade is no upgrade");
    for gone in [
        "te",
        "trailer",
        "upgrade",
        "connection",
        "keep-alive",
        "proxy-connection",
    ] {
        assert!(!r.headers.contains_key(gone), "backend got {gone}: {:?}", r.headers);
    }
}

/// h2c upgrade smuggling: if `Upgrade: h2c` reaches a backend that speaks h2c, the
/// client gets a raw HTTP/2 connection to the backend behind the proxy's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_not_forwarded() {
    let (backend, proxy) = setup("").await;
    let (resp, r) = forward_one(
        &proxy,
        &backend,
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_ne!(resp.status, 101);
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(!r.headers.contains_key(gone), "backend got {gone}: {:?}", r.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_variant_header_is_overwritten() {
    let (backend, proxy) = setup("").await;
    let (resp, r) = forward_one(
        &proxy,
        &backend,
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close, x-canary-variant\r\nX-Canary-Variant: canary\r\n\
         x-canary-variant: stable, canary\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let values: Vec<_> = r.headers.get_all("x-canary-variant").iter().collect();
    assert_eq!(values, ["stable"], "exactly one value, ours");
    assert!(
        resp.header("x-canary-variant").is_none(),
        "expose_variant is off: the client is not told"
    );
}
