//! canaryd's configuration: raw YAML types → [`validate`] → a [`Config`] that cannot be invalid.
//!
//! This crate does no I/O: callers read the file and hand the text to [`parse`].
#![forbid(unsafe_code)]

mod error;
mod model;
mod raw;
mod validate;
mod weight;

pub use error::{ConfigError, FieldError};
pub use model::{
    Admin, Affinity, AffinityKey, Analysis, Backend, CertificateFiles, Config, Endpoint, HostPattern, Hsts, Listen,
    Overrides, PassiveHealth, PrometheusCheck, Route, State, Timeouts, Tls,
};
pub use weight::{Weight, WeightError};

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
