//! The CloudEvents protobuf format (`application/cloudevents+protobuf`) and its batch
//! form (`application/cloudevents-batch+protobuf`): conversions between [`Event`] and
//! the generated [`CloudEvent`] message, and the encodings of both media types.
//!
//! The conversion is lossless in both directions for everything an [`Event`] holds, so
//! the channels can store this encoding and hand subscribers exactly what producers
//! sent:
//!
//! - every attribute keeps its type (the seven CloudEvents types map one to one onto
//!   the spec's `CloudEventAttributeValue` oneof) and its place among the extensions
//!   (see the `.proto` file: `attributes` is written as ordered map entries);
//! - `time` and timestamp extensions travel as `google.protobuf.Timestamp`, which
//!   every CloudEvents protobuf consumer reads; when the producer's text is not the
//!   canonical UTC rendering of that instant (an offset such as `+02:00`, or other
//!   fraction digits), the text rides along in `cemesh_timestamp_text`;
//! - data goes where the spec's rules put it: `text_data` for textual media types
//!   (`text/*`, JSON, XML, as sdk-java decides) when it is valid UTF-8,
//!   `proto_data` for `application/protobuf` with a `dataschema` (the `Any`'s type
//!   URL), `binary_data` otherwise. Decoding takes the bytes back unchanged, and keeps
//!   `datacontenttype` as it was (absent stays absent).
//!
//! Decoding from a foreign producer adds what the spec implies: `proto_data` without
//! `datacontenttype` gets `application/protobuf`, and without `dataschema` the `Any`'s
//! type URL.

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use prost::Message as _;

use crate::event::{AttributeValue, Event, SpecVersion};
use crate::pb::cloudevents::cloud_event::cloud_event_attribute_value::Attr;
use crate::pb::cloudevents::cloud_event::{AttributesEntry, CloudEventAttributeValue, Data};
use crate::pb::cloudevents::{CloudEvent, CloudEventBatch};
use crate::validate::{validate, EventError};

/// The structured-mode media type of one event.
pub const STRUCTURED_PROTOBUF: &str = "application/cloudevents+protobuf";
/// The batch media type: a `CloudEventBatch`.
pub const BATCH_PROTOBUF: &str = "application/cloudevents-batch+protobuf";
/// The media type of protobuf data (the spec's choice; there is no IANA type).
pub const PROTOBUF_DATA: &str = "application/protobuf";

/// Converts an event to the protobuf message.
pub fn to_proto(event: &Event) -> CloudEvent {
    let mut attributes = Vec::with_capacity(4 + event.extensions.len());
    let mut push = |key: &str, attr: CloudEventAttributeValue| {
        attributes.push(AttributesEntry {
            key: key.to_owned(),
            value: Some(attr),
        });
    };
    if let Some(ct) = &event.datacontenttype {
        push("datacontenttype", value(Attr::CeString(ct.clone())));
    }
    if let Some(schema) = &event.dataschema {
        push(
            event.specversion.dataschema_name(),
            value(Attr::CeUri(schema.clone())),
        );
    }
    if let Some(subject) = &event.subject {
        push("subject", value(Attr::CeString(subject.clone())));
    }
    if let Some(time) = &event.time {
        push("time", time_value(time));
    }
    for (name, v) in &event.extensions {
        push(name, attribute_to_proto(v));
    }
    CloudEvent {
        id: event.id.clone(),
        source: event.source.clone(),
        spec_version: event.specversion.as_str().to_owned(),
        r#type: event.ty.clone(),
        attributes,
        data: event.data.as_ref().map(|d| data_to_proto(event, d)),
    }
}

fn value(attr: Attr) -> CloudEventAttributeValue {
    CloudEventAttributeValue {
        attr: Some(attr),
        cemesh_timestamp_text: String::new(),
    }
}

/// `time` is a Timestamp; text that is no timestamp at all (an event nobody
/// validated) still survives as a string.
fn time_value(time: &str) -> CloudEventAttributeValue {
    timestamp_value(time).unwrap_or_else(|| value(Attr::CeString(time.to_owned())))
}

