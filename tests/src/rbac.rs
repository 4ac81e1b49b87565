//! Checks the requests canaryd made (from the test bed's audit log, or an API tap's request
//! log) against canaryd's list of the API calls it makes (`API_CALLS`,
//! which deploy/rbac.yaml grants exactly): every request must be a listed call, and every
//! listed call must be made by some test, or the list (and the RBAC) grants more than the
//! code uses. Whether RBAC allows them is the real authorizer's call (the audit log's
//! decision), not ours.

use canary_control::kubernetes::api_calls::{ApiCall, Scope, API_CALLS};

/// What a request asks of the authorizer.
#[derive(Debug, PartialEq, Eq)]
pub struct Attributes {
    /// API group ("" for core).
    pub group: String,
    /// Resource, with `/subresource` when there is one.
    pub resource: String,
    /// Namespace, when namespaced.
    pub namespace: Option<String>,
    /// get, list, watch, create, update, patch, delete.
    pub verb: String,
    /// The object named, by path or by a `metadata.name=` field selector.
    pub name: Option<String>,
}

/// The authorizer's view of `method` on `path_and_query`; `None` for non-resource paths
/// (`/version`, `/api`, `/apis`).
pub fn attributes(method: &str, path_and_query: &str) -> Option<Attributes> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [] => return None,
        [plural] => (plural.to_string(), None),
        [plural, name] => (plural.to_string(), Some(name.to_string())),
        [plural, name, sub] => (format!("{plural}/{sub}"), Some(name.to_string())),
        _ => return None,
    };
    let named = name.is_some();
    let selected = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldSelector="))
        .map(|v| v.replace("%3D", "=").replace("%3d", "="))
        .and_then(|v| v.strip_prefix("metadata.name=").map(str::to_string));
    let name = name.or(selected);
    let watching = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match method {
        "GET" if watching => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        other => other,
    };
    Some(Attributes {
        group: group.to_string(),
        resource,
        namespace,
        verb: verb.to_string(),
        name,
    })
}

/// The `API_CALLS` entry a request is, checking its scope too: Lease calls only in
/// `role_namespace`, Secret calls only by name.
fn listed(a: &Attributes, role_namespace: &str) -> Option<&'static ApiCall> {
    API_CALLS.iter().find(|c| {
        c.group == a.group
            && c.resource == a.resource
            && c.verbs.contains(&a.verb.as_str())
            && match c.scope {
                Scope::AllNamespaces => true,
                Scope::OwnNamespace => a.namespace.as_deref() == Some(role_namespace),
                Scope::NamedObjects => a.namespace.is_some() && a.name.is_some(),
            }
    })
}

/// Requests of `log` that are no call of `API_CALLS` (the list must name everything the
/// code does); `role_namespace` is canaryd's own namespace.
pub fn unlisted(log: &[(String, String)], role_namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (method, path) in log {
        let Some(a) = attributes(method, path) else { continue };
        if listed(&a, role_namespace).is_none() {
            let line = format!("{method} {path} ({a:?})");
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    out
}

/// `group/resource verb` of every `API_CALLS` verb that no request of `log` made: a grant
/// nothing exercised.
pub fn unused(log: &[(String, String)], role_namespace: &str) -> Vec<String> {
    let made: Vec<(&'static str, &'static str, String)> = log
        .iter()
        .filter_map(|(m, p)| attributes(m, p))
        .filter_map(|a| listed(&a, role_namespace).map(|c| (c.group, c.resource, a.verb)))
        .collect();
    API_CALLS
        .iter()
        .flat_map(|c| c.verbs.iter().map(move |v| (c, *v)))
        .filter(|(c, v)| {
            !made
                .iter()
                .any(|(g, r, mv)| *g == c.group && *r == c.resource && mv == v)
        })
        .map(|(c, v)| format!("{}/{} {v} ({})", c.group, c.resource, c.why))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_attributes() {
        let a = attributes(
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices?labelSelector=x&watch=true",
        )
        .unwrap();
        assert_eq!(
            (a.group.as_str(), a.resource.as_str(), a.verb.as_str()),
            ("discovery.k8s.io", "endpointslices", "watch")
        );
        let a = attributes(
            "PUT",
            "/apis/canaryd.dev/v1alpha1/namespaces/prod/canaryroutes/web/status",
        )
        .unwrap();
        assert_eq!(
            (a.resource.as_str(), a.verb.as_str()),
            ("canaryroutes/status", "update")
        );
        let a = attributes("GET", "/api/v1/pods").unwrap();
        assert_eq!((a.group.as_str(), a.verb.as_str(), a.namespace), ("", "list", None));
        assert_eq!(attributes("GET", "/version"), None);
    }

    /// The request checks themselves: calls are matched by group, resource, verb and scope.
    #[test]
    fn requests_are_matched_to_the_api_call_list_with_their_scope() {
        let log = |reqs: &[(&str, &str)]| -> Vec<(String, String)> {
            reqs.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect()
        };
        let listed = log(&[
            ("GET", "/api/v1/namespaces/a/pods?labelSelector=x"),
            ("PUT", "/apis/canaryd.dev/v1alpha1/namespaces/a/canaryroutes/web/status"),
            ("GET", "/apis/coordination.k8s.io/v1/namespaces/ops/leases/l"),
            (
                "GET",
                "/api/v1/namespaces/a/secrets?fieldSelector=metadata.name%3Dt&watch=true",
            ),
            ("GET", "/version"),
        ]);
        assert_eq!(unlisted(&listed, "ops"), Vec::<String>::new());
        for (m, p) in [
            ("GET", "/api/v1/namespaces/a/pods/p"),
            (
                "PATCH",
                "/apis/canaryd.dev/v1alpha1/namespaces/a/canaryroutes/web/status",
            ),
            ("GET", "/apis/networking.k8s.io/v1/ingressclasses"),
            ("GET", "/apis/coordination.k8s.io/v1/namespaces/prod/leases/l"),
            ("GET", "/api/v1/namespaces/a/secrets"),
        ] {
            assert_eq!(unlisted(&log(&[(m, p)]), "ops").len(), 1, "{m} {p}");
        }
        let unused = unused(&log(&[("GET", "/api/v1/namespaces/a/pods?watch=true")]), "ops");
        assert!(unused.iter().any(|u| u.starts_with("/pods list")), "{unused:?}");
        assert!(!unused.iter().any(|u| u.starts_with("/pods watch")), "{unused:?}");
        assert_eq!(
            unused.len(),
            canary_control::kubernetes::api_calls::API_CALLS
                .iter()
                .map(|c| c.verbs.len())
                .sum::<usize>()
                - 1
        );
    }
}
