//! The admin listener: the control API under `/api/v1`, `/metrics`, `/healthz`, `/readyz`.
//! Never on the public port.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::api::Api;

/// State the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
    registry: Registry,
    ready: Arc<AtomicBool>,
    api: Api,
}

impl Admin {
    /// Admin endpoints over `registry` and `api`; `/readyz` follows `ready`.
    pub fn new(registry: Registry, ready: Arc<AtomicBool>, api: Api) -> Self {
        Self { registry, ready, api }
    }

    /// The service for one admin connection.
    pub fn service(
        &self,
    ) -> impl hyper::service::Service<
        Request<hyper::body::Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Send
           + 'static {
        let admin = self.clone();
        hyper::service::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok(admin.handle(req).await) }
        })
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path().starts_with("/api/") {
            return self.api.handle(req).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/metrics" => self.metrics(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz, /metrics or /api/v1/routes\n",
            ),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let encoder = TextEncoder::new();
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed\n");
        }
        let mut resp = Response::new(Full::new(Bytes::from(buf)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
