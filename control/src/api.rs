//! The control API under `/api/v1`: JSON over HTTP on the admin listener, bearer tokens,
//! `If-Match` on revisions, every change and refusal audited. The OpenAPI document is
//! generated from the handlers' annotations below.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use canary_config::Weight;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::OpenApi;

use crate::auth::{Denied, Tokens};
use crate::controller::{CommandError, Controller};
use crate::rollout::Event;
use crate::state::AuditEntry;
use crate::status::{ActionRequest, ApiErrorBody, RolloutRequest, RouteStatus, WeightRequest};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// The API's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /api/v1/routes`
    ListRoutes,
    /// `GET /api/v1/routes/{route}`
    GetRoute,
    /// `PUT /api/v1/routes/{route}/weight`
    SetWeight,
    /// `POST /api/v1/routes/{route}/rollout`
    StartRollout,
    /// `POST /api/v1/routes/{route}/step`
    Step,
    /// `POST /api/v1/routes/{route}/pause`
    Pause,
    /// `POST /api/v1/routes/{route}/resume`
    Resume,
    /// `POST /api/v1/routes/{route}/promote`
    Promote,
    /// `POST /api/v1/routes/{route}/abort`
    Abort,
    /// `GET /api/v1/audit`
    Audit,
    /// `GET /api/v1/openapi.json`
    OpenApiDoc,
}

/// Every endpoint the router serves: the single table both routing and the OpenAPI test use.
pub const ENDPOINTS: [(Endpoint, Method, &str); 11] = [
    (Endpoint::ListRoutes, Method::GET, "/api/v1/routes"),
    (Endpoint::GetRoute, Method::GET, "/api/v1/routes/{route}"),
    (Endpoint::SetWeight, Method::PUT, "/api/v1/routes/{route}/weight"),
    (Endpoint::StartRollout, Method::POST, "/api/v1/routes/{route}/rollout"),
    (Endpoint::Step, Method::POST, "/api/v1/routes/{route}/step"),
    (Endpoint::Pause, Method::POST, "/api/v1/routes/{route}/pause"),
    (Endpoint::Resume, Method::POST, "/api/v1/routes/{route}/resume"),
    (Endpoint::Promote, Method::POST, "/api/v1/routes/{route}/promote"),
    (Endpoint::Abort, Method::POST, "/api/v1/routes/{route}/abort"),
    (Endpoint::Audit, Method::GET, "/api/v1/audit"),
    (Endpoint::OpenApiDoc, Method::GET, "/api/v1/openapi.json"),
];

/// The generated OpenAPI 3 document.
#[derive(OpenApi)]
#[openapi(
    info(title = "canaryd control API", description = "Shift canary traffic, run rollouts, read the audit trail."),
    paths(list_routes, get_route, set_weight, start_rollout, step, pause, resume, promote, abort, audit, openapi_doc),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// An API failure: status plus `{"error", "field"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ApiErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            status,
            body: ApiErrorBody {
                error: error.into(),
                field: field.map(str::to_string),
            },
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let status = match &e {
            CommandError::UnknownRoute(_) => StatusCode::NOT_FOUND,
            CommandError::Stale { .. } => StatusCode::PRECONDITION_FAILED,
            CommandError::Rollout(crate::rollout::RolloutError::BadSteps) => StatusCode::BAD_REQUEST,
            CommandError::Rollout(_) => StatusCode::CONFLICT,
            CommandError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CommandError::NotOurs { .. } => StatusCode::CONFLICT,
            CommandError::Cluster { .. } => StatusCode::SERVICE_UNAVAILABLE,
            CommandError::NotServed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let field = match &e {
            CommandError::UnknownRoute(_) => Some("route"),
            CommandError::Stale { .. } => Some("If-Match"),
            CommandError::Rollout(crate::rollout::RolloutError::BadSteps) => Some("steps"),
            _ => None,
        };
        ApiError::new(status, e.to_string(), field)
    }
}

/// What one call carries besides its body.
struct Call<'a> {
    route: &'a str,
    actor: String,
    if_match: Option<u64>,
}

