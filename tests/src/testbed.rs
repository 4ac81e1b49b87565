//! A real Kubernetes cluster for the tests: etcd, kube-apiserver (RBAC on),
//! kube-controller-manager and kube-scheduler built from their Go modules (`testbed/`,
//! built once into a cache by `scripts/testbed.sh`), and a process kubelet that runs each
//! Pod's containers as local processes on a loopback address of their own.
//!
//! `Testbed::start()` runs `testbed up` as a child; it shuts the cluster down and removes
//! its files when its stdin closes, so nothing outlives the test process, even a panic.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Duration;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use serde::Deserialize;
use serde_json::Value;

/// canaryd's user when started by [`Testbed::canaryd_as_service_account`].
pub const CANARYD_USER: &str = "system:serviceaccount:canaryd:canaryd";

/// The test backend's image: the kubelet runs `test-backend` for it.
pub const BACKEND_IMAGE: &str = "canaryd/test-backend:dev";
/// canaryd's own image: the kubelet runs the `canaryd` binary under test.
pub const CANARYD_IMAGE: &str = "ghcr.io/canaryd/canaryd:dev";

/// Where a running test bed is and how to reach it (`testbed.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// Its folder (certificates, kubeconfigs, component logs, pod folders).
    pub dir: PathBuf,
    /// The API server's URL.
    pub server: String,
    /// The CA that signed the API server's certificate.
    pub ca_file: PathBuf,
    /// A kubeconfig with a `system:masters` client certificate.
    pub admin_kubeconfig: PathBuf,
    /// etcd's client URL (for compaction).
    pub etcd: String,
    /// The node the kubelet registered.
    pub node: String,
    /// The first two octets of the Pods' loopback addresses.
    pub pod_network: String,
    /// The components' logs.
    pub logs: PathBuf,
    /// The API server's audit log: the requests of ServiceAccounts outside kube-system.
    pub audit_log: PathBuf,
}

/// One request as the API server's audit log recorded it (Metadata level).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// The request's id (a watch has two events: ResponseStarted, ResponseComplete).
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete.
    pub verb: String,
    /// Path and query.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// Who asked.
    pub user: AuditUser,
    /// The status answered, once there is one.
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    /// `authorization.k8s.io/decision` (allow, forbid) and `.../reason` among them.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The user of an [`AuditEvent`].
#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    /// `system:serviceaccount:{namespace}:{name}` for a ServiceAccount.
    pub username: String,
}

/// The answer of an [`AuditEvent`].
#[derive(Debug, Clone, Deserialize)]
pub struct AuditStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// The authorizer's decision ("allow" or "forbid").
    pub fn decision(&self) -> &str {
        self.annotations
            .get("authorization.k8s.io/decision")
            .map_or("", String::as_str)
    }

    /// The HTTP method and path of the request, as `canary_tests::rbac` takes them.
    pub fn method_and_path(&self) -> (String, String) {
        let method = match self.verb.as_str() {
            "get" | "list" | "watch" => "GET",
            "create" => "POST",
            "update" => "PUT",
            "patch" => "PATCH",
            "delete" | "deletecollection" => "DELETE",
            other => other,
        };
        (method.to_string(), self.request_uri.clone())
    }
}

/// A running test bed.
pub struct Testbed {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: Receiver<String>,
    /// Where it is.
    pub info: Info,
}

