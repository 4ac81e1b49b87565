//! The Helm chart (helm/canaryd), the container image and the Grafana dashboard, checked
//! against the real canaryd.
//!
//! `tests/helm/chart.py` renders the chart with Helm's own template engine (Helm's Go SDK from
//! the `helm-python-sdk` package; scripts/test.sh installs it) for the default values and each
//! `helm/canaryd/ci/*-values.yaml`, validates the values against values.schema.json and every
//! manifest with kubernetes-validate (strict, Kubernetes 1.29.0), and writes the objects out.
//! The tests here then check what those objects say: the RBAC is deploy/rbac.yaml's, the
//! Deployment is wired to the config it mounts, `canaryd check` accepts every rendered config,
//! and the default install, applied to the real-Kubernetes test bed, runs there as the chart
//! says, serves a 90/10 split and a rollback, leads by its Lease, makes only requests the
//! real RBAC authorizer allows under the chart's RBAC, and exposes every metric that the
//! dashboard, the alerts and the docs name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use canary_control::kubernetes::api_calls::Scope;
use canary_tests::{admin_call, Client};
use serde::Deserialize;
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a YAML stream, as JSON values (empty documents dropped).
fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().expect("a string").to_string()).collect())
        .unwrap_or_default()
}

/// The chart rendered for one values file.
struct Case {
    name: String,
    release: String,
    namespace: String,
    /// The values Helm rendered with (defaults merged with the case's file).
    values: Value,
    objects: Vec<Value>,
    notes: String,
}

impl Case {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{}: {} {kind} objects", self.name, all.len());
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.name))
    }

    fn pod_spec(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod_spec()["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    /// The ConfigMap that holds canaryd.yaml and its text.
    fn config_text(&self) -> String {
        let maps: Vec<&Value> = self
            .all("ConfigMap")
            .into_iter()
            .filter(|m| m["data"]["canaryd.yaml"].is_string())
            .collect();
        assert_eq!(maps.len(), 1, "{}: one ConfigMap with canaryd.yaml", self.name);
        maps[0]["data"]["canaryd.yaml"].as_str().unwrap().to_string()
    }

    fn config(&self) -> Value {
        serde_yaml_ng::from_str(&self.config_text()).expect("canaryd.yaml is YAML")
    }

    /// The ConfigMap's name (mounted as the `config` volume).
    fn config_map_name(&self) -> String {
        self.all("ConfigMap")
            .into_iter()
            .find(|m| m["data"]["canaryd.yaml"].is_string())
            .unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The container port named `name`.
    fn port(&self, name: &str) -> u64 {
        self.container()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{}: no container port {name}", self.name))["containerPort"]
            .as_u64()
            .unwrap()
    }

    /// Where the volume `volume` is mounted in the container.
    fn mount(&self, volume: &str) -> String {
        self.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{}: volume {volume} not mounted", self.name))["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn volume(&self, name: &str) -> &Value {
        self.pod_spec()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{}: no volume {name}", self.name))
    }
}

/// Renders the chart once per test process (tests/helm/chart.py does the Python-side checks).
fn rendered() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let out = tempfile::tempdir().unwrap();
        let script = root().join("tests/helm/chart.py");
        let run = Command::new("python3")
            .arg(&script)
            .arg(out.path())
            .output()
            .expect("python3 (scripts/test.sh installs it)");
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        eprintln!("{stdout}");
        assert!(
            run.status.success(),
            "tests/helm/chart.py failed (scripts/test.sh installs helm-python-sdk, jsonschema and kubernetes-validate):\n{stdout}\n{stderr}"
        );
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("cases.json")).unwrap()).unwrap();
        summary
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let name = c["case"].as_str().unwrap().to_string();
                let dir = out.path().join(&name);
                Case {
                    release: c["release"].as_str().unwrap().to_string(),
                    namespace: c["namespace"].as_str().unwrap().to_string(),
                    values: serde_json::from_str(&std::fs::read_to_string(dir.join("values.json")).unwrap()).unwrap(),
                    objects: yaml_docs(&std::fs::read_to_string(dir.join("manifests.yaml")).unwrap()),
                    notes: std::fs::read_to_string(dir.join("NOTES.txt")).unwrap(),
                    name,
                }
            })
            .collect()
    })
}

fn case(name: &str) -> &'static Case {
    rendered()
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no rendered case {name}"))
}

