//! Every Kubernetes API call kubernetes mode makes, in one list: the source of truth for
//! RBAC. `deploy/rbac.yaml` (and so the Helm chart, which a test ties to it) grants exactly
//! these calls; the e2e tests check that every request canaryd sends is one of them and
//! that each of them is really sent, so neither the list nor the RBAC can drift from the
//! code. A new `Api::<T>` use, `watcher()` or write in this module tree belongs here first.
//!
//! kube-runtime's `watcher` makes two calls per watch: `list` (the initial list and every
//! re-list) and `watch`. Its Event `Recorder` creates an Event and patches it when the same
//! event (type, reason, action, object) repeats within its cache's lifetime.

/// Where a call is granted, which decides the kind of RBAC role that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In any namespace canaryd serves or discovers in: the ClusterRole.
    AllNamespaces,
    /// Only in canaryd's own namespace (`kubernetes.namespace`): the leader Role.
    OwnNamespace,
    /// Only objects named in the config or in Ingresses, selected by name: a Role per
    /// namespace with `resourceNames` (TLS Secrets).
    NamedObjects,
}

/// One resource canaryd calls and the verbs it uses on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, with `/subresource` when it is one.
    pub resource: &'static str,
    /// RBAC verbs: get, list, watch, create, update (PUT), patch.
    pub verbs: &'static [&'static str],
    /// Where the calls are made.
    pub scope: Scope,
    /// Which code makes them, and why.
    pub why: &'static str,
}

/// The complete list. IngressClasses are absent on purpose: canaryd matches an Ingress's
/// `ingressClassName` (or the legacy annotation) against `kubernetes.ingress_class` and
/// never reads IngressClass objects.
pub const API_CALLS: &[ApiCall] = &[
    ApiCall {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
        scope: Scope::AllNamespaces,
        why: "discovery.rs: a `service:` source watches the Service's slices by label",
    },
    ApiCall {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
        scope: Scope::AllNamespaces,
        why: "discovery.rs watches a Service (by name) whose port is given by number; ingress_status.rs watches kubernetes.publish_service (by name)",
    },
    ApiCall {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        scope: Scope::AllNamespaces,
        why: "discovery.rs: a `selector:` source watches the Pods it selects",
    },
    ApiCall {
        group: "networking.k8s.io",
        resource: "ingresses",
        verbs: &["list", "watch"],
        scope: Scope::AllNamespaces,
        why: "sources.rs watches Ingresses for routes (ingress_status.rs reads the same watch to set their address)",
    },
    ApiCall {
        group: "networking.k8s.io",
        resource: "ingresses/status",
        verbs: &["patch"],
        scope: Scope::AllNamespaces,
        why: "ingress_status.rs: the leader merge-patches status.loadBalancer of our Ingresses",
    },
    ApiCall {
        group: "canaryd.dev",
        resource: "canaryroutes",
        verbs: &["get", "list", "watch"],
        scope: Scope::AllNamespaces,
        why: "sources.rs watches CanaryRoutes; status.rs gets one to write its status on fresh state",
    },
    ApiCall {
        group: "canaryd.dev",
        resource: "canaryroutes/status",
        verbs: &["update"],
        scope: Scope::AllNamespaces,
        why: "status.rs replaces the status at the resourceVersion it read (409: read again)",
    },
    ApiCall {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::AllNamespaces,
        why: "status.rs: kube's Recorder creates audit Events on the CanaryRoute, patches a repeated one",
    },
    ApiCall {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::OwnNamespace,
        why: "lease.rs: leader election reads, creates and compare-and-swaps the Lease",
    },
    ApiCall {
        group: "",
        resource: "secrets",
        verbs: &["list", "watch"],
        scope: Scope::NamedObjects,
        why: "sources.rs: with an HTTPS listener, each TLS Secret is watched by metadata.name",
    },
];

/// The entry that lists `verb` on `group`/`resource`, if any.
pub fn find(group: &str, resource: &str, verb: &str) -> Option<&'static ApiCall> {
    API_CALLS
        .iter()
        .find(|c| c.group == group && c.resource == resource && c.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    const RBAC: &str = include_str!("../../../deploy/rbac.yaml");

    type Grants = BTreeSet<(String, String, String)>;

    fn listed(scope: Scope) -> Grants {
        API_CALLS
            .iter()
            .filter(|c| c.scope == scope)
            .flat_map(|c| {
                c.verbs
                    .iter()
                    .map(|v| (c.group.to_string(), c.resource.to_string(), v.to_string()))
            })
            .collect()
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// The grants of a role's rules; `named` says whether they must carry `resourceNames`.
    fn grants(role: &Value, named: bool) -> Grants {
        let mut out = Grants::new();
        for rule in role["rules"].as_array().expect("rules") {
            assert_eq!(
                rule.get("resourceNames").is_some(),
                named,
                "resourceNames in {rule} (only the Secret Roles name objects)"
            );
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        assert!(v != "*" && r != "*" && g != "*", "wildcard in {rule}");
                        out.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
        out
    }

    fn docs(yaml: &str) -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("RBAC YAML"))
            .collect()
    }

    fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
        let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "deploy/rbac.yaml: one {kind}");
        found[0]
    }

    /// Both directions: a grant the code never uses fails as much as a call not granted.
    fn assert_same(what: &str, in_yaml: &Grants, in_list: &Grants) {
        let over: Vec<_> = in_yaml.difference(in_list).collect();
        let under: Vec<_> = in_list.difference(in_yaml).collect();
        assert!(
            over.is_empty() && under.is_empty(),
            "{what}: granted but not in API_CALLS: {over:?}; in API_CALLS but not granted: {under:?}"
        );
    }

    #[test]
    fn deploy_rbac_grants_exactly_the_api_calls() {
        let docs = docs(RBAC);
        assert_same(
            "ClusterRole",
            &grants(one(&docs, "ClusterRole"), false),
            &listed(Scope::AllNamespaces),
        );
        let role = one(&docs, "Role");
        assert_eq!(
            role["metadata"]["namespace"], "canaryd",
            "the leader Role is in canaryd's namespace"
        );
        assert_same("leader Role", &grants(role, false), &listed(Scope::OwnNamespace));
    }

    /// deploy/rbac.yaml cannot hold a Secret Role (the names are the user's), so it shows one
    /// in a comment; that example must grant the same as the list too.
    #[test]
    fn the_secret_role_example_grants_exactly_the_named_calls() {
        let example: String = RBAC
            .lines()
            .skip_while(|l| !l.starts_with("#   kind: Role"))
            .take_while(|l| l.starts_with("#   "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let docs = docs(&example);
        let role = one(&docs, "Role");
        assert_same(
            "the Secret Role example",
            &grants(role, true),
            &listed(Scope::NamedObjects),
        );
    }

    #[test]
    fn each_resource_is_listed_once_without_repeated_verbs() {
        let mut seen = BTreeSet::new();
        for c in API_CALLS {
            assert!(seen.insert((c.group, c.resource)), "{}/{} twice", c.group, c.resource);
            let verbs: BTreeSet<_> = c.verbs.iter().collect();
            assert_eq!(verbs.len(), c.verbs.len(), "{c:?}");
            assert!(!c.why.is_empty());
        }
        assert_eq!(find("", "pods", "list").map(|c| c.resource), Some("pods"));
        assert_eq!(find("", "pods", "get"), None);
        assert_eq!(find("networking.k8s.io", "ingressclasses", "list"), None);
    }
}
