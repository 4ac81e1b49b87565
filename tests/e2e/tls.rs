//! TLS termination through the real binary: SNI picks the certificate, ALPN negotiates
//! HTTP/2, old protocol versions are refused, unknown names get the default certificate or a
//! refusal, certificates from files rotate under concurrent load, and certificates come from
//! Kubernetes Secrets (of Ingress `tls:` sections or named in the config).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_tests::{Backend, BackendHandle, Canaryd, Client};
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
        tokio_rustls::TlsConnector::from(Arc::new(self.client_config()))
    }

    /// A connector for many connections that never resumes a session: a resumed handshake
    /// carries no certificate (rustls reports the one of the original session), so only full
    /// handshakes show which certificate the server serves now.
    fn connector_without_resumption(&self) -> tokio_rustls::TlsConnector {
        let mut config = self.client_config();
        config.resumption = rustls::client::Resumption::disabled();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.cert.der().to_vec())).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

/// One request over a fresh TLS connection with SNI `host`: (served leaf DER, HTTP response text).
async fn https_get(ca: &Ca, addr: SocketAddr, host: &str, path: &str) -> Result<(Vec<u8>, String), String> {
    https_get_via(&ca.connector(), addr, host, path).await
}

/// [`https_get`] through a given connector (one built once and shared by concurrent clients).
async fn https_get_via(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(Vec<u8>, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    Ok((leaf, String::from_utf8_lossy(&out).into_owned()))
}

/// A TLS handshake with SNI `host` by a client that trusts any certificate: the served
/// leaf's DER, or the error (a refused handshake is `received fatal alert: ...`).
async fn handshake_unverified(addr: SocketAddr, host: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(canary_proxy::upstream_tls::NoVerification::new(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// Waits (up to 10 s) until the sample `series` reaches `want`; returns the last value seen.
/// The server counts a failed handshake after its alert is sent, so a client can see the
/// failure a moment before the metric does.
async fn metric_reaching(proxy: &Canaryd, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = proxy.metric(series).await;
        if v >= want || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request of the rotation load: when it started, and the leaf served or the error.
struct Outcome {
    started: Instant,
    result: Result<Vec<u8>, String>,
}

/// Concurrent HTTPS clients for the rotation test, each making requests (one fresh TLS
/// connection each, so every request is a new handshake) until stopped or at a bound.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    outcomes: Vec<Arc<Mutex<Vec<Outcome>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// At most this many requests per client, so a stuck test cannot run for ever.
    const MAX_EACH: usize = 2000;

    fn start(clients: usize, connector: tokio_rustls::TlsConnector, addr: SocketAddr, host: &'static str) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut outcomes = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (stop, connector) = (stop.clone(), connector.clone());
            let seen: Arc<Mutex<Vec<Outcome>>> = Arc::default();
            outcomes.push(seen.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..Self::MAX_EACH {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    let result = match https_get_via(&connector, addr, host, "/").await {
                        Ok((leaf, resp)) if resp.starts_with("HTTP/1.1 200") => Ok(leaf),
                        Ok((_, resp)) => Err(format!("not a 200: {resp}")),
                        Err(e) => Err(e),
                    };
                    seen.lock().unwrap().push(Outcome { started, result });
                    // A little room for the other tests sharing the machine's two cores.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        Self { stop, outcomes, tasks }
    }

    /// Requests finished so far, over all clients.
    fn done(&self) -> usize {
        self.outcomes.iter().map(|o| o.lock().unwrap().len()).sum()
    }

    /// Requests started at or after `t` by the client that has made the fewest.
    fn fewest_since(&self, t: Instant) -> usize {
        let since = |o: &Arc<Mutex<Vec<Outcome>>>| o.lock().unwrap().iter().filter(|r| r.started >= t).count();
        self.outcomes.iter().map(since).min().unwrap_or(0)
    }

    /// Stops the clients and returns every outcome.
    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.outcomes
            .into_iter()
            .flat_map(|o| std::mem::take(&mut *o.lock().unwrap()))
            .collect()
    }
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
    // A client that checks no name completes the handshake: unknown_sni: default answers
    // (the rotation test shows the same handshake refused with unknown_sni: reject).
    let leaf = handshake_unverified(https, "other.test")
        .await
        .expect("unknown_sni: default completes the handshake");
    assert_eq!(leaf, a, "the first certificate is the default");
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
    // The alert reaches the client before canaryd's accept task has counted the failure.
    let counted = Instant::now() + Duration::from_secs(5);
    let mut m = proxy.metrics().await;
    while !m.contains(r#"canaryd_tls_handshakes_total{result="incompatible"} 1"#) && Instant::now() < counted {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = proxy.metrics().await;
    }
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

    // Unknown names are refused when unknown_sni is reject: even a client that would accept
    // any certificate gets an alert instead of one (with default it completes, see above).
    let no_certificate = r#"canaryd_tls_handshakes_total{result="no_certificate"}"#;
    let before = proxy.metric(no_certificate).await;
    let err = handshake_unverified(https, "nobody.test").await.unwrap_err();
    assert!(err.contains("fatal alert"), "a refused handshake, not {err}");
    assert_eq!(
        metric_reaching(&proxy, no_certificate, before + 1.0).await,
        before + 1.0
    );
    // A known name still gets its certificate from the same unverifying client.
    assert_eq!(handshake_unverified(https, "a.test").await.unwrap(), first);

    // Concurrent clients, a new handshake per request, while the file is replaced.
    let load_began = Instant::now();
    let load = Load::start(6, ca.connector_without_resumption(), https, "a.test");
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.done() < 100 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = ca.issue(dir.path(), "a", &["a.test"]);
    // The files are re-read every second: once a handshake of ours gets the new certificate,
    // the set is swapped, and every handshake that starts afterwards must get it too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let swapped = loop {
        let (leaf, _) = https_get(&ca, https, "a.test", "/").await.unwrap();
        if leaf == second {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "the rotated certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.fewest_since(swapped) < 20 {
        assert!(Instant::now() < deadline, "some client made no requests after the swap");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcomes = load.finish().await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.result.as_ref().err()).collect();
    let after: Vec<&Vec<u8>> = outcomes
        .iter()
        .filter(|o| o.started >= swapped)
        .filter_map(|o| o.result.as_ref().ok())
        .collect();
    let old = outcomes.iter().filter(|o| o.result.as_ref() == Ok(&first)).count();
    eprintln!(
        "rotation under load: {} requests by 6 clients in {:.1} s, {} failed, {old} got the old certificate, {} started after the swap",
        outcomes.len(),
        load_began.elapsed().as_secs_f64(),
        failed.len(),
        after.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    assert!(old > 0, "the load ran before the rotation");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(&o.result, Ok(leaf) if *leaf == first || *leaf == second)),
        "only the old or the new certificate is ever served"
    );
    assert!(
        after.iter().all(|leaf| **leaf == second),
        "a handshake after the swap got the old certificate"
    );

    // A broken replacement: the working certificate stays.
    let failure = r#"canaryd_certificate_reloads_total{result="failure"}"#;
    let before = proxy.metric(failure).await;
    std::fs::write(
        dir.path().join("a.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert_eq!(
        metric_reaching(&proxy, failure, before + 1.0).await,
        before + 1.0,
        "{:?}",
        proxy.log()
    );
    assert!(proxy.wait_log("certificate change refused", Duration::from_secs(1)));
    let (leaf, _) = https_get(&ca, https, "a.test", "/").await.unwrap();
    assert_eq!(leaf, second);
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

/// A `kubernetes.io/tls` Secret `prod/web-tls` from the PEM files `issue` wrote.
fn tls_secret(dir: &Path, file: &str, broken_key: bool) -> k8s_openapi::api::core::v1::Secret {
    tls_secret_named(dir, file, "prod", "web-tls", broken_key)
}

/// A `kubernetes.io/tls` Secret `namespace/name` from the PEM files `issue` wrote.
fn tls_secret_named(
    dir: &Path,
    file: &str,
    namespace: &str,
    name: &str,
    broken_key: bool,
) -> k8s_openapi::api::core::v1::Secret {
    use k8s_openapi::ByteString;
    let cert = std::fs::read(dir.join(format!("{file}.pem"))).unwrap();
    let key = if broken_key {
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n".to_vec()
    } else {
        std::fs::read(dir.join(format!("{file}.key"))).unwrap()
    };
    k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
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

/// Server-side applies a Secret on the test bed.
async fn apply_secret(admin: &kube::Client, secret: k8s_openapi::api::core::v1::Secret) {
    let mut value = serde_json::to_value(secret).unwrap();
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    canary_tests::testbed::apply(admin, &value).await.unwrap();
}

/// The test bed with a Deployment `web` (one Pod, port `http`) behind Service `web` in
/// prod, the IngressClass canaryd and `objects`; then canaryd with `config` as
/// deploy/rbac.yaml's ServiceAccount plus a Role for the Secret `secret` alone (by name).
async fn on_the_test_bed(
    objects: &[serde_json::Value],
    secret: (&str, &str),
    config: &str,
) -> (canary_tests::testbed::Testbed, kube::Client, Canaryd, tempfile::TempDir) {
    use canary_tests::objects::{backend_deployment, namespace, service};
    use canary_tests::testbed::{apply_all, Testbed};
    use serde_json::json;
    let bed = Testbed::start();
    let admin = bed.admin().await;
    let labels = json!({"app": "web"});
    let mut all = vec![
        namespace("prod"),
        namespace(secret.0),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "canaryd"}, "spec": {"controller": "canaryd.dev/ingress-controller"}
        }),
        service("prod", "web", labels.clone()),
        backend_deployment("prod", "web", labels, 1, 0),
    ];
    all.extend_from_slice(objects);
    apply_all(&admin, &all).await;
    bed.wait_pods(&admin, "prod", "app=web", 1).await;
    let (namespace, name) = secret;
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml")).unwrap()
        + &format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: canaryd-tls, namespace: {namespace}}}\nrules:\n  - apiGroups: ['']\n    resources: [secrets]\n    resourceNames: [{name}]\n    verbs: [list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: canaryd-tls, namespace: {namespace}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: canaryd-tls}}\nsubjects: [{{kind: ServiceAccount, name: canaryd, namespace: canaryd}}]\n"
        );
    let (proxy, dir) = bed.canaryd_as_service_account(&admin, &rbac, config).await;
    (bed, admin, proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_secrets_of_ingress_tls_sections_rotate_and_survive_a_broken_update() {
    if !canary_tests::testbed::in_pod_network(
        "certificates_from_the_secrets_of_ingress_tls_sections_rotate_and_survive_a_broken_update",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(dir.path(), "one", &["app.example"]);
    let second = ca.issue(dir.path(), "two", &["app.example"]);
    let ingress = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {
            "ingressClassName": "canaryd",
            "tls": [{"hosts": ["app.example"], "secretName": "web-tls"}],
            "rules": [{"host": "app.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}
            ]}}]
        }
    });
    let yaml = Canaryd::config("kubernetes: { namespace: canaryd, canary_routes: false }\n")
        .replace("listen: {", "listen: { https: \"127.0.0.1:0\",");
    let (bed, admin, proxy, _run) = on_the_test_bed(&[ingress], ("prod", "web-tls"), &yaml).await;
    // The Secret after canaryd started: it watches the name and loads it when it appears.
    apply_secret(&admin, tls_secret(dir.path(), "one", false)).await;
    let https = proxy.https.expect("https listener");
    let served = || async { https_get(&ca, https, "app.example", "/").await };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (leaf, response) = loop {
        match served().await {
            Ok(r) if r.1.starts_with("HTTP/1.1 200") => break r,
            Ok(r) => assert!(Instant::now() < deadline, "not served: {}", r.1),
            Err(e) => assert!(Instant::now() < deadline, "no certificate served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(leaf, first, "the Secret's certificate is served");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // The Secret is renewed (cert-manager, say): the new certificate is served.
    apply_secret(&admin, tls_secret(dir.path(), "two", false)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while served().await.unwrap().0 != second {
        assert!(Instant::now() < deadline, "the renewed Secret was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken update (the real server checks the keys are there, not what they hold)
    // keeps the certificate that works, and says why.
    apply_secret(&admin, tls_secret(dir.path(), "one", true)).await;
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
    // RBAC limited to the Secret named: canaryd reads it by name only.
    bed.assert_canaryd_allowed_and_listed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_secrets_named_in_the_config_are_served_for_their_hosts_and_rotate() {
    if !canary_tests::testbed::in_pod_network(
        "certificates_from_secrets_named_in_the_config_are_served_for_their_hosts_and_rotate",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(dir.path(), "one", &["*.shop.example"]);
    let second = ca.issue(dir.path(), "two", &["*.shop.example"]);
    // The Ingress has no tls: section; the certificate comes from the config only, and its
    // Secret lives in another namespace, as a shared wildcard certificate often does.
    let ingress = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "prod"},
        "spec": {"ingressClassName": "canaryd", "rules": [{"host": "www.shop.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}
        ]}}]}
    });
    let yaml = Canaryd::config(
        "kubernetes: { namespace: canaryd, canary_routes: false }\ntls:\n  secrets:\n    - { hosts: [\"*.shop.example\"], secret: certs/shop-tls }\n",
    )
    .replace("listen: {", "listen: { https: \"127.0.0.1:0\",");
    let (bed, admin, proxy, _run) = on_the_test_bed(&[ingress], ("certs", "shop-tls"), &yaml).await;
    apply_secret(&admin, tls_secret_named(dir.path(), "one", "certs", "shop-tls", false)).await;
    let https = proxy.https.expect("https listener");
    let served = || async { https_get(&ca, https, "www.shop.example", "/").await };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (leaf, response) = loop {
        match served().await {
            Ok(r) if r.1.starts_with("HTTP/1.1 200") => break r,
            Ok(r) => assert!(Instant::now() < deadline, "not served: {}", r.1),
            Err(e) => assert!(Instant::now() < deadline, "no certificate served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(leaf, first, "the configured Secret's certificate is served");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        proxy
            .metric(r#"canaryd_certificate_expiry_seconds{cert="secret:certs/shop-tls"}"#)
            .await
            > 86_400.0
    );

    // The Secret is renewed: new handshakes get the new certificate.
    apply_secret(&admin, tls_secret_named(dir.path(), "two", "certs", "shop-tls", false)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while served().await.unwrap().0 != second {
        assert!(Instant::now() < deadline, "the renewed Secret was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only that Secret, by name, in its own namespace: a Role for it alone suffices.
    bed.assert_canaryd_allowed_and_listed();
}
