//! Helpers for the kubernetes-mode tests: backends playing the Pods of a Service, waiting
//! for readiness, counting where requests go, and a bounded background load.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{admin_call, Backend, BackendHandle, Canaryd, Client};

/// Backends on 127.0.0.N sharing one port, as the Pods behind one Service do.
pub async fn pods(names: &[&str], first_ip: u8) -> (u16, Vec<BackendHandle>) {
    'retry: for _ in 0..20 {
        let probe = std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, first_ip), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let mut handles = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let addr = SocketAddr::from(([127, 0, 0, first_ip + i as u8], port));
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'retry;
            }
            handles.push(Backend::new(name).start_on(addr).await);
        }
        return (port, handles);
    }
    panic!("no port free on all of 127.0.0.{first_ip}..");
}

/// Waits for `/readyz` to answer 200 (every watch listed).
pub async fn wait_ready(proxy: &Canaryd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = admin_call(proxy.admin, "GET", "/readyz", &[], "").await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "canaryd never became ready:\n{}",
            proxy.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `n` requests for `host` and counts the answering backends; every one must be a 200.
pub async fn spread(
    client: &Client,
    proxy: &Canaryd,
    host: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = client.send(proxy.addr, host, "/", headers).await.expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        *seen.entry(r.backend().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    seen
}

/// Bounded background load (at most `limit` requests on 4 connections) counting failures.
pub struct Load {
    done: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts sending GET / for `host` to `addr`.
    pub fn start(addr: SocketAddr, host: &'static str, limit: usize) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..4)
            .map(|_| {
                let (client, done, sent, failed) = (Client::new(), done.clone(), sent.clone(), failed.clone());
                tokio::spawn(async move {
                    for _ in 0..limit / 4 {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        match client.get(addr, host, "/").await {
                            Ok(r) if r.status == 200 => {}
                            other => {
                                eprintln!("failed: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            done,
            sent,
            failed,
            tasks,
        }
    }

    /// Stops and returns (sent, failed).
    pub async fn stop(self) -> (usize, usize) {
        self.done.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}