fn attribute_to_proto(v: &AttributeValue) -> CloudEventAttributeValue {
    match v {
        AttributeValue::Boolean(b) => value(Attr::CeBoolean(*b)),
        AttributeValue::Integer(i) => value(Attr::CeInteger(*i)),
        AttributeValue::String(s) => value(Attr::CeString(s.clone())),
        AttributeValue::Binary(b) => value(Attr::CeBytes(b.clone())),
        AttributeValue::Uri(s) => value(Attr::CeUri(s.clone())),
        AttributeValue::UriRef(s) => value(Attr::CeUriRef(s.clone())),
        AttributeValue::Timestamp(s) => timestamp_value(s).unwrap_or_else(|| {
            // Not a representable RFC 3339 timestamp (an event nobody validated): keep
            // the type and the text, with an invalid instant that marks the text as
            // the whole value.
            CloudEventAttributeValue {
                attr: Some(Attr::CeTimestamp(NO_INSTANT)),
                cemesh_timestamp_text: s.clone(),
            }
        }),
    }
}

/// The instant written for a timestamp text that has none: `nanos` out of range, so
/// no valid Timestamp is ever mistaken for it.
const NO_INSTANT: prost_types::Timestamp = prost_types::Timestamp {
    seconds: 0,
    nanos: -1,
};

/// A Timestamp value for RFC 3339 `text`, with the text kept when the canonical
/// rendering would differ; `None` when the text is not a representable timestamp.
fn timestamp_value(text: &str) -> Option<CloudEventAttributeValue> {
    let ts = parse_timestamp(text)?;
    let keep_text = canonical_timestamp(&ts).as_deref() != Some(text);
    Some(CloudEventAttributeValue {
        attr: Some(Attr::CeTimestamp(ts)),
        cemesh_timestamp_text: if keep_text {
            text.to_owned()
        } else {
            String::new()
        },
    })
}

fn parse_timestamp(text: &str) -> Option<prost_types::Timestamp> {
    let t: DateTime<FixedOffset> = DateTime::parse_from_rfc3339(text).ok()?;
    let nanos = t.timestamp_subsec_nanos();
    // A leap second (`:60`) has no Timestamp form.
    if nanos >= 1_000_000_000 {
        return None;
    }
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(nanos).ok()?,
    })
}

