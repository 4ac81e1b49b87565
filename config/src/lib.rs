//! canaryd's configuration: raw YAML types → [`validate`] → a [`Config`] that cannot be invalid.
//!
//! This crate does no I/O: callers read the file and hand the text to [`parse`].
#![forbid(unsafe_code)]

mod claims;
mod error;
mod model;
pub mod path;
mod raw;
mod validate;
mod weight;

pub use claims::{Matcher, RouteClaims};
pub use error::{ConfigError, FieldError};
pub use model::{
    Admin, Affinity, AffinityKey, Analysis, Backend, CertificateFiles, CertificateSecret, Config, Endpoint,
    HeaderMatch, HostPattern, Hsts, KubeSource, KubeTarget, Kubernetes, Limits, Listen, Overrides, PassiveHealth,
    PortRef, PrometheusCheck, Route, State, Timeouts, Tls, UpstreamTls,
};
pub use path::{EncodedSlashes, PathError, PathOptions};
pub use weight::{Weight, WeightError, PPM_SCALE};

/// Parses and validates a YAML config document, collecting every semantic error.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Syntax {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    validate::validate(raw).map_err(ConfigError::Invalid)
}

/// Parses and validates one route written as JSON in the config file's shape (a route
/// built from a CanaryRoute or an Ingress). Error paths start with `at`. Overlaps with
/// other routes are not checked here.
pub fn parse_route(value: serde_json::Value, at: &str, default_max_body_bytes: u64) -> Result<Route, ConfigError> {
    let raw: raw::RawRoute = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Syntax {
            path: if path == "." {
                at.to_string()
            } else {
                format!("{at}.{path}")
            },
            message: e.into_inner().to_string(),
        }
    })?;
    validate::single_route(raw, at, default_max_body_bytes).map_err(ConfigError::Invalid)
}
