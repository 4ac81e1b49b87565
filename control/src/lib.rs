//! canaryd's control plane: config loading and hot reload, admin endpoints, the demo.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config_file;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod runtime;
pub mod state;
