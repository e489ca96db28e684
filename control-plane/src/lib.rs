//! cemesh's control plane: Knative manifests become running brokers (channels behind
//! the ingress) and triggers (delivery loops in the dispatcher), and stay in step with
//! the config dir and the admin API.
//!
//! - [`manifest`]: parse and validate Knative YAML into typed resources;
//! - [`control`]: the resource store (files and API), status, reload decisions;
//! - [`mesh`]: the running data plane (channels, routes, trigger loops) a reconcile
//!   changes;
//! - [`admin`] and [`grpc`]: the admin REST API and the gRPC services;
//! - [`keda`], [`metrics`], [`ondemand`]: scaling signals, Prometheus, subscribers
//!   cemesh starts itself;
//! - [`serve`]: `cemesh serve`, which wires all of it to listeners.

pub mod admin;
pub mod auth;
pub mod config;
pub mod control;
pub mod dedup;
pub mod duration;
pub mod error;
pub mod eventtypes;
pub mod grpc;
pub mod journey;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keda;
pub mod manifest;
pub mod mesh;
pub mod metrics;
pub mod ondemand;
mod persist;
pub mod point;
pub mod reload;
pub mod replay;
pub mod serve;
pub mod signer;
pub mod stats;

pub use error::Error;
