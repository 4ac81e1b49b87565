//! The weighted split through the real binary: share within binomial bounds, exact ends.

use canary_tests::{binomial_bounds, Backend, Canaryd, Client};

fn config(stable: &str, canary: &str, weight: &str) -> String {
    Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{stable}\"] }}\n    canary: {{ endpoints: [\"{canary}\"] }}\n    weight: {weight}\n"
    ))
}

/// Sends `n` requests over `workers` keep-alive connections; returns how many reached the canary.
async fn canary_hits(proxy: &Canaryd, n: usize, workers: usize) -> usize {
    let client = Client::new();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        let addr = proxy.addr;
        let count = n / workers + usize::from(w < n % workers);
        tasks.push(tokio::spawn(async move {
            let mut canary = 0;
            for _ in 0..count {
                let reply = client.get(addr, "app.test", "/").await.expect("request");
                assert_eq!(reply.status, 200);
                let variant = reply.headers.get("x-backend").unwrap().to_str().unwrap().to_string();
                canary += usize::from(variant == "canary");
            }
            canary
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_10_lands_within_binomial_interval() {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    let proxy = Canaryd::start(&config(&stable.endpoint(), &canary.endpoint(), "10"));
    let n = 20_000;
    let hits = canary_hits(&proxy, n, 16).await;
    let (lo, hi) = binomial_bounds(n as u64, 0.10);
    assert!(
        (lo..=hi).contains(&(hits as f64)),
        "canary got {hits} of {n}; 1e-5 interval {lo:.0}..{hi:.0}"
    );
    // The backends saw the decision in x-canary-variant.
    assert!(canary
        .requests()
        .iter()
        .all(|r| r.headers["x-canary-variant"] == "canary"));
    assert!(stable
        .requests()
        .iter()
        .all(|r| r.headers["x-canary-variant"] == "stable"));
    // And it was counted per variant.
    let counted = proxy
        .metric(r#"canaryd_requests_total{code_class="2xx",route="app",variant="canary"}"#)
        .await;
    assert_eq!(counted as usize, hits);
    eprintln!(
        "weight 10 %: canary {hits} of {n} ({:.3} %), 1e-5 interval {lo:.0}..{hi:.0}",
        hits as f64 * 100.0 / n as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_0_and_100_are_exact() {
    let stable = Backend::new("stable").start().await;
    let canary = Backend::new("canary").start().await;
    let none = Canaryd::start(&config(&stable.endpoint(), &canary.endpoint(), "0"));
    assert_eq!(canary_hits(&none, 3_000, 8).await, 0);
    let all = Canaryd::start(&config(&stable.endpoint(), &canary.endpoint(), "100"));
    assert_eq!(canary_hits(&all, 3_000, 8).await, 3_000);
}