#[test]
fn chart_renders_with_helm_for_every_values_file() {
    let names: BTreeSet<&str> = rendered().iter().map(|c| c.name.as_str()).collect();
    let mut expected: BTreeSet<String> = BTreeSet::from(["default".to_string()]);
    for entry in std::fs::read_dir(root().join("helm/canaryd/ci")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        expected.insert(file.strip_suffix("-values.yaml").expect("ci/*-values.yaml").to_string());
    }
    assert_eq!(names, expected.iter().map(String::as_str).collect());
    for c in rendered() {
        for kind in ["Deployment", "Service", "ConfigMap", "CustomResourceDefinition"] {
            assert!(!c.all(kind).is_empty(), "{}: no {kind}", c.name);
        }
        assert!(
            c.notes.contains(&format!("-n {} ", c.namespace)),
            "{}: NOTES.txt",
            c.name
        );
        for o in &c.objects {
            if o["kind"] != "CustomResourceDefinition" {
                assert_eq!(
                    o["metadata"]["labels"]["app.kubernetes.io/instance"],
                    c.release.as_str()
                );
            }
        }
    }
    let d = case("default");
    assert_eq!(d.one("Deployment")["spec"]["replicas"], 2);
    assert_eq!(d.one("PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    assert!(d.all("ServiceMonitor").is_empty() && d.all("PrometheusRule").is_empty());
    let m = case("metallb");
    assert_eq!(m.one("ServiceMonitor")["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(
        m.one("PrometheusRule")["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert!(case("minimal").all("PodDisruptionBudget").is_empty());
}

/// (apiGroup, resource, verb) triples a ClusterRole or Role grants.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

#[test]
fn chart_rbac_is_exactly_deploy_rbac() {
    let deploy = yaml_docs(&read("deploy/rbac.yaml"));
    let deploy_role = |kind: &str| {
        let roles: Vec<&Value> = deploy.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(roles.len(), 1, "deploy/rbac.yaml: one {kind}");
        roles[0].clone()
    };
    let (cluster_role, role) = (deploy_role("ClusterRole"), deploy_role("Role"));
    for c in rendered() {
        if c.values["rbac"]["create"] == false {
            for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
                assert!(c.all(kind).is_empty(), "{}: rbac.create false renders a {kind}", c.name);
            }
            continue;
        }
        let fullname = c.one("Deployment")["metadata"]["name"].as_str().unwrap();
        let chart_cluster_role = c.one("ClusterRole");
        let chart_role = c.named("Role", &format!("{fullname}-leader"));
        // The same rules, rule by rule (not merely the same grants).
        assert_eq!(
            chart_cluster_role["rules"], cluster_role["rules"],
            "{}: ClusterRole rules",
            c.name
        );
        assert_eq!(chart_role["rules"], role["rules"], "{}: Role rules", c.name);
        assert_eq!(grants(chart_cluster_role), grants(&cluster_role));
        assert_eq!(grants(chart_role), grants(&role));
        // The Role is where the Lease is: the namespace canaryd is told to use.
        assert_eq!(chart_role["metadata"]["namespace"], c.namespace.as_str());
        assert_eq!(c.config()["kubernetes"]["namespace"], c.namespace.as_str());
        // Both bindings give the roles to the Deployment's ServiceAccount.
        let account = c.pod_spec()["serviceAccountName"].as_str().unwrap();
        let service_account = c.one("ServiceAccount");
        assert_eq!(service_account["metadata"]["name"], account, "{}", c.name);
        let subjects = json!([{"kind": "ServiceAccount", "name": account, "namespace": c.namespace}]);
        for (binding, target) in [
            (c.one("ClusterRoleBinding"), chart_cluster_role),
            (c.named("RoleBinding", &format!("{fullname}-leader")), chart_role),
        ] {
            assert_eq!(binding["roleRef"]["kind"], target["kind"]);
            assert_eq!(binding["roleRef"]["name"], target["metadata"]["name"]);
            assert_eq!(binding["subjects"], subjects, "{}: bindings", c.name);
        }

        // TLS Secrets read from the API are granted by name, a Role per namespace, as
        // deploy/rbac.yaml describes: list and watch of exactly those names.
        let https = &c.values["https"];
        let mut wanted: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        if https["enabled"] == true {
            let named = https["secrets"].as_array().unwrap().iter().map(|s| s["secret"].clone());
            for s in named.chain(https["ingressSecrets"].as_array().unwrap().iter().cloned()) {
                let (ns, name) = s.as_str().unwrap().split_once('/').unwrap();
                wanted.entry(ns.into()).or_default().insert(name.into());
            }
            let config = c.config();
            assert_eq!(
                config["tls"]["secrets"].as_array().map_or(0, Vec::len),
                https["secrets"].as_array().unwrap().len(),
                "{}: tls.secrets",
                c.name
            );
        }
        let tls_roles: Vec<&Value> = c.all("Role").into_iter().filter(|r| *r != chart_role).collect();
        assert_eq!(tls_roles.len(), wanted.len(), "{}: one TLS Role per namespace", c.name);
        for (ns, names) in &wanted {
            let r = tls_roles
                .iter()
                .find(|r| r["metadata"]["namespace"] == ns.as_str())
                .unwrap_or_else(|| panic!("{}: no TLS Role in {ns}", c.name));
            // The verbs are those the code uses on Secrets, from the one list of API calls.
            let secrets = canary_control::kubernetes::api_calls::find("", "secrets", "watch").unwrap();
            assert_eq!(secrets.scope, Scope::NamedObjects);
            assert_eq!(
                r["rules"],
                json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": names, "verbs": secrets.verbs}]),
                "{}: TLS Role in {ns}",
                c.name
            );
            let binding = c
                .all("RoleBinding")
                .into_iter()
                .find(|b| b["metadata"]["namespace"] == ns.as_str() && b["roleRef"]["name"] == r["metadata"]["name"])
                .unwrap_or_else(|| panic!("{}: TLS Role in {ns} not bound", c.name));
            assert_eq!(binding["subjects"], subjects);
        }
    }
}

#[test]
fn chart_copies_match_their_sources() {
    assert_eq!(
        read("helm/canaryd/crds/canaryroute.yaml"),
        read("deploy/crds/canaryroute.yaml"),
        "helm/canaryd/crds/ is a copy of deploy/crds/ (cp deploy/crds/canaryroute.yaml helm/canaryd/crds/)"
    );
    assert_eq!(
        read("helm/canaryd/dashboards/canaryd.json"),
        read("deploy/grafana-dashboard.json"),
        "helm/canaryd/dashboards/canaryd.json is a copy of deploy/grafana-dashboard.json"
    );
    // What the dashboard ConfigMap carries is that file, byte for byte.
    let m = case("metallb");
    let dashboard = m
        .all("ConfigMap")
        .into_iter()
        .find(|c| c["data"]["canaryd.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["data"]["canaryd.json"].as_str().unwrap().trim_end(),
        read("deploy/grafana-dashboard.json").trim_end()
    );
}

/// `host:port` → port.
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn deployment_is_wired_to_its_config_services_and_volumes() {
    for c in rendered() {
        let n = &c.name;
        let config = c.config();
        let container = c.container();
        let pod = c.pod_spec();
        let values = &c.values;

        // The arguments: kubernetes mode on the mounted config file.
        let args = strings(&container["args"]);
        assert_eq!(
            args[..5],
            ["run", "--config", "/etc/canaryd/canaryd.yaml", "--mode", "kubernetes"],
            "{n}"
        );
        assert_eq!(
            args[5..],
            [
                "--log-format".to_string(),
                values["logFormat"].as_str().unwrap().to_string()
            ]
        );
        assert_eq!(c.mount("config"), "/etc/canaryd");
        assert_eq!(c.volume("config")["configMap"]["name"], c.config_map_name().as_str());
        assert!(
            c.volume("config")["configMap"].get("items").is_none(),
            "{n}: whole ConfigMap, no subPath"
        );

        // Listeners: what the config binds is what the Pod and the Services expose.
        assert_eq!(port_of(config["listen"]["http"].as_str().unwrap()), c.port("http"));
        assert_eq!(port_of(config["admin"]["listen"].as_str().unwrap()), c.port("admin"));
        assert!(
            config["admin"]["listen"].as_str().unwrap().starts_with("0.0.0.0:"),
            "{n}"
        );
        let https = values["https"]["enabled"] == true;
        assert_eq!(config["listen"].get("https").is_some(), https, "{n}");
        if https {
            assert_eq!(port_of(config["listen"]["https"].as_str().unwrap()), c.port("https"));
        }
        let fullname = c.one("Deployment")["metadata"]["name"].as_str().unwrap();
        let public = c.named("Service", fullname);
        let admin = c.named("Service", &format!("{fullname}-admin"));
        assert_eq!(public["spec"]["type"], values["service"]["type"]);
        let public_ports: Vec<&str> = public["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["targetPort"].as_str().unwrap())
            .collect();
        assert_eq!(
            public_ports,
            if https { vec!["http", "https"] } else { vec!["http"] },
            "{n}"
        );
        assert_eq!(admin["spec"]["type"], "ClusterIP");
        assert_eq!(admin["spec"]["ports"][0]["targetPort"], "admin");
        if values["service"]["type"] == "LoadBalancer" {
            assert_eq!(public["spec"]["externalTrafficPolicy"], "Local", "{n}");
        }
        let selector = &c.one("Deployment")["spec"]["selector"]["matchLabels"];
        for svc in [public, admin] {
            assert_eq!(&svc["spec"]["selector"], selector, "{n}");
        }
        for (key, annotation) in [
            ("addressPool", "metallb.universe.tf/address-pool"),
            ("loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs"),
        ] {
            let want = values["service"]["metallb"][key].as_str().unwrap_or("");
            let got = public["metadata"]["annotations"][annotation].as_str().unwrap_or("");
            assert_eq!(got, want, "{n}: {annotation}");
        }

        // Off loopback the API needs tokens: the file is the mounted Secret's `tokens` key.
        let tokens = config["admin"]["tokens_file"].as_str().expect("admin.tokens_file");
        let (dir, file) = tokens.rsplit_once('/').unwrap();
        assert_eq!(c.mount("tokens"), dir);
        let secret = &c.volume("tokens")["secret"];
        assert_eq!(secret["items"], json!([{"key": "tokens", "path": file}]));
        let secret_name = secret["secretName"].as_str().unwrap();
        match values["adminTokens"]["existingSecret"].as_str().unwrap_or("") {
            "" => {
                let s = c.named("Secret", secret_name);
                let text = String::from_utf8(base64_decode(s["data"]["tokens"].as_str().unwrap())).unwrap();
                let roles: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
                    .map(|l| l.split_whitespace().nth(1).unwrap())
                    .collect();
                assert!(roles.contains(&"write"), "{n}: no write token in {secret_name}");
            }
            existing => {
                assert_eq!(secret_name, existing);
                assert!(c.all("Secret").is_empty(), "{n}: existingSecret still renders a Secret");
            }
        }

        // The state file on a writable emptyDir (the root filesystem is read-only).
        let state = config["state"]["path"].as_str().unwrap();
        assert_eq!(Path::new(state).parent().unwrap(), Path::new(&c.mount("state")));
        assert!(c.volume("state")["emptyDir"].is_object());

        // TLS certificates are files of mounted kubernetes.io/tls Secrets.
        for cert in config["tls"]["certificates"].as_array().into_iter().flatten() {
            let path = cert["cert"].as_str().unwrap();
            let dir = Path::new(path).parent().unwrap().to_str().unwrap();
            let mount = container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == dir)
                .unwrap_or_else(|| panic!("{n}: {dir} is not mounted"));
            let volume = c.volume(mount["name"].as_str().unwrap());
            assert!(dir.ends_with(volume["secret"]["secretName"].as_str().unwrap()));
            assert_eq!(cert["key"], format!("{dir}/tls.key").as_str());
            assert!(path.ends_with("/tls.crt"));
        }

        // Kubernetes mode: the namespace of the Lease, the Service whose address Ingresses get.
        let k = &config["kubernetes"];
        assert_eq!(k["namespace"], c.namespace.as_str());
        assert_eq!(k["lease_name"], format!("{fullname}-leader").as_str());
        if values["ingressClass"]["enabled"] == true {
            assert_eq!(k["ingress_class"], values["ingressClass"]["name"]);
            if values["ingressClass"]["create"] == true {
                let class = c.one("IngressClass");
                assert_eq!(class["metadata"]["name"], values["ingressClass"]["name"]);
                assert_eq!(class["spec"]["controller"], "canaryd.dev/ingress-controller");
            }
            if values["kubernetes"]["publishService"] == true {
                assert_eq!(k["publish_service"], format!("{}/{fullname}", c.namespace).as_str());
            }
        } else {
            assert!(k["ingress_class"].is_null(), "{n}: Ingresses off");
            assert!(c.all("IngressClass").is_empty());
        }

        // The identity of this replica in Leases and status: the Pod's name.
        let env = container["env"].as_array().unwrap();
        let pod_name = env.iter().find(|e| e["name"] == "POD_NAME").expect("POD_NAME");
        assert_eq!(pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");

        // Probes on the admin port.
        assert_eq!(
            container["readinessProbe"]["httpGet"],
            json!({"path": "/readyz", "port": "admin"})
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"],
            json!({"path": "/healthz", "port": "admin"})
        );

        // Hardened: non-root, read-only root, no capabilities, no privilege escalation.
        let sc = &container["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert!(container["resources"]["requests"].is_object());

        // preStop sleeps, then the drain; the grace period covers both.
        let pre_stop = strings(&container["lifecycle"]["preStop"]["exec"]["command"]);
        assert_eq!(
            pre_stop[0], "/usr/bin/sleep",
            "{n}: the image ships /usr/bin/sleep (Dockerfile)"
        );
        let sleep: u64 = pre_stop[1].parse().unwrap();
        assert_eq!(sleep, values["preStopSleepSeconds"].as_u64().unwrap());
        let drain = config["timeouts"]["drain"].as_str().unwrap_or("30s");
        let drain: u64 = drain.strip_suffix('s').unwrap().parse().unwrap();
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > sleep + drain,
            "{n}: grace {grace}s <= preStop {sleep}s + drain {drain}s"
        );

        // Spread over nodes unless told otherwise.
        let anti = &pod["affinity"]["podAntiAffinity"];
        match values["podAntiAffinity"].as_str().unwrap() {
            "hard" => assert!(anti["requiredDuringSchedulingIgnoredDuringExecution"].is_array()),
            "soft" => assert!(anti["preferredDuringSchedulingIgnoredDuringExecution"].is_array()),
            _ => assert!(pod.get("affinity").is_none()),
        }
    }
}

/// Standard base64 (the Secret's `data`), padding required.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes().filter(|&b| b != b'=') {
        let v = ALPHABET.iter().position(|&a| a == b).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn every_rendered_config_passes_canaryd_check() {
    let dir = tempfile::tempdir().unwrap();
    for c in rendered() {
        let path = dir.path().join(format!("{}.yaml", c.name));
        std::fs::write(&path, c.config_text()).unwrap();
        let out = Command::new(canary_tests::canaryd::binary())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: canaryd check refuses the rendered canaryd.yaml:\n{}{}\n{}",
            c.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.config_text()
        );
    }
}

/// Metric names (`canaryd_…`) written in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("canaryd_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets and annotation queries.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) | ("definition", Value::String(s)) if s.contains("canaryd_") => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana-dashboard.json")).expect("dashboard JSON");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

/// The alerting rules of the chart's PrometheusRule (values of ci/metallb-values.yaml).
fn alert_rules() -> Vec<Value> {
    let rule = case("metallb").one("PrometheusRule");
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn dashboard_has_the_panels_an_operator_needs() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let expr_of = |title: &str| -> String {
        let p = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        p["targets"][0]["expr"].as_str().unwrap().to_string()
    };
    assert!(expr_of("Requests per second").contains("rate(canaryd_requests_total"));
    assert!(expr_of("Requests per second").contains("variant"));
    assert!(expr_of("5xx share").contains("code_class=\"5xx\""));
    assert!(expr_of("p99 time to response headers").starts_with(
        "histogram_quantile(0.99, sum by (route, variant, le) (rate(canaryd_request_duration_seconds_bucket"
    ));
    assert!(expr_of("Canary weight").contains("canaryd_canary_weight_ratio"));
    assert!(expr_of("Rollbacks").contains("canaryd_rollbacks_total"));
    // Every query panel reads the data source variable; ids are unique.
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}

#[test]
fn alert_rules_and_dashboard_queries_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let promtool = |args: &[&str]| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The PrometheusRule's spec is a Prometheus rules file.
    let spec = &case("metallb").one("PrometheusRule")["spec"];
    std::fs::write(dir.path().join("rules.yaml"), serde_yaml_ng::to_string(spec).unwrap()).unwrap();
    promtool(&["check", "rules", "rules.yaml"]);

    // The alerts fire when they should: the first rollback of a route (a new series), a later
    // one (an increase), and discovery stale for more than 60 s; not otherwise.
    let rollback = |route: &str| {
        json!([{
            "exp_labels": {"severity": "warning", "route": route, "reason": "error_rate", "pod": "canaryd-a"},
            "exp_annotations": {
                "summary": format!("canaryd rolled route {route} back to stable (error_rate)"),
                "description": format!("The analysis aborted the canary of {route} (rule error_rate); its weight is 0. The reason with the numbers is in the route status (canaryctl status {route}) and the audit log (canaryctl audit --route {route})."),
            },
        }])
    };
    let tests = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": "canaryd_rollbacks_total{route=\"web\",reason=\"error_rate\",pod=\"canaryd-a\"}", "values": "_x10 1x19 2x5"},
                {"series": "canaryd_discovery_stale_seconds{route=\"web\",variant=\"stable\",pod=\"canaryd-a\"}", "values": "0x4 60 120 180"},
                {"series": "canaryd_discovery_synced{route=\"web\",variant=\"stable\",pod=\"canaryd-a\"}", "values": "1x30"},
                {"series": "canaryd_config_last_reload_success{pod=\"canaryd-a\"}", "values": "1x30"},
                {"series": "canaryd_kubernetes_problems{pod=\"canaryd-a\"}", "values": "0x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": "CanarydRollback"},
                {"eval_time": "11m", "alertname": "CanarydRollback", "exp_alerts": rollback("web")},
                {"eval_time": "20m", "alertname": "CanarydRollback"},
                {"eval_time": "30m", "alertname": "CanarydRollback", "exp_alerts": rollback("web")},
                {"eval_time": "5m", "alertname": "CanarydDiscoveryStale"},
                {"eval_time": "6m", "alertname": "CanarydDiscoveryStale", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "route": "web", "variant": "stable", "pod": "canaryd-a"},
                    "exp_annotations": {
                        "summary": "canaryd's endpoints of web/stable are 2m 0s behind the cluster",
                        "description": "A Kubernetes watch of canaryd-a keeps failing; it serves the last known endpoints and re-lists with backoff. Check the API server and canaryd's RBAC (kubectl logs canaryd-a).",
                    },
                }]},
                {"eval_time": "20m", "alertname": "CanarydDiscoveryNotSynced"},
                {"eval_time": "20m", "alertname": "CanarydConfigReloadFailed"},
                {"eval_time": "20m", "alertname": "CanarydKubernetesProblems"},
            ],
        }],
    });
    std::fs::write(dir.path().join("tests.yaml"), serde_yaml_ng::to_string(&tests).unwrap()).unwrap();
    promtool(&["test", "rules", "tests.yaml"]);

    // Every dashboard query parses (Grafana's variables replaced by what Grafana sends).
    let rules: Vec<Value> = dashboard_exprs()
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.starts_with("label_values("))
        .map(|(i, e)| {
            let expr = e
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$route", ".*");
            json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    assert!(rules.len() >= 15, "{} dashboard queries", rules.len());
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(
        dir.path().join("dashboard.yaml"),
        serde_yaml_ng::to_string(&file).unwrap(),
    )
    .unwrap();
    promtool(&["check", "rules", "dashboard.yaml"]);
}

/// Sample names of a `/metrics` text (histograms as `_bucket`, `_sum`, `_count`).
fn exposed(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every metric name the dashboard, the alerts and the docs use is in `metrics` (a
/// `/metrics` text).
fn assert_metrics_documented_are_exposed(metrics: &str) {
    let names = exposed(metrics);
    let mut wanted: Vec<(String, String)> = Vec::new();
    for e in dashboard_exprs() {
        wanted.extend(
            metric_names(&e)
                .into_iter()
                .map(|n| (n, "deploy/grafana-dashboard.json".into())),
        );
    }
    for rule in alert_rules() {
        let expr = rule["expr"].as_str().unwrap();
        wanted.extend(metric_names(expr).into_iter().map(|n| (n, "the PrometheusRule".into())));
    }
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path).unwrap();
            let file = path.strip_prefix(root()).unwrap_or(&path).display().to_string();
            wanted.extend(metric_names(&text).into_iter().map(|n| (n, file.clone())));
        }
    }
    assert!(wanted.len() > 20, "{wanted:?}");
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(n, _)| {
            // A histogram's family name stands for its _bucket/_sum/_count series.
            !names.contains(n) && !names.contains(&format!("{n}_bucket"))
        })
        .map(|(n, from)| format!("{n} (in {from})"))
        .collect();
    assert!(missing.is_empty(), "not on /metrics: {missing:#?}\nexposed: {names:#?}");
    for n in [
        "canaryd_rollbacks_total",
        "canaryd_discovery_stale_seconds",
        "canaryd_leader",
    ] {
        assert!(names.contains(n), "{n}");
    }
}

