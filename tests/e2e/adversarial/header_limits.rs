//! Header and request-line limits.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_headers_are_rejected() {
    let (backend, proxy) = setup("").await;
    let mut request = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..101 {
        request.push_str(&format!("X-H{i}: v\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let cases = [("101 extra headers", request.into_bytes())];
    expect_all_rejected(&proxy, &backend, &cases, &[431, 400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_block_over_32_kib_is_rejected() {
    let (backend, proxy) = setup("").await;
    let value = "a".repeat(1000);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n");
    for i in 0..34 {
        many.push_str(&format!("X-Big{i}: {value}\r\n"));
    }
    many.push_str("\r\n");
    let one = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-One: {}\r\n\r\n",
        "b".repeat(34 * 1024)
    );
    let cases = [
        ("34 headers of 1000 bytes", many.into_bytes()),
        ("one 34 KiB header", one.into_bytes()),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[431, 400]).await;
}

fn long_target(n: usize) -> Vec<u8> {
    format!(
        "GET /{} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        "a".repeat(n)
    )
    .into_bytes()
}

/// `limits.max_request_line_bytes` (8 KiB) bounds the request line on its own, below the
/// 32 KiB head limit: 414, nothing forwarded; a line just under it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_over_the_limit_is_414() {
    let (backend, proxy) = setup("").await;
    let cases = [
        ("10 KiB target", long_target(10 * 1024)),
        ("20 KiB target", long_target(20 * 1024)),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[414]).await;
    let ex = exchange(proxy.addr, &long_target(8 * 1024 - 64), Duration::from_secs(3)).await;
    let statuses: Vec<u16> = parse_responses(&ex.bytes).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "an 8 KiB - 64 request line must be served");
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_limit_follows_the_config() {
    let (backend, proxy) = setup("limits: { max_request_line_bytes: 2048 }\n").await;
    expect_all_rejected(&proxy, &backend, &[("3 KiB target", long_target(3 * 1024))], &[414]).await;
    let ex = exchange(proxy.addr, &long_target(1900), Duration::from_secs(3)).await;
    assert_eq!(
        parse_responses(&ex.bytes).iter().map(|r| r.status).collect::<Vec<_>>(),
        [200]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_32_kib_is_rejected() {
    let (backend, proxy) = setup("limits: { max_request_line_bytes: 32768 }\n").await;
    let cases = [
        ("40 KiB target", long_target(40 * 1024)),
        ("70 KiB target", long_target(70 * 1024)),
    ];
    expect_all_rejected(&proxy, &backend, &cases, &[431, 414]).await;
}
