//! Hot reload under load: SIGHUP and file changes swap the table with zero failed requests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_tests::{Backend, Canaryd, Client};

fn config(stable: &str, canary: &str, weight: &str) -> String {
    Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{stable}\"] }}\n    canary: {{ endpoints: [\"{canary}\"] }}\n    weight: {weight}\n"
    ))
}

const SUCCESS: &str = r#"canaryd_config_reloads_total{result="success"}"#;
const FAILURE: &str = r#"canaryd_config_reloads_total{result="failure"}"#;

/// Waits until the metric reaches at least `want`.
async fn wait_metric(proxy: &Canaryd, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric(series).await < want {
        assert!(Instant::now() < deadline, "{series} never reached {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sighup_weight_changes_under_load_lose_nothing() {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    let (s, c) = (stable.endpoint(), canary.endpoint());
    let proxy = Canaryd::start(&config(&s, &c, "0"));

    // Background load: a bounded loop of 5,000 requests over 4 connections, recording failures.
    let done = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, addr, done) = (Client::new(), proxy.addr, done.clone());
        let (sent, failed) = (sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..1_250 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(addr, "app", "/").await {
                    Ok(r) if r.status == 200 => {}
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let probe = Client::new();
    let mut applied = proxy.metric(SUCCESS).await;
    for i in 0..50 {
        let (weight, want) = if i % 2 == 0 { ("100", "canary") } else { ("0", "stable") };
        proxy.write_config(&config(&s, &c, weight));
        proxy.signal(libc::SIGHUP);
        wait_metric(&proxy, SUCCESS, applied + 1.0).await;
        applied = proxy.metric(SUCCESS).await;
        // The split follows the new weight at once.
        for _ in 0..10 {
            let r = probe.get(proxy.addr, "app", "/").await.unwrap();
            assert_eq!(r.backend(), Some(want), "after change {i} to weight {weight}");
        }
    }
    for t in load {
        t.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    eprintln!(
        "{} requests during 50 reloads, {} failed",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(sent.load(Ordering::Relaxed), 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_keeps_serving_and_says_why() {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    let (s, c) = (stable.endpoint(), canary.endpoint());
    let proxy = Canaryd::start(&config(&s, &c, "100"));
    proxy.write_config(&config(&s, &c, "250"));
    proxy.signal(libc::SIGHUP);
    wait_metric(&proxy, FAILURE, 1.0).await;
    assert!(
        proxy.wait_log("routes[0].weight: 250 is above 100", Duration::from_secs(5)),
        "{:?}",
        proxy.log()
    );
    assert_eq!(proxy.metric("canaryd_config_last_reload_success").await, 0.0);
    let r = Client::new().get(proxy.addr, "app", "/").await.unwrap();
    assert_eq!(r.backend(), Some("canary"), "the last good config keeps serving");

    // A good file again, noticed without a signal.
    proxy.write_config(&config(&s, &c, "0"));
    wait_metric(&proxy, SUCCESS, 1.0).await;
    assert_eq!(proxy.metric("canaryd_config_last_reload_success").await, 1.0);
    let r = Client::new().get(proxy.addr, "app", "/").await.unwrap();
    assert_eq!(r.backend(), Some("stable"));
}
