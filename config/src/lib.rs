//! canaryd's configuration: raw YAML types → [`validate`] → a [`Config`] that cannot be invalid.
//!
//! This crate does no I/O: callers read the file and hand the text to [`parse`].
#![forbid(unsafe_code)]

mod claims;
mod error;
mod field_path;
mod model;
pub mod path;
mod raw;
mod route_spec;
mod validate;
mod weight;

pub use claims::{Matcher, RouteClaims};
pub use error::{ConfigError, FieldError};
pub use field_path::{FieldCase, FieldPath};
pub use model::{
    Admin, Affinity, AffinityKey, Analysis, Backend, CertificateFiles, CertificateSecret, Config, Endpoint,
    HeaderMatch, HostPattern, Hsts, KubeSource, KubeTarget, Kubernetes, Limits, Listen, Overrides, PassiveHealth,
    PortRef, PrometheusCheck, Route, State, Timeouts, Tls, UpstreamTls,
};
pub use path::{EncodedSlashes, PathError, PathOptions};
pub use route_spec::{
    AffinityKeySpec, AffinitySpec, AnalysisSpec, BackendSpec, HstsSpec, KubeSourceSpec, OverrideSpec, PercentSpec,
    PortSpec, PrometheusSpec, RolloutSpec, RouteSpec, UpstreamTlsSpec,
};
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
