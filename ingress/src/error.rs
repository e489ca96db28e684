//! Every ingress refusal and the one place that maps it to an HTTP answer.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use cemesh_channels::ChannelError;
use cemesh_proto::http::DecodeError;
use http::{header, HeaderValue, Method, StatusCode};

use crate::DEFAULT_RETRY_AFTER;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngressError {
    #[error("no broker {0}; POST events to /{{namespace}}/{{broker}}")]
    UnknownBroker(String),
    #[error("path {0:?} is not of the form /{{namespace}}/{{broker}}")]
    BadPath(String),
    #[error("method {0} is not allowed; use POST (or OPTIONS for the webhook handshake)")]
    MethodNotAllowed(Method),
    #[error("request body is larger than this broker's limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(
        "the broker is shutting down; send again shortly (to another replica if there is one)"
    )]
    Draining,
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::UnknownBroker(_) => StatusCode::NOT_FOUND,
            IngressError::BadPath(_) | IngressError::BodyRead(_) => StatusCode::BAD_REQUEST,
            IngressError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            IngressError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::Decode(DecodeError::Invalid(_)) => StatusCode::BAD_REQUEST,
            IngressError::Decode(DecodeError::UnsupportedMediaType(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngressError::Channel(ChannelError::Full { .. }) => StatusCode::TOO_MANY_REQUESTS,
            IngressError::Channel(ChannelError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::Channel(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IngressError::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            IngressError::Channel(ChannelError::Full { retry_after, .. }) => Some(*retry_after),
            IngressError::Channel(ChannelError::Closed) | IngressError::Draining => {
                Some(DEFAULT_RETRY_AFTER)
            }
            _ => None,
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let IngressError::Decode(DecodeError::Invalid(e)) = &self {
            if let Some(attr) = &e.attribute {
                body["attribute"] = serde_json::Value::String(attr.clone());
            }
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if let IngressError::MethodNotAllowed(_) = self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
        }
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
