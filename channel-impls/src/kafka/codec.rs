//! Events as Kafka records, in the CloudEvents Kafka protocol binding's binary mode:
//! every attribute is a `ce_<name>` header holding its canonical string (UTF-8, no
//! percent-encoding: Kafka headers are bytes), `datacontenttype` is the
//! `content-type` header, the value is the data, and the `partitionkey` extension is
//! the record key. This is what Knative's Kafka broker writes, so its tools, Kafka
//! Connect and `kcat` read cemesh topics and the other way round.
//!
//! Binary mode turns every extension into a string. To give cemesh's own readers
//! back exactly what was appended, the types of extensions that are not strings ride
//! in one extra header, `cemesh_types` (`name=integer,other=boolean`), which other
//! readers ignore. Structured-mode records (`content-type:
//! application/cloudevents+json`) written by other producers are read as well.
//!
//! A KafkaSource's topic holds other producers' records: [`from_source`] makes each
//! an event as Knative's KafkaSource does (its `InvalidCloudEventInterceptor` and
//! `CloudEventOverridesMutator`).

use base64::Engine as _;
use bytes::Bytes;
use cemesh_proto::{AttributeValue, Event, EventError, SpecVersion};
use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::options::{ForeignTopic, KeyType};

/// The header naming extension types that binary mode would lose.
pub const TYPES_HEADER: &str = "cemesh_types";
const CE_PREFIX: &str = "ce_";
const CONTENT_TYPE: &str = "content-type";
const STRUCTURED: &str = "application/cloudevents+json";

/// The parts of a record: key, headers and value.
pub struct Encoded {
    pub key: Option<String>,
    pub headers: OwnedHeaders,
    pub value: Option<Bytes>,
}

fn type_name(v: &AttributeValue) -> Option<&'static str> {
    match v {
        AttributeValue::String(_) => None,
        AttributeValue::Boolean(_) => Some("boolean"),
        AttributeValue::Integer(_) => Some("integer"),
        AttributeValue::Binary(_) => Some("binary"),
        AttributeValue::Uri(_) => Some("uri"),
        AttributeValue::UriRef(_) => Some("urireference"),
        AttributeValue::Timestamp(_) => Some("timestamp"),
    }
}

/// Encodes an event for the broker topic.
pub fn encode(event: &Event) -> Encoded {
    let mut headers = OwnedHeaders::new_with_capacity(8 + event.extensions.len());
    let mut types = String::new();
    for (name, value) in event.attributes() {
        if name == "datacontenttype" {
            continue;
        }
        let canonical = value.to_canonical();
        headers = headers.insert(Header {
            key: &format!("{CE_PREFIX}{name}"),
            value: Some(canonical.as_bytes()),
        });
    }
    for (name, value) in &event.extensions {
        if let Some(t) = type_name(value) {
            if !types.is_empty() {
                types.push(',');
            }
            types.push_str(name);
            types.push('=');
            types.push_str(t);
        }
    }
    if let Some(ct) = &event.datacontenttype {
        headers = headers.insert(Header {
            key: CONTENT_TYPE,
            value: Some(ct.as_bytes()),
        });
    }
    if !types.is_empty() {
        headers = headers.insert(Header {
            key: TYPES_HEADER,
            value: Some(types.as_bytes()),
        });
    }
    let key = event
        .extension("partitionkey")
        .map(AttributeValue::to_canonical);
    Encoded {
        key,
        headers,
        value: event.data.clone(),
    }
}

fn utf8(name: &str, raw: Option<&[u8]>) -> Result<String, EventError> {
    let raw = raw.unwrap_or_default();
    String::from_utf8(raw.to_vec())
        .map_err(|_| EventError::attr(name, format!("header {name} is not valid UTF-8")))
}

