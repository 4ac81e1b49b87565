//! TLS termination through the real binary: SNI picks the certificate, ALPN negotiates
//! HTTP/2, old protocol versions are refused, certificates rotate under load.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use canary_tests::{admin_call, Backend, BackendHandle, Canaryd, Client};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA that signs leaf certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "canaryd test CA");
        Self {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// Writes `NAME.pem` and `NAME.key` for `hosts` into `dir`; returns the leaf's DER.
    fn issue(&self, dir: &Path, name: &str, hosts: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, hosts[0]);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        // Written then renamed, as a cert manager does, so readers never see half a file.
        for (ext, text) in [("key", key.serialize_pem()), ("pem", cert.pem())] {
            let tmp = dir.join(format!("{name}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).unwrap();
        }
        cert.der().to_vec()
    }

    fn write_ca(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.cert.der().to_vec())).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// One request over a fresh TLS connection with SNI `host`: (served leaf DER, HTTP response text).
async fn https_get(ca: &Ca, addr: SocketAddr, host: &str, path: &str) -> Result<(Vec<u8>, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).unwrap();
    let mut tls = ca.connector().connect(name, tcp).await.map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    Ok((leaf, String::from_utf8_lossy(&out).into_owned()))
}

fn config(dir: &Path, backend: &BackendHandle, extra_route: &str, unknown_sni: &str) -> String {
    let d = dir.display();
    Canaryd::config(&format!(
        "tls:\n  unknown_sni: {unknown_sni}\n  certificates:\n    - {{ hosts: [a.test], cert: \"{d}/a.pem\", key: \"{d}/a.key\" }}\n    - {{ hosts: [\"*.b.test\", b.test], cert: \"{d}/b.pem\", key: \"{d}/b.key\" }}\nroutes:\n  - name: app\n    stable: {{ endpoints: [\"{}\"] }}\n    affinity: {{ key: cookie }}\n    hsts: {{ max_age: 1d }}\n{extra_route}",
        backend.endpoint()
    ))
    .replace("listen: {", "listen: { https: \"127.0.0.1:0\",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_versions_and_secure_cookies() {
    let backend = Backend::new("app").start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = ca.issue(dir.path(), "a", &["a.test"]);
    let b = ca.issue(dir.path(), "b", &["b.test", "*.b.test"]);
    let yaml = config(dir.path(), &backend, "", "default");
    let proxy = Canaryd::start(&yaml);
    let https = proxy.https.expect("https listener");

    // The right certificate for each name.
    for (host, want) in [("a.test", &a), ("b.test", &b), ("www.b.test", &b)] {
        let (leaf, resp) = https_get(&ca, https, host, "/")
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(&leaf, want, "certificate for {host}");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    // An unknown name gets the first (default) certificate, which the client then rejects.
    let err = https_get(&ca, https, "other.test", "/").await.unwrap_err();
    assert!(err.contains("only valid for DnsName(\"a.test\")"), "{err}");
    let seen = backend.requests();
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");

    // curl, verifying against the CA, for two hosts with --resolve; HTTP/2 by ALPN.
    let ca_file = ca.write_ca(dir.path());
    for host in ["a.test", "www.b.test"] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                "--cacert",
            ])
            .arg(&ca_file)
            .arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", https.port()))
            .arg(format!("https://{host}:{}/", https.port()))
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200 2",
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("h2load")
        .args(["-n", "200", "-c", "4", "-m", "10"])
        .arg(format!("https://127.0.0.1:{}/", https.port()))
        .output()
        .expect("h2load (Debian package nghttp2-client; scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(text.contains("200 succeeded"), "{text}");

    // Sticky cookies carry Secure over HTTPS only; HSTS only over HTTPS.
    let (_, resp) = https_get(&ca, https, "a.test", "/").await.unwrap();
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("set-cookie: canary_id=") && lower.contains("; secure"),
        "{resp}"
    );
    assert!(lower.contains("strict-transport-security: max-age=86400"), "{resp}");
    let plain = Client::new().get(proxy.addr, "a.test", "/").await.unwrap();
    let cookie = plain.headers["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(plain.headers.get("strict-transport-security").is_none());

    // TLS 1.1 (and older) is refused with a fatal alert (rustls answers handshake_failure).
    let mut tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut buf = [0u8; 7];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        n == 7 && buf[0] == 0x15 && buf[5] == 2,
        "expected a fatal alert, got {:?}",
        &buf[..n]
    );
    let m = proxy.metrics().await;
    assert!(
        m.contains(r#"canaryd_tls_handshakes_total{result="incompatible"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"canaryd_certificate_expiry_seconds{cert=""#));
}

/// A minimal TLS 1.1 ClientHello (no extensions), as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0xc0, 0x13]); // two suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x02, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_nothing_and_a_broken_file_keeps_the_old_cert() {
    let backend = Backend::new("app").start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(dir.path(), "a", &["a.test"]);
    ca.issue(dir.path(), "b", &["b.test"]);
    let proxy = Canaryd::start(&config(dir.path(), &backend, "", "reject"));
    let https = proxy.https.unwrap();

    // Unknown names are refused when unknown_sni is reject.
    assert!(https_get(&ca, https, "nobody.test", "/").await.is_err());

    let mut failures = 0;
    let mut second = None;
    let mut saw_new = false;
    for i in 0..400 {
        if i == 100 {
            second = Some(ca.issue(dir.path(), "a", &["a.test"]));
        }
        match https_get(&ca, https, "a.test", "/").await {
            Ok((leaf, resp)) => {
                assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
                if Some(&leaf) == second.as_ref() {
                    saw_new = true;
                } else {
                    assert_eq!(leaf, first, "only the old or the new certificate is ever served");
                }
            }
            Err(e) => {
                eprintln!("request {i}: {e}");
                failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(failures, 0);
    assert!(saw_new, "the rotated certificate was picked up");

    // A broken replacement: the working certificate stays.
    std::fs::write(
        dir.path().join("a.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(
        proxy.wait_log("certificate change refused", Duration::from_secs(5)),
        "{:?}",
        proxy.log()
    );
    let (leaf, _) = https_get(&ca, https, "a.test", "/").await.unwrap();
    assert_eq!(Some(leaf), second);
    let (_, _, _) = admin_call(proxy.admin, "GET", "/healthz", &[], "").await;
    assert!(proxy
        .metrics()
        .await
        .contains(r#"canaryd_certificate_reloads_total{result="failure"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_when_asked() {
    let backend = Backend::new("app").start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(dir.path(), "a", &["a.test"]);
    ca.issue(dir.path(), "b", &["b.test"]);
    let extra = format!(
        "  - name: secure\n    hosts: [secure.test]\n    redirect_https: true\n    stable: {{ endpoints: [\"{}\"] }}\n",
        backend.endpoint()
    );
    let proxy = Canaryd::start(&config(dir.path(), &backend, &extra, "default"));
    let r = Client::new()
        .get(proxy.addr, "secure.test:8080", "/cart?id=3")
        .await
        .unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://secure.test/cart?id=3");
    assert_eq!(backend.count(), 0);
}

/// A `kubernetes.io/tls` Secret from the PEM files `issue` wrote.
fn tls_secret(dir: &Path, file: &str, broken_key: bool) -> k8s_openapi::api::core::v1::Secret {
    use k8s_openapi::ByteString;
    let cert = std::fs::read(dir.join(format!("{file}.pem"))).unwrap();
    let key = if broken_key {
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n".to_vec()
    } else {
        std::fs::read(dir.join(format!("{file}.key"))).unwrap()
    };
    k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: Some("prod".into()),
            name: Some("web-tls".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(cert)),
                ("tls.key".to_string(), ByteString(key)),
            ]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_secrets_of_ingress_tls_sections_rotate_and_survive_a_broken_update() {
    use canary_tests::kube_api::{self, KubeApi};
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path());
    let ca = Ca::new();
    let first = ca.issue(dir.path(), "one", &["app.example"]);
    let second = ca.issue(dir.path(), "two", &["app.example"]);
    let backend = Backend::new("web").start().await;
    let port: i32 = backend.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    api.apply(kube_api::ingress_class("canaryd", "canaryd.dev/ingress-controller"));
    api.apply(kube_api::endpoint_slice(
        "prod",
        "web-1",
        "web",
        "http",
        port,
        &[("127.0.0.1", true, true, false)],
    ));
    let mut ingress = kube_api::ingress("prod", "web", Some("canaryd"), &[("app.example", "/", "web", "http")]);
    ingress.spec.as_mut().unwrap().tls = Some(vec![k8s_openapi::api::networking::v1::IngressTLS {
        hosts: Some(vec!["app.example".into()]),
        secret_name: Some("web-tls".into()),
    }]);
    api.apply(ingress);
    api.apply(tls_secret(dir.path(), "one", false));

    let yaml = Canaryd::config("kubernetes: { namespace: prod, canary_routes: false }\n")
        .replace("listen: {", "listen: { https: \"127.0.0.1:0\",");
    let proxy = Canaryd::start_kubernetes(&yaml, &kubeconfig);
    let https = proxy.https.expect("https listener");
    let served = || async { https_get(&ca, https, "app.example", "/").await };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (leaf, response) = loop {
        match served().await {
            Ok(r) => break r,
            Err(e) => assert!(std::time::Instant::now() < deadline, "no certificate served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(leaf, first, "the Secret's certificate is served");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // The Secret is renewed (cert-manager, say): the new certificate is served.
    api.apply(tls_secret(dir.path(), "two", false));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while served().await.unwrap().0 != second {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed Secret was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken update keeps the certificate that works, and says why.
    api.apply(tls_secret(dir.path(), "one", true));
    assert!(proxy.wait_log("Secret prod/web-tls does not load", Duration::from_secs(5)));
    assert_eq!(
        served().await.unwrap().0,
        second,
        "a broken Secret must not replace a working certificate"
    );
    assert!(proxy.metric("canaryd_kubernetes_problems").await >= 1.0);
    assert!(
        proxy
            .metric(r#"canaryd_certificate_expiry_seconds{cert="secret:prod/web-tls"}"#)
            .await
            > 86_400.0
    );

    // RBAC can be limited to the Secrets named: canaryd reads them by name only.
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml")).unwrap()
        + "---\nkind: Role\nmetadata: {name: canaryd-tls, namespace: prod}\nrules:\n  - apiGroups: ['']\n    resources: [secrets]\n    resourceNames: [web-tls]\n    verbs: [get, list, watch]\n";
    let refused = canary_tests::rbac::violations(&api.requests(), &rbac, "prod");
    assert!(refused.is_empty(), "not allowed:\n{}", refused.join("\n"));
}
