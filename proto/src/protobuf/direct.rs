//! [`encode_event`](super::encode_event) written straight from an [`Event`]: the
//! bytes prost writes for [`to_proto`](super::to_proto)'s message, without building
//! that message. Building it copied every attribute's string and the attribute list
//! for each event the sled and Kafka channels store (about 6 000 instructions of a
//! 1 KiB event's 95 000 on the sled channel's ingest; this way about 3 500, most of
//! it the copy of the data).
//! prost has no way to encode borrowed fields, so the fields are written here with
//! its encoding primitives, in the order prost writes them (by tag). Timestamps,
//! rare and needing a parse either way, still go through the message type. A test
//! holds the bytes equal to the message's encoding for arbitrary events.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message as _;

use super::{attribute_to_proto, data_kind, time_value, DataKind};
use crate::event::{AttributeValue, Event};
use crate::pb::cloudevents::cloud_event::CloudEventAttributeValue;

// Field tags of `CloudEvent`, `AttributesEntry` and `CloudEventAttributeValue`.
const ID: u32 = 1;
const SOURCE: u32 = 2;
const SPEC_VERSION: u32 = 3;
const TYPE: u32 = 4;
const ATTRIBUTES: u32 = 5;
const BINARY_DATA: u32 = 6;
const TEXT_DATA: u32 = 7;
const PROTO_DATA: u32 = 8;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const CE_BOOLEAN: u32 = 1;
const CE_INTEGER: u32 = 2;
const CE_STRING: u32 = 3;
const CE_BYTES: u32 = 4;
const CE_URI: u32 = 5;
const CE_URI_REF: u32 = 6;

/// An attribute's value as it goes on the wire.
enum Value<'a> {
    Bool(bool),
    Int(i32),
    /// A string or bytes arm: its tag and content.
    Text(u32, &'a [u8]),
    /// A timestamp: the message, built as `to_proto` builds it.
    Message(CloudEventAttributeValue),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::Bool(_) => key_len(CE_BOOLEAN) + 1,
            Value::Int(i) => key_len(CE_INTEGER) + encoded_len_varint(*i as u64),
            Value::Text(tag, b) => delimited_len(*tag, b.len()),
            Value::Message(m) => m.encoded_len(),
        }
    }

    fn write(&self, buf: &mut Vec<u8>) {
        match self {
            Value::Bool(b) => {
                encode_key(CE_BOOLEAN, WireType::Varint, buf);
                encode_varint(u64::from(*b), buf);
            }
            Value::Int(i) => {
                encode_key(CE_INTEGER, WireType::Varint, buf);
                // int32 is written sign-extended to 64 bits, as prost does.
                encode_varint(*i as u64, buf);
            }
            Value::Text(tag, b) => delimited(*tag, b, buf),
            Value::Message(m) => m.encode_raw(buf),
        }
    }
}

fn text(tag: u32, s: &str) -> Value<'_> {
    Value::Text(tag, s.as_bytes())
}

fn attribute(v: &AttributeValue) -> Value<'_> {
    match v {
        AttributeValue::Boolean(b) => Value::Bool(*b),
        AttributeValue::Integer(i) => Value::Int(*i),
        AttributeValue::String(s) => text(CE_STRING, s),
        AttributeValue::Binary(b) => Value::Text(CE_BYTES, b),
        AttributeValue::Uri(s) => text(CE_URI, s),
        AttributeValue::UriRef(s) => text(CE_URI_REF, s),
        AttributeValue::Timestamp(_) => Value::Message(attribute_to_proto(v)),
    }
}

/// An attribute entry: its name, its value and the value's encoded length.
struct Entry<'a> {
    key: &'a str,
    value: Value<'a>,
    value_len: usize,
}

impl<'a> Entry<'a> {
    fn new(key: &'a str, value: Value<'a>) -> Self {
        let value_len = value.len();
        Entry {
            key,
            value,
            value_len,
        }
    }

    /// Its length inside its field: its key, then its value as a message.
    fn len(&self) -> usize {
        string_len(ENTRY_KEY, self.key) + delimited_len(ENTRY_VALUE, self.value_len)
    }

