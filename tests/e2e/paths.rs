//! Request paths through the real binary: a route is chosen by the normalised path, and that
//! path is what the backend receives, over HTTP/1.1 (raw bytes, so no client tidies the path
//! first) and HTTP/2 (`:path`).

use std::net::SocketAddr;
use std::time::Duration;

use canary_tests::{Backend, BackendHandle, Canaryd, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two routes on one host, `pub` on `/public` and `int` on `/internal`, plus `extra` YAML.
async fn two_routes(top: &str, extra_route: &str) -> (BackendHandle, BackendHandle, Canaryd) {
    let public = Backend::new("pub").start().await;
    let internal = Backend::new("int").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        "{top}routes:\n\
         \x20 - {{ name: pub, path_prefix: /public, stable: {{ endpoints: [\"{}\"] }} }}\n\
         \x20 - {{ name: int, path_prefix: /internal, stable: {{ endpoints: [\"{}\"] }} }}\n{extra_route}",
        public.endpoint(),
        internal.endpoint()
    )));
    (public, internal, proxy)
}

/// Sends `GET target` as raw bytes on a new connection; the status and the `x-backend` header.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, Option<String>) {
    let mut s = TcpStream::connect(addr).await.expect("connect to canaryd");
    let request = format!("GET {target} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut bytes))
        .await
        .expect("canaryd answers within 5 s")
        .ok();
    let text = String::from_utf8_lossy(&bytes);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let backend = text
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .map(str::to_owned);
    (status, backend)
}

/// The targets a backend received since the `since`-th request.
fn targets(backend: &BackendHandle, since: usize) -> Vec<String> {
    backend.requests()[since..].iter().map(|r| r.target.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_cross_route_boundaries() {
    let (public, internal, proxy) = two_routes("", "").await;
    let climbing = [
        "/public/../internal/secret",
        "/public/%2e%2e/internal/secret",
        "/public/%2E%2e/internal/secret",
        "/public/.%2e/internal/secret",
        "/public/./.././internal/./secret",
        "/public//../internal/secret",
        "/public/x/../../internal/secret",
        "/%70ublic/../intern%61l/secret",
    ];
    let h2 = Client::h2c();
    let mut failures = Vec::new();
    for target in climbing {
        let before = internal.count();
        let (status, backend) = raw_get(proxy.addr, target).await;
        if (status, backend.as_deref()) != (200, Some("int")) {
            failures.push(format!("h1 {target}: {status} from {backend:?}"));
        }
        match h2.get(proxy.addr, "app", target).await {
            Ok(reply) if reply.status == 200 && reply.backend() == Some("int") => {}
            other => failures.push(format!("h2 {target}: {other:?}")),
        }
        let seen = targets(&internal, before);
        if seen != ["/internal/secret", "/internal/secret"] {
            failures.push(format!("{target}: the internal backend got {seen:?}"));
        }
    }
    // The query is the client's: untouched, dots and all.
    let (status, backend) = raw_get(proxy.addr, "/public/../internal/secret?next=/../x").await;
    assert_eq!((status, backend.as_deref()), (200, Some("int")));
    assert_eq!(
        internal.requests().last().unwrap().target,
        "/internal/secret?next=/../x"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(public.count(), 0, "the public backend got {:?}", targets(&public, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_parameters_route_like_the_segment_they_follow() {
    let (public, internal, proxy) = two_routes("", "").await;
    // Tomcat, Jetty and Spring serve `/internal;x/secret` as `/internal/secret`.
    let (status, backend) = raw_get(proxy.addr, "/internal;jsessionid=1/secret").await;
    assert_eq!((status, backend.as_deref()), (200, Some("int")));
    assert_eq!(targets(&internal, 0), ["/internal;jsessionid=1/secret"]);
    assert_eq!(public.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_without_a_normal_form_are_refused_before_any_backend() {
    let (public, internal, proxy) = two_routes("", "").await;
    let refused = [
        "/..",
        "/public/../..",
        "/public/..;/internal/secret",
        "/public/.;x/../internal/secret",
        "/public/..%3B/internal/secret",
        "/public/..%2finternal/secret",
        "/public/..%5Cinternal/secret",
        "/public\\..\\internal\\secret",
        "/public/%00",
        "/public/%zz",
        "/public/%2",
    ];
    let h2 = Client::h2c();
    let mut failures = Vec::new();
    for target in refused {
        let (status, backend) = raw_get(proxy.addr, target).await;
        if status != 400 || backend.is_some() {
            failures.push(format!("h1 {target}: {status} from {backend:?}"));
        }
        // HTTP/2 clients cannot send a raw backslash (not a valid URI character for hyper).
        if !target.contains('\\') {
            match h2.get(proxy.addr, "app", target).await {
                Ok(reply) if reply.status == 400 && reply.backend().is_none() => {}
                other => failures.push(format!("h2 {target}: {other:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(public.count() + internal.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_settings_follow_the_config() {
    let raw = Backend::new("raw").start().await;
    let raw_route = format!(
        "\x20 - {{ name: raw, path_prefix: /raw, normalize_path: false, stable: {{ endpoints: [\"{}\"] }} }}\n",
        raw.endpoint()
    );
    // Defaults: slashes merged, encoded slashes kept (hex in upper case).
    let (public, _internal, proxy) = two_routes("", &raw_route).await;
    assert_eq!(raw_get(proxy.addr, "/public//a///b").await.0, 200);
    assert_eq!(raw_get(proxy.addr, "/public/a%2fb").await.0, 200);
    assert_eq!(targets(&public, 0), ["/public/a/b", "/public/a%2Fb"]);
    // A route that asked for the raw bytes gets them, and what has no normal form too.
    assert_eq!(raw_get(proxy.addr, "/raw/a/../b//c").await.0, 200);
    assert_eq!(raw_get(proxy.addr, "/raw/%00").await.0, 200);
    assert_eq!(targets(&raw, 0), ["/raw/a/../b//c", "/raw/%00"]);
    drop(proxy);

    let (public, _internal, proxy) = two_routes("paths: { merge_slashes: false, encoded_slashes: reject }\n", "").await;
    assert_eq!(raw_get(proxy.addr, "/public//a").await.0, 200);
    assert_eq!(raw_get(proxy.addr, "/public/a%2Fb").await.0, 400);
    assert_eq!(raw_get(proxy.addr, "/public/a%5cb").await.0, 400);
    assert_eq!(targets(&public, 0), ["/public//a"]);
}
