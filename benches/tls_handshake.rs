//! TLS handshakes per second on one core: a full handshake (fresh client, no resumption)
//! against canaryd's own server configuration (`canary_proxy::tls::server_config` with the
//! SNI resolver), in memory so only the cryptography and rustls are measured. Reported, not
//! asserted: `cargo bench -p canary-benches --bench tls_handshake`.

use std::sync::Arc;

use canary_config::HostPattern;
use canary_proxy::tls::{server_config, CertResolver, CertSet, LoadedCert};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

/// A server config for `app.example` with a certificate signed by `alg`, and a client trusting it.
/// How the benchmark's client connects.
#[derive(Clone, Copy)]
enum Mode {
    /// TLS 1.3, no session resumption: every handshake does the full key exchange and signature.
    Full13,
    /// TLS 1.2, no session resumption.
    Full12,
    /// TLS 1.3 resuming with canaryd's session tickets, as a returning browser does.
    Resumed13,
}

fn configs(alg: &'static rcgen::SignatureAlgorithm, mode: Mode) -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["app.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let loaded = LoadedCert::from_pem(
        vec![HostPattern::Exact("app.example".into())],
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let resolver = Arc::new(CertResolver::default());
    resolver.store(CertSet::new(&[loaded], false));
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = match mode {
        Mode::Full12 => &[&rustls::version::TLS12],
        Mode::Full13 | Mode::Resumed13 => &[&rustls::version::TLS13],
    };
    let mut client = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !matches!(mode, Mode::Resumed13) {
        client.resumption = rustls::client::Resumption::disabled();
    }
    (server_config(resolver), Arc::new(client))
}

/// One complete handshake, bytes shuttled in memory.
fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<ClientConfig>) {
    let name = ServerName::try_from("app.example").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::with_capacity(8 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("tls_handshake");
    group.throughput(Throughput::Elements(1));
    for (name, alg, mode) in [
        ("ecdsa_p256/full_tls13", &rcgen::PKCS_ECDSA_P256_SHA256, Mode::Full13),
        ("ecdsa_p256/full_tls12", &rcgen::PKCS_ECDSA_P256_SHA256, Mode::Full12),
        (
            "ecdsa_p256/resumed_tls13",
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Mode::Resumed13,
        ),
        ("ed25519/full_tls13", &rcgen::PKCS_ED25519, Mode::Full13),
    ] {
        let (server, client) = configs(alg, mode);
        group.bench_function(name, |b| b.iter(|| handshake(&server, &client)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
