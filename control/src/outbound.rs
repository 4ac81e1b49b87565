//! The control plane's own HTTP calls: PromQL queries and abort webhooks (plain HTTP).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use canary_config::PrometheusCheck;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::analysis::PromReading;

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Client::builder(TokioExecutor::new()).build(connector)
    })
}

async fn send(req: Request<Full<Bytes>>, timeout: Duration) -> Result<(http::StatusCode, Bytes), String> {
    let call = async {
        let resp = client().request(req).await.map_err(|e| format!("{e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Runs the check's instant query; anything but one finite sample is unavailable.
pub async fn query_prometheus(check: &PrometheusCheck) -> PromReading {
    let query: String = form_urlencoded::byte_serialize(check.query.as_bytes()).collect();
    let url = format!("{}/api/v1/query?query={query}", check.url);
    let req = match Request::get(&url).body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return PromReading::Unavailable(format!("bad URL: {e}")),
    };
    let timeout = check.interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let (status, body) = match send(req, timeout).await {
        Ok(r) => r,
        Err(e) => return PromReading::Unavailable(format!("{} unreachable: {e}", check.url)),
    };
    if !status.is_success() {
        return PromReading::Unavailable(format!("HTTP {status}"));
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return PromReading::Unavailable(format!("not JSON: {e}")),
    };
    let data = &v["data"];
    // A vector's first sample, or a scalar.
    let sample = match data["resultType"].as_str() {
        Some("vector") => data["result"].get(0).map(|r| &r["value"][1]),
        Some("scalar") => Some(&data["result"][1]),
        _ => None,
    };
    match sample.and_then(|s| s.as_str()).and_then(|s| s.parse::<f64>().ok()) {
        Some(x) if x.is_finite() => PromReading::Value(x),
        Some(x) => PromReading::Unavailable(format!("query gave {x}")),
        None => PromReading::Unavailable("query returned no sample".into()),
    }
}

/// POSTs `body` as JSON to `url`; failures are logged, never retried.
pub async fn post_webhook(url: String, body: serde_json::Value) {
    let req = Request::post(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())));
    let result = match req {
        Ok(req) => send(req, Duration::from_secs(5)).await,
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok((status, _)) if status.is_success() => tracing::info!(%url, %status, "abort webhook sent"),
        Ok((status, _)) => tracing::warn!(%url, %status, "abort webhook refused"),
        Err(e) => tracing::warn!(%url, error = %e, "abort webhook failed"),
    }
}
