//! The request's life: route lookup, variant decision, endpoint pick, upstream exchange.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, SET_COOKIE, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower_service::Service as _;

use crate::body::TrackedBody;
use crate::endpoint::{Endpoint, InFlight};
use crate::error::ProxyError;
use crate::headers::{self, ClientInfo};
use crate::metrics::{ProxyMetrics, UpstreamErrorReason};
use crate::request_body::{BodyStalled, IdleBody, UpstreamBody};
use crate::request_framing::RefusedHead;
use crate::route::Route;
use crate::routing_table::{Resolved, Settings, TableHandle};
use crate::split::Variant;
use crate::upstream_pool::{self, PoolOwner, SendError, UpstreamConn};
use crate::upstream_tls::{http_connector, TlsHandshakeError, UpstreamTls};

/// Body sent to the client: the upstream's stream, or the proxy's own short answer.
pub type ProxyBody = Either<TrackedBody, Full<Bytes>>;

/// The proxy service: cheap to clone, one per listener connection.
#[derive(Clone)]
pub struct Proxy(Arc<Inner>);

struct Inner {
    table: TableHandle,
    /// Opens plain-HTTP upstream connections (each endpoint pools its own).
    connector: HttpConnector,
    metrics: ProxyMetrics,
}

/// How upstream connections are opened.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
}

/// How a request was answered, for the counters.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// The variant the response is counted against.
    counted: Variant,
    /// True when an endpoint of that variant was tried.
    served: bool,
    /// True when no upstream response came (connect, timeout, protocol).
    upstream_error: bool,
}

/// How one upstream attempt failed.
enum Failure {
    Connect,
    /// TCP connected but the TLS handshake failed (certificate, name, protocol, timeout).
    Tls,
    Timeout,
    Protocol,
    /// The client's body passed the route's limit while streaming.
    TooLarge,
    /// The client's body sent nothing for the idle timeout.
    BodyStalled,
}

/// The request's `Content-Length`, when there is exactly one valid one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// True when the error chain holds an error of type `T` (our body wrappers' errors).
fn chain_has<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

impl Proxy {
    /// A proxy serving from `table`, opening upstream connections as `pool` says.
    pub fn new(table: TableHandle, metrics: ProxyMetrics, pool: PoolOptions) -> Self {
        let connector = http_connector(pool.connect_timeout);
        Self(Arc::new(Inner {
            table,
            connector,
            metrics,
        }))
    }

    /// The service for one accepted connection from `peer` (`tls` when it came over TLS).
    pub fn connection_service(
        &self,
        peer: std::net::SocketAddr,
        tls: bool,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
    > + Send
           + 'static {
        let proxy = self.clone();
        // Computed once per connection, not per request.
        let client = Arc::new(ClientInfo::new(peer, tls));
        hyper::service::service_fn(move |req| {
            let (proxy, client) = (proxy.clone(), client.clone());
            async move { Ok(proxy.handle(req, &client).await) }
        })
    }

