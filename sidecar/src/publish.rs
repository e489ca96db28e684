//! The local publishing endpoint (`--listen`): what the service posts to instead of
//! the broker.
//!
//! - `POST /publish/{type}` with any body: for services that know nothing of
//!   CloudEvents. The body becomes the data, the request's `Content-Type` its
//!   `datacontenttype`; the sidecar adds `source` (configured), a UUID v7 `id` (time
//!   ordered, so ids sort like publishes), `time`, and `partitionkey` from a header.
//! - `POST` anywhere else: CloudEvents in every mode the broker ingress accepts
//!   (binary, structured, batch), validated the same way, so the service can keep the
//!   broker's URL path and only change the host.
//!
//! Either way the answer is 202 only after the events are fsynced in the outbox.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cemesh_proto::http::DecodeError;
use cemesh_proto::{knative, validate::validate, AttributeValue, Event, EventError};
use http::{header, HeaderMap, Method, StatusCode};

use crate::error::SidecarError;
use crate::stats::inc;
use crate::Local;
// The CloudEvents webhook handshake, answered as the broker ingress does.
pub use cemesh_ingress::webhook_handshake;

/// `POST /publish/{type}`: wraps a plain request into a CloudEvent.
pub async fn plain(
    State(local): State<Local>,
    Path(ty): Path<String>,
    req: Request,
) -> Result<Response, SidecarError> {
    match *req.method() {
        Method::POST => {}
        Method::OPTIONS => return Ok(webhook_handshake(req.headers())),
        _ => return Err(SidecarError::MethodNotAllowed(req.method().clone())),
    }
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, local.settings.max_body_bytes).await?;
    let key = parts
        .headers
        .get(&local.settings.partition_key_header)
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                EventError::attr(
                    "partitionkey",
                    format!(
                        "header {} is not visible ASCII",
                        local.settings.partition_key_header
                    ),
                )
            })
        })
        .transpose()
        .map_err(DecodeError::Invalid)?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                EventError::attr("datacontenttype", "Content-Type is not visible ASCII")
            })
        })
        .transpose()
        .map_err(DecodeError::Invalid)?;
    let event = wrap_plain(
        &ty,
        &local.settings.source,
        content_type,
        key.as_deref(),
        body,
    )
    .map_err(DecodeError::Invalid)?;
    let id = event.id.clone();
    local.outbox.append(vec![event]).await.inspect_err(|e| {
        if matches!(e, cemesh_channels::ChannelError::Full { .. }) {
            inc(&local.stats.outbox_full);
        }
    })?;
    inc(&local.stats.published);
    Ok(accepted(Some(&id)))
}

/// Builds the CloudEvent for a plain publish and validates it.
pub fn wrap_plain(
    ty: &str,
    source: &str,
    content_type: Option<String>,
    partition_key: Option<&str>,
    body: Bytes,
) -> Result<Event, EventError> {
    let mut event = Event::new(uuid::Uuid::now_v7().to_string(), source, ty);
    event.time = Some(knative::now_rfc3339());
    event.datacontenttype = content_type.filter(|c| !c.trim().is_empty());
    if let Some(key) = partition_key.filter(|k| !k.is_empty()) {
        event.set_extension("partitionkey", AttributeValue::String(key.to_owned()));
    }
    if !body.is_empty() {
        event.data = Some(body);
    }
    validate(&event)?;
    Ok(event)
}

/// `POST` elsewhere: CloudEvents as the broker ingress takes them.
pub async fn cloudevents(
    State(local): State<Local>,
    req: Request,
) -> Result<Response, SidecarError> {
    match *req.method() {
        Method::POST => {}
        Method::OPTIONS => return Ok(webhook_handshake(req.headers())),
        Method::GET | Method::HEAD => {
            return Err(SidecarError::NotFound(format!(
                "no resource at {}; publish with POST (CloudEvents) or POST /publish/{{type}} (any body)",
                req.uri().path()
            )))
        }
        _ => return Err(SidecarError::MethodNotAllowed(req.method().clone())),
    }
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, local.settings.max_body_bytes).await?;
    let events = cemesh_proto::http::decode(&parts.headers, body)?;
    let count = events.len() as u64;
    let single_id = match events.as_slice() {
        [one] => Some(one.id.clone()),
        _ => None,
    };
    if count > 0 {
        local.outbox.append(events).await.inspect_err(|e| {
            if matches!(e, cemesh_channels::ChannelError::Full { .. }) {
                inc(&local.stats.outbox_full);
            }
        })?;
        local
            .stats
            .published
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(accepted(single_id.as_deref()))
}

/// 202, with the event's id in `ce-id` so a plain service can log it.
fn accepted(id: Option<&str>) -> Response {
    let mut resp = StatusCode::ACCEPTED.into_response();
    if let Some(id) = id {
        resp.headers_mut()
            .insert("ce-id", cemesh_proto::http::encode_header_value(id));
    }
    resp
}

/// Reads a body up to `limit` bytes (413 past it), as the broker ingress does.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, SidecarError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(cemesh_ingress::accept::read_body(headers, body, limit).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_publish_becomes_a_valid_cloudevent() {
        let e = wrap_plain(
            "com.example.order.created",
            "/orders-service",
            Some("application/json".into()),
            Some("customer-7"),
            Bytes::from_static(br#"{"order":1}"#),
        )
        .unwrap();
        assert_eq!(e.ty, "com.example.order.created");
        assert_eq!(e.source, "/orders-service");
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            e.extension("partitionkey"),
            Some(&AttributeValue::String("customer-7".into()))
        );
        let id = uuid::Uuid::parse_str(&e.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert!(cemesh_proto::validate::is_rfc3339(
            e.time.as_deref().unwrap()
        ));
        assert_eq!(e.data.as_deref(), Some(&br#"{"order":1}"#[..]));
    }

    #[test]
    fn plain_publish_without_body_or_key() {
        let e = wrap_plain("t", "s", None, Some(""), Bytes::new()).unwrap();
        assert!(e.data.is_none() && e.datacontenttype.is_none());
        assert!(e.extension("partitionkey").is_none());
    }

    #[test]
    fn invalid_plain_publishes_name_the_attribute() {
        let err = wrap_plain("t", "", None, None, Bytes::new()).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("source"));
        let err = wrap_plain(
            "t",
            "s",
            Some("not a media type".into()),
            None,
            Bytes::new(),
        )
        .unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("datacontenttype"));
    }
}
