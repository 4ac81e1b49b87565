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

/// What became of one request of the fixed-rate load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A 200 came back.
    Answered,
    /// The connection was refused or closed without a byte of response.
    Refused,
    /// Anything else: a lost or broken request.
    Failed,
}

/// One request on its own connection, `id` in the path so the backend's record shows it.
async fn request(addr: std::net::SocketAddr, id: u64) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return Outcome::Refused;
    };
    let req = format!("GET /sleep/50?id={id} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return Outcome::Refused;
    }
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out)).await {
        Ok(_) if out.is_empty() => Outcome::Refused,
        Ok(_) if out.starts_with(b"HTTP/1.1 200") => Outcome::Answered,
        _ => Outcome::Failed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_api_and_sighup_changes_then_sigterm_lose_nothing() {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    let config = |weight: u32| {
        Canaryd::config(&format!(
            "timeouts: {{ drain: 10s }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: {weight}\n",
            stable.endpoint(),
            canary.endpoint()
        ))
    };
    let mut proxy = Canaryd::start(&config(0));
    let addr = proxy.addr;

    // Fixed rate: one request every 10 ms from each of 4 senders (about 400/s), until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..4u64 {
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut inflight = Vec::new();
            for n in 0..3_000u64 {
                tick.tick().await;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = n * 4 + s;
                inflight.push((id, tokio::spawn(request(addr, id))));
            }
            let mut outcomes = Vec::new();
            for (id, t) in inflight {
                outcomes.push((id, t.await.unwrap()));
            }
            outcomes
        }));
    }

    // 100 weight changes, API and SIGHUP alternating.
    for i in 0..100u32 {
        let weight = (i * 37) % 101;
        if i % 2 == 0 {
            let body = format!("{{\"percent\": {weight}}}");
            let (status, _, reply) = canary_tests::admin_call(
                proxy.admin,
                "PUT",
                "/api/v1/routes/app/weight",
                &[("content-type", "application/json")],
                &body,
            )
            .await;
            assert_eq!(status, 200, "{reply}");
        } else {
            proxy.write_config(&config(weight));
            proxy.signal(libc::SIGHUP);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sigterm_at = Instant::now();
    proxy.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(15)),
        Some(0),
        "canaryd did not exit cleanly"
    );
    let drained_in = sigterm_at.elapsed();

    let mut outcomes = Vec::new();
    for s in senders {
        outcomes.extend(s.await.unwrap());
    }
    let received: std::collections::HashSet<u64> = stable
        .requests()
        .iter()
        .chain(canary.requests().iter())
        .filter_map(|r| r.target.split_once("id=").and_then(|(_, id)| id.parse().ok()))
        .collect();
    let count = |o: Outcome| outcomes.iter().filter(|(_, x)| *x == o).count();
    let failed: Vec<_> = outcomes.iter().filter(|(_, o)| *o == Outcome::Failed).collect();
    // Refused means never accepted: such a request must not have reached a backend.
    let refused_but_processed: Vec<_> = outcomes
        .iter()
        .filter(|(id, o)| *o == Outcome::Refused && received.contains(id))
        .collect();
    let answered_unseen = outcomes
        .iter()
        .filter(|(id, o)| *o == Outcome::Answered && !received.contains(id))
        .count();
    eprintln!(
        "{} requests: {} answered, {} refused after SIGTERM, {} failed; exit {:?} after SIGTERM",
        outcomes.len(),
        count(Outcome::Answered),
        count(Outcome::Refused),
        failed.len(),
        drained_in
    );
    assert!(failed.is_empty(), "requests lost: {failed:?}");
    assert!(
        refused_but_processed.is_empty(),
        "refused yet processed: {refused_but_processed:?}"
    );
    assert_eq!(answered_unseen, 0);
    assert!(count(Outcome::Answered) > 500, "the load ran");
    assert!(count(Outcome::Refused) > 0, "the load went on past SIGTERM");
    assert!(
        stable.count() > 0 && canary.count() > 0,
        "both variants served during the changes"
    );
}
