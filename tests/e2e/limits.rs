//! Limits that protect the proxy: body size, header count and size, connection count.

use std::time::Duration;

use canary_tests::{Backend, Canaryd, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_headers_are_refused_before_the_backend() {
    let backend = Backend::new("b").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "limits: {{ max_body_bytes: 1000 }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n",
        backend.endpoint()
    )));
    // Declared too large: 413 at once.
    let body = "x".repeat(2000);
    let resp = raw(
        proxy.addr,
        format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}")
            .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("route app: request body larger than 1000 bytes"));
    assert_eq!(backend.count(), 0);
    // Streamed too large (chunked): 413 as soon as the limit passes.
    let chunk = format!("{:x}\r\n{}\r\n", 600, "y".repeat(600));
    let resp = raw(
        proxy.addr,
        format!("POST /echo-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // Within the limit: forwarded.
    let resp = raw(
        proxy.addr,
        b"POST /echo-body HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("\r\n\r\n5"),
        "{resp}"
    );

    // 101 headers (limit 100) and a 40 KiB header block (limit 32 KiB): 431, never forwarded.
    let before = backend.count();
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: app\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let big = format!("X-Big: {}\r\n", "z".repeat(40 * 1024));
    let resp = raw(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: app\r\n{big}\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(backend.count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_limit_are_shed_and_the_admin_port_still_answers() {
    let backend = Backend::new("b").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "limits: {{ max_connections: 20 }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n",
        backend.endpoint()
    )));
    // 20 admitted keep-alive connections, each with one request answered.
    let mut admitted = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        admitted.push(s);
    }
    // The 21st to 30th are closed at once.
    for _ in 0..10 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await;
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a connection above the limit must be closed");
    }
    // Admitted connections keep serving; the admin listener has its own budget.
    let mut s = admitted.pop().unwrap();
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut sink)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    assert_eq!(
        Client::new().get(proxy.admin, "x", "/healthz").await.unwrap().status,
        200
    );
    assert!(proxy.metric(r#"canaryd_connections_shed_total{listener="http"}"#).await >= 10.0);
}
