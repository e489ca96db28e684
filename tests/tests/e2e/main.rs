//! End-to-end tests: one test binary (faster to link) with a module per area.

mod auth;
mod bench;
mod cli;
mod control_plane;
mod dashboard;
mod dedup;
mod delivery;
mod durability;
mod event_path;
mod filters;
mod flows;
mod fsync;
mod grpc;
mod hostile;
mod isolation;
mod journey;
mod kafka;
mod manifests;
mod metrics;
mod replay;
mod scale;
mod sidecar;
mod sources;
mod stall;
mod tls;
mod wire;
