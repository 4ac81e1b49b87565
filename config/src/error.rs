//! Config errors: each carries the path of the field that was wrong.

use std::fmt;

/// One invalid field: `routes[1].weight: 120 is above 100`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `routes[1].stable.endpoints[0]`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML could not be read into the config's shape (bad syntax, unknown key, wrong type).
    #[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Syntax {
        /// Path of the offending field, empty at the document root.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The document parsed but some fields are invalid; every one is listed.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every error as a field error (a syntax error is a list of one).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            ConfigError::Syntax { path, message } => {
                vec![FieldError::new(path.clone(), message.clone())]
            }
            ConfigError::Invalid(errors) => errors.clone(),
        }
    }
}

fn join_lines(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}
