//! Every ingress refusal, and [`ErrorAnswer`]: the one place where any refusal of
//! any cemesh HTTP endpoint becomes a response. The gRPC form of the same refusals
//! is in `grpc::status`.

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
    #[error("the event's ce- headers ({headers} bytes) and body together are larger than this broker's limit of {limit} bytes")]
    EventTooLarge { headers: usize, limit: usize },
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within the body read timeout ({}); send it faster, or ask the operator to raise --body-read-timeout", crate::server::humane(*.0))]
    BodyTimeout(Duration),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(
        "the broker is shutting down; send again shortly (to another replica if there is one)"
    )]
    Draining,
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "the ingress is busy: the request bytes it works on at once (--max-pending-bytes) stayed taken for {0:?}; send again shortly"
    )]
    Busy(Duration),
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::UnknownBroker(_) => StatusCode::NOT_FOUND,
            IngressError::BadPath(_) | IngressError::BodyRead(_) => StatusCode::BAD_REQUEST,
            IngressError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            IngressError::TooLarge { .. } | IngressError::EventTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngressError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::Decode(DecodeError::Invalid(_)) => StatusCode::BAD_REQUEST,
            IngressError::Decode(DecodeError::UnsupportedMediaType(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngressError::Channel(ChannelError::Full { .. }) => StatusCode::TOO_MANY_REQUESTS,
            IngressError::Channel(ChannelError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::Channel(ChannelError::DiskFull { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            IngressError::Channel(ChannelError::ReadOnlyDisk { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::Channel(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IngressError::Draining | IngressError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            IngressError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngressError::Channel(
                ChannelError::Full { retry_after, .. }
                | ChannelError::DiskFull { retry_after, .. }
                | ChannelError::ReadOnlyDisk { retry_after },
            ) => Some(*retry_after),
            IngressError::Channel(ChannelError::Closed)
            | IngressError::Draining
            | IngressError::Busy(_) => Some(DEFAULT_RETRY_AFTER),
            _ => None,
        }
    }
}

impl IngressError {
    /// The attribute at fault, for an invalid event.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            IngressError::Decode(DecodeError::Invalid(e)) => e.attribute.as_deref(),
            _ => None,
        }
    }

    /// This refusal as an HTTP answer.
    pub fn answer(&self) -> ErrorAnswer {
        let mut answer =
            ErrorAnswer::new(self.status(), self.to_string()).with_retry_after(self.retry_after());
        if let Some(attr) = self.attribute() {
            answer = answer.with("attribute", attr);
        }
        match self {
            IngressError::MethodNotAllowed(_) => answer = answer.with_allow("POST, OPTIONS"),
            IngressError::Unauthenticated(_) => answer = answer.with_challenge("Bearer"),
            _ => {}
        }
        answer
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        self.answer().into_response()
    }
}

/// An HTTP refusal as every cemesh endpoint answers it: the status, a JSON body
/// `{"error": message, ...details}` (e.g. `attribute`, `problems`), and the
/// `Retry-After` and `Allow` headers when they apply. The ingress, the admin API and
/// the sidecar each classify their own errors into one of these; this is the one
/// place that turns any of them into a response.
#[derive(Debug, Clone)]
pub struct ErrorAnswer {
    pub status: StatusCode,
    pub message: String,
    /// Fields beside `error` in the body.
    pub details: serde_json::Map<String, serde_json::Value>,
    pub retry_after: Option<Duration>,
    /// The methods the resource takes (`405`).
    pub allow: Option<&'static str>,
    /// The `WWW-Authenticate` challenge (`401`).
    pub challenge: Option<&'static str>,
}

impl ErrorAnswer {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ErrorAnswer {
            status,
            message: message.into(),
            details: serde_json::Map::new(),
            retry_after: None,
            allow: None,
            challenge: None,
        }
    }

    /// Adds a field beside `error` in the body.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    pub fn with_allow(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }

    pub fn with_challenge(mut self, scheme: &'static str) -> Self {
        self.challenge = Some(scheme);
        self
    }
}

/// Whole seconds for `Retry-After`, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl IntoResponse for ErrorAnswer {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), serde_json::Value::String(self.message));
        body.extend(self.details);
        let mut resp = (self.status, axum::Json(serde_json::Value::Object(body))).into_response();
        if let Some(methods) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        if let Some(scheme) = self.challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        if let Some(wait) = self.retry_after {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        resp
    }
}