#[test]
fn dockerfile_builds_both_binaries_into_a_distroless_nonroot_image() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.first(), Some(&"FROM rust:1-bookworm AS builder"));
    assert_eq!(
        froms.last(),
        Some(&"FROM gcr.io/distroless/cc-debian12:nonroot"),
        "the default target"
    );
    assert!(dockerfile.contains("cargo build --release --locked -p canary-control --bins"));
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(runtime.contains("/out/canaryd /out/canaryctl /usr/local/bin/"));
    assert!(runtime.contains("USER nonroot"));
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/canaryd\"]"));
    // The chart's preStop command is in the image.
    let pre_stop = strings(&case("default").container()["lifecycle"]["preStop"]["exec"]["command"]);
    assert!(runtime.contains(&format!("COPY --from=builder {0} {0}", pre_stop[0])));
    // The ports it exposes are the chart's.
    let values = &case("default").values["ports"];
    for p in ["http", "https", "admin"] {
        assert!(runtime.contains(&values[p].to_string()), "EXPOSE {p}");
    }
    // The build context keeps the whole workspace (every member, Cargo.lock), drops target/.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(ignored.iter().any(|l| l == "target"));
    let members = workspace_members(&read("Cargo.toml"));
    for needed in members.iter().map(String::as_str).chain(["Cargo.toml", "Cargo.lock"]) {
        assert!(
            !ignored.iter().any(|l| l == needed || l.trim_end_matches('/') == needed),
            ".dockerignore drops {needed}, which the build needs"
        );
    }
}