/// The API service state.
#[derive(Clone)]
pub struct Api {
    controller: Arc<Controller>,
    tokens: Arc<RwLock<Tokens>>,
}

impl Api {
    /// An API over `controller`, authenticating with `tokens` (replaceable on reload).
    pub fn new(controller: Arc<Controller>, tokens: Arc<RwLock<Tokens>>) -> Self {
        Self { controller, tokens }
    }

    /// Serves one `/api/v1/...` request.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        match self.dispatch(req).await {
            Ok(resp) => resp,
            Err(e) => json(e.status, &e.body),
        }
    }

    async fn dispatch(&self, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let (endpoint, route) = route_request(req.method(), &path)?;
        let writes = req.method() != Method::GET && req.method() != Method::HEAD;
        let authorization = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
        let checked = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check(authorization, writes);
        let actor = match checked {
            Ok(actor) => actor,
            Err(denied) => return Err(self.refuse(denied, req.method(), &path, route.as_deref())),
        };
        let if_match = if_match(req.headers())?;
        let route = route.unwrap_or_default();
        let call = Call {
            route: &route,
            actor,
            if_match,
        };
        let body = read_body(req.into_body()).await?;
        let c = &self.controller;
        match endpoint {
            Endpoint::ListRoutes => Ok(json(StatusCode::OK, &list_routes(c))),
            Endpoint::GetRoute => get_route(c, &call).map(route_response),
            Endpoint::SetWeight => command(c, &call, set_weight(parse(&body)?)).await.map(route_response),
            Endpoint::StartRollout => command(c, &call, start_rollout(parse_or_default(&body)?))
                .await
                .map(route_response),
            Endpoint::Step => command(c, &call, step(parse_or_default(&body)?))
                .await
                .map(route_response),
            Endpoint::Pause => command(c, &call, pause(parse_or_default(&body)?))
                .await
                .map(route_response),
            Endpoint::Resume => command(c, &call, resume(parse_or_default(&body)?))
                .await
                .map(route_response),
            Endpoint::Promote => command(c, &call, promote(parse_or_default(&body)?))
                .await
                .map(route_response),
            Endpoint::Abort => command(c, &call, abort(parse_or_default(&body)?))
                .await
                .map(route_response),
            Endpoint::Audit => {
                let query = AuditQuery::parse(&query)?;
                Ok(json(StatusCode::OK, &audit(c, &query)))
            }
            Endpoint::OpenApiDoc => Ok(json(StatusCode::OK, &openapi_doc())),
        }
    }

    /// 401/403 with an audit record of the refusal (never the presented token).
    fn refuse(&self, denied: Denied, method: &Method, path: &str, route: Option<&str>) -> ApiError {
        let (status, message) = match denied {
            Denied::Unauthenticated => (StatusCode::UNAUTHORIZED, "a valid bearer token is required"),
            Denied::Forbidden => (StatusCode::FORBIDDEN, "this token may only read"),
        };
        let action = format!("{method} {path}");
        let why = format!("{} {message}", status.as_u16());
        self.controller
            .record(AuditEntry::refused("unauthenticated", route, &action, None, &why));
        ApiError::new(status, message, Some("Authorization"))
    }
}

fn route_request(method: &Method, path: &str) -> Result<(Endpoint, Option<String>), ApiError> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_matched = false;
    for (endpoint, m, pattern) in &ENDPOINTS {
        let pat: Vec<&str> = pattern.split('/').collect();
        if pat.len() != segments.len() {
            continue;
        }
        let mut route = None;
        let ok = pat.iter().zip(&segments).all(|(p, s)| {
            if *p == "{route}" {
                route = Some((*s).to_string());
                !s.is_empty()
            } else {
                p == s
            }
        });
        if ok {
            path_matched = true;
            if m == method || (*m == Method::GET && method == Method::HEAD) {
                return Ok((*endpoint, route));
            }
        }
    }
    if path_matched {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
            None,
        ))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no endpoint {path}; see /api/v1/openapi.json"),
            None,
        ))
    }
}

fn if_match(headers: &http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "If-Match must be a route revision such as \"7\"",
            Some("If-Match"),
        )
    })
}

