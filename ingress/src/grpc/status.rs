//! The one place that turns an ingress refusal into a gRPC status, so the gRPC
//! answers stay those of HTTP (`IngressError::status`) in gRPC's vocabulary.

use crate::IngressError;
use cemesh_channels::ChannelError;
use cemesh_proto::http::DecodeError;
use cemesh_proto::pb::cemesh::v1::PublishAck;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Metadata key naming the attribute at fault in an INVALID_ARGUMENT answer.
pub const ATTRIBUTE_METADATA: &str = "cemesh-attribute";
/// Metadata key: seconds to wait before retrying (RESOURCE_EXHAUSTED, UNAVAILABLE).
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// The gRPC code of a refusal: 400 → INVALID_ARGUMENT, 401 → UNAUTHENTICATED, 403 →
/// PERMISSION_DENIED, 404 → NOT_FOUND, 413 and 429 → RESOURCE_EXHAUSTED, 503 →
/// UNAVAILABLE, 500 → INTERNAL.
pub fn code(err: &IngressError) -> Code {
    match err {
        IngressError::UnknownBroker(_) => Code::NotFound,
        IngressError::TooLarge { .. }
        | IngressError::EventTooLarge { .. }
        | IngressError::HeadersTooLarge(_) => Code::ResourceExhausted,
        IngressError::Decode(DecodeError::Invalid(_))
        | IngressError::Decode(DecodeError::UnsupportedMediaType(_))
        | IngressError::BadPath(_)
        | IngressError::BodyRead(_) => Code::InvalidArgument,
        IngressError::Channel(ChannelError::Full { .. } | ChannelError::DiskFull { .. }) => {
            Code::ResourceExhausted
        }
        IngressError::Channel(ChannelError::Closed | ChannelError::ReadOnlyDisk { .. }) => {
            Code::Unavailable
        }
        IngressError::Channel(_) => Code::Internal,
        IngressError::MethodNotAllowed(_) => Code::Unimplemented,
        IngressError::BodyTimeout(_) => Code::DeadlineExceeded,
        IngressError::Draining | IngressError::Busy(_) => Code::Unavailable,
        IngressError::Unauthenticated(_) => Code::Unauthenticated,
        IngressError::Forbidden(_) => Code::PermissionDenied,
    }
}

/// The message of a refusal. The HTTP wording of an unknown broker names the URL
/// path; here it names the request fields.
pub fn message(err: &IngressError) -> String {
    match err {
        IngressError::UnknownBroker(key) => {
            format!("no broker {key}; set namespace and broker to an existing broker")
        }
        other => other.to_string(),
    }
}

/// The attribute at fault, for an invalid event.
pub fn attribute(err: &IngressError) -> Option<&str> {
    err.attribute()
}

/// Seconds a producer should wait before sending again.
pub fn retry_after_secs(err: &IngressError) -> Option<u32> {
    let wait = match err {
        IngressError::Channel(ChannelError::Closed) => crate::DEFAULT_RETRY_AFTER,
        IngressError::Channel(_) | IngressError::Draining | IngressError::Busy(_) => {
            err.retry_after()?
        }
        _ => return None,
    };
    Some(u32::try_from(crate::retry_after_secs(wait)).unwrap_or(u32::MAX))
}

/// A refusal as a gRPC status, with the attribute and `retry-after` in metadata.
pub fn status(err: &IngressError) -> Status {
    let mut metadata = MetadataMap::new();
    if let Some(attr) = attribute(err) {
        if let Ok(v) = MetadataValue::try_from(attr) {
            metadata.insert(ATTRIBUTE_METADATA, v);
        }
    }
    if let Some(secs) = retry_after_secs(err) {
        metadata.insert(RETRY_AFTER_METADATA, MetadataValue::from(secs));
    }
    Status::with_metadata(code(err), message(err), metadata)
}

/// A refusal as the ack of one streamed event.
pub fn refused_ack(sequence: u64, id: String, err: &IngressError) -> PublishAck {
    PublishAck {
        sequence,
        id,
        code: code(err) as i32,
        message: message(err),
        attribute: attribute(err).unwrap_or_default().to_owned(),
        retry_after_seconds: retry_after_secs(err).unwrap_or(0),
    }
}
