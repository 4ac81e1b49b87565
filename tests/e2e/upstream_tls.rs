//! Upstream TLS per variant through the real binary: `tls: { verify, ca, sni }` on a variant
//! makes canaryd speak HTTPS to its endpoints, verifying the chain and the name; each failure
//! is a 502 for that request only, counted as `reason="tls"`; the config names bad fields.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use canary_tests::{canaryd::binary, Backend, BackendHandle, Canaryd, Client, TlsSeen};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA that signs leaf certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// Writes the CA certificate as `NAME.pem` into `dir`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A server config presenting a leaf for `names` (DNS names or IP addresses) signed by this CA.
    fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        server_config(cert.der().clone(), &key)
    }
}

/// A server config with ALPN h2 and http/1.1, so the backend shows what canaryd offered.
fn server_config(cert: CertificateDer<'static>, key: &KeyPair) -> Arc<rustls::ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A self-signed certificate for `api.internal`, trusted by nobody.
fn self_signed() -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["api.internal".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    server_config(cert.der().clone(), &key)
}

/// One route per host: stable is the plain backend, canary the given endpoint and `tls:`.
fn route(name: &str, stable: &BackendHandle, canary: &str, tls: &str) -> String {
    format!(
        "  - name: {name}\n    hosts: [{name}.test]\n    stable: {{ endpoints: [\"{}\"] }}\n    canary: {{ endpoints: [\"{canary}\"], tls: {tls} }}\n",
        stable.endpoint()
    )
}

async fn get(proxy: &Canaryd, host: &str, variant: &str) -> (u16, String) {
    let reply = Client::new()
        .send(proxy.addr, host, "/", &[("x-canary", variant)])
        .await
        .unwrap_or_else(|e| panic!("{host}: {e}"));
    (reply.status.as_u16(), reply.text())
}

fn tls_errors(route: &str) -> String {
    format!(r#"canaryd_upstream_errors_total{{reason="tls",route="{route}",variant="canary"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_variants_verify_chain_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (Ca::new("backend CA"), Ca::new("some other CA"));
    let good_ca = good.write(dir.path(), "good-ca");
    let other_ca = other.write(dir.path(), "other-ca");
    let stable = Backend::new("stable").start().await;
    // One HTTPS backend reached by several routes with different TLS settings: a connection
    // verified for one setting must never be reused by another (each has its own pool).
    let named = Backend::new("named").start_tls(good.server(&["api.internal"])).await;
    let by_ip = Backend::new("by-ip").start_tls(good.server(&["127.0.0.1"])).await;
    let untrusted = Backend::new("untrusted").start_tls(self_signed()).await;
    let (g, o) = (good_ca.display(), other_ca.display());
    let ep = named.endpoint();
    let routes = [
        route("app", &stable, &ep, &format!("{{ ca: \"{g}\", sni: api.internal }}")),
        route(
            "wrong-ca",
            &stable,
            &ep,
            &format!("{{ ca: \"{o}\", sni: api.internal }}"),
        ),
        route(
            "wrong-sni",
            &stable,
            &ep,
            &format!("{{ ca: \"{g}\", sni: other.internal }}"),
        ),
        route("ip-no-sni", &stable, &ep, &format!("{{ ca: \"{g}\" }}")),
        route("ip-san", &stable, &by_ip.endpoint(), &format!("{{ ca: \"{g}\" }}")),
        route(
            "insecure",
            &stable,
            &untrusted.endpoint(),
            "{ verify: false, sni: api.internal }",
        ),
        route("public-roots", &stable, &ep, "{ sni: api.internal }"),
    ];
    let yaml = Canaryd::config(&format!("routes:\n{}", routes.concat()));
    let proxy = Canaryd::start(&yaml);
    assert!(
        proxy.wait_log("for testing only", Duration::from_secs(5)),
        "verify: false is warned about at load"
    );

    // (1) Verified against `ca` and `sni`: 200 from the HTTPS backend, which saw TLS with our
    // SNI and ALPN http/1.1 (it offered h2 too); a few requests to exercise the pool.
    for _ in 0..3 {
        assert_eq!(get(&proxy, "app.test", "always").await, (200, "named".into()));
    }
    let seen = named.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(
            r.tls,
            Some(TlsSeen {
                sni: Some("api.internal".into()),
                alpn: Some("http/1.1".into())
            })
        );
        assert_eq!(r.version, http::Version::HTTP_11);
        assert_eq!(
            r.headers["host"], "app.test",
            "the client's Host goes upstream, not the SNI"
        );
    }

    // (2) A CA that did not sign the certificate: 502 for that request, counted as tls,
    // the route's stable variant unaffected. (3) An SNI the certificate does not carry: 502.
    // A connection pooled for `app` to the same address is not reused by these.
    for (host, route) in [("wrong-ca.test", "wrong-ca"), ("wrong-sni.test", "wrong-sni")] {
        let (status, body) = get(&proxy, host, "always").await;
        assert_eq!(status, 502, "{host}: {body}");
        assert!(body.contains("canary endpoint failed the TLS handshake"), "{body}");
        assert_eq!(proxy.metric(&tls_errors(route)).await, 1.0, "{route}");
        assert_eq!(get(&proxy, host, "never").await, (200, "stable".into()));
    }
    assert_eq!(
        named.count(),
        3,
        "no request reached the backend over a refused handshake"
    );
    assert!(proxy.wait_log("not signed by a CA of tls.ca", Duration::from_secs(5)));
    assert!(proxy.wait_log("set tls.sni to a name the certificate carries", Duration::from_secs(5)));
    assert_eq!(
        proxy
            .metric(r#"canaryd_upstream_errors_total{reason="connect",route="wrong-ca",variant="canary"}"#)
            .await,
        0.0,
        "a handshake failure is not a connect failure"
    );
    // The Mozilla roots do not know our test CA.
    assert_eq!(get(&proxy, "public-roots.test", "always").await.0, 502);
    assert!(proxy.wait_log("not signed by a CA of the built-in roots", Duration::from_secs(5)));

    // An IP endpoint without sni is checked against the certificate's IP addresses: a
    // certificate with only a DNS name fails (and the log says why), one with the IP passes.
    assert_eq!(get(&proxy, "ip-no-sni.test", "always").await.0, 502);
    assert!(proxy.wait_log("as an IP subjectAltName", Duration::from_secs(5)));
    assert_eq!(get(&proxy, "ip-san.test", "always").await, (200, "by-ip".into()));
    assert_eq!(by_ip.requests()[0].tls.as_ref().unwrap().sni, None, "no SNI for an IP");

    // (4) verify: false accepts a self-signed certificate.
    assert_eq!(get(&proxy, "insecure.test", "always").await, (200, "untrusted".into()));
    assert_eq!(
        untrusted.requests()[0].tls.as_ref().unwrap().sni.as_deref(),
        Some("api.internal")
    );

    // A reload changes a variant's TLS at once, even with verified connections in the pool:
    // `app` now expects a name its backend does not have.
    let reloaded = yaml.replace(
        &format!("{{ ca: \"{g}\", sni: api.internal }}"),
        &format!("{{ ca: \"{g}\", sni: renamed.internal }}"),
    );
    proxy.write_config(&reloaded);
    assert!(proxy.wait_log("config reloaded", Duration::from_secs(10)));
    assert_eq!(get(&proxy, "app.test", "always").await.0, 502);
    assert_eq!(named.count(), 3);

    // A reload naming a CA file that does not exist is refused; the running config serves on.
    proxy.write_config(&reloaded.replace(&g.to_string(), "/nonexistent/ca.pem"));
    assert!(proxy.wait_log(
        "routes[0].canary.tls.ca: cannot read /nonexistent/ca.pem",
        Duration::from_secs(10)
    ));
    assert_eq!(get(&proxy, "ip-san.test", "always").await, (200, "by-ip".into()));
}

fn check(dir: &Path, name: &str, yaml: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// (5) `canaryd check` names the field of each bad `tls:` setting.
#[test]
fn check_names_bad_tls_fields() {
    let dir = tempfile::tempdir().unwrap();
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(&bad_pem, "not a certificate\n").unwrap();
    let broken_pem = dir.path().join("broken.pem");
    std::fs::write(
        &broken_pem,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");

    // The files are checked once the rest of the config is valid.
    let (ok, err) = check(
        dir.path(),
        "files.yaml",
        &format!(
            "routes:\n  - name: app\n    stable: {{ endpoints: [\"10.0.0.1:8443\"], tls: {{ ca: \"{}\" }} }}\n    canary: {{ endpoints: [\"10.0.0.2:8443\"], tls: {{ ca: \"{}\", sni: api.internal }} }}\n  - name: api\n    hosts: [api.test]\n    stable: {{ endpoints: [\"10.0.0.3:8443\"], tls: {{ ca: \"{}\" }} }}\n",
            missing.display(),
            bad_pem.display(),
            broken_pem.display()
        ),
    );
    assert!(!ok);
    for want in [
        format!("routes[0].stable.tls.ca: cannot read {}", missing.display()),
        format!("routes[0].canary.tls.ca: {}: no PEM certificate", bad_pem.display()),
        format!(
            "routes[1].stable.tls.ca: {}: not PEM certificates",
            broken_pem.display()
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    let (ok, err) = check(
        dir.path(),
        "fields.yaml",
        "routes:\n  - name: app\n    stable: { endpoints: [\"10.0.0.1:8443\"], tls: { sni: 10.0.0.1 } }\n    canary: { endpoints: [\"10.0.0.2:8443\"], tls: { sni: \"api.internal:443\" } }\n  - name: api\n    hosts: [api.test]\n    stable: { endpoints: [\"10.0.0.3:8443\"], tls: { verify: false, ca: /etc/ca.pem } }\n    canary: { endpoints: [\"10.0.0.4:8443\"], tls: { verfy: true } }\n",
    );
    assert!(!ok);
    // An unknown key is a syntax error, reported alone; the rest once it is fixed.
    assert!(err.contains("routes[1].canary.tls") && err.contains("verfy"), "{err}");
    let (ok, err) = check(
        dir.path(),
        "fields.yaml",
        "routes:\n  - name: app\n    stable: { endpoints: [\"10.0.0.1:8443\"], tls: { sni: 10.0.0.1 } }\n    canary: { endpoints: [\"10.0.0.2:8443\"], tls: { sni: \"api.internal:443\" } }\n  - name: api\n    hosts: [api.test]\n    stable: { endpoints: [\"10.0.0.3:8443\"], tls: { verify: false, ca: /etc/ca.pem } }\n",
    );
    assert!(!ok);
    for want in [
        "routes[0].stable.tls.sni: \"10.0.0.1\" is not a DNS name",
        "routes[0].canary.tls.sni: \"api.internal:443\" is not a DNS name",
        "routes[1].stable.tls.ca: not used with verify: false",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }

    // A valid file passes; verify: false is warned about.
    let ca = Ca::new("ok");
    let ca_path = ca.write(dir.path(), "ca");
    let (ok, err) = check(
        dir.path(),
        "good.yaml",
        &format!(
            "routes:\n  - name: app\n    stable: {{ endpoints: [\"10.0.0.1:8443\"], tls: {{ ca: \"{}\", sni: api.internal }} }}\n    canary: {{ endpoints: [\"10.0.0.2:8443\"], tls: {{ verify: false }} }}\n",
            ca_path.display()
        ),
    );
    assert!(ok, "{err}");
    assert!(err.contains("for testing only"), "{err}");
}