/// RFC 3339 in UTC with as many fraction digits as needed (0, 3, 6 or 9): what a
/// Timestamp without cemesh's text decodes to.
fn canonical_timestamp(ts: &prost_types::Timestamp) -> Option<String> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(ts.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn data_to_proto(event: &Event, data: &Bytes) -> Data {
    match data_kind(event, data) {
        DataKind::Proto(type_url, data) => Data::ProtoData(prost_types::Any {
            type_url: type_url.to_owned(),
            value: data.to_vec(),
        }),
        DataKind::Text(text) => Data::TextData(text.to_owned()),
        DataKind::Binary(data) => Data::BinaryData(data.clone()),
    }
}

/// Which arm of the `data` oneof an event's data goes in.
enum DataKind<'a> {
    /// `proto_data`: an `Any` of this type URL (the `dataschema`).
    Proto(&'a str, &'a Bytes),
    Text(&'a str),
    Binary(&'a Bytes),
}

fn data_kind<'a>(event: &'a Event, data: &'a Bytes) -> DataKind<'a> {
    let ct = event.datacontenttype.as_deref();
    if let (Some(ct), Some(schema)) = (ct, &event.dataschema) {
        if essence_eq(ct, PROTOBUF_DATA) {
            return DataKind::Proto(schema, data);
        }
    }
    if ct.is_some_and(is_text_media_type) {
        if let Ok(text) = std::str::from_utf8(data) {
            return DataKind::Text(text);
        }
    }
    DataKind::Binary(data)
}

fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

fn essence_eq(ct: &str, expected: &str) -> bool {
    essence(ct).eq_ignore_ascii_case(expected)
}

/// Whether data of this media type goes in `text_data`: `text/*`, JSON (`*/json`,
/// `*+json`) and XML (`*/xml`, `*+xml`), as sdk-java decides.
pub fn is_text_media_type(ct: &str) -> bool {
    let essence = essence(ct);
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let ends_with = |suffix: &str| {
        let sub = sub.as_bytes();
        sub.len() >= suffix.len()
            && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    ty.eq_ignore_ascii_case("text")
        || sub.eq_ignore_ascii_case("json")
        || sub.eq_ignore_ascii_case("xml")
        || ends_with("+json")
        || ends_with("+xml")
}

/// Converts a protobuf message to an event, without validating it (see
/// [`decode_event`] for the ingress path). Fails only where the message has no
/// [`Event`] form: an unknown `spec_version`, an attribute without a value, a core
/// attribute of the wrong type, or a Timestamp out of range.
pub fn from_proto(msg: CloudEvent) -> Result<Event, EventError> {
    let specversion = SpecVersion::parse(&msg.spec_version).ok_or_else(|| {
        if msg.spec_version.is_empty() {
            EventError::attr("specversion", "required attribute specversion is missing")
        } else {
            EventError::attr(
                "specversion",
                format!(
                    "specversion {:?} is not supported (use \"1.0\" or \"0.3\")",
                    msg.spec_version
                ),
            )
        }
    })?;
    let mut event = Event::new(msg.id, msg.source, msg.r#type);
    event.specversion = specversion;
    let schema_name = specversion.dataschema_name();
    event.extensions.reserve(msg.attributes.len());
    for AttributesEntry { key, value } in msg.attributes {
        let Some(v) = value else {
            return Err(no_value(&key));
        };
        match key.as_str() {
            "specversion" | "id" | "source" | "type" => {
                return Err(EventError::attr(
                    key.as_str(),
                    format!(
                    "{key} has its own field in the protobuf format; it must not be in attributes"
                ),
                ))
            }
            "datacontenttype" => event.datacontenttype = Some(core_string(&key, v)?),
            "subject" => event.subject = Some(core_string(&key, v)?),
            "time" => {
                event.time = Some(match v.attr {
                    Some(Attr::CeTimestamp(ts)) => {
                        timestamp_text(&key, &ts, v.cemesh_timestamp_text)?
                    }
                    _ => core_string(&key, v)?,
                })
            }
            _ if key == schema_name => event.dataschema = Some(core_string(&key, v)?),
            _ => {
                let v = attribute_from_proto(&key, v)?;
                // A map on the wire: a repeated key replaces the earlier value.
                match event.extensions.iter_mut().find(|(n, _)| *n == key) {
                    Some((_, old)) => *old = v,
                    None => event.extensions.push((key, v)),
                }
            }
        }
    }
    event.data = match msg.data {
        None => None,
        Some(Data::BinaryData(b)) => Some(b),
        Some(Data::TextData(s)) => Some(Bytes::from(s)),
        Some(Data::ProtoData(any)) => {
            if event.datacontenttype.is_none() {
                event.datacontenttype = Some(PROTOBUF_DATA.to_owned());
            }
            if event.dataschema.is_none() && !any.type_url.is_empty() {
                event.dataschema = Some(any.type_url);
            }
            Some(Bytes::from(any.value))
        }
    };
    Ok(event)
}

fn no_value(key: &str) -> EventError {
    EventError::attr(key, format!("attribute {key} has no value"))
}

/// The text of a core attribute that is a String or URI(-reference) in the spec; any
/// of the three string-like arms is accepted, as producers differ.
fn core_string(key: &str, v: CloudEventAttributeValue) -> Result<String, EventError> {
    match v.attr {
        Some(Attr::CeString(s) | Attr::CeUri(s) | Attr::CeUriRef(s)) => Ok(s),
        Some(_) => Err(EventError::attr(
            key,
            format!("attribute {key} must be a string"),
        )),
        None => Err(no_value(key)),
    }
}

fn attribute_from_proto(
    key: &str,
    v: CloudEventAttributeValue,
) -> Result<AttributeValue, EventError> {
    Ok(match v.attr {
        None => return Err(no_value(key)),
        Some(Attr::CeBoolean(b)) => AttributeValue::Boolean(b),
        Some(Attr::CeInteger(i)) => AttributeValue::Integer(i),
        Some(Attr::CeString(s)) => AttributeValue::String(s),
        Some(Attr::CeBytes(b)) => AttributeValue::Binary(b),
        Some(Attr::CeUri(s)) => AttributeValue::Uri(s),
        Some(Attr::CeUriRef(s)) => AttributeValue::UriRef(s),
        Some(Attr::CeTimestamp(ts)) => {
            AttributeValue::Timestamp(timestamp_text(key, &ts, v.cemesh_timestamp_text)?)
        }
    })
}

/// The text of a Timestamp: cemesh's kept text when it names the same instant (or
/// the value has none, see [`NO_INSTANT`]), otherwise the canonical UTC rendering.
fn timestamp_text(
    key: &str,
    ts: &prost_types::Timestamp,
    text: String,
) -> Result<String, EventError> {
    if *ts == NO_INSTANT || (!text.is_empty() && parse_timestamp(&text).as_ref() == Some(ts)) {
        return Ok(text);
    }
    canonical_timestamp(ts).ok_or_else(|| {
        EventError::attr(
            key,
            format!(
                "attribute {key}: Timestamp {{seconds: {}, nanos: {}}} is out of range",
                ts.seconds, ts.nanos
            ),
        )
    })
}

/// Encodes one event (`application/cloudevents+protobuf`): [`to_proto`]'s message,
/// encoded, without building it (see `direct`).
pub fn encode_event(event: &Event) -> Vec<u8> {
    direct::encode_event(event)
}

/// Encodes events as a `CloudEventBatch` (`application/cloudevents-batch+protobuf`).
pub fn encode_batch(events: &[Event]) -> Vec<u8> {
    CloudEventBatch {
        events: events.iter().map(to_proto).collect(),
    }
    .encode_to_vec()
}

/// Decodes and validates one structured-mode event. Binary data is sliced from
/// `body` without a copy.
pub fn decode_event(body: Bytes) -> Result<Event, EventError> {
    let msg = CloudEvent::decode(body)
        .map_err(|e| EventError::msg(format!("body is not a protobuf CloudEvent: {e}")))?;
    let event = from_proto(msg)?;
    validate(&event)?;
    Ok(event)
}

/// Decodes and validates a `CloudEventBatch`, refused whole if any event is invalid
/// (the error names the index) or if the events do not share one `specversion`.
pub fn decode_batch(body: Bytes) -> Result<Vec<Event>, EventError> {
    let batch = CloudEventBatch::decode(body)
        .map_err(|e| EventError::msg(format!("body is not a protobuf CloudEventBatch: {e}")))?;
    from_proto_batch(batch.events)
}

/// Converts and validates the events of a batch; see [`decode_batch`].
pub fn from_proto_batch(messages: Vec<CloudEvent>) -> Result<Vec<Event>, EventError> {
    let mut events: Vec<Event> = Vec::with_capacity(messages.len());
    for (i, msg) in messages.into_iter().enumerate() {
        let id = msg.id.clone();
        let event = from_proto(msg)
            .and_then(|e| validate(&e).map(|()| e))
            .map_err(|e| e.in_batch(i, Some(&id)))?;
        if events
            .first()
            .is_some_and(|first| first.specversion != event.specversion)
        {
            return Err(EventError::attr(
                "specversion",
                "all events of a batch must share specversion",
            )
            .in_batch(i, Some(&event.id)));
        }
        events.push(event);
    }
    Ok(events)
}

mod direct;
#[cfg(test)]
mod tests;