    /// Serves one request from a client connection.
    pub async fn handle(&self, mut req: Request<Incoming>, client: &ClientInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        if let Some(why) = req.extensions().get::<RefusedHead>() {
            let mut resp = reply(match why {
                RefusedHead::AmbiguousLength => ProxyError::BadRequest("both Content-Length and Transfer-Encoding"),
                RefusedHead::RequestLineTooLong => ProxyError::RequestLineTooLong,
            });
            // Nothing more is read from this connection (the scanner stopped at this head).
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        // The one snapshot load of this request; the guard is dropped before any await.
        let (route, settings, decision, normalised_uri) = {
            let table = self.0.table.load();
            if let Err(why) = headers::check_request(&req) {
                let mut resp = reply(ProxyError::BadRequest(why));
                if req.version() < Version::HTTP_2 {
                    // The framing cannot be trusted: nothing more is read from this connection.
                    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                }
                return resp;
            }
            let Some(host) = request_host(&req) else {
                return reply(ProxyError::BadRequest("missing Host header"));
            };
            // Routed by the normalised path, which is also the one forwarded.
            let (route, path) = match table.resolve(host, req.uri().path()) {
                Ok(Resolved::Route(route, path)) => (route, path),
                Ok(Resolved::NoRoute(path)) => {
                    self.0.metrics.no_route();
                    let (host, path) = (host.to_owned(), path.into_owned());
                    return reply(ProxyError::NoRoute { host, path });
                }
                Err(why) => return reply(ProxyError::BadRequest(why.reason())),
            };
            let normalised_uri = match path {
                Cow::Borrowed(_) => None,
                Cow::Owned(path) => match with_path(req.uri(), &path) {
                    Some(uri) => Some(uri),
                    None => return reply(ProxyError::BadRequest("the normalised path is not a valid target")),
                },
            };
            if route.redirect_https && !client.tls {
                return redirect_to_https(host, normalised_uri.as_ref().unwrap_or(req.uri()));
            }
            let decision = route.decide(req.headers(), client, table.trusted_proxies());
            (route.clone(), *table.settings(), decision, normalised_uri)
        };
        if let Some(uri) = normalised_uri {
            *req.uri_mut() = uri;
        }
        let log = settings
            .access_log
            .then(|| (req.method().clone(), req.uri().path().to_owned()));

        let (mut response, outcome) = self.forward(req, client, &route, decision.variant, &settings).await;
        route.observe(outcome.counted, response.status(), outcome.upstream_error, started);
        let variant = outcome.served.then_some(outcome.counted);
        if let (Some(hsts), true) = (&route.hsts, client.tls) {
            response
                .headers_mut()
                .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        if let Some(cookie) = decision.set_cookie {
            response.headers_mut().append(SET_COOKIE, cookie);
        }
        if route.expose_variant {
            if let Some(v) = variant {
                response
                    .headers_mut()
                    .insert(headers::VARIANT_HEADER, HeaderValue::from_static(v.as_str()));
            }
        }
        if let Some((method, path)) = log {
            access_log(&route, &method, &path, decision.variant, variant, &response, started);
        }
        response
    }

    /// Sends the request to an endpoint of the decided variant (or the other one as a
    /// fallback); returns the response and how it came about.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: &ClientInfo,
        route: &Route,
        decided: Variant,
        settings: &Settings,
    ) -> (Response<ProxyBody>, Outcome) {
        let no_endpoints = |counted| {
            let outcome = Outcome {
                counted,
                served: false,
                upstream_error: false,
            };
            (
                reply(ProxyError::NoEndpoints {
                    route: route.name.clone(),
                }),
                outcome,
            )
        };
        let Some(variant) = route.serving_variant(decided) else {
            return no_endpoints(decided);
        };

        let client_upgrade = (req.version() == Version::HTTP_11 && headers::is_websocket_upgrade(req.headers()))
            .then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let limit = route.max_body_bytes;
        if limit > 0 && content_length(&parts.headers).is_some_and(|n| n > limit) {
            let outcome = Outcome {
                counted: variant,
                served: false,
                upstream_error: false,
            };
            return (
                reply(ProxyError::TooLarge {
                    route: route.name.clone(),
                    limit,
                }),
                outcome,
            );
        }
        let body = IdleBody::new(body, settings.body_idle_timeout);
        let body = Limited::new(body, if limit == 0 { usize::MAX } else { limit as usize });
        prepare_upstream_headers(&mut parts, client, variant, client_upgrade.is_some());

        let eps = route.endpoints(variant);
        // Only a request with no body and no side effects can go to a second endpoint.
        let replay =
            (is_idempotent(&parts.method) && body.is_end_stream() && client_upgrade.is_none() && eps.len() > 1)
                .then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));

