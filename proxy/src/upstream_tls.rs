//! HTTPS to backends: a variant with `tls:` gets a rustls client config and a connector that
//! does the handshake after the TCP connect.
//!
//! One [`UpstreamTls`] exists per distinct `(verify, ca, sni)` (and connect timeout); it is built
//! when a routing table is built and handed on to later tables while its settings and the CA
//! file's bytes stay the same, so weight changes and reloads keep the pooled connections.
//! Connections stay apart by endpoint: an endpoint is shared only by variants that reach its
//! address with the same TLS settings, and each client has a generation number, so the
//! connections of a replaced client (a rotated CA) are never reused.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use canary_config::{Config, FieldError};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::clock::monotonic_ms;

/// What a TLS client is built from: the variant's settings and the connect timeout.
pub(crate) type ClientKey = (canary_config::UpstreamTls, Duration);

/// A log line for failed handshakes at most this often per TLS setting (the rest go to debug).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The client (config and connector) of one variant TLS setting.
pub(crate) struct UpstreamTls {
    /// The CA file's bytes it was built from, to notice a changed file on the next build.
    ca_pem: Option<Vec<u8>>,
    connector: TlsConnector,
    /// Unique per client built (from 1; 0 is plain TCP): tags its pooled connections.
    generation: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Opens connections: TCP, then the TLS handshake.
    #[inline]
    pub(crate) fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// Tags the connections made by this client.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

/// The generation of the next [`UpstreamTls`] built.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Reads a CA file: PEM with at least one certificate, each usable as a trust anchor.
pub fn load_ca(path: &Path) -> Result<(Vec<u8>, RootCertStore), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let roots = ca_roots(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((pem, roots))
}

fn ca_roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate is not usable as a CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    Ok(roots)
}

/// Checks what the config crate cannot (it does no I/O): every variant's `tls.ca` file exists
/// and holds PEM certificates. Each problem names its field, e.g. `routes[0].canary.tls.ca`.
/// Also warns about every `verify: false`.
pub fn check_files(config: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        for (variant, backend) in [("stable", &route.stable), ("canary", &route.canary)] {
            let Some(tls) = &backend.tls else { continue };
            if !tls.verify {
                tracing::warn!(
                    field = format!("routes[{i}].{variant}.tls.verify"),
                    route = route.name,
                    "verify: false: the {variant} endpoints' certificates are not checked, so anyone on the path \
                     can read and change that traffic; for testing only"
                );
            }
            if let Some(ca) = &tls.ca {
                if let Err(message) = load_ca(ca) {
                    errors.push(FieldError {
                        path: format!("routes[{i}].{variant}.tls.ca"),
                        message,
                    });
                }
            }
        }
    }
    errors
}

/// The TLS clients of one table build; reuses the previous table's where nothing changed.
pub(crate) struct TlsClients<'a> {
    previous: Option<&'a HashMap<ClientKey, Arc<UpstreamTls>>>,
    pub(crate) built: HashMap<ClientKey, Arc<UpstreamTls>>,
}

impl<'a> TlsClients<'a> {
    pub(crate) fn new(previous: Option<&'a HashMap<ClientKey, Arc<UpstreamTls>>>) -> Self {
        Self {
            previous,
            built: HashMap::new(),
        }
    }

    /// The client for `settings`: the one of this build, else the previous table's when the
    /// CA file is unchanged, else a new one. A CA file that became unreadable keeps the
    /// previous client (a weight change or an abort must not fail on it); with no previous
    /// client it is an error.
    pub(crate) fn get(
        &mut self,
        settings: &canary_config::UpstreamTls,
        connect_timeout: Duration,
    ) -> Result<Arc<UpstreamTls>, String> {
        let key = (settings.clone(), connect_timeout);
        if let Some(t) = self.built.get(&key) {
            return Ok(t.clone());
        }
        let previous = self.previous.and_then(|p| p.get(&key));
        let ca = match &settings.ca {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(e) => match previous {
                    Some(p) => {
                        tracing::error!(ca = %path.display(), error = %e, "cannot re-read an upstream CA file; the CA loaded before stays in use");
                        self.built.insert(key, p.clone());
                        return Ok(p.clone());
                    }
                    None => return Err(format!("cannot read {}: {e}", path.display())),
                },
            },
        };
        let client = match previous {
            Some(p) if p.ca_pem == ca => p.clone(),
            _ => {
                let roots = match (&ca, &settings.ca) {
                    (Some(pem), Some(path)) => match ca_roots(pem) {
                        Ok(r) => Some(r),
                        Err(e) => match previous {
                            Some(p) => {
                                tracing::error!(ca = %path.display(), error = %e, "an upstream CA file changed into something unusable; the CA loaded before stays in use");
                                self.built.insert(key, p.clone());
                                return Ok(p.clone());
                            }
                            None => return Err(format!("{}: {e}", path.display())),
                        },
                    },
                    _ => None,
                };
                if previous.is_some() {
                    tracing::info!(ca = ?settings.ca, "upstream CA file changed; new connections verify with it");
                }
                Arc::new(UpstreamTls {
                    connector: TlsConnector::new(settings, roots, connect_timeout),
                    ca_pem: ca,
                    generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
                })
            }
        };
        self.built.insert(key, client.clone());
        Ok(client)
    }
}

