//! An HTTP tap between canaryd and the test bed's real API server: it terminates TLS with the
//! API server's own serving certificate (so canaryd's kubeconfig trusts it unchanged), logs
//! every request, and can answer a chosen request itself or run a test's action just before
//! forwarding it. That is how a rival write lands between canaryd's read of an object and its
//! write on cue, so that the real server's optimistic concurrency refuses the write with a
//! real 409: a race no real component produces when asked.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

/// Something a test does before a matching request is forwarded.
pub type Action = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Clone)]
enum Effect {
    /// Answer with this status and a `Status` body; the server never sees the request.
    Refuse(u16),
    /// Run the action, then forward.
    Before(Action),
}

struct Rule {
    method: Method,
    path_suffix: String,
    times: usize,
    effect: Effect,
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<(String, String)>>,
    rules: Mutex<Vec<Rule>>,
}

impl Shared {
    /// The effect for this request, counting it against its rule.
    fn take(&self, method: &Method, path: &str) -> Option<Effect> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.ends_with(&r.path_suffix))?;
        rule.times -= 1;
        Some(rule.effect.clone())
    }
}

/// A running tap in front of one API server.
pub struct ApiTap {
    /// Where canaryd connects (`https://` + this).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

type TapBody = BoxBody<Bytes, hyper::Error>;

impl ApiTap {
    /// Listens on a free loopback port and forwards to `upstream` (an `https://IP:port` URL),
    /// serving the certificate and key in `pki` (the test bed's `apiserver.crt`/`.key`) and
    /// checking the upstream against `pki/ca.crt`.
    pub async fn start(upstream: &str, pki: &Path) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("https://")
            .parse()
            .expect("API server address");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.join("apiserver.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.join("apiserver.key")).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(pki.join("ca.crt")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, connector, shared) = (acceptor.clone(), connector.clone(), state.clone());
                tokio::spawn(async move {
                    let _ = tap_connection(tcp, acceptor, connector, upstream, shared).await;
                });
            }
        });
        Self { addr, shared, task }
    }

    /// The URL to put in canaryd's kubeconfig instead of the API server's.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request so far as (method, path with query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Answers the next `times` `method` requests whose path ends with `path_suffix` with
    /// `code` (a Kubernetes `Status` body), without forwarding them.
    pub fn refuse(&self, method: Method, path_suffix: &str, times: usize, code: u16) {
        self.add(method, path_suffix, times, Effect::Refuse(code));
    }

    /// Runs `action` to its end before forwarding each of the next `times` matching requests.
    pub fn before(&self, method: Method, path_suffix: &str, times: usize, action: Action) {
        self.add(method, path_suffix, times, Effect::Before(action));
    }

    fn add(&self, method: Method, path_suffix: &str, times: usize, effect: Effect) {
        self.shared.rules.lock().unwrap().push(Rule {
            method,
            path_suffix: path_suffix.to_string(),
            times,
            effect,
        });
    }
}

impl Drop for ApiTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client connection, served request by request over one upstream connection.
async fn tap_connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let downstream = acceptor.accept(tcp).await?;
    let up = connector
        .connect(
            ServerName::IpAddress(upstream.ip().into()),
            TcpStream::connect(upstream).await?,
        )
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(conn);
    // HTTP/1 serves one request at a time, so the lock is never contended.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (sender, shared) = (sender.clone(), shared.clone());
        async move {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
            shared
                .log
                .lock()
                .unwrap()
                .push((req.method().to_string(), target.clone()));
            let path = target.split('?').next().unwrap_or_default();
            match shared.take(req.method(), path) {
                Some(Effect::Refuse(code)) => return Ok::<_, hyper::Error>(refusal(code)),
                Some(Effect::Before(action)) => action().await,
                None => {}
            }
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let response = sender.send_request(req).await?;
            Ok(response.map(BodyExt::boxed))
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(downstream), service)
        .await?;
    Ok(())
}

/// A Kubernetes `Status` failure as the API server writes it.
fn refusal(code: u16) -> Response<TapBody> {
    let reason = if code == 409 { "Conflict" } else { "InternalError" };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("refused by the test's API tap ({code})"), "reason": reason, "code": code
    });
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}
