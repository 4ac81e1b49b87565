//! Kubernetes mode: backends discovered from EndpointSlices and Pods, routes from
//! `CanaryRoute` resources and Ingresses, live state shared through `CanaryRoute` status,
//! timed rollouts advanced by the replica holding the leader Lease.
//!
//! Every API call these modules make is listed in [`api_calls::API_CALLS`], which the RBAC
//! in `deploy/rbac.yaml` and the Helm chart grants exactly; add a call there first.

pub mod api_calls;
pub mod crd;
pub mod crd_route;
pub mod discovery;
pub mod ingress;
pub mod ingress_status;
pub mod lease;
pub mod sources;
pub mod status;
pub mod watch;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use canary_config::Config;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::task::JoinHandle;

use crate::controller::Controller;
use crate::metrics::ControlMetrics;

/// A client from `kubeconfig`, else from `$KUBECONFIG` or the in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes config: not in a cluster, no $KUBECONFIG; give --kubeconfig")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// This replica's name in Leases, status and Events: the Pod name when the Deployment
/// passes it (`POD_NAME`), else host name and process id.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.is_empty() {
            return pod;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "canaryd".into());
    format!("{}-{}", host.trim(), std::process::id())
}

/// The background work of kubernetes mode.
pub struct ClusterTasks {
    tasks: Vec<JoinHandle<()>>,
    election: JoinHandle<()>,
}

impl ClusterTasks {
    /// Waits for the Lease to be released, then stops the watches and writers.
    pub async fn stop(self) {
        let _ = self.election.await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Starts watching the cluster, writing shared state and electing a leader; config file
/// reloads go through the same composition from now on.
pub fn start(
    client: Client,
    config: &Config,
    controller: Arc<Controller>,
    ready: Arc<AtomicBool>,
    metrics: ControlMetrics,
    certificates: Option<crate::certificates::SecretCertificates>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> ClusterTasks {
    let identity = identity();
    tracing::info!(identity = %identity, "kubernetes mode");
    controller.set_leader(false);
    let (file_tx, file_rx) = tokio::sync::mpsc::unbounded_channel();
    controller.set_file_sink(file_tx);
    let writer = Arc::new(status::StatusWriter::new(client.clone(), identity.clone()));
    controller.set_cluster_writer(writer.clone());
    let sources = sources::ClusterSources::start(client.clone(), config.kubernetes.clone(), certificates.is_some());
    let election = lease::Election {
        namespace: config.kubernetes.namespace.clone(),
        name: config.kubernetes.lease_name.clone(),
        identity,
        duration: config.kubernetes.lease_duration,
    };
    let k = &config.kubernetes;
    let status_task = match (&k.publish_service, &k.ingress_class, sources.ingress_updates()) {
        (Some(service), Some(class), Some(ingresses)) => Some(tokio::spawn(ingress_status::run(
            client.clone(),
            controller.clone(),
            service.clone(),
            class.clone(),
            ingresses,
            stop.clone(),
        ))),
        _ => None,
    };
    let mut tasks = vec![
        tokio::spawn(sources::run(
            sources,
            controller.clone(),
            config.clone(),
            file_rx,
            ready,
            metrics,
            certificates,
            stop.clone(),
        )),
        tokio::spawn(writer.run(controller.clone())),
    ];
    tasks.extend(status_task);
    ClusterTasks {
        tasks,
        election: tokio::spawn(election.run(client, controller, stop)),
    }
}