async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than 64 KiB or broken",
            None,
        )),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde names the unknown or missing field in its message; the path names nested ones.
        let field = match inner.to_string() {
            m if m.starts_with("unknown field `") || m.starts_with("missing field `") => {
                m.split('`').nth(1).map(str::to_string)
            }
            _ if path != "." => Some(path),
            _ => None,
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {inner}"),
            field.as_deref(),
        )
    })
}

fn parse_or_default<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse(body)
    }
}

fn percent(value: f64, field: &str) -> Result<Weight, ApiError> {
    Weight::from_percent(value).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string(), Some(field)))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("API types serialise");
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn route_response(status: RouteStatus) -> Response<Full<Bytes>> {
    let mut resp = json(StatusCode::OK, &status);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", status.revision)) {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp
}

/// A command an endpoint asks for, with the caller's reason.
type Asked = Result<(Event, Option<String>), ApiError>;

async fn command(c: &Controller, call: &Call<'_>, asked: Asked) -> Result<RouteStatus, ApiError> {
    let (command, reason) = asked?;
    Ok(c.command_async(call.route, command, &call.actor, reason, call.if_match)
        .await?)
}

/// List every route with its weight, phase and traffic.
#[utoipa::path(get, path = "/api/v1/routes", responses((status = 200, body = Vec<RouteStatus>), (status = 401, body = ApiErrorBody)))]
fn list_routes(c: &Controller) -> Vec<RouteStatus> {
    c.statuses()
}

/// One route's weight, phase, step, salt, revision, endpoints and traffic.
#[utoipa::path(get, path = "/api/v1/routes/{route}", params(("route" = String, Path, description = "Route name")),
    responses((status = 200, body = RouteStatus, headers(("ETag" = String, description = "The revision, for If-Match"))),
              (status = 404, body = ApiErrorBody)))]
fn get_route(c: &Controller, call: &Call) -> Result<RouteStatus, ApiError> {
    c.status(call.route)
        .ok_or_else(|| CommandError::UnknownRoute(call.route.into()).into())
}

/// Set the canary weight (a manual step); a progressing rollout pauses.
#[utoipa::path(put, path = "/api/v1/routes/{route}/weight", request_body = WeightRequest,
    params(("route" = String, Path, description = "Route name"), ("If-Match" = Option<String>, Header, description = "Expected revision")),
    responses((status = 200, body = RouteStatus), (status = 400, body = ApiErrorBody), (status = 403, body = ApiErrorBody),
              (status = 404, body = ApiErrorBody), (status = 412, body = ApiErrorBody)))]
fn set_weight(body: WeightRequest) -> Asked {
    let weight = percent(body.percent, "percent")?;
    Ok((Event::SetWeight(weight), body.reason))
}

/// Start a rollout at its first step; with an interval it advances by itself while the analysis passes.
#[utoipa::path(post, path = "/api/v1/routes/{route}/rollout", request_body = RolloutRequest,
    params(("route" = String, Path, description = "Route name"), ("If-Match" = Option<String>, Header, description = "Expected revision")),
    responses((status = 200, body = RouteStatus), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody), (status = 412, body = ApiErrorBody)))]
fn start_rollout(body: RolloutRequest) -> Asked {
    let steps = match body.steps {
        Some(steps) => Some(
            steps
                .iter()
                .enumerate()
                .map(|(i, p)| percent(*p, &format!("steps[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let interval = match body.interval.as_deref() {
        Some(text) => Some(parse_interval(text)?),
        None => None,
    };
    Ok((Event::Start { steps, interval }, body.reason))
}

fn parse_interval(text: &str) -> Result<Duration, ApiError> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a duration like 30s or 5m"),
            Some("interval"),
        )),
    }
}

/// Advance a progressing rollout to its next step.
#[utoipa::path(post, path = "/api/v1/routes/{route}/step", request_body(content = Option<ActionRequest>),
    params(("route" = String, Path, description = "Route name"), ("If-Match" = Option<String>, Header, description = "Expected revision")),
    responses((status = 200, body = RouteStatus), (status = 409, body = ApiErrorBody), (status = 412, body = ApiErrorBody)))]
