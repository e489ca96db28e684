//! Accepting events, written once for every receiver: find the broker, read the body
//! within its limit, decode and validate, stamp (arrival time, TTL, trace context),
//! append, and only then answer. The HTTP handler, the gRPC `Publisher` and the
//! sidecar's publish endpoint are thin adapters over these steps, so a rule changed
//! here holds for all of them.

use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use cemesh_channels::journal::{EntryRef, Journal, Name, OutcomeRef};
use cemesh_proto::http::{DecodeError, HeaderBudget};
use cemesh_proto::{knative, metric_names as names, Event, EventError};
use http::{header, HeaderMap};
use http_body_util::{BodyExt as _, Limited};

use crate::auth::{Admitted, Refusal};
use crate::{BrokerEndpoint, BrokerKey, IngressError, Routes};

/// The broker `key` names, or 404.
pub fn broker(routes: &Routes, key: &BrokerKey) -> Result<Arc<BrokerEndpoint>, IngressError> {
    routes.get(key).ok_or_else(|| unknown(key))
}

/// The 404 for a broker that is not there.
pub fn unknown(key: &BrokerKey) -> IngressError {
    IngressError::UnknownBroker(key.to_string())
}

/// Checks the request's sender (its `Authorization` value, `None` when it sent none)
/// against the broker's access rules, before anything of the body is read: 401 for a
/// bad credential, or a missing one where one is needed; 403 for a sender no policy
/// allows.
pub fn admit(
    routes: &Routes,
    broker: &BrokerEndpoint,
    credential: Option<&[u8]>,
) -> Result<Admitted, IngressError> {
    let who = routes
        .auth()
        .authenticate(credential, &broker.access.audience)
        .map_err(IngressError::Unauthenticated)?;
    broker.access.admit(&broker.key, who).map_err(|r| match r {
        Refusal::Unauthenticated(e) => IngressError::Unauthenticated(e),
        Refusal::Forbidden(d) => IngressError::Forbidden(d.0),
    })
}

/// Checks decoded events against the filters of the policies that admitted their
/// sender (403 naming the event), then stamps the sender on them when the server
/// config asks for it.
pub fn check_policies(
    routes: &Routes,
    broker: &BrokerEndpoint,
    admitted: &Admitted,
    events: &mut [Event],
    batch: bool,
) -> Result<(), IngressError> {
    broker
        .access
        .check_events(&broker.key, admitted, events, batch)
        .map_err(|d| IngressError::Forbidden(d.0))?;
    routes.auth().stamp(events, admitted.who.as_ref());
    Ok(())
}

