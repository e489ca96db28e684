//! Every refusal of the sidecar's local endpoints and the one place that maps it to
//! an HTTP answer. Publishing mirrors the broker ingress (same statuses, same
//! `{"error": ..., "attribute": ...}` bodies) so a service moving from the broker to
//! the sidecar sees the same answers — except a full outbox, which is 503 with
//! `Retry-After`: the sidecar is the thing that is temporarily unavailable.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use cemesh_channels::ChannelError;
use cemesh_ingress::{ErrorAnswer, IngressError};
use cemesh_proto::http::DecodeError;
use http::{HeaderValue, Method, StatusCode};

/// How long a client should wait when the sidecar does not know better.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    #[error("method {0} is not allowed; use POST (or OPTIONS for the webhook handshake)")]
    MethodNotAllowed(Method),
    #[error("request body is larger than the sidecar's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the outbox is full ({reason}); retry after {retry_after:?}")]
    OutboxFull {
        reason: String,
        retry_after: Duration,
    },
    #[error("the sidecar is stopping")]
    Stopping,
    #[error("outbox storage failed: {0}")]
    Storage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The service is not healthy (delivery side): the mesh should back off.
    #[error("the service is not ready: {0}")]
    AppUnavailable(String),
    #[error("the service did not answer within {0:?}")]
    AppTimeout(Duration),
}

impl From<ChannelError> for SidecarError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Full {
                reason,
                retry_after,
            } => SidecarError::OutboxFull {
                reason,
                retry_after,
            },
            ChannelError::Closed => SidecarError::Stopping,
            ChannelError::DiskFull { retry_after, .. }
            | ChannelError::ReadOnlyDisk { retry_after } => SidecarError::OutboxFull {
                reason: e.to_string(),
                retry_after,
            },
            other => SidecarError::Storage(other.to_string()),
        }
    }
}

impl SidecarError {
    pub fn status(&self) -> StatusCode {
        match self {
            SidecarError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            SidecarError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            SidecarError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            SidecarError::BodyRead(_) | SidecarError::BadRequest(_) => StatusCode::BAD_REQUEST,
            SidecarError::Decode(DecodeError::Invalid(_)) => StatusCode::BAD_REQUEST,
            SidecarError::Decode(DecodeError::UnsupportedMediaType(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            SidecarError::OutboxFull { .. }
            | SidecarError::Stopping
            | SidecarError::AppUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            SidecarError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            SidecarError::NotFound(_) => StatusCode::NOT_FOUND,
            SidecarError::AppTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SidecarError::OutboxFull { retry_after, .. } => Some(*retry_after),
            SidecarError::Stopping | SidecarError::AppUnavailable(_) => Some(DEFAULT_RETRY_AFTER),
            _ => None,
        }
    }
}

/// Whole seconds for `Retry-After`, at least one.
pub fn retry_after_secs(wait: Duration) -> HeaderValue {
    HeaderValue::from(cemesh_ingress::retry_after_secs(wait))
}

impl SidecarError {
    /// This refusal as an HTTP answer, rendered like the broker ingress's.
    pub fn answer(&self) -> ErrorAnswer {
        let mut answer =
            ErrorAnswer::new(self.status(), self.to_string()).with_retry_after(self.retry_after());
        if let SidecarError::Decode(DecodeError::Invalid(e)) = self {
            if let Some(attr) = &e.attribute {
                answer = answer.with("attribute", attr.clone());
            }
        }
        if let SidecarError::MethodNotAllowed(_) = self {
            answer = answer.with_allow("POST, OPTIONS");
        }
        answer
    }
}

impl IntoResponse for SidecarError {
    fn into_response(self) -> Response {
        self.answer().into_response()
    }
}

/// The ingress's body and decoding refusals, in the sidecar's words (its limit is
/// the sidecar's, not a broker's).
impl From<IngressError> for SidecarError {
    fn from(e: IngressError) -> Self {
        match e {
            IngressError::TooLarge { limit } => SidecarError::TooLarge {
                limit: limit as u64,
            },
            IngressError::BodyRead(m) => SidecarError::BodyRead(m),
            IngressError::BodyTimeout(t) => SidecarError::BodyTimeout(t),
            IngressError::Decode(d) => SidecarError::Decode(d),
            IngressError::Channel(c) => c.into(),
            IngressError::MethodNotAllowed(m) => SidecarError::MethodNotAllowed(m),
            other => SidecarError::BadRequest(other.to_string()),
        }
    }
}
