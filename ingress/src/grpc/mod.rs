//! The gRPC receiver, `cemesh.v1.Publisher` ([`publisher`]), its typed client
//! ([`client`]) and the one mapping of refusals to gRPC codes ([`status`]). The
//! control plane serves it beside its own gRPC services on the gRPC listener.

pub mod client;
pub mod publisher;
pub mod status;

pub use client::GrpcPublisher;
pub use publisher::PublisherService;
pub use status::{ATTRIBUTE_METADATA, RETRY_AFTER_METADATA};

/// Largest gRPC message accepted before a broker's own limit applies (each broker
/// refuses events over its `max_body_bytes` with RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