    fn write(&self, buf: &mut Vec<u8>) {
        encode_key(ATTRIBUTES, WireType::LengthDelimited, buf);
        encode_varint(self.len() as u64, buf);
        string(ENTRY_KEY, self.key, buf);
        encode_key(ENTRY_VALUE, WireType::LengthDelimited, buf);
        encode_varint(self.value_len as u64, buf);
        self.value.write(buf);
    }
}

/// Every attribute entry of `event`, in `to_proto`'s order.
fn attributes(event: &Event) -> Vec<Entry<'_>> {
    let mut out = Vec::with_capacity(4 + event.extensions.len());
    if let Some(ct) = &event.datacontenttype {
        out.push(Entry::new("datacontenttype", text(CE_STRING, ct)));
    }
    if let Some(schema) = &event.dataschema {
        let name = event.specversion.dataschema_name();
        out.push(Entry::new(name, text(CE_URI, schema)));
    }
    if let Some(subject) = &event.subject {
        out.push(Entry::new("subject", text(CE_STRING, subject)));
    }
    if let Some(time) = &event.time {
        out.push(Entry::new("time", Value::Message(time_value(time))));
    }
    for (name, v) in &event.extensions {
        out.push(Entry::new(name, attribute(v)));
    }
    out
}

/// A string field as proto3 writes it: left out when empty.
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        delimited_len(tag, s.len())
    }
}

fn string(tag: u32, s: &str, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        delimited(tag, s.as_bytes(), buf);
    }
}

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn delimited(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(b.len() as u64, buf);
    buf.extend_from_slice(b);
}

/// The `data` oneof's field: its bytes (`binary_data`, `text_data`), or the `Any`
/// of `proto_data` (rare, and built as `to_proto` builds it).
enum DataField<'a> {
    Bytes(u32, &'a [u8]),
    Proto(prost_types::Any),
}

impl DataField<'_> {
    fn of<'a>(event: &'a Event, data: &'a bytes::Bytes) -> DataField<'a> {
        match data_kind(event, data) {
            DataKind::Binary(b) => DataField::Bytes(BINARY_DATA, b),
            DataKind::Text(s) => DataField::Bytes(TEXT_DATA, s.as_bytes()),
            DataKind::Proto(type_url, d) => DataField::Proto(prost_types::Any {
                type_url: type_url.to_owned(),
                value: d.to_vec(),
            }),
        }
    }

    fn len(&self) -> usize {
        match self {
            DataField::Bytes(tag, b) => delimited_len(*tag, b.len()),
            DataField::Proto(any) => delimited_len(PROTO_DATA, any.encoded_len()),
        }
    }

    fn write(&self, buf: &mut Vec<u8>) {
        match self {
            DataField::Bytes(tag, b) => delimited(*tag, b, buf),
            DataField::Proto(any) => {
                encode_key(PROTO_DATA, WireType::LengthDelimited, buf);
                encode_varint(any.encoded_len() as u64, buf);
                any.encode_raw(buf);
            }
        }
    }
}

/// The `CloudEvent` message of `event`, encoded.
pub(super) fn encode_event(event: &Event) -> Vec<u8> {
    let attributes = attributes(event);
    let data = event.data.as_ref().map(|d| DataField::of(event, d));
    let attributes_len: usize = attributes
        .iter()
        .map(|e| delimited_len(ATTRIBUTES, e.len()))
        .sum();
    let len = string_len(ID, &event.id)
        + string_len(SOURCE, &event.source)
        + string_len(SPEC_VERSION, event.specversion.as_str())
        + string_len(TYPE, &event.ty)
        + attributes_len
        + data.as_ref().map_or(0, DataField::len);

    let mut buf = Vec::with_capacity(len);
    string(ID, &event.id, &mut buf);
    string(SOURCE, &event.source, &mut buf);
    string(SPEC_VERSION, event.specversion.as_str(), &mut buf);
    string(TYPE, &event.ty, &mut buf);
    for entry in &attributes {
        entry.write(&mut buf);
    }
    if let Some(data) = &data {
        data.write(&mut buf);
    }
    debug_assert_eq!(buf.len(), len);
    buf
}
