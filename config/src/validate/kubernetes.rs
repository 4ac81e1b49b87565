//! Kubernetes mode and Kubernetes endpoint sources.

use super::*;

pub(super) fn kubernetes(errs: &mut Errors, raw: &RawKubernetes) -> Kubernetes {
    let at = "kubernetes";
    for (field, value) in [
        ("namespace", Some(&raw.namespace)),
        ("watch_namespace", raw.watch_namespace.as_ref()),
    ] {
        if let Some(v) = value {
            if !dns_label(v) {
                errs.push(format!("{at}.{field}"), format!("{v:?} is not a namespace name"));
            }
        }
    }
    if let Some(class) = &raw.ingress_class {
        if !dns_name(class) {
            errs.push(
                format!("{at}.ingress_class"),
                format!("{class:?} is not an IngressClass name"),
            );
        }
    }
    let publish_service = raw.publish_service.as_ref().and_then(|s| match s.split_once('/') {
        Some((ns, name)) if dns_label(ns) && dns_label(name) => Some((ns.to_string(), name.to_string())),
        _ => {
            errs.push(
                format!("{at}.publish_service"),
                format!("{s:?} is not NAMESPACE/NAME of a Service"),
            );
            None
        }
    });
    if !dns_name(&raw.lease_name) {
        errs.push(
            format!("{at}.lease_name"),
            format!("{:?} is not a Lease name", raw.lease_name),
        );
    }
    let lease_duration = duration(errs, format!("{at}.lease_duration"), &raw.lease_duration);
    if lease_duration < Duration::from_secs(2) {
        errs.push(format!("{at}.lease_duration"), "must be at least 2s");
    }
    Kubernetes {
        namespace: raw.namespace.clone(),
        ingress_class: raw.ingress_class.clone(),
        canary_routes: raw.canary_routes,
        watch_namespace: raw.watch_namespace.clone(),
        publish_service,
        lease_name: raw.lease_name.clone(),
        lease_duration,
    }
}

pub(super) fn kube_source(errs: &mut Errors, at: &FieldPath, raw: &KubeSourceSpec) -> Option<KubeSource> {
    if let Some(ns) = &raw.namespace {
        if !dns_label(ns) {
            errs.push(at.field("namespace"), format!("{ns:?} is not a namespace name"));
        }
    }
    let target = match (&raw.service, &raw.selector, &raw.port) {
        (Some(_), Some(_), _) | (None, None, _) => {
            errs.push(at, "give exactly one of service or selector");
            return None;
        }
        (Some(name), None, port) => {
            if !dns_label(name) {
                errs.push(at.field("service"), format!("{name:?} is not a Service name"));
            }
            let port = match port {
                PortSpec::Number(n) => PortRef::Number(port_number(errs, at, *n)?),
                PortSpec::Name(n) if dns_label(n) && n.len() <= 15 => PortRef::Name(n.clone()),
                PortSpec::Name(n) => match n.parse::<u32>() {
                    Ok(num) => PortRef::Number(port_number(errs, at, num)?),
                    Err(_) => {
                        errs.push(at.field("port"), format!("{n:?} is not a port name or number"));
                        return None;
                    }
                },
            };
            KubeTarget::Service {
                name: name.clone(),
                port,
            }
        }
        (None, Some(selector), port) => {
            if let Err(m) = label_selector(selector) {
                errs.push(at.field("selector"), m);
            }
            let port = match port {
                PortSpec::Number(n) => port_number(errs, at, *n)?,
                PortSpec::Name(n) => match n.parse::<u32>() {
                    Ok(num) => port_number(errs, at, num)?,
                    Err(_) => {
                        errs.push(
                            at.field("port"),
                            format!("{n:?}: a selector source needs a port number (Pods have no named Service port)"),
                        );
                        return None;
                    }
                },
            };
            KubeTarget::Selector {
                selector: selector.clone(),
                port,
            }
        }
    };
    Some(KubeSource {
        namespace: raw.namespace.clone(),
        target,
    })
}

pub(super) fn port_number(errs: &mut Errors, at: &FieldPath, n: u32) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.push(at.field("port"), format!("{n} is not a port number (1..65535)"));
            None
        }
    }
}

/// RFC 1123 label: namespaces, Service names and port names.
pub(super) fn dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Equality-based label selectors (`a=b,c!=d`) and existence (`a`, `!a`), as `kubectl -l` takes them.
pub(super) fn label_selector(text: &str) -> Result<(), String> {
    let key_ok = |k: &str| {
        let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
        !name.is_empty() && name.len() <= 63 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let value_ok = |v: &str| v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if text.trim().is_empty() {
        return Err("an empty selector would match every Pod of the namespace".into());
    }
    for term in text.split(',') {
        let term = term.trim();
        let ok = if let Some((k, v)) = term.split_once("!=") {
            key_ok(k.trim()) && value_ok(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            key_ok(k.trim()) && value_ok(v.trim())
        } else {
            key_ok(term.strip_prefix('!').unwrap_or(term))
        };
        if !ok {
            return Err(format!(
                "{term:?} is not a selector term (key=value, key!=value, key or !key, joined by commas)"
            ));
        }
    }
    Ok(())
}