/// Reads a body up to `limit` bytes: 413 past it, checked on `Content-Length` before
/// anything is read, and again while reading (a body may be longer than it says);
/// 408 if the listener's body read timeout ([`crate::server::BodyTimeout`]) passes
/// first.
///
/// The body is copied into a buffer of its own size. hyper hands a body that arrived
/// in one read as a slice of the connection's read buffer (8 KiB or more); an event
/// keeping that slice would pin the whole buffer for as long as it waits in a
/// channel, and make hyper allocate a new one for the connection's next request.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, IngressError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(IngressError::TooLarge { limit });
    }
    let mut body = std::pin::pin!(Limited::new(body, limit));
    // Room for what the sender declared (at most `limit`, checked above): one
    // allocation, whose pages are only touched as the bytes arrive.
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(&*e, limit))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A body read's failure as the refusal it means.
fn body_error(e: &(dyn std::error::Error + Send + Sync + 'static), limit: usize) -> IngressError {
    if e.is::<http_body_util::LengthLimitError>() {
        return IngressError::TooLarge { limit };
    }
    match crate::server::body_timeout(e) {
        Some(timeout) => IngressError::BodyTimeout(timeout.0),
        None => IngressError::BodyRead(e.to_string()),
    }
}

/// Headers a request may carry (hyper's own default).
pub const MAX_HEADERS: usize = 100;
/// Bytes of the whole header section (names, values and line overhead).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuses a header section over [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`] (431, with
/// the JSON body every refusal has) and answers the bytes of its `ce-` headers: in
/// binary mode those carry the event's attributes, which count toward the broker's
/// event size limit with the body, as they do inside a structured body.
pub fn check_headers(headers: &HeaderMap) -> Result<usize, IngressError> {
    if headers.len() > MAX_HEADERS {
        return Err(IngressError::HeadersTooLarge(format!(
            "the request has {} headers; at most {MAX_HEADERS} are allowed",
            headers.len()
        )));
    }
    let mut total = 0;
    let mut attributes = 0;
    for (name, value) in headers {
        let line = name.as_str().len() + value.len();
        total += line + 4;
        if name.as_str().starts_with("ce-") {
            attributes += line;
        }
    }
    if total > MAX_HEADER_BYTES {
        return Err(IngressError::HeadersTooLarge(format!(
            "the request headers are {total} bytes; at most {MAX_HEADER_BYTES} are allowed (put large values in the event's data)"
        )));
    }
    Ok(attributes)
}

/// Reads the body of an event whose `ce-` headers took `attributes` bytes of the
/// broker's `limit` already.
pub async fn read_event_body(
    headers: &HeaderMap,
    body: Body,
    attributes: usize,
    limit: usize,
) -> Result<Bytes, IngressError> {
    let too_large = || IngressError::EventTooLarge {
        headers: attributes,
        limit,
    };
    let left = limit.checked_sub(attributes).ok_or_else(too_large)?;
    match read_body(headers, body, left).await {
        Err(IngressError::TooLarge { .. }) if attributes > 0 => Err(too_large()),
        other => other,
    }
}

/// An event (or an encoded size) over the broker's limit is refused with 413.
pub fn check_size(broker: &BrokerEndpoint, encoded_len: usize) -> Result<(), IngressError> {
    if encoded_len > broker.max_body_bytes {
        return Err(IngressError::TooLarge {
            limit: broker.max_body_bytes,
        });
    }
    Ok(())
}

/// An invalid event, as a refusal.
pub fn invalid(e: EventError) -> IngressError {
    IngressError::Decode(DecodeError::Invalid(e))
}

/// Stamps what a broker's ingress adds to every event: the arrival time, the hop
/// budget (Knative's loop guard) and the producer's trace context. A channel
/// ([`BrokerEndpoint::stamps`] false) passes events on unaltered, as Knative's
/// channels must.
pub fn stamp(
    broker: &BrokerEndpoint,
    events: &mut [Event],
    now: &str,
    headers: Option<&HeaderMap>,
    batch: bool,
) -> Result<(), IngressError> {
    if !broker.stamps {
        return Ok(());
    }
    for (i, event) in events.iter_mut().enumerate() {
        knative::stamp_ingress(event, now).map_err(|e| match batch {
            true => invalid(e.in_batch(i, Some(&event.id))),
            false => invalid(e),
        })?;
        if let Some(headers) = headers {
            continue_trace(event, headers);
        }
    }
    Ok(())
}

/// Refuses events a subscriber could not take: one whose attributes, as binary-mode
/// HTTP headers, go past `budget`, unless no trigger of the broker that could match
/// it delivers in binary mode. Accepting it would only make a dead letter the
/// producer never hears of. An error names the attribute (and the event's index in a
/// batch).
pub fn check_deliverable(
    broker: &BrokerEndpoint,
    budget: HeaderBudget,
    events: &[Event],
    batch: bool,
) -> Result<(), IngressError> {
    if budget.is_off() {
        return Ok(());
    }
    for (i, event) in events.iter().enumerate() {
        if let Err(e) = cemesh_proto::http::check_binary_headers(event, budget) {
            if broker.binary.needs_binary(event) {
                return Err(invalid(match batch {
                    true => e.in_batch(i, Some(&event.id)),
                    false => e,
                }));
            }
        }
    }
    Ok(())
}

/// W3C trace context sent as HTTP headers continues in the event (the distributed
/// tracing extension), unless the event carries its own.
fn continue_trace(event: &mut Event, headers: &HeaderMap) {
    use cemesh_proto::trace::{TRACEPARENT, TRACESTATE};
    for header in [TRACEPARENT, TRACESTATE] {
        let name = header.as_str();
        if event.extension(name).is_some() {
            continue;
        }
        if let Some(v) = headers.get(&header).and_then(|v| v.to_str().ok()) {
            event.set_extension(name, cemesh_proto::AttributeValue::String(v.to_owned()));
        }
    }
}

/// Waits, up to the broker's `cemesh.dev/backpressure-hold`, while delivery is
/// behind past its window ([`cemesh_channels::flow`]); refuses after that. Asked
/// before a request's events are read: once let in, they are stored.
pub async fn room(broker: &BrokerEndpoint) -> Result<(), IngressError> {
    // The lock-free check first: a request that is not held costs no boxed future,
    // no clock read and no sample.
    if broker.channel.backpressure().is_ok() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let room = broker.channel.room().await;
    metrics::histogram!(names::INGRESS_BACKPRESSURE_HELD,
        "namespace_name" => broker.key.namespace.clone(),
        "broker_name" => broker.key.name.clone(),
        "result" => if room.is_ok() { "let_in" } else { "refused" })
    .record(started.elapsed().as_secs_f64());
    room.map_err(IngressError::from)
}

/// Appends to the broker's channel; returns once the channel says the events are as
/// durable as it promises (the moment a receiver may answer "accepted").
/// With a dedup window, events accepted within it are counted as accepted and not
/// appended again; the pairs of a failed append are released for the retry.
/// `via` says how the events came in, for the journal (`http-binary`, `grpc`, ...).
pub async fn store(
    broker: &BrokerEndpoint,
    events: Vec<Event>,
    via: &'static str,
) -> Result<usize, IngressError> {
    let count = events.len();
    let (events, reserved) = match &broker.dedup {
        None => (events, None),
        Some(d) => {
            let (fresh, reserved, dups) = d.admit(events, cemesh_proto::knative::now_ms());
            if dups > 0 {
                metrics::counter!(names::INGRESS_DUPLICATES,
                    "namespace_name" => broker.key.namespace.clone(),
                    "broker_name" => broker.key.name.clone())
                .increment(dups as u64);
            }
            (fresh, Some((d, reserved)))
        }
    };
    if !events.is_empty() {
        let seen = crate::seen::EventTypes::capture(&events);
        // Journaled before the append (the queue bounds what waits; a copy of a
        // whole flood held across the append would not be), and marked refused if
        // the append fails.
        let now_ms = cemesh_proto::knative::now_ms();
        let journaled = broker
            .journal
            .as_ref()
            .map(|j| journal_accepted(&**j, &broker.key, &events, via, now_ms));
        let started = std::time::Instant::now();
        if let Err(e) = broker.channel.append(events).await {
            if let Some((d, reserved)) = reserved {
                d.release(reserved);
            }
            if let (Some(j), Some(keys)) = (&broker.journal, journaled) {
                journal_refused(&**j, &broker.key, &keys, &e.to_string());
            }
            return Err(e.into());
        }
        broker
            .metrics
            .append(broker.channel.kind())
            .record(started.elapsed().as_secs_f64());
        // As journaled: the moment the events came in.
        broker.event_types.record(seen, now_ms);
    }
    Ok(count)
}

/// Each event's id and source, packed: what marking them refused needs.
struct Keys {
    text: String,
    /// Per event: where its id ends and its source ends in `text`.
    ends: Vec<(u32, u32)>,
}

/// Records each event offered for storing in the journal.
fn journal_accepted(
    journal: &dyn Journal,
    key: &crate::BrokerKey,
    events: &[Event],
    via: &'static str,
    at_ms: i64,
) -> Keys {
    journal.record(EntryRef::Accepted {
        broker: Name::new(&key.namespace, &key.name),
        via,
        at_ms,
        events,
    });
    let len = events.iter().map(|e| e.id.len() + e.source.len()).sum();
    let mut keys = Keys {
        text: String::with_capacity(len),
        ends: Vec::with_capacity(events.len()),
    };
    for event in events {
        keys.text.push_str(&event.id);
        let id_end = keys.text.len() as u32;
        keys.text.push_str(&event.source);
        keys.ends.push((id_end, keys.text.len() as u32));
    }
    keys
}

/// Marks events whose append failed as refused, with the reason.
fn journal_refused(journal: &dyn Journal, key: &crate::BrokerKey, keys: &Keys, reason: &str) {
    let broker = Name::new(&key.namespace, &key.name);
    let at_ms = cemesh_proto::knative::now_ms();
    let reason = format!("not stored, the producer was answered an error: {reason}");
    let mut start = 0usize;
    for (id_end, source_end) in &keys.ends {
        let (id_end, source_end) = (*id_end as usize, *source_end as usize);
        journal.record(EntryRef::Outcome(&OutcomeRef {
            broker,
            trigger: Name::new("", "(ingress)"),
            id: &keys.text[start..id_end],
            source: &keys.text[id_end..source_end],
            at_ms,
            outcome: "refused",
            reason: Some(&reason),
            dead_letter: None,
            last_attempt: None,
            replies: &[],
            replies_to: None,
        }));
        start = source_end;
    }
}
