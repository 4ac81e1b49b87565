//! A small client of the control API, used by `canaryctl` and the tests.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::AuditEntry;
use crate::status::{ActionRequest, ApiErrorBody, RolloutRequest, RouteStatus, WeightRequest};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not usable.
    #[error("CANARYD_URL {0:?} is not an http:// URL")]
    BadUrl(String),
    /// No answer.
    #[error("cannot reach canaryd at {url}: {message}")]
    Unreachable {
        /// Where we tried.
        url: String,
        /// What failed.
        message: String,
    },
    /// canaryd answered with an error.
    #[error("{status}: {error}{}", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// canaryd's message.
        error: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from canaryd: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status, for an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The control API at one base URL.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// A client of `base` (e.g. `http://127.0.0.1:9090`), authenticating with `token`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.parse::<http::Uri>().is_err() {
            return Err(ClientError::BadUrl(base));
        }
        Ok(Self {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        if_match: Option<u64>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(rev) = if_match {
            req = req.header(header::IF_MATCH, format!("\"{rev}\""));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadUrl(format!("{url}: {e}")))?;
        let resp = self.http.request(req).await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            message: error_chain(&e),
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiErrorBody>(&bytes) {
                Ok(b) => ClientError::Api {
                    status,
                    error: b.error,
                    field: b.field,
                },
                Err(_) => ClientError::Api {
                    status,
                    error: String::from_utf8_lossy(&bytes).trim().into(),
                    field: None,
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    fn json<T: Serialize>(body: &T) -> Option<Vec<u8>> {
        Some(serde_json::to_vec(body).expect("request types serialise"))
    }

    /// Every route.
    pub async fn routes(&self) -> Result<Vec<RouteStatus>, ClientError> {
        self.call(Method::GET, "/api/v1/routes", None, None).await
    }

    /// One route.
    pub async fn route(&self, route: &str) -> Result<RouteStatus, ClientError> {
        self.call(Method::GET, &format!("/api/v1/routes/{route}"), None, None)
            .await
    }

    /// Sets the weight.
    pub async fn set_weight(
        &self,
        route: &str,
        percent: f64,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, ClientError> {
        let body = Self::json(&WeightRequest { percent, reason });
        self.call(Method::PUT, &format!("/api/v1/routes/{route}/weight"), body, if_match)
            .await
    }

    /// Starts a rollout.
    pub async fn start_rollout(
        &self,
        route: &str,
        request: &RolloutRequest,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/routes/{route}/rollout"),
            Self::json(request),
            if_match,
        )
        .await
    }

    /// `step`, `pause`, `resume`, `promote` or `abort`.
    pub async fn action(
        &self,
        route: &str,
        action: &str,
        reason: Option<String>,
        if_match: Option<u64>,
    ) -> Result<RouteStatus, ClientError> {
        let body = Self::json(&ActionRequest { reason });
        self.call(
            Method::POST,
            &format!("/api/v1/routes/{route}/{action}"),
            body,
            if_match,
        )
        .await
    }

    /// Recent audit entries.
    pub async fn audit(&self, route: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, ClientError> {
        let mut path = format!("/api/v1/audit?limit={limit}");
        if let Some(r) = route {
            path.push_str(&format!("&route={r}"));
        }
        self.call(Method::GET, &path, None, None).await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