        let Some(first) = eps.pick(None) else {
            return no_endpoints(variant);
        };
        let tls = eps.tls();
        let mut outcome = self.exchange(first, tls, parts, Either::Left(body), settings).await;
        if let (Err(failure @ (Failure::Connect | Failure::Tls)), Some((method, uri, headers))) = (&outcome, replay) {
            let reason = if matches!(failure, Failure::Tls) {
                UpstreamErrorReason::Tls
            } else {
                UpstreamErrorReason::Connect
            };
            route.metrics.upstream_error(variant, reason);
            if let Some(second) = eps.pick(Some(first)) {
                let (mut parts, ()) = Request::new(()).into_parts();
                parts.method = method;
                parts.uri = uri;
                parts.headers = headers;
                parts.version = Version::HTTP_11;
                outcome = self
                    .exchange(second, tls, parts, Either::Right(Empty::new()), settings)
                    .await;
            }
        }

        let served = Outcome {
            counted: variant,
            served: true,
            upstream_error: false,
        };
        // No usable upstream answer: counted by reason, answered by the proxy.
        let upstream_failed = |reason, err| {
            route.metrics.upstream_error(variant, reason);
            let failed = Outcome {
                upstream_error: true,
                ..served
            };
            (reply(err), failed)
        };
        let response = match outcome {
            Ok((mut resp, in_flight, conn)) => {
                in_flight.endpoint().record_success();
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    match client_upgrade {
                        // The switch the client asked for: the connection becomes the tunnel,
                        // never back to the pool.
                        Some(client_upgrade) if headers::is_websocket_upgrade(resp.headers()) => {
                            drop(conn);
                            let upstream_upgrade = hyper::upgrade::on(&mut resp);
                            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, in_flight));
                            let (parts, _) = resp.into_parts();
                            return (
                                Response::from_parts(parts, Either::Right(Full::new(Bytes::new()))),
                                served,
                            );
                        }
                        // RFC 9110 §15.2.2: no switch unless the request asked for it, and only to
                        // a protocol it offered (HTTP/2 never). The upstream connection, now in an
                        // unknown protocol, is dropped with the response.
                        _ => {
                            drop((resp, conn));
                            let err = ProxyError::UnrequestedUpgrade {
                                route: route.name.clone(),
                                variant,
                            };
                            return upstream_failed(UpstreamErrorReason::Upgrade, err);
                        }
                    }
                }
                let (mut parts, body) = resp.into_parts();
                if parts.headers.contains_key(http::header::TRANSFER_ENCODING)
                    && parts.headers.contains_key(http::header::CONTENT_LENGTH)
                {
                    // Ambiguous framing from the backend: never pass on a length that may lie.
                    let err = ProxyError::Upstream {
                        route: route.name.clone(),
                        variant,
                    };
                    return upstream_failed(UpstreamErrorReason::Protocol, err);
                }
                headers::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(TrackedBody::new(body, in_flight, conn)))
            }
            Err(failure) => {
                let name = route.name.clone();
                let (reason, err) = match failure {
                    Failure::BodyStalled => {
                        let err = ProxyError::BodyStalled { route: name };
                        return (
                            reply(err),
                            Outcome {
                                served: false,
                                ..served
                            },
                        );
                    }
                    Failure::TooLarge => {
                        let err = ProxyError::TooLarge { route: name, limit };
                        return (
                            reply(err),
                            Outcome {
                                served: false,
                                ..served
                            },
                        );
                    }
                    Failure::Connect => (
                        UpstreamErrorReason::Connect,
                        ProxyError::Connect { route: name, variant },
                    ),
                    Failure::Tls => (UpstreamErrorReason::Tls, ProxyError::Tls { route: name, variant }),
                    Failure::Timeout => (
                        UpstreamErrorReason::Timeout,
                        ProxyError::Timeout { route: name, variant },
                    ),
                    Failure::Protocol => (
                        UpstreamErrorReason::Protocol,
                        ProxyError::Upstream { route: name, variant },
                    ),
                };
                return upstream_failed(reason, err);
            }
        };
        (response, served)
    }

    /// One attempt against one endpoint (over TLS with the variant's client when it has
    /// one), up to the response headers.
    async fn exchange(
        &self,
        endpoint: &Arc<Endpoint>,
        tls: Option<&UpstreamTls>,
        parts: Parts,
        body: UpstreamBody,
        settings: &Settings,
    ) -> Result<(Response<Incoming>, InFlight, UpstreamConn), Failure> {
        let in_flight = endpoint.start();
        let request = Request::from_parts(parts, body);
        let idle = settings.upstream_idle_timeout;
        let sent = match tls {
            None => {
                let connector = &self.0.connector;
                let connect = || {
                    let connecting = connector.clone().call(endpoint.connect_uri().clone());
                    async move { connecting.await.map_err(Into::into) }
                };
                let send = upstream_pool::send(endpoint.pool(), 0, idle, request, connect);
                tokio::time::timeout(settings.response_header_timeout, send).await
            }
            Some(tls) => {
                let connect = || tls.connector().clone().call(endpoint.connect_uri().clone());
                let send = upstream_pool::send(endpoint.pool(), tls.generation(), idle, request, connect);
                tokio::time::timeout(settings.response_header_timeout, send).await
            }
        };
        match sent {
            Ok(Ok((resp, conn))) => Ok((resp, in_flight, conn)),
            Ok(Err(SendError::Connect(e))) => {
                // An endpoint whose handshake fails is as unusable as one that refuses connections.
                endpoint.record_connect_failure(settings.health_failures, settings.health_cooloff);
                if tls.is_some() && chain_has::<TlsHandshakeError>(&*e) {
                    // Logged by the connector (a rate-limited warning says why).
                    return Err(Failure::Tls);
                }
                tracing::debug!(endpoint = %endpoint.authority(), error = %e, "upstream connect failed");
                Err(Failure::Connect)
            }
            Ok(Err(SendError::Exchange(e))) if chain_has::<http_body_util::LengthLimitError>(&e) => {
                Err(Failure::TooLarge)
            }
            Ok(Err(SendError::Exchange(e))) if chain_has::<BodyStalled>(&e) => Err(Failure::BodyStalled),
            Ok(Err(SendError::Exchange(e))) => {
                tracing::debug!(endpoint = %endpoint.authority(), error = ?e, "upstream exchange failed");
                Err(Failure::Protocol)
            }
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// The host a request is for: the target's authority (absolute-form or HTTP/2) wins over `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    }
}

/// `uri` with its path replaced by `path` (scheme, authority and query kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Rewrites the client's headers into the upstream request's: hop-by-hop out, forwarding in.
fn prepare_upstream_headers(parts: &mut Parts, client: &ClientInfo, variant: Variant, upgrade: bool) {
    let upgrade_value = if upgrade {
        parts.headers.get(UPGRADE).cloned()
    } else {
        None
    };
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(HOST).cloned(),
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(host) = &host {
        parts.headers.insert(HOST, host.clone());
    }
    headers::set_forwarding(&mut parts.headers, client, host, variant.as_str());
    if let Some(value) = upgrade_value {
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, value);
    }
    // Backends always get HTTP/1.1 framing generated by us, with an origin-form target
    // (HTTP/2 and absolute-form requests carry the authority in the URI).
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// `308` to the same host (without its port) and target over HTTPS.
fn redirect_to_https(host: &str, uri: &Uri) -> Response<ProxyBody> {
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&format!("https://{name}{target}")) {
        Ok(location) => {
            resp.headers_mut().insert(http::header::LOCATION, location);
            resp
        }
        Err(_) => reply(ProxyError::BadRequest("host not usable in a redirect")),
    }
}

fn reply(err: ProxyError) -> Response<ProxyBody> {
    err.to_response().map(Either::Right)
}

/// Splices an upgraded (WebSocket) connection between client and upstream.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, _in_flight: InFlight) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

fn access_log(
    route: &Route,
    method: &Method,
    path: &str,
    decided: Variant,
    served: Option<Variant>,
    resp: &Response<ProxyBody>,
    started: Instant,
) {
    tracing::info!(
        target: "canaryd::access",
        method = method.as_str(),
        path,
        route = route.name(),
        decided = decided.as_str(),
        variant = served.map_or("none", Variant::as_str),
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
}
