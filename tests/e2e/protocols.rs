//! HTTP/2 cleartext (prior knowledge) and WebSocket upgrades through the proxy.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use canary_tests::{Backend, Canaryd, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_end_to_end() {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: 50\n",
        stable.endpoint(),
        canary.endpoint()
    )));
    let c = Client::h2c();
    let mut tasks = Vec::new();
    // Many concurrent streams on one HTTP/2 connection.
    for i in 0..200 {
        let c = c.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            c.get(addr, "ignored", &format!("/h2/{i}")).await.unwrap()
        }));
    }
    let mut by_backend = std::collections::HashMap::new();
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, 200);
        *by_backend.entry(reply.backend().unwrap().to_string()).or_insert(0) += 1;
    }
    assert!(by_backend.len() == 2, "both variants served: {by_backend:?}");
    // Backends get HTTP/1.1 with a Host made from the :authority.
    let r = &stable.requests()[0];
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.headers["host"].to_str().unwrap(), proxy.addr.to_string());
    assert_eq!(r.headers["x-forwarded-host"].to_str().unwrap(), proxy.addr.to_string());
}

/// A WebSocket echo server on a loopback port.
async fn ws_echo_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.expect("ws handshake");
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let backend = ws_echo_backend().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: ws\n    stable: {{ endpoints: [\"{backend}\"] }}\n"
    )));
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.test/socket", stream)
        .await
        .expect("upgrade via proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..50 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
}
