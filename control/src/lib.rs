//! canaryd's control plane: config loading and hot reload, admin endpoints, the demo.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod api;
pub mod auth;
pub mod certificates;
pub mod client;
pub mod confidence;
pub mod config_file;
pub mod controller;
pub mod demo;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod reload;
pub mod rollout;
pub mod runtime;
pub mod sequential;
pub mod state;
pub mod state_writer;
pub mod status;
