//! Sticky assignment through the real binary: no user ever bounces, shares follow the
//! weight by users, restarts and replicas agree, overrides win.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use canary_tests::{binomial_bounds, Backend, BackendHandle, Canaryd, Client};

fn config(stable: &BackendHandle, canary: &BackendHandle, weight: &str, extra: &str) -> String {
    Canaryd::config(&format!(
        "routes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: {weight}\n    affinity: {{ key: cookie }}\n{extra}",
        stable.endpoint(),
        canary.endpoint()
    ))
}

/// Applies a new config via SIGHUP and waits until the reload counter moves.
async fn reload(proxy: &Canaryd, yaml: &str) {
    let series = r#"canaryd_config_reloads_total{result="success"}"#;
    let before = proxy.metric(series).await;
    proxy.write_config(yaml);
    proxy.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric(series).await <= before {
        assert!(Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each user's variant: one request per user with its cookie, over 8 connections.
async fn variants(proxy: &Canaryd, users: &[String]) -> Vec<String> {
    let client = Client::new();
    let mut tasks = Vec::new();
    for chunk in users.chunks(users.len().div_ceil(8)) {
        let (client, addr, chunk) = (client.clone(), proxy.addr, chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for user in chunk {
                let cookie = format!("canary_id={user}");
                let r = client.send(addr, "app", "/", &[("cookie", &cookie)]).await.unwrap();
                assert_eq!(r.status, 200);
                assert!(
                    r.headers.get("set-cookie").is_none(),
                    "an existing valid cookie is never overwritten"
                );
                out.push(r.backend().unwrap().to_string());
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(users.len());
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn canary_share(variants: &[String]) -> usize {
    variants.iter().filter(|v| *v == "canary").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cookie_holder_always_reaches_the_same_variant() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let proxy = Canaryd::start(&config(&stable, &canary, "50", ""));
    let c = Client::new();
    // First visit: no cookie, one is minted.
    let first = c.get(proxy.addr, "app", "/").await.unwrap();
    let set = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("canary_id=")
            && set.contains("; Path=/")
            && set.contains("; HttpOnly")
            && set.contains("; SameSite=Lax"),
        "{set}"
    );
    assert!(set.contains("; Max-Age=2592000"), "30 days by default: {set}");
    assert!(!set.contains("Secure"), "no Secure over plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let variant = first.backend().unwrap().to_string();
    for _ in 0..1_000 {
        let r = c.send(proxy.addr, "app", "/", &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.backend(), Some(variant.as_str()));
        assert!(r.headers.get("set-cookie").is_none());
    }
    // A malformed cookie is replaced.
    let r = c
        .send(proxy.addr, "app", "/", &[("cookie", "canary_id=<script>")])
        .await
        .unwrap();
    assert!(r.headers["set-cookie"].to_str().unwrap().starts_with("canary_id="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_up_never_bounces_a_user_and_restart_keeps_everyone() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let users: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
    let mut proxy = Canaryd::start(&config(&stable, &canary, "10", ""));
    let mut previous = variants(&proxy, &users).await;
    let mut steps = vec![(10.0, canary_share(&previous))];
    for weight in [25.0, 50.0, 100.0] {
        reload(&proxy, &config(&stable, &canary, &weight.to_string(), "")).await;
        let now = variants(&proxy, &users).await;
        for (i, (before, after)) in previous.iter().zip(&now).enumerate() {
            assert!(
                !(before == "canary" && after == "stable"),
                "user-{i} bounced back to stable at {weight} %"
            );
        }
        if weight == 50.0 {
            // kill -9 and start again on the same state file: everyone keeps their variant.
            let dir = proxy.kill();
            proxy = Canaryd::start_in(&config(&stable, &canary, "50", ""), dir);
            assert_eq!(variants(&proxy, &users).await, now, "a restart moved users");
        }
        steps.push((weight, canary_share(&now)));
        previous = now;
    }
    let n = users.len();
    for (weight, on_canary) in steps {
        let (lo, hi) = binomial_bounds(n as u64, weight / 100.0);
        eprintln!("weight {weight} %: {on_canary} of {n} users on canary (1e-5 interval {lo:.0}..{hi:.0})");
        assert!(
            (lo..=hi).contains(&(on_canary as f64)),
            "weight {weight}: {on_canary} users"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_decide_identically() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let yaml = config(&stable, &canary, "30", "");
    let (a, b) = (Canaryd::start(&yaml), Canaryd::start(&yaml));
    let users: Vec<String> = (0..1_000).map(|i| format!("k{i:04}")).collect();
    let (va, vb) = (variants(&a, &users).await, variants(&b, &users).await);
    assert_eq!(va, vb);
    let share = canary_share(&va);
    assert!(share > 200 && share < 400, "{share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_share_follows_the_weight_down_without_ratcheting() {
    // ingress-nginx and Flagger store the *variant* in the cookie, so users once sent to the
    // canary stay there when the weight drops, and the canary's user share ratchets above its
    // weight. Here the cookie holds only an id.
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let proxy = Canaryd::start(&config(&stable, &canary, "50", ""));
    let c = Client::new();
    // 2,000 first-time visitors get minted cookies.
    let mut cookies = Vec::new();
    let mut first: HashMap<String, String> = HashMap::new();
    for _ in 0..2_000 {
        let r = c.get(proxy.addr, "app", "/").await.unwrap();
        let cookie = r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        first.insert(cookie.clone(), r.backend().unwrap().to_string());
        cookies.push(cookie);
    }
    assert_eq!(first.len(), 2_000, "every minted id is distinct");
    let ids: Vec<String> = cookies
        .iter()
        .map(|c| c.trim_start_matches("canary_id=").to_string())
        .collect();
    let at_50 = canary_share(&variants(&proxy, &ids).await);
    let (lo, hi) = binomial_bounds(2_000, 0.5);
    assert!((lo..=hi).contains(&(at_50 as f64)), "{at_50} users at 50 %");
    // The minted cookie decided the first visit the same way as every later one.
    assert_eq!(at_50, first.values().filter(|v| *v == "canary").count());

    reload(&proxy, &config(&stable, &canary, "10", "")).await;
    let after = variants(&proxy, &ids).await;
    let at_10 = canary_share(&after);
    let (lo, hi) = binomial_bounds(2_000, 0.1);
    eprintln!(
        "users on canary: {at_50} of 2000 at 50 %, {at_10} of 2000 after lowering to 10 % (interval {lo:.0}..{hi:.0})"
    );
    assert!(
        (lo..=hi).contains(&(at_10 as f64)),
        "user share ratcheted: {at_10} users on canary at 10 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_beat_affinity_and_canary_only_ignores_weight() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let extra = format!(
        "    hosts: [app]\n    expose_variant: true\n  - name: canary-entry\n    hosts: [canary.app]\n    canary_only: true\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{}\"] }}\n    weight: 0\n",
        stable.endpoint(),
        canary.endpoint()
    );
    let zero = Canaryd::start(&config(&stable, &canary, "0", &extra));
    let c = Client::new();
    let user = [("cookie", "canary_id=someone")];
    assert_eq!(
        c.send(zero.addr, "app", "/", &user).await.unwrap().backend(),
        Some("stable")
    );
    for forced in [
        vec![("x-canary", "always"), ("cookie", "canary_id=someone")],
        vec![("X-Canary", "ALWAYS")],
        vec![("cookie", "canary=always; canary_id=someone")],
        vec![("x-canary", "always"), ("cookie", "canary=never")],
    ] {
        let r = c.send(zero.addr, "app", "/", &forced).await.unwrap();
        assert_eq!(r.backend(), Some("canary"), "{forced:?}");
        assert_eq!(
            r.headers["x-canary-variant"], "canary",
            "expose_variant tells the client"
        );
    }
    // Unknown values are ignored, not errors.
    let r = c
        .send(zero.addr, "app", "/", &[("x-canary", "maybe"), user[0]])
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.backend()), (200, Some("stable")));
    // canary_only ignores the weight (0 here) and overrides.
    for _ in 0..20 {
        let r = c
            .send(zero.addr, "canary.app", "/", &[("x-canary", "never")])
            .await
            .unwrap();
        assert_eq!(r.backend(), Some("canary"));
        assert!(r.headers.get("x-canary-variant").is_none(), "not exposed unless asked");
    }
    let full = Canaryd::start(&config(&stable, &canary, "100", ""));
    let r = c.send(full.addr, "app", "/", &[("x-canary", "never")]).await.unwrap();
    assert_eq!(r.backend(), Some("stable"));
    let r = c
        .send(full.addr, "app", "/", &[("cookie", "canary=never")])
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_client_ip_keys_are_sticky() {
    let (stable, canary) = (
        Backend::new("stable").start().await,
        Backend::new("canary").start().await,
    );
    let yaml = Canaryd::config(&format!(
        "routes:\n  - name: by-header\n    hosts: [h]\n    stable: {{ endpoints: [\"{s}\"] }}\n    canary: {{ endpoints: [\"{c}\"] }}\n    weight: 50\n    affinity: {{ key: header, header: x-user-id }}\n  - name: by-ip\n    hosts: [ip]\n    stable: {{ endpoints: [\"{s}\"] }}\n    canary: {{ endpoints: [\"{c}\"] }}\n    weight: 50\n    affinity: {{ key: client_ip }}\n",
        s = stable.endpoint(),
        c = canary.endpoint()
    ));
    let proxy = Canaryd::start(&yaml);
    let c = Client::new();
    let mut seen = std::collections::HashSet::new();
    for user in 0..200 {
        let id = format!("u{user}");
        let first = c
            .send(proxy.addr, "h", "/", &[("x-user-id", &id)])
            .await
            .unwrap()
            .backend()
            .unwrap()
            .to_string();
        for _ in 0..5 {
            let again = c.send(proxy.addr, "h", "/", &[("x-user-id", &id)]).await.unwrap();
            assert_eq!(again.backend(), Some(first.as_str()));
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "different users land on both variants");
    // Every request from 127.0.0.1 is one user; a spoofed X-Forwarded-For is not believed
    // (no trusted_proxies), so it cannot move the user.
    let base = c
        .get(proxy.addr, "ip", "/")
        .await
        .unwrap()
        .backend()
        .unwrap()
        .to_string();
    for i in 0..100 {
        let spoof = format!("198.51.100.{i}");
        let r = c
            .send(proxy.addr, "ip", "/", &[("x-forwarded-for", &spoof)])
            .await
            .unwrap();
        assert_eq!(r.backend(), Some(base.as_str()));
    }
}