fn typed(name: &str, ty: &str, text: String) -> Result<AttributeValue, EventError> {
    let bad = |what: &str| EventError::attr(name, format!("{name} {text:?} is not a valid {what}"));
    Ok(match ty {
        "boolean" => match text.as_str() {
            "true" => AttributeValue::Boolean(true),
            "false" => AttributeValue::Boolean(false),
            _ => return Err(bad("boolean")),
        },
        "integer" => AttributeValue::Integer(text.parse().map_err(|_| bad("integer"))?),
        "binary" => AttributeValue::Binary(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|_| bad("base64 value"))?,
        )),
        "uri" => AttributeValue::Uri(text),
        "urireference" => AttributeValue::UriRef(text),
        "timestamp" => AttributeValue::Timestamp(text),
        _ => AttributeValue::String(text),
    })
}

/// Decodes a record of a broker topic. `Ok(None)` means the record is not a
/// CloudEvent at all (another producer's record): readers skip it.
pub fn decode<H: Headers>(
    headers: Option<&H>,
    value: Option<&[u8]>,
) -> Result<Option<Event>, EventError> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    let mut content_type = None;
    let mut types = None;
    let mut ce: Vec<(String, String)> = Vec::new();
    for h in headers.iter() {
        if h.key.eq_ignore_ascii_case(CONTENT_TYPE) {
            content_type = Some(utf8("content-type", h.value)?);
        } else if h.key == TYPES_HEADER {
            types = Some(utf8(TYPES_HEADER, h.value)?);
        } else if let Some(attr) = h.key.strip_prefix(CE_PREFIX) {
            let attr = attr.to_ascii_lowercase();
            let v = utf8(h.key, h.value)?;
            ce.push((attr, v));
        }
    }
    if ce.is_empty() {
        return match content_type.as_deref() {
            Some(ct) if ct.to_ascii_lowercase().starts_with(STRUCTURED) => {
                cemesh_proto::json::decode_event(value.unwrap_or_default()).map(Some)
            }
            _ => Ok(None),
        };
    }
    let spec = ce
        .iter()
        .find(|(n, _)| n == "specversion")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            EventError::attr(
                "specversion",
                "record has ce_ headers but no ce_specversion",
            )
        })?;
    let specversion = SpecVersion::parse(spec).ok_or_else(|| {
        EventError::attr(
            "specversion",
            format!("specversion {spec:?} is not supported"),
        )
    })?;
    let type_of = |name: &str| {
        types.as_deref().and_then(|t| {
            t.split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t)
        })
    };
    let mut event = Event::new(String::new(), String::new(), String::new());
    event.specversion = specversion;
    let schema = specversion.dataschema_name();
    for (name, value) in ce {
        match name.as_str() {
            "specversion" => {}
            "id" => event.id = value,
            "source" => event.source = value,
            "type" => event.ty = value,
            "subject" => event.subject = Some(value),
            "time" => event.time = Some(value),
            // Some producers put it among the attributes; the header wins below.
            "datacontenttype" => event.datacontenttype = Some(value),
            n if n == schema => event.dataschema = Some(value),
            n => {
                if event.extension(n).is_some() {
                    return Err(EventError::attr(n, format!("header ce_{n} appears twice")));
                }
                let v = match type_of(n) {
                    Some(t) => typed(n, t, value)?,
                    None => AttributeValue::String(value),
                };
                event.extensions.push((name, v));
            }
        }
    }
    if let Some(ct) = content_type {
        event.datacontenttype = Some(ct);
    }
    event.data = value.filter(|v| !v.is_empty()).map(Bytes::copy_from_slice);
    cemesh_proto::validate::validate(&event)?;
    Ok(Some(event))
}

/// Knative's type of records that are not CloudEvents.
pub const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";

/// Where a KafkaSource read a record.
pub struct RecordAt<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, when the record has a timestamp.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
}

/// A KafkaSource's record as an event: a CloudEvent record (binary or structured
/// mode) as it is, any other record (or one whose CloudEvent is invalid) wrapped;
/// then `knativekafkapartition`, `knativekafkaoffset` and the overrides.
pub fn from_source<H: Headers>(
    source: &ForeignTopic,
    at: &RecordAt<'_>,
    headers: Option<&H>,
    value: Option<&[u8]>,
) -> Event {
    let mut event = match decode(headers, value) {
        Ok(Some(event)) => event,
        Ok(None) | Err(_) => wrap(source, at, headers, value),
    };
    event.set_extension(
        "knativekafkapartition",
        AttributeValue::Integer(at.partition),
    );
    event.set_extension(
        "knativekafkaoffset",
        i32::try_from(at.offset)
            .map(AttributeValue::Integer)
            .unwrap_or_else(|_| AttributeValue::String(at.offset.to_string())),
    );
    for (k, v) in &source.overrides {
        event.set_extension(k, AttributeValue::String(v.clone()));
    }
    event
}

