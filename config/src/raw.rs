//! The config file's shape as serde reads it; unknown keys are errors, every field has a default.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub listen: RawListen,
    pub admin: RawAdmin,
    pub timeouts: RawTimeouts,
    pub passive_health: RawPassiveHealth,
    pub access_log: bool,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawListen {
    pub http: String,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTimeouts {
    pub connect: String,
    pub response_header: String,
    pub upstream_idle: String,
    pub idle: String,
    pub drain: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: "2s".into(),
            response_header: "30s".into(),
            upstream_idle: "30s".into(),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    pub stable: RawBackend,
    #[serde(default)]
    pub canary: RawBackend,
    #[serde(default)]
    pub weight: f64,
}

fn default_prefix() -> String {
    "/".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    #[serde(default)]
    pub endpoints: Vec<String>,
}
