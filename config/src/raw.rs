//! The config file's shape as serde reads it; unknown keys are errors, every field has a default.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub listen: RawListen,
    pub admin: RawAdmin,
    pub timeouts: RawTimeouts,
    pub passive_health: RawPassiveHealth,
    pub state: RawState,
    pub tls: RawTls,
    pub limits: crate::Limits,
    pub paths: RawPaths,
    pub trusted_proxies: Vec<String>,
    pub access_log: bool,
    pub kubernetes: RawKubernetes,
    pub routes: Vec<crate::RouteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawKubernetes {
    pub namespace: String,
    pub ingress_class: Option<String>,
    pub canary_routes: bool,
    pub watch_namespace: Option<String>,
    pub publish_service: Option<String>,
    pub lease_name: String,
    pub lease_duration: String,
}

impl Default for RawKubernetes {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            ingress_class: Some("canaryd".into()),
            canary_routes: true,
            watch_namespace: None,
            publish_service: None,
            lease_name: "canaryd-leader".into(),
            lease_duration: "15s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawState {
    pub path: String,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            path: "/var/lib/canaryd/state.json".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawListen {
    pub http: String,
    pub https: Option<String>,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".into(),
            https: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPaths {
    pub merge_slashes: bool,
    pub encoded_slashes: RawEncodedSlashes,
}

impl Default for RawPaths {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_slashes: RawEncodedSlashes::Keep,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawEncodedSlashes {
    Keep,
    Reject,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub certificates: Vec<RawCertificate>,
    pub secrets: Vec<RawSecretCertificate>,
    pub unknown_sni: RawUnknownSni,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecretCertificate {
    pub hosts: Vec<String>,
    pub secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawUnknownSni {
    #[default]
    Default,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub listen: String,
    pub tokens_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            tokens_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTimeouts {
    pub connect: String,
    pub response_header: String,
    pub upstream_idle: String,
    pub header_read: String,
    pub idle: String,
    pub drain: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: "2s".into(),
            response_header: "30s".into(),
            upstream_idle: "30s".into(),
            header_read: "10s".into(),
            idle: "75s".into(),
            drain: "30s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPassiveHealth {
    pub failures: u32,
    pub cooloff: String,
}

impl Default for RawPassiveHealth {
    fn default() -> Self {
        Self {
            failures: 3,
            cooloff: "10s".into(),
        }
    }
}
