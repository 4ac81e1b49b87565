//! Certificate files: loaded at start, re-read every second and swapped in when they
//! change; a broken replacement keeps the certificates that work and says why.
//! In kubernetes mode, certificates from Secrets join them (see [`SecretCertificates`]).

use std::sync::{Arc, Mutex};

use canary_config::Tls;
use canary_proxy::tls::{CertResolver, CertSet, LoadedCert};
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

/// The live certificates of the HTTPS listener.
pub struct Certificates {
    live: Arc<Live>,
    /// The bytes of every cert and key file last applied, to notice changes.
    applied: Vec<Vec<u8>>,
    reloads: IntCounterVec,
}

/// What the resolver serves: file certificates first (the default one is the first file's),
/// then Secret ones; republished whole when either changes.
struct Live {
    resolver: Arc<CertResolver>,
    expiry: GaugeVec,
    files: Mutex<Vec<LoadedCert>>,
    /// (`namespace/name`, certificate) of Secrets.
    secrets: Mutex<Vec<(String, LoadedCert)>>,
    reject_unknown_sni: std::sync::atomic::AtomicBool,
}

impl Live {
    fn publish(&self) {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let secrets = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<LoadedCert> = files.iter().chain(secrets.iter().map(|(_, c)| c)).cloned().collect();
        let reject = self.reject_unknown_sni.load(std::sync::atomic::Ordering::Relaxed);
        self.resolver.store(CertSet::new(&all, reject));
    }
}

/// The Secret part of the certificates, set by kubernetes mode.
#[derive(Clone)]
pub struct SecretCertificates(Arc<Live>);

impl SecretCertificates {
    /// Serves these Secret certificates (`namespace/name`, certificate) from now on.
    pub fn set(&self, certs: Vec<(String, LoadedCert)>) {
        let live = &self.0;
        {
            let mut current = live.secrets.lock().unwrap_or_else(|e| e.into_inner());
            for (name, _) in current.iter().filter(|(n, _)| !certs.iter().any(|(m, _)| m == n)) {
                let _ = live.expiry.remove_label_values(&[&format!("secret:{name}")]);
            }
            *current = certs;
        }
        live.publish();
        self.refresh_expiry();
    }

    /// Counts the Secret certificates' expiry down.
    pub fn refresh_expiry(&self) {
        let secrets = self.0.secrets.lock().unwrap_or_else(|e| e.into_inner());
        for (name, cert) in secrets.iter() {
            self.0
                .expiry
                .with_label_values(&[&format!("secret:{name}")])
                .set(cert.seconds_left());
        }
    }
}

impl Certificates {
    /// Loads every certificate of `tls`; any error names the file and fails.
    pub fn load(tls: &Tls, registry: &Registry) -> anyhow::Result<Self> {
        let expiry = GaugeVec::new(
            Opts::new(
                "canaryd_certificate_expiry_seconds",
                "Seconds until the certificate's notAfter, by cert file (or `secret:NAMESPACE/NAME`).",
            ),
            &["cert"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "canaryd_certificate_reloads_total",
                "Certificate file changes applied or refused (the old ones keep serving).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        let (bytes, certs) = read(tls).map_err(anyhow::Error::msg)?;
        let live = Arc::new(Live {
            resolver: Arc::new(CertResolver::default()),
            expiry,
            files: Mutex::new(Vec::new()),
            secrets: Mutex::new(Vec::new()),
            reject_unknown_sni: tls.reject_unknown_sni.into(),
        });
        let this = Self {
            live,
            applied: bytes,
            reloads,
        };
        this.apply(tls, &certs);
        Ok(this)
    }

    /// The SNI resolver for the rustls config.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.live.resolver.clone()
    }

    /// The handle kubernetes mode sets Secret certificates through.
    pub fn secrets(&self) -> SecretCertificates {
        SecretCertificates(self.live.clone())
    }

    /// Re-reads the files; swaps in the new set when anything changed and all of it loads.
    pub fn check(&mut self, tls: &Tls) {
        let bytes: Vec<Vec<u8>> = files(tls).map(|p| std::fs::read(p).unwrap_or_default()).collect();
        if bytes == self.applied {
            self.refresh_expiry(tls);
            return;
        }
        match read(tls) {
            Ok((bytes, certs)) => {
                self.apply(tls, &certs);
                self.applied = bytes;
                self.reloads.with_label_values(&["success"]).inc();
                tracing::info!(certificates = certs.len(), "certificates reloaded");
            }
            Err(e) => {
                // Remember the broken bytes so the error is logged once per change, not every second.
                self.applied = bytes;
                self.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "certificate change refused, the previous certificates keep serving");
            }
        }
    }

    fn apply(&self, tls: &Tls, certs: &[LoadedCert]) {
        *self.live.files.lock().unwrap_or_else(|e| e.into_inner()) = certs.to_vec();
        self.live
            .reject_unknown_sni
            .store(tls.reject_unknown_sni, std::sync::atomic::Ordering::Relaxed);
        self.live.publish();
        for (spec, cert) in tls.certificates.iter().zip(certs) {
            self.live
                .expiry
                .with_label_values(&[&spec.cert.display().to_string()])
                .set(cert.seconds_left());
        }
    }

    fn refresh_expiry(&self, tls: &Tls) {
        // Cheap enough once a second: the gauge counts down without a reload.
        if let Ok((_, certs)) = read(tls) {
            for (spec, cert) in tls.certificates.iter().zip(&certs) {
                self.live
                    .expiry
                    .with_label_values(&[&spec.cert.display().to_string()])
                    .set(cert.seconds_left());
            }
        }
    }
}

fn files(tls: &Tls) -> impl Iterator<Item = &std::path::Path> {
    tls.certificates
        .iter()
        .flat_map(|c| [c.cert.as_path(), c.key.as_path()])
}

/// Reads and parses every certificate; the error names the file and the config entry.
fn read(tls: &Tls) -> Result<(Vec<Vec<u8>>, Vec<LoadedCert>), String> {
    let mut bytes = Vec::new();
    let mut certs = Vec::new();
    for (i, c) in tls.certificates.iter().enumerate() {
        let cert =
            std::fs::read(&c.cert).map_err(|e| format!("tls.certificates[{i}].cert {}: {e}", c.cert.display()))?;
        let key = std::fs::read(&c.key).map_err(|e| format!("tls.certificates[{i}].key {}: {e}", c.key.display()))?;
        let loaded = LoadedCert::from_pem(c.hosts.clone(), &cert, &key)
            .map_err(|e| format!("tls.certificates[{i}] ({}): {e}", c.cert.display()))?;
        bytes.push(cert);
        bytes.push(key);
        certs.push(loaded);
    }
    Ok((bytes, certs))
}