/// The test bed binary, built (or found in the cache) once per test process; with
/// `CANARYD_TESTBED` set, that file.
pub fn binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(path) = std::env::var("CANARYD_TESTBED") {
            return PathBuf::from(path);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/testbed.sh");
        assert!(
            out.status.success(),
            "scripts/testbed.sh failed: the real-Kubernetes tests need Go 1.26 and the Go module proxy"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// Runs the test `name` of this test binary again inside a new network namespace where
/// `lo` is up, and returns false; inside it, returns true. There the kubelet adds the Pod
/// network: a bridge at 10.244.0.1/16 and a network namespace per Pod on 10.244.0.0/16
/// (the real API server refuses loopback addresses in EndpointSlices).
/// Use as `if !testbed::in_pod_network("name") { return; }` at the top of a test.
pub fn in_pod_network(name: &str) -> bool {
    if std::env::var_os("CANARYD_TESTBED_NETNS").is_some() {
        return true;
    }
    // Built out here, where the module proxy and crates.io are reachable.
    let testbed = binary();
    crate::canaryd::bin_dir();
    let status = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg("ip link set lo up && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("CANARYD_TESTBED_NETNS", "1")
        .env("CANARYD_TESTBED", &testbed)
        .status()
        .expect("run unshare (util-linux) and ip (iproute2): the real-Kubernetes tests need both, as root");
    assert!(
        status.success(),
        "{name} failed inside its network namespace (output above)"
    );
    false
}

impl Testbed {
    /// Starts a cluster and waits until it serves, its controllers run and its node is
    /// registered.
    pub fn start() -> Self {
        Self::start_with_images(&[])
    }

    /// [`Testbed::start`] with more images in the kubelet's table: each runs the binary
    /// named (the test backend or canaryd), e.g. the image a Helm chart renders.
    pub fn start_with_images(extra: &[(&str, &str)]) -> Self {
        let bin_dir = crate::canaryd::bin_dir();
        let mut images = serde_json::json!({
            BACKEND_IMAGE: {"command": [bin_dir.join("test-backend")]},
            CANARYD_IMAGE: {"command": [bin_dir.join("canaryd")]},
        });
        for (image, binary) in extra {
            images[*image] = serde_json::json!({"command": [bin_dir.join(binary)]});
        }
        let table = std::env::temp_dir().join(format!("canaryd-testbed-images-{}.json", std::process::id()));
        std::fs::write(&table, images.to_string()).unwrap();
        let mut child = Command::new(binary())
            .arg("up")
            .arg(format!("--images={}", table.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test bed");
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = match replies.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!("the test bed did not start ({e:?})");
            }
        };
        let json = line
            .strip_prefix("ready ")
            .and_then(|rest| rest.rsplit_once(' '))
            .unwrap_or_else(|| panic!("the test bed said {line:?}"));
        eprintln!("test bed up in {}", json.1);
        let info: Info = serde_json::from_str(json.0).expect("testbed.json");
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            replies,
            info,
        }
    }

    /// Sends one command (`stop-apiserver`, `start-apiserver`, `restart-apiserver`) and
    /// waits for it to be done.
    pub fn command(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("test bed running");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        match self.replies.recv_timeout(Duration::from_secs(120)) {
            Ok(reply) if reply == "ok" => {}
            Ok(reply) => panic!("test bed {command}: {reply}\n{}", self.log("kube-apiserver")),
            Err(RecvTimeoutError::Timeout) => panic!("test bed {command}: no answer"),
            Err(e) => panic!("test bed {command}: {e}"),
        }
    }

    /// A component's log so far (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`).
    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.info.logs.join(format!("{component}.log"))).unwrap_or_default()
    }

    /// The log of a Pod's container (`{namespace}_{pod}_*/{container}.log`).
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        let prefix = format!("{namespace}_{pod}_");
        let Ok(dirs) = std::fs::read_dir(self.info.dir.join("pods")) else {
            return String::new();
        };
        dirs.filter_map(Result::ok)
            .filter(|d| d.file_name().to_string_lossy().starts_with(&prefix))
            .map(|d| std::fs::read_to_string(d.path().join(format!("{container}.log"))).unwrap_or_default())
            .collect()
    }

    /// The requests of `user` recorded so far, one per request (a watch's two stages are
    /// one), in the order the API server finished or started answering them.
    pub fn audit(&self, user: &str) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(&self.info.audit_log).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        text.lines()
            .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
            .filter(|e| e.user.username == user && seen.insert(e.audit_id.clone()))
            .collect()
    }

    /// Waits until `n` Pods matching `selector` are ready and returns their names.
    pub async fn wait_pods(
        &self,
        client: &kube::Client,
        namespace: &str,
        selector: &str,
        n: usize,
    ) -> BTreeSet<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = ready_pods(client, namespace, selector).await;
            if ready.len() == n {
                return ready;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} pods {selector} ready (the kubelet logs to stderr)\ncontroller manager:\n{}",
                ready.len(),
                tail(&self.log("kube-controller-manager"))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts canaryd (kubernetes mode, `config`) as ServiceAccount canaryd/canaryd, with
    /// the rules of `rbac` (the ServiceAccount, its ClusterRole and Role and their
    /// bindings: deploy/rbac.yaml's text, say). The folder holds its kubeconfig.
    pub async fn canaryd_as_service_account(
        &self,
        admin: &kube::Client,
        rbac: &str,
        config: &str,
    ) -> (crate::Canaryd, tempfile::TempDir) {
        self.canaryd_as_service_account_via(admin, rbac, config, &self.info.server)
            .await
    }

    /// [`Testbed::canaryd_as_service_account`] with canaryd reaching the API server at
    /// `server` (a proxy or tap in front of it) instead of its own address.
    pub async fn canaryd_as_service_account_via(
        &self,
        admin: &kube::Client,
        rbac: &str,
        config: &str,
        server: &str,
    ) -> (crate::Canaryd, tempfile::TempDir) {
        apply_all(admin, &[crate::objects::namespace("canaryd")]).await;
        apply_yaml(admin, rbac).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = self
            .service_account_kubeconfig(admin, "canaryd", "canaryd", dir.path())
            .await;
        let text = std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .replace(&self.info.server, server);
        std::fs::write(&kubeconfig, text).unwrap();
        (crate::Canaryd::start_kubernetes(config, &kubeconfig), dir)
    }

    /// Every request canaryd ([`CANARYD_USER`]) made so far was allowed by the real RBAC
    /// authorizer and is a call of `API_CALLS` (which deploy/rbac.yaml grants exactly).
    pub fn assert_canaryd_allowed_and_listed(&self) {
        let audit = self.audit(CANARYD_USER);
        let refused: Vec<&AuditEvent> = audit.iter().filter(|e| e.decision() != "allow").collect();
        assert!(!audit.is_empty(), "no request by {CANARYD_USER} in the audit log");
        assert!(refused.is_empty(), "refused by the real authorizer: {refused:#?}");
        let requests: Vec<(String, String)> = audit.iter().map(AuditEvent::method_and_path).collect();
        let unlisted = crate::rbac::unlisted(&requests, "canaryd");
        assert!(
            unlisted.is_empty(),
            "requests not in API_CALLS:\n{}",
            unlisted.join("\n")
        );
    }

    /// A client with the admin's certificate.
    pub async fn admin(&self) -> kube::Client {
        client_from(&self.info.admin_kubeconfig).await
    }

    /// Writes a kubeconfig into `dir` that authenticates as ServiceAccount
    /// `namespace/name` with a token from the TokenRequest API, as a Pod's projected token.
    pub async fn service_account_kubeconfig(
        &self,
        admin: &kube::Client,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> PathBuf {
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}
        });
        let reply: Value = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
        let token = reply["status"]["token"].as_str().expect("token");
        let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster: {{server: {:?}, certificate-authority: {:?}}}\nusers:\n- name: {name}\n  user: {{token: {token:?}}}\ncontexts:\n- name: {name}\n  context: {{cluster: testbed, user: {name}, namespace: {namespace}}}\ncurrent-context: {name}\n",
            self.info.server,
            self.info.ca_file.display().to_string(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // EOF on its stdin is the test bed's signal to stop every component and pod.
        drop(self.stdin.take());
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// The API of `object`'s kind (by discovery), namespaced where it says so.
async fn api_for(client: &kube::Client, object: &Value) -> Api<DynamicObject> {
    let (group, version) = match object["apiVersion"].as_str().expect("apiVersion").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), object["apiVersion"].as_str().unwrap().to_string()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, object["kind"].as_str().expect("kind"));
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("no API for {gvk:?}: {e}"));
    match (caps.scope, object["metadata"]["namespace"].as_str()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        (kube::discovery::Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    }
}

