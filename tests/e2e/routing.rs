//! Host and path routing through the real binary.

use canary_tests::{Backend, Canaryd, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_wildcard_longest_prefix_and_404() {
    let root = Backend::new("root").start().await;
    let api = Backend::new("api").start().await;
    let api_v2 = Backend::new("api-v2").start().await;
    let wild = Backend::new("wild").start().await;
    let any = Backend::new("any").start().await;
    let proxy = Canaryd::start(&Canaryd::config(&format!(
        r#"routes:
  - name: root
    hosts: ["shop.example.com"]
    stable: {{ endpoints: ["{}"] }}
  - name: api
    hosts: ["shop.example.com"]
    path_prefix: /api
    stable: {{ endpoints: ["{}"] }}
  - name: api-v2
    hosts: ["shop.example.com"]
    path_prefix: /api/v2/
    stable: {{ endpoints: ["{}"] }}
  - name: wild
    hosts: ["*.example.com"]
    stable: {{ endpoints: ["{}"] }}
  - name: any
    path_prefix: /status
    stable: {{ endpoints: ["{}"] }}
"#,
        root.endpoint(),
        api.endpoint(),
        api_v2.endpoint(),
        wild.endpoint(),
        any.endpoint()
    )));
    let c = Client::new();
    let cases = [
        ("shop.example.com", "/", Some("root")),
        ("SHOP.Example.com:8080", "/cart", Some("root")),
        ("shop.example.com", "/api", Some("api")),
        ("shop.example.com", "/api/users?id=1", Some("api")),
        ("shop.example.com", "/apiary", Some("root")),
        ("shop.example.com", "/api/v2", Some("api-v2")),
        ("shop.example.com", "/api/v2/x", Some("api-v2")),
        ("blog.example.com", "/anything", Some("wild")),
        ("deep.blog.example.com", "/status", Some("any")),
        ("other.org", "/status/ok", Some("any")),
        ("other.org", "/nope", None),
    ];
    for (host, path, want) in cases {
        let reply = c.get(proxy.addr, host, path).await.unwrap();
        match want {
            Some(name) => {
                assert_eq!(reply.status, 200, "{host}{path}");
                assert_eq!(reply.backend(), Some(name), "{host}{path}");
            }
            None => {
                assert_eq!(reply.status, 404, "{host}{path}");
                let text = reply.text();
                assert!(
                    text.contains("other.org") && text.contains("/nope"),
                    "404 body names host and path: {text}"
                );
            }
        }
    }
    // The query string reaches the backend untouched.
    assert!(api.requests().iter().any(|r| r.target == "/api/users?id=1"));
    assert_eq!(proxy.metric("canaryd_no_route_total").await, 1.0);
}
