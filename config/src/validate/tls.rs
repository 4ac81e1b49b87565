//! TLS termination: certificate files and Secrets, by host.

use super::*;

/// The hosts of a certificate: at least one, each a valid host pattern.
pub(super) fn certificate_hosts(errs: &mut Errors, at: &str, raw: &[String]) -> Vec<HostPattern> {
    if raw.is_empty() {
        errs.push(format!("{at}.hosts"), "list the hosts this certificate answers for");
    }
    hosts(errs, &FieldPath::new(at, FieldCase::Snake), raw)
}

pub(super) fn tls(errs: &mut Errors, raw: &RawTls) -> Tls {
    let mut certificates = Vec::with_capacity(raw.certificates.len());
    for (i, c) in raw.certificates.iter().enumerate() {
        let at = format!("tls.certificates[{i}]");
        let hosts = certificate_hosts(errs, &at, &c.hosts);
        for (field, path) in [("cert", &c.cert), ("key", &c.key)] {
            if path.is_empty() || path.contains('\0') || path.contains('\n') {
                errs.push(format!("{at}.{field}"), format!("{path:?} is not a file path"));
            }
        }
        certificates.push(CertificateFiles {
            hosts,
            cert: c.cert.clone().into(),
            key: c.key.clone().into(),
        });
    }
    let mut secrets = Vec::with_capacity(raw.secrets.len());
    for (i, c) in raw.secrets.iter().enumerate() {
        let at = format!("tls.secrets[{i}]");
        let hosts = certificate_hosts(errs, &at, &c.hosts);
        match c.secret.split_once('/') {
            Some((ns, name)) if dns_label(ns) && dns_name(name) => secrets.push(CertificateSecret {
                hosts,
                namespace: ns.into(),
                name: name.into(),
            }),
            _ => errs.push(
                format!("{at}.secret"),
                format!("{:?} is not NAMESPACE/NAME of a Secret", c.secret),
            ),
        }
    }
    Tls {
        certificates,
        secrets,
        reject_unknown_sni: matches!(raw.unknown_sni, RawUnknownSni::Reject),
    }
}