/// Knative's event for a record that is not a CloudEvent: id
/// `partition:{p}/offset:{o}`, subject `partition:{p}#{o}`, source
/// `{source}#{topic}`, the record's time, key (`key` and `partitionkey`), headers
/// (`kafkaheader{name}`, the name lower-cased to `[a-z0-9]`), content type and value.
fn wrap<H: Headers>(
    source: &ForeignTopic,
    at: &RecordAt<'_>,
    headers: Option<&H>,
    value: Option<&[u8]>,
) -> Event {
    let (p, o) = (at.partition, at.offset);
    let mut e = Event::new(
        format!("partition:{p}/offset:{o}"),
        format!("{}#{}", source.source, at.topic),
        KAFKA_EVENT_TYPE,
    );
    e.subject = Some(format!("partition:{p}#{o}"));
    e.time = at
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    if let Some(key) = at.key.filter(|k| !k.is_empty()) {
        let key = key_value(key, source.key_type);
        e.set_extension("partitionkey", key.clone());
        e.set_extension("key", key);
    }
    for h in headers.into_iter().flat_map(|h| h.iter()) {
        let text = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
        if h.key.eq_ignore_ascii_case(CONTENT_TYPE) {
            e.datacontenttype = Some(text.to_lowercase());
            continue;
        }
        let name: String = h
            .key
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .collect();
        e.set_extension(&format!("kafkaheader{name}"), AttributeValue::String(text));
    }
    e.data = value.map(Bytes::copy_from_slice);
    e
}

