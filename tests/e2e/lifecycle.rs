//! Graceful shutdown: in-flight requests finish, new connections are refused, exit code 0.

use std::time::{Duration, Instant};

use canary_tests::{Backend, Canaryd, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_and_refuses_new_connections() {
    let backend = Backend::new("slow").start().await;
    let mut proxy = Canaryd::start(&Canaryd::config(&format!(
        "timeouts: {{ drain: 10s }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n",
        backend.endpoint()
    )));
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { Client::new().get(addr, "app", "/sleep/1500").await });
    // Let the request reach the backend before the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.count() == 0 {
        assert!(Instant::now() < deadline, "request never reached the backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_log("shutting down", Duration::from_secs(5)));
    // The listening socket is closed: new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "still accepting after SIGTERM");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let reply = in_flight.await.unwrap().expect("in-flight request completes");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slow");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_on_the_admin_listener() {
    let backend = Backend::new("b").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n",
        backend.endpoint()
    )));
    let c = Client::new();
    assert_eq!(c.get(proxy.admin, "x", "/healthz").await.unwrap().status, 200);
    assert_eq!(c.get(proxy.admin, "x", "/readyz").await.unwrap().status, 200);
    assert_eq!(c.get(proxy.admin, "x", "/nope").await.unwrap().status, 404);
    // The admin endpoints are not on the public port: there this is just an unrouted path.
    let public = c.get(proxy.addr, "x", "/healthz").await.unwrap();
    assert_eq!(public.text(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_hold_up_shutdown() {
    let backend = Backend::new("b").start().await;
    let mut proxy = Canaryd::start(&Canaryd::config(&format!(
        "timeouts: {{ drain: 30s, idle: 60s }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n",
        backend.endpoint()
    )));
    // Connections that never send a byte (a client pool's spare ones, or an attacker's).
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        started.elapsed()
    );
}
