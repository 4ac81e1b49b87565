//! Reading the config file from disk and reporting its errors with the file's name.

use std::path::{Path, PathBuf};

use canary_config::{Config, ConfigError};

/// A config file that parsed and validated.
#[derive(Debug)]
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// The exact text it came from (to notice changes).
    pub text: String,
}

/// Why a config file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("invalid config file {path}:\n{source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
}

impl LoadError {
    /// Every error on its own line, each naming the field: what `canaryd check` prints.
    pub fn report(&self) -> String {
        match self {
            LoadError::Read { .. } => self.to_string(),
            LoadError::Invalid { path, source } => {
                let errors = source.field_errors();
                let mut out = format!("{}: {} error(s)\n", path.display(), errors.len());
                for e in errors {
                    out.push_str(&format!("  {e}\n"));
                }
                out
            }
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    let config = parse(path, &text)?;
    Ok(Loaded { config, text })
}

/// Validates config text that came from `path`, and the files it names that the data plane
/// reads as it builds routes (upstream `tls.ca`); a valid config warns about `verify: false`.
pub fn parse(path: &Path, text: &str) -> Result<Config, LoadError> {
    let invalid = |source| LoadError::Invalid {
        path: path.into(),
        source,
    };
    let config = canary_config::parse(text).map_err(invalid)?;
    let errors = canary_proxy::upstream_tls::check_files(&config);
    if !errors.is_empty() {
        return Err(invalid(ConfigError::Invalid(errors)));
    }
    Ok(config)
}