/// Server-side applies one object; the API server's refusal is the error.
pub async fn apply(client: &kube::Client, object: &Value) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, object).await;
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("object");
    api.patch(
        name,
        &PatchParams::apply("canaryd-tests").force(),
        &Patch::Apply(&object),
    )
    .await
}

/// Applies every document of a YAML stream, panicking on the first refusal.
pub async fn apply_yaml(client: &kube::Client, yaml: &str) {
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).expect("YAML");
        if value.is_null() {
            continue;
        }
        if let Err(e) = apply(client, &value).await {
            panic!("applying {} {}: {e}", value["kind"], value["metadata"]["name"]);
        }
    }
}

/// Server-side applies `objects` in order, panicking on the first refusal.
pub async fn apply_all(client: &kube::Client, objects: &[Value]) {
    for o in objects {
        if let Err(e) = apply(client, o).await {
            panic!("applying {} {}: {e}", o["kind"], o["metadata"]["name"]);
        }
    }
}

/// Names of the ready Pods matching `selector`.
pub async fn ready_pods(client: &kube::Client, namespace: &str, selector: &str) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(selector)).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// The last 40 lines of `text`.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Applies `deploy/crds/canaryroute.yaml` and waits until the server established it (its
/// schema structural) and serves the kind.
pub async fn install_canary_route_crd(admin: &kube::Client) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds/canaryroute.yaml");
    apply_yaml(admin, &std::fs::read_to_string(path).unwrap()).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(admin.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get("canaryroutes.canaryd.dev").await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        if let Some(bad) = conditions
            .iter()
            .find(|c| c.type_ == "NonStructuralSchema" && c.status == "True")
        {
            panic!("the API server found the schema non-structural: {:?}", bad.message);
        }
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRD not established: {conditions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Discovery of the new kind can lag the Established condition by a moment.
    let gvk = GroupVersionKind::gvk("canaryd.dev", "v1alpha1", "CanaryRoute");
    while let Err(e) = kube::discovery::pinned_kind(admin, &gvk).await {
        assert!(std::time::Instant::now() < deadline, "CanaryRoutes not discovered: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CanaryRoutes of `namespace`, untyped.
pub fn canary_routes(admin: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("canaryd.dev", "v1alpha1", "CanaryRoute"),
        "canaryroutes",
    );
    Api::namespaced_with(admin.clone(), namespace, &resource)
}

/// Gives the LoadBalancer Service `namespace/name` the address `ip`, as MetalLB would.
pub async fn set_load_balancer_ip(admin: &kube::Client, namespace: &str, name: &str, ip: &str) {
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(admin.clone(), namespace);
    services
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("status of Service {namespace}/{name}: {e}"));
}

/// Polls `check` every 50 ms until it holds (true) or `timeout` passes (false).
pub async fn eventually<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