/// The rustls client config of a setting: TLS 1.2/1.3 with ring's safe defaults, ALPN
/// `http/1.1` only (canaryd speaks HTTP/1.1 to backends), roots from `ca` or Mozilla's.
fn client_config(verify: bool, roots: Option<RootCertStore>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let mut config = if verify {
        let roots = roots.unwrap_or_else(|| webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// `verify: false`: any certificate and name is accepted; the handshake signatures are still
/// checked (that costs nothing and keeps the key exchange honest with the presented key).
#[derive(Debug)]
pub struct NoVerification(Arc<CryptoProvider>);

impl NoVerification {
    /// A verifier checking signatures with `provider`'s algorithms and nothing else.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TCP connect (hyper-util's [`HttpConnector`]), then a TLS handshake with the setting's
/// config and server name.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    /// `tls.sni`; `None`: the endpoint's host.
    sni: Option<ServerName<'static>>,
    verify: bool,
    has_ca: bool,
    handshake_timeout: Duration,
    /// Milliseconds since [`epoch`] of the last warning logged (rate limit).
    last_warned_ms: Arc<AtomicU64>,
}

impl TlsConnector {
    fn new(settings: &canary_config::UpstreamTls, roots: Option<RootCertStore>, connect_timeout: Duration) -> Self {
        let mut http = http_connector(connect_timeout);
        // The scheme is https; the TCP part is the same.
        http.enforce_http(false);
        Self {
            http,
            tls: tokio_rustls::TlsConnector::from(client_config(settings.verify, roots)),
            // Validated as a DNS name by the config crate.
            sni: settings.sni.as_ref().and_then(|n| ServerName::try_from(n.clone()).ok()),
            verify: settings.verify,
            has_ca: settings.ca.is_some(),
            handshake_timeout: connect_timeout,
            last_warned_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// What went wrong, in the words of the config: which name was checked and how to fix it.
    fn explain(&self, dst: &Uri, name: &ServerName<'_>, error: &std::io::Error) -> TlsHandshakeError {
        let authority = dst.authority().map_or("", |a| a.as_str());
        let name = name.to_str();
        let mut message = format!("TLS handshake with {authority} as {name:?} failed: {error}");
        let cert_error = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .and_then(|e| match e {
                rustls::Error::InvalidCertificate(c) => Some(c),
                _ => None,
            });
        match cert_error {
            Some(rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature) => {
                message.push_str(if self.has_ca {
                    " (the certificate is not signed by a CA of tls.ca)"
                } else {
                    " (the certificate is not signed by a CA of the built-in roots; name your CA in tls.ca)"
                });
            }
            Some(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            ) => {
                if self.sni.is_none() && name.parse::<std::net::IpAddr>().is_ok() {
                    message.push_str(&format!(
                        " (the endpoint is an IP address and tls.sni is not set, so the certificate must list \
                         {name} as an IP subjectAltName; or set tls.sni to a DNS name the certificate carries)"
                    ));
                } else {
                    message.push_str(" (set tls.sni to a name the certificate carries)");
                }
            }
            _ => {}
        }
        TlsHandshakeError(message)
    }

    /// Logs a failed handshake: a warning at most every [`WARN_EVERY`] per setting, else debug.
    fn report(&self, error: &TlsHandshakeError) {
        let now = monotonic_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %error, verify = self.verify, "upstream TLS handshake failed (more within 10s are logged at debug)");
        } else {
            tracing::debug!(error = %error, "upstream TLS handshake failed");
        }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsStream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = tower_service::Service::<Uri>::call(&mut self.http, dst.clone());
        let this = self.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            let name = match &this.sni {
                Some(n) => n.clone(),
                None => {
                    let host = dst.host().unwrap_or_default();
                    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                    ServerName::try_from(host.to_owned())
                        .map_err(|e| TlsHandshakeError(format!("{host:?} is not usable as a TLS server name: {e}")))?
                }
            };
            let handshake = this.tls.connect(name.clone(), tcp.into_inner());
            let error = match tokio::time::timeout(this.handshake_timeout, handshake).await {
                Ok(Ok(stream)) => return Ok(TlsStream(TokioIo::new(stream))),
                Ok(Err(e)) => this.explain(&dst, &name, &e),
                Err(_) => TlsHandshakeError(format!(
                    "TLS handshake with {} timed out after {:?}",
                    dst.authority().map_or("", |a| a.as_str()),
                    this.handshake_timeout
                )),
            };
            this.report(&error);
            Err(error.into())
        })
    }
}

/// A failed upstream TLS handshake (told apart from a failed TCP connect in the metrics).
#[derive(Debug)]
pub(crate) struct TlsHandshakeError(String);

impl std::fmt::Display for TlsHandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsHandshakeError {}

/// An upstream TLS connection as hyper reads and writes it (ALPN offers http/1.1 only).
pub(crate) struct TlsStream(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl hyper::rt::Read for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

/// The TCP connector of every upstream client (plain, and under TLS).
pub(crate) fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LiveRoute, ProxyMetrics, RoutingTable, Variant};

    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ca_files_must_hold_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        assert!(load_ca(&path).unwrap_err().starts_with("cannot read"));
        std::fs::write(&path, "hello\n").unwrap();
        assert!(load_ca(&path).unwrap_err().contains("no PEM certificate"));
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").unwrap();
        assert!(load_ca(&path).unwrap_err().contains("not PEM certificates"));
        std::fs::write(&path, ca_pem("a") + &ca_pem("b")).unwrap();
        assert_eq!(load_ca(&path).unwrap().1.len(), 2);
    }

    fn config(ca: &Path, canary_sni: &str) -> canary_config::Config {
        canary_config::parse(&format!(
            "routes:\n  - name: app\n    stable: {{ endpoints: [\"127.0.0.1:1\"], tls: {{ ca: \"{ca}\", sni: a.internal }} }}\n    canary: {{ endpoints: [\"127.0.0.1:1\"], tls: {{ ca: \"{ca}\", sni: {canary_sni} }} }}\n  - name: plain\n    hosts: [plain.test]\n    stable: {{ endpoints: [\"127.0.0.1:1\"] }}\n",
            ca = ca.display()
        ))
        .unwrap()
    }

    fn client(t: &RoutingTable, route: &str, v: Variant) -> *const UpstreamTls {
        t.route(route)
            .unwrap()
            .endpoints(v)
            .tls()
            .map_or(std::ptr::null(), |c| c as *const _)
    }

    #[test]
    fn clients_are_shared_by_setting_and_kept_across_builds() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem("one")).unwrap();
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let build = |c: &canary_config::Config, prev: Option<&RoutingTable>| {
            RoutingTable::build(c, LiveRoute::from_config, prev, &metrics)
        };

        let same = config(&ca, "a.internal");
        let a = build(&same, None).unwrap();
        let stable = client(&a, "app", Variant::Stable);
        assert!(!stable.is_null());
        assert_eq!(stable, client(&a, "app", Variant::Canary), "one client per setting");
        assert!(
            client(&a, "plain", Variant::Stable).is_null(),
            "plain HTTP has no TLS client"
        );
        // Plain and HTTPS to the same address are different endpoints (health, scheme).
        let https = a
            .route("app")
            .unwrap()
            .endpoints(Variant::Stable)
            .pick(None)
            .unwrap()
            .clone();
        let plain = a
            .route("plain")
            .unwrap()
            .endpoints(Variant::Stable)
            .pick(None)
            .unwrap()
            .clone();
        assert!(!Arc::ptr_eq(&https, &plain));
        assert_eq!(https.connect_uri().to_string(), "https://127.0.0.1:1/");
        assert_eq!(plain.connect_uri().to_string(), "http://127.0.0.1:1/");

        // A different SNI is a different client (and pool).
        let two = config(&ca, "b.internal");
        let b = build(&two, Some(&a)).unwrap();
        assert_eq!(
            client(&b, "app", Variant::Stable),
            stable,
            "unchanged setting: same client, same pool"
        );
        assert_ne!(client(&b, "app", Variant::Canary), stable);

        // A changed CA file makes a new client; an unreadable one keeps the last good one.
        std::fs::write(&ca, ca_pem("two")).unwrap();
        let c = build(&two, Some(&b)).unwrap();
        let rotated = client(&c, "app", Variant::Stable);
        assert_ne!(rotated, stable);
        let generation = |t: &RoutingTable| {
            t.route("app")
                .unwrap()
                .endpoints(Variant::Stable)
                .tls()
                .unwrap()
                .generation()
        };
        assert_ne!(
            generation(&c),
            generation(&b),
            "the old client's pooled connections are not reused"
        );
        std::fs::remove_file(&ca).unwrap();
        let d = build(&two, Some(&c)).unwrap();
        assert_eq!(client(&d, "app", Variant::Stable), rotated);
        // Without a previous client there is nothing to keep.
        let err = build(&two, None).unwrap_err().to_string();
        assert!(err.contains("route app: stable.tls: cannot read"), "{err}");
    }
}
