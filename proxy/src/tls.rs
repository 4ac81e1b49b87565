//! TLS termination: certificates chosen by SNI (exact, then `*.` wildcard, then the
//! default), TLS 1.2 and 1.3 only, ALPN h2 and http/1.1, swapped atomically on rotation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use canary_config::HostPattern;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate in the PEM.
    #[error("no certificate found in the PEM")]
    NoCertificate,
    /// The PEM could not be parsed.
    #[error("unreadable PEM: {0}")]
    Pem(String),
    /// The key is not usable or does not match.
    #[error("unusable private key: {0}")]
    Key(String),
    /// The leaf could not be parsed for its expiry.
    #[error("unreadable certificate: {0}")]
    Certificate(String),
}

/// One loaded certificate with what the metrics show of it.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// Hosts it answers for.
    pub hosts: Vec<HostPattern>,
    /// The key and chain rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
}

impl LoadedCert {
    /// Parses a PEM chain (leaf first) and its PEM private key.
    pub fn from_pem(hosts: Vec<HostPattern>, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
        let not_after = {
            let (_, parsed) =
                x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Certificate(e.to_string()))?;
            UNIX_EPOCH + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64)
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| TlsError::Key(format!("does not match the certificate: {e}")))?;
        Ok(Self {
            hosts,
            key: Arc::new(certified),
            not_after,
        })
    }

    /// Seconds until `notAfter` (negative once expired).
    pub fn seconds_left(&self) -> f64 {
        match self.not_after.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }
}

/// Certificates by host, immutable; replaced whole on rotation.
#[derive(Debug, Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertSet {
    /// Indexes `certs` by host; the first is the default unless `reject_unknown`.
    pub fn new(certs: &[LoadedCert], reject_unknown: bool) -> Self {
        let mut set = CertSet::default();
        for c in certs {
            for h in &c.hosts {
                let map = match h {
                    HostPattern::Exact(name) => (&mut set.exact, name),
                    HostPattern::Wildcard(parent) => (&mut set.wildcard, parent),
                };
                map.0.entry(map.1.clone()).or_insert_with(|| c.key.clone());
            }
        }
        if !reject_unknown {
            set.default = certs.first().map(|c| c.key.clone());
        }
        set
    }

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

/// The SNI resolver rustls calls; its set is swapped atomically on rotation.
#[derive(Debug, Default)]
pub struct CertResolver(ArcSwap<CertSet>);

impl CertResolver {
    /// Serves `set` from now on (handshakes in progress keep what they chose).
    pub fn store(&self, set: CertSet) {
        self.0.store(Arc::new(set));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().find(hello.server_name())
    }
}

/// A TLS 1.2/1.3 server config with ALPN h2 and http/1.1 over `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
