//! The `cemesh` commands that talk to a running mesh, kubectl- and `kn`-style: `send`
//! and `display` (a producer and an event-display subscriber), `apply`, `get`,
//! `describe`, `delete`, `tail` and `deadletters` over the admin API, and the offline
//! `validate`.

pub mod admin_client;
pub mod args;
pub mod deadletters;
pub mod display;
pub mod kubectl;
pub mod replay;
pub mod send;
pub mod send_grpc;
pub mod trace;