/// The workspace members of the root Cargo.toml (one `members = [...]` line).
fn workspace_members(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("members = [...]");
    let list = line.split_once('[').unwrap().1.split_once(']').unwrap().0;
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Command lines in Markdown: the lines of fenced code blocks and the inline code spans
/// (which may wrap).
fn code_in_markdown(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            out.push(line.to_string());
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    out.extend(prose.split('`').skip(1).step_by(2).map(|s| s.replace('\n', " ")));
    out
}

#[test]
fn docs_name_real_commands_and_flags() {
    // Each `canaryctl SUB` / `canaryd SUB` in the docs' code is a real subcommand, and each
    // `--flag` after it one of its flags (from the binaries' own --help).
    let help = |bin: &Path, args: &[&str]| -> Option<String> {
        let out = Command::new(bin).args(args).arg("--help").output().unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let bins = [
        ("canaryctl", canary_tests::canaryd::canaryctl()),
        ("canaryd", canary_tests::canaryd::binary()),
    ];
    let mut checked = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() != Some(std::ffi::OsStr::new("md")) {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for code in code_in_markdown(&std::fs::read_to_string(&path).unwrap()) {
            let words: Vec<&str> = code.split_whitespace().collect();
            for (i, w) in words.iter().enumerate() {
                let Some((bin, binary)) = bins.iter().find(|(b, _)| w.trim_start_matches("$(") == *b) else {
                    continue;
                };
                let Some(sub) = words.get(i + 1) else { continue };
                if sub.starts_with('-') || !sub.chars().all(|c| c.is_ascii_lowercase() || c == '|') {
                    continue; // `canaryd --help`, a path or a release name, not a subcommand
                }
                for sub in sub.split('|') {
                    let sub_help = help(binary, &[sub])
                        .unwrap_or_else(|| panic!("docs/{file}: `{bin} {sub}` is not a subcommand ({code})"));
                    let global = help(binary, &[]).unwrap();
                    for flag in words[i + 2..]
                        .iter()
                        .take_while(|w| {
                            !w.starts_with('#')
                                && !["|", "&&", "\\", "then", "canaryctl", "canaryd"]
                                    .contains(&w.trim_start_matches("$("))
                        })
                        .filter_map(|w| w.strip_prefix("--"))
                    {
                        let flag = flag.split(['=', '`', ')', '"']).next().unwrap();
                        assert!(
                            sub_help.contains(&format!("--{flag}")) || global.contains(&format!("--{flag}")),
                            "docs/{file}: `{bin} {sub} --{flag}` is not a flag of `{bin} {sub}` ({code})"
                        );
                    }
                    checked.insert(format!("{bin} {sub}"));
                }
            }
        }
    }
    assert!(checked.len() >= 8, "only {checked:?} in docs/");
}

/// The default install for real: the chart's CRD and every rendered object applied to the
/// test bed's API server. The process kubelet runs the chart's Deployment (its two
/// replicas in Pods of their own, with the chart's args, environment, probes and the
/// ConfigMap and Secret mounted where the Deployment says) as the chart's ServiceAccount.
/// A demo app behind a CanaryRoute at weight 10 is split 90/10; the replicas elect one
/// leader through the Lease, which writes the chart's Service address into an Ingress;
/// deleting the leader's Pod hands the Lease to the other replica; and the real RBAC
/// authorizer allowed every request the chart's ServiceAccount made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_install_on_the_test_bed_splits_90_10_with_the_charts_rbac() {
    use canary_tests::objects::{backend_deployment, canary_route, namespace, service};
    use canary_tests::testbed::{self, apply_all, tail, Testbed};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams};

    if !testbed::in_pod_network("default_install_on_the_test_bed_splits_90_10_with_the_charts_rbac") {
        return;
    }
    let c = case("default");
    let image = c.container()["image"].as_str().unwrap();
    let bed = Testbed::start_with_images(&[(image, "canaryd")]);
    let admin = bed.admin().await;
    const LB_IP: &str = "192.0.2.10";

    // `helm install`: the chart's crds/ first, then its templates.
    for entry in std::fs::read_dir(root().join("helm/canaryd/crds")).unwrap() {
        testbed::apply_yaml(&admin, &read(entry.unwrap().path().to_str().unwrap())).await;
    }
    apply_all(&admin, &[namespace(&c.namespace), namespace("prod")]).await;
    let gvk = kube::core::GroupVersionKind::gvk("canaryd.dev", "v1alpha1", "CanaryRoute");
    let deadline = Instant::now() + Duration::from_secs(30);
    while kube::discovery::pinned_kind(&admin, &gvk).await.is_err() {
        assert!(Instant::now() < deadline, "the chart's CRD is not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let objects: Vec<Value> = c
        .objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if o["metadata"]["namespace"].is_null()
                && !matches!(
                    o["kind"].as_str(),
                    Some("ClusterRole" | "ClusterRoleBinding" | "IngressClass")
                )
            {
                o["metadata"]["namespace"] = json!(c.namespace);
            }
            o
        })
        .collect();
    apply_all(&admin, &objects).await;
    // MetalLB's part: the chart's LoadBalancer Service gets its address.
    let fullname = c.one("Deployment")["metadata"]["name"].as_str().unwrap();
    testbed::set_load_balancer_ip(&admin, &c.namespace, fullname, LB_IP).await;

    // The demo app: stable behind the Service `web`, the canary by label, at weight 10,
    // and an Ingress of the chart's class; and a canary that answers 500, to be rolled back
    // (ready by a TCP probe, since its every HTTP answer is a 500).
    let stable_labels = json!({"app": "web", "track": "stable"});
    let mut failing = backend_deployment("prod", "bad-canary", json!({"app": "bad"}), 1, 0);
    let container = &mut failing["spec"]["template"]["spec"]["containers"][0];
    container["args"].as_array_mut().unwrap().push(json!("--status=500"));
    container["readinessProbe"] = json!({"tcpSocket": {"port": "http"}, "periodSeconds": 1});
    apply_all(
        &admin,
        &[
            service("prod", "web", stable_labels.clone()),
            backend_deployment("prod", "web", stable_labels, 2, 0),
            backend_deployment("prod", "web-canary", json!({"app": "web", "track": "canary"}), 1, 0),
            failing,
            canary_route("prod", "bad", json!({
                    "hosts": ["bad.example"],
                    "stable": {"kubernetes": {"service": "web", "port": "http"}},
                    "canary": {"kubernetes": {"selector": "app=bad", "port": 8080}},
                    "weight": 50,
                    "rollout": {"analysis": {"window": "10s", "minRequests": 10, "maxErrorRate": 5, "failuresBeforeAbort": 1}}
                })),
            canary_route("prod", "web", json!({
                    "hosts": ["web.example"],
                    "stable": {"kubernetes": {"service": "web", "port": "http"}},
                    "canary": {"kubernetes": {"selector": "app=web,track=canary", "port": 8080}},
                    "weight": 10
                })),
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "shop", "namespace": "prod"},
                "spec": {"ingressClassName": c.one("IngressClass")["metadata"]["name"], "rules": [{"host": "shop.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}
                ]}}]}
            }),
        ],
    )
    .await;
    let stable = bed.wait_pods(&admin, "prod", "app=web,track=stable", 2).await;
    let canary = bed.wait_pods(&admin, "prod", "app=web,track=canary", 1).await;
    bed.wait_pods(&admin, "prod", "app=bad", 1).await;

    // The chart's replicas, ready by the chart's readiness probe (/readyz on the admin port).
    let selector = c.one("Deployment")["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let replicas = c.one("Deployment")["spec"]["replicas"].as_u64().unwrap() as usize;
    assert_eq!(replicas, 2, "the default install runs two replicas");
    let names = bed.wait_pods(&admin, &c.namespace, &selector, replicas).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &c.namespace);
    let mut addrs = Vec::new();
    for name in &names {
        let ip = pods.get(name).await.unwrap().status.and_then(|s| s.pod_ip).unwrap();
        addrs.push(std::net::SocketAddr::new(ip.parse().unwrap(), c.port("http") as u16));
    }

    // 90/10 across both replicas, each new client a new user.
    let client = Client::new();
    const N: u64 = 2000;
    let (mut to_canary, mut to_stable) = (0u64, 0u64);
    for i in 0..N {
        let r = client
            .get(addrs[i as usize % addrs.len()], "web.example", "/")
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        let backend = r.backend().unwrap_or_default().to_string();
        if canary.contains(&backend) {
            to_canary += 1;
        } else {
            assert!(stable.contains(&backend), "answered by {backend:?}");
            to_stable += 1;
        }
    }
    let (lo, hi) = canary_tests::binomial_bounds(N, 0.10);
    eprintln!(
        "chart install: {to_canary} of {N} to the canary ({:.2} %), {to_stable} to stable; 1e-5 bounds {lo:.0}..{hi:.0}",
        100.0 * to_canary as f64 / N as f64
    );
    assert!(
        (lo..=hi).contains(&(to_canary as f64)),
        "{to_canary} of {N} to the canary at weight 10"
    );

    // The admin API (on the admin port of a Pod) is closed without a token, open with the
    // chart Secret's read token, and a read token cannot write.
    let admin_addr = std::net::SocketAddr::new(addrs[0].ip(), c.port("admin") as u16);
    let secret_name = c.volume("tokens")["secret"]["secretName"].as_str().unwrap();
    let tokens = String::from_utf8(base64_decode(
        c.named("Secret", secret_name)["data"]["tokens"].as_str().unwrap(),
    ))
    .unwrap();
    let bearer = |role: &str| -> String {
        let token = tokens
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 3 && f[1] == role)
            .unwrap_or_else(|| panic!("no {role} token"))[2];
        format!("Bearer {token}")
    };
    let (status, _, _) = admin_call(admin_addr, "GET", "/api/v1/routes", &[], "").await;
    assert_eq!(status, 401);
    let (status, _, routes) = admin_call(
        admin_addr,
        "GET",
        "/api/v1/routes",
        &[("authorization", &bearer("read"))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{routes}");
    let (status, _, _) = admin_call(
        admin_addr,
        "POST",
        "/api/v1/routes/web/pause",
        &[("authorization", &bearer("read"))],
        "{}",
    )
    .await;
    assert_eq!(status, 403, "a read token cannot write");

    // The canary answering 500 is rolled back by the analysis.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, route) = admin_call(
            admin_addr,
            "GET",
            "/api/v1/routes/bad",
            &[("authorization", &bearer("read"))],
            "",
        )
        .await;
        if route["phase"] == "Aborted" {
            break;
        }
        assert!(Instant::now() < deadline, "no rollback: {route}");
        for addr in &addrs {
            client.get(*addr, "bad.example", "/").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every metric name the dashboard, the alerts and the docs use is on /metrics (of one
    // replica or the other: the rollback is counted where it was decided).
    let mut metrics = String::new();
    for addr in &addrs {
        let reply = client
            .get(
                std::net::SocketAddr::new(addr.ip(), c.port("admin") as u16),
                "admin",
                "/metrics",
            )
            .await
            .unwrap();
        assert_eq!(reply.status.as_u16(), 200);
        metrics.push_str(&reply.text());
    }
    assert_metrics_documented_are_exposed(&metrics);

    // One leader, by the Lease the chart names; it publishes the Service's address.
    let lease_name = c.config()["kubernetes"]["lease_name"].as_str().unwrap().to_string();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &c.namespace);
    let holder = |lease: Option<Lease>| lease.and_then(|l| l.spec).and_then(|s| s.holder_identity);
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(h) = holder(leases.get_opt(&lease_name).await.unwrap()) {
            if names.contains(&h) {
                break h;
            }
        }
        assert!(Instant::now() < deadline, "no replica holds the Lease {lease_name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> = Api::namespaced(admin.clone(), "prod");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shop = ingresses.get_status("shop").await.unwrap();
        let ip = shop
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.into_iter().next())
            .and_then(|i| i.ip);
        if ip.as_deref() == Some(LB_IP) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Ingress did not get {LB_IP}: {ip:?}\n{}",
            tail(&bed.pod_log(&c.namespace, &leader, "canaryd"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader's Pod is deleted: a live replica (the other one, or the Pod the
    // Deployment starts in its place) takes the Lease over.
    let other = names.iter().find(|n| **n != leader).unwrap().clone();
    let deleted = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let successor = loop {
        if let Some(h) = holder(leases.get_opt(&lease_name).await.unwrap()) {
            if h != leader && testbed::ready_pods(&admin, &c.namespace, &selector).await.contains(&h) {
                break h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no live replica took the Lease from {leader}\n{}",
            tail(&bed.pod_log(&c.namespace, &other, "canaryd"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "leader {leader} deleted: {successor} ({}) holds the Lease after {:?}",
        if successor == other {
            "the other replica"
        } else {
            "its replacement"
        },
        deleted.elapsed()
    );

    // Every request of the chart's ServiceAccount was allowed by the real authorizer.
    let account = c.one("ServiceAccount")["metadata"]["name"].as_str().unwrap();
    let user = format!("system:serviceaccount:{}:{account}", c.namespace);
    let audit = bed.audit(&user);
    let refused: Vec<_> = audit.iter().filter(|e| e.decision() != "allow").collect();
    assert!(audit.len() > 20, "{} requests by {user}", audit.len());
    assert!(refused.is_empty(), "the chart's RBAC refused: {refused:#?}");
    let requests: Vec<(String, String)> = audit.iter().map(|e| e.method_and_path()).collect();
    let unlisted = canary_tests::rbac::unlisted(&requests, &c.namespace);
    assert!(
        unlisted.is_empty(),
        "requests not in API_CALLS:\n{}",
        unlisted.join("\n")
    );
}