/// A record key as Knative's `KeyDeserializer` reads it for `key_type`.
fn key_value(key: &[u8], key_type: KeyType) -> AttributeValue {
    let text = || AttributeValue::String(String::from_utf8_lossy(key).into_owned());
    match key_type {
        KeyType::String => text(),
        KeyType::Int => match <[u8; 4]>::try_from(key) {
            Ok(b) => AttributeValue::Integer(i32::from_be_bytes(b)),
            Err(_) => text(),
        },
        KeyType::Float => match key.len() {
            4 => AttributeValue::String(
                f32::from_be_bytes(key.try_into().unwrap_or_default()).to_string(),
            ),
            8 => AttributeValue::String(
                f64::from_be_bytes(key.try_into().unwrap_or_default()).to_string(),
            ),
            _ => text(),
        },
        KeyType::ByteArray => AttributeValue::Binary(Bytes::copy_from_slice(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Message, OwnedMessage, Timestamp};

    fn round_trip(e: &Event) -> Event {
        let enc = encode(e);
        let msg = OwnedMessage::new(
            enc.value.map(|v| v.to_vec()),
            enc.key.map(String::into_bytes),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(enc.headers),
        );
        decode(msg.headers(), msg.payload())
            .expect("valid")
            .expect("an event")
    }

    #[test]
    fn typed_extensions_and_data_survive() {
        let mut e = Event::new("id-1", "/src", "t.y");
        e.subject = Some("ünïcode subject".into());
        e.time = Some("2024-01-02T03:04:05.678+02:00".into());
        e.datacontenttype = Some("application/json".into());
        e.data = Some(Bytes::from_static(b"{\"a\":1}"));
        e.set_extension("partitionkey", AttributeValue::String("k1".into()));
        e.set_extension("count", AttributeValue::Integer(-7));
        e.set_extension("flag", AttributeValue::Boolean(true));
        e.set_extension(
            "blob",
            AttributeValue::Binary(Bytes::from_static(b"\0\x01")),
        );
        e.set_extension(
            "when",
            AttributeValue::Timestamp("2024-01-02T03:04:05Z".into()),
        );
        e.set_extension("link", AttributeValue::Uri("https://x/y".into()));
        assert_eq!(round_trip(&e), e);
        assert_eq!(encode(&e).key.as_deref(), Some("k1"));
    }

    #[test]
    fn foreign_records_are_skipped_and_structured_ones_read() {
        let none: Option<&OwnedHeaders> = None;
        assert_eq!(decode(none, Some(b"x")).unwrap(), None);
        let h = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/cloudevents+json; charset=utf-8"),
        });
        let body = br#"{"specversion":"1.0","id":"s1","source":"/s","type":"t"}"#;
        let e = decode(Some(&h), Some(body)).unwrap().unwrap();
        assert_eq!(e.id, "s1");
        let h = OwnedHeaders::new().insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        });
        assert!(decode(Some(&h), None).is_err(), "no id, source, type");
    }

    fn source(key_type: KeyType) -> ForeignTopic {
        ForeignTopic {
            group: "g".into(),
            source: "/apis/v1/namespaces/default/kafkasources/ks".into(),
            key_type,
            overrides: vec![("team".into(), "blue".into())],
        }
    }

    #[test]
    fn a_plain_record_becomes_knative_s_kafka_event() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "Content-Type",
                value: Some("Application/JSON"),
            })
            .insert(Header {
                key: "X-Trace_Id",
                value: Some("abc"),
            });
        let at = RecordAt {
            topic: "orders",
            partition: 2,
            offset: 564,
            timestamp_ms: Some(1_700_000_000_123),
            key: Some(b"0"),
        };
        let e = from_source(&source(KeyType::String), &at, Some(&h), Some(b"{\"a\":1}"));
        assert_eq!(e.id, "partition:2/offset:564");
        assert_eq!(e.ty, KAFKA_EVENT_TYPE);
        assert_eq!(
            e.source,
            "/apis/v1/namespaces/default/kafkasources/ks#orders"
        );
        assert_eq!(e.subject.as_deref(), Some("partition:2#564"));
        assert_eq!(e.time.as_deref(), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.data.as_deref(), Some(&b"{\"a\":1}"[..]));
        let ext = |n: &str| e.extension(n).map(AttributeValue::to_canonical);
        assert_eq!(ext("key").as_deref(), Some("0"));
        assert_eq!(ext("partitionkey").as_deref(), Some("0"));
        assert_eq!(ext("kafkaheaderxtraceid").as_deref(), Some("abc"));
        assert_eq!(ext("knativekafkapartition").as_deref(), Some("2"));
        assert_eq!(ext("knativekafkaoffset").as_deref(), Some("564"));
        assert_eq!(ext("team").as_deref(), Some("blue"));
    }

    #[test]
    fn a_cloudevent_record_keeps_its_attributes_and_gets_its_position() {
        let mut original = Event::new("e1", "/orders", "order.created");
        original.data = Some(Bytes::from_static(b"hi"));
        let enc = encode(&original);
        let at = RecordAt {
            topic: "orders",
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: None,
        };
        let e = from_source(
            &source(KeyType::String),
            &at,
            Some(&enc.headers),
            enc.value.as_deref(),
        );
        assert_eq!((e.id.as_str(), e.source.as_str()), ("e1", "/orders"));
        assert_eq!(e.ty, "order.created");
        assert_eq!(
            e.extension("knativekafkaoffset"),
            Some(&AttributeValue::Integer(7))
        );
    }

    #[test]
    fn keys_are_read_as_the_key_type_label_says() {
        assert_eq!(
            key_value(&7i32.to_be_bytes(), KeyType::Int),
            AttributeValue::Integer(7)
        );
        assert_eq!(
            key_value(b"abc", KeyType::Int),
            AttributeValue::String("abc".into())
        );
        assert_eq!(
            key_value(&1.5f64.to_be_bytes(), KeyType::Float),
            AttributeValue::String("1.5".into())
        );
        assert_eq!(
            key_value(b"\0\x01", KeyType::ByteArray),
            AttributeValue::Binary(Bytes::from_static(b"\0\x01"))
        );
    }
}