fn step(body: ActionRequest) -> Asked {
    Ok((Event::Step, body.reason))
}

/// Pause a progressing rollout at its current step.
#[utoipa::path(post, path = "/api/v1/routes/{route}/pause", request_body(content = Option<ActionRequest>),
    params(("route" = String, Path, description = "Route name"), ("If-Match" = Option<String>, Header, description = "Expected revision")),
    responses((status = 200, body = RouteStatus), (status = 409, body = ApiErrorBody), (status = 412, body = ApiErrorBody)))]
fn pause(body: ActionRequest) -> Asked {
    Ok((Event::Pause, body.reason))
}

/// Resume a paused rollout.
#[utoipa::path(post, path = "/api/v1/routes/{route}/resume", request_body(content = Option<ActionRequest>),
    params(("route" = String, Path, description = "Route name"), ("If-Match" = Option<String>, Header, description = "Expected revision")),
    responses((status = 200, body = RouteStatus), (status = 409, body = ApiErrorBody), (status = 412, body = ApiErrorBody)))]
fn resume(body: ActionRequest) -> Asked {
    Ok((Event::Resume, body.reason))
}

/// Send all traffic to the canary and mark the rollout Promoted.
#[utoipa::path(post, path = "/api/v1/routes/{route}/promote", request_body(content = Option<ActionRequest>),
    params(("route" = String, Path, description = "Route name"), ("If-Match" = Option<String>, Header, description = "Expected revision")),
    responses((status = 200, body = RouteStatus), (status = 409, body = ApiErrorBody), (status = 412, body = ApiErrorBody)))]
fn promote(body: ActionRequest) -> Asked {
    Ok((Event::Promote, body.reason))
}

/// Send all traffic back to stable and mark the rollout Aborted.
#[utoipa::path(post, path = "/api/v1/routes/{route}/abort", request_body(content = Option<ActionRequest>),
    params(("route" = String, Path, description = "Route name"), ("If-Match" = Option<String>, Header, description = "Expected revision")),
    responses((status = 200, body = RouteStatus), (status = 409, body = ApiErrorBody), (status = 412, body = ApiErrorBody)))]
fn abort(body: ActionRequest) -> Asked {
    Ok((Event::Abort, body.reason))
}

/// `?route=NAME&limit=N` of the audit call.
struct AuditQuery {
    route: Option<String>,
    limit: usize,
}

impl AuditQuery {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = AuditQuery {
            route: None,
            limit: 100,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "route" => q.route = Some(v.to_string()),
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=crate::state::AUDIT_KEPT).contains(n))
                        .ok_or_else(|| {
                            ApiError::new(StatusCode::BAD_REQUEST, "limit must be 1 to 1000", Some("limit"))
                        })?
                }
                other => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                        Some(other),
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// Recent changes and refusals: who, when, what, old → new, why. Newest last.
#[utoipa::path(get, path = "/api/v1/audit",
    params(("route" = Option<String>, Query, description = "Only this route"), ("limit" = Option<usize>, Query, description = "At most this many, 1..1000 (default 100)")),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ApiErrorBody)))]
fn audit(c: &Controller, q: &AuditQuery) -> Vec<AuditEntry> {
    c.audit(q.route.as_deref(), q.limit)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
fn openapi_doc() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_exactly_the_served_endpoints() {
        let doc = ApiDoc::openapi();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            for (m, present) in methods {
                if present {
                    documented.push((m.to_string(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ENDPOINTS
            .iter()
            .map(|(_, m, p)| (m.as_str().to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn routing_table() {
        assert_eq!(
            route_request(&Method::GET, "/api/v1/routes").unwrap().0,
            Endpoint::ListRoutes
        );
        let (e, r) = route_request(&Method::PUT, "/api/v1/routes/app/weight").unwrap();
        assert_eq!((e, r.as_deref()), (Endpoint::SetWeight, Some("app")));
        assert_eq!(
            route_request(&Method::POST, "/api/v1/routes/app/weight")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(route_request(&Method::GET, "/api/v1/nope").unwrap_err().status, 404);
    }
}
