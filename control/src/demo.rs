//! `canaryd demo`: two built-in backends and the proxy, on loopback, with no files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use canary_config::Weight;
use canary_proxy::{serve, ServeOptions};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

/// What `canaryd demo` was asked for.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Canary share in percent.
    pub canary_percent: f64,
    /// The proxy's public listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin_listen: SocketAddr,
}

/// Starts the demo backends, prints what to try, and runs the proxy until Ctrl-C.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let weight = Weight::from_percent(opts.canary_percent).context("--canary-percent")?;
    let v1 = start_backend("v1").await?;
    let v2 = start_backend("v2").await?;
    let yaml = format!(
        r#"
listen: {{ http: "{listen}" }}
admin: {{ listen: "{admin}" }}
routes:
  - name: demo
    stable: {{ endpoints: ["{v1}"] }}
    canary: {{ endpoints: ["{v2}"] }}
    weight: {weight}
"#,
        listen = opts.listen,
        admin = opts.admin_listen,
    );
    let config = canary_config::parse(&yaml).context("building the demo config")?;
    let url = format!("http://{}", opts.listen);
    println!("canaryd demo: stable v1 on {v1}, canary v2 on {v2}, {weight} % of requests to the canary");
    println!("Try:");
    println!("  curl -si {url}/");
    println!("  for i in $(seq 1 200); do curl -s {url}/; echo; done | sort | uniq -c");
    println!(
        "  curl -s http://{}/metrics | grep canaryd_requests_total",
        opts.admin_listen
    );
    println!("Ctrl-C stops it.");
    super::runtime::run(config, super::runtime::RunOptions::default()).await
}

/// A tiny backend answering `{"version":"vN"}` (and `ok` on `/healthz`) on a free loopback port.
pub async fn start_backend(version: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a demo backend")?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(format!("{{\"version\":\"{version}\"}}"));
    let opts = ServeOptions::internal(Duration::from_secs(1));
    tokio::spawn(serve(
        listener,
        move |_| {
            let body = body.clone();
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = if req.uri().path() == "/healthz" {
                    text_response(Bytes::from_static(b"ok\n"), "text/plain")
                } else {
                    text_response(body.clone(), "application/json")
                };
                async move { Ok::<_, Infallible>(resp) }
            })
        },
        opts,
        None,
        std::future::pending(),
    ));
    Ok(addr)
}

fn text_response(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}
