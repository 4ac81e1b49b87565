//! Header hygiene as the backend and the client see it.

use canary_tests::{Backend, Canaryd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw request bytes and reads until the server closes.
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_stripped_and_forwarding_headers_set() {
    let stable = Backend::new("stable")
        .header("keep-alive", "timeout=5")
        .header("connection", "x-resp-secret")
        .header("x-resp-secret", "internal")
        .header("proxy-authenticate", "Basic")
        .start()
        .await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: 0\n",
        stable.endpoint(),
        "127.0.0.1:9"
    )));
    let response = raw(
        proxy.addr,
        "GET /page?q=1 HTTP/1.1\r\n\
         Host: App.Example.com\r\n\
         Connection: close, X-Secret\r\n\
         X-Secret: do-not-forward\r\n\
         Keep-Alive: timeout=100\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\n\
         X-Canary-Variant: canary\r\n\
         X-Custom: kept\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let lower = response.to_ascii_lowercase();
    for leaked in ["x-resp-secret", "keep-alive: timeout=5", "proxy-authenticate", "via:"] {
        assert!(!lower.contains(leaked), "response leaked {leaked}: {response}");
    }

    let seen = stable.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.target, "/page?q=1");
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "via",
        "upgrade",
    ] {
        assert!(!r.headers.contains_key(gone), "backend got {gone}: {:?}", r.headers);
    }
    let h = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(h("host").as_deref(), Some("App.Example.com"));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-forwarded-host").as_deref(), Some("App.Example.com"));
    assert_eq!(
        h("x-canary-variant").as_deref(),
        Some("stable"),
        "the client cannot pick its variant header"
    );
    assert_eq!(h("x-custom").as_deref(), Some("kept"));
    assert_eq!(r.version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_routes_by_its_authority() {
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: a\n    hosts: [a.test]\n    stable: {{ endpoints: [\"{}\"] }}\n  - name: b\n    hosts: [b.test]\n    stable: {{ endpoints: [\"{}\"] }}\n",
        a.endpoint(),
        b.endpoint()
    )));
    let response = raw(
        proxy.addr,
        "GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(a.count(), 0);
    let seen = b.requests();
    assert_eq!(seen[0].target, "/x");
    assert_eq!(
        seen[0].headers["host"], "b.test",
        "Host is made consistent with the routed authority"
    );
}
