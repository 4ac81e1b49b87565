//! Every answer the proxy makes itself, and the one place that maps it to an HTTP status.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::split::Variant;

/// Why the proxy answered instead of a backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request line too long")]
    RequestLineTooLong,
    #[error("route {route}: request body larger than {limit} bytes")]
    TooLarge { route: Box<str>, limit: u64 },
    #[error("route {route}: the request body stalled")]
    BodyStalled { route: Box<str> },
    #[error("no route for host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("route {route}: no endpoints for stable or canary")]
    NoEndpoints { route: Box<str> },
    #[error("route {route}: {variant} endpoint unreachable")]
    Connect { route: Box<str>, variant: Variant },
    #[error("route {route}: {variant} endpoint failed the TLS handshake")]
    Tls { route: Box<str>, variant: Variant },
    #[error("route {route}: {variant} endpoint did not answer in time")]
    Timeout { route: Box<str>, variant: Variant },
    #[error("route {route}: {variant} endpoint broke the exchange")]
    Upstream { route: Box<str>, variant: Variant },
    #[error("route {route}: {variant} endpoint switched protocols without being asked to")]
    UnrequestedUpgrade { route: Box<str>, variant: Variant },
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestLineTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnrequestedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short plain-text response naming the route and the reason, nothing internal.
    pub(crate) fn to_response(&self) -> Response<Full<Bytes>> {
        let mut body = self.to_string();
        // Client-supplied host/path are echoed: keep them short.
        body.truncate(512);
        body.push('\n');
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let r: Box<str> = "app".into();
        assert_eq!(ProxyError::NoEndpoints { route: r.clone() }.status(), 503);
        assert_eq!(
            ProxyError::Connect {
                route: r.clone(),
                variant: Variant::Canary
            }
            .status(),
            502
        );
        assert_eq!(
            ProxyError::Timeout {
                route: r.clone(),
                variant: Variant::Stable
            }
            .status(),
            504
        );
        let body = ProxyError::Timeout {
            route: r,
            variant: Variant::Stable,
        }
        .to_string();
        assert_eq!(body, "route app: stable endpoint did not answer in time");
    }
}
