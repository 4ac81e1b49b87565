//! Upstream failures: retry, 502, 504, 503, fallback, passive health.

use std::time::{Duration, Instant};

use canary_tests::{Backend, Canaryd, Client};

/// An address where nothing listens (bound, then closed).
fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_is_retried_for_gets_and_taken_out() {
    let live = Backend::new("live").start().await;
    let dead = dead_endpoint();
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "passive_health: {{ failures: 3, cooloff: 60s }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{dead}\", \"{}\"] }}\n",
        live.endpoint()
    )));
    let c = Client::new();
    for i in 0..100 {
        let reply = c.get(proxy.addr, "app", &format!("/{i}")).await.unwrap();
        assert_eq!(reply.status, 200, "GET {i} must be retried on the live endpoint");
    }
    let connect_errors = proxy
        .metric(r#"canaryd_upstream_errors_total{reason="connect",route="app",variant="stable"}"#)
        .await;
    assert!(connect_errors >= 1.0, "the dead endpoint was tried");
    assert!(
        connect_errors <= 3.0,
        "after 3 failures the dead endpoint is skipped, got {connect_errors} errors"
    );
    assert_eq!(live.count(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_dead_endpoint_gives_502_naming_the_route() {
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: shop\n    stable: {{ endpoints: [\"{}\"] }}\n",
        dead_endpoint()
    )));
    let reply = Client::new().get(proxy.addr, "shop", "/").await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "route shop: stable endpoint unreachable\n");
    assert_eq!(
        proxy
            .metric(r#"canaryd_requests_total{code_class="5xx",route="shop",variant="stable"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_not_retried() {
    let live = Backend::new("live").start().await;
    let dead = dead_endpoint();
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "passive_health: {{ failures: 1000, cooloff: 1s }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{dead}\", \"{}\"] }}\n",
        live.endpoint()
    )));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut bad = 0;
    for _ in 0..60 {
        let req = http::Request::post(format!("http://{}/submit", proxy.addr))
            .header("host", "app")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"order=1")))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        if resp.status() == 502 {
            bad += 1;
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    assert!(
        bad > 0,
        "a POST that hit the dead endpoint must not be replayed elsewhere"
    );
    assert_eq!(live.count(), 60 - bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_gives_504_at_the_timeout() {
    let slow = Backend::new("slow").delay(Duration::from_secs(5)).start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "timeouts: {{ response_header: 400ms }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n",
        slow.endpoint()
    )));
    let started = Instant::now();
    let reply = Client::new().get(proxy.addr, "app", "/").await.unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "route app: stable endpoint did not answer in time\n");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert_eq!(
        proxy
            .metric(r#"canaryd_upstream_errors_total{reason="timeout",route="app",variant="stable"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_variant_falls_back_and_is_counted_and_nothing_gives_503() {
    let stable = Backend::new("stable").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "routes:\n  - name: app\n    hosts: [app]\n    stable: {{ endpoints: [\"{}\"] }}\n    weight: 50\n  - name: empty\n    hosts: [empty]\n    stable: {{ endpoints: [] }}\n    weight: 50\n",
        stable.endpoint()
    )));
    let c = Client::new();
    for _ in 0..200 {
        let reply = c.get(proxy.addr, "app", "/").await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.backend(), Some("stable"));
    }
    let fallbacks = proxy
        .metric(r#"canaryd_fallbacks_total{route="app",variant="canary"}"#)
        .await;
    assert!(
        (60.0..=140.0).contains(&fallbacks),
        "about half of 200 decided canary and fell back: {fallbacks}"
    );

    let reply = c.get(proxy.addr, "empty", "/").await.unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "route empty: no endpoints for stable or canary\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_canary_falls_back_to_stable_once_taken_out() {
    let stable = Backend::new("stable").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "passive_health: {{ failures: 2, cooloff: 60s }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: 50\n",
        stable.endpoint(),
        dead_endpoint()
    )));
    let c = Client::new();
    let mut failed = 0;
    for _ in 0..100 {
        let reply = c.get(proxy.addr, "app", "/").await.unwrap();
        if reply.status != 200 {
            assert_eq!(reply.status, 502);
            failed += 1;
        }
    }
    assert_eq!(
        failed, 2,
        "two connect failures trip the canary endpoint; then its share falls back to stable"
    );
    assert!(
        proxy
            .metric(r#"canaryd_fallbacks_total{route="app",variant="canary"}"#)
            .await
            > 10.0
    );
}
