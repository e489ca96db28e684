//! Conversions between `cloudevents::Event` (the official Rust SDK, crate
//! `cloudevents-sdk`) and cemesh's [`Event`] and protobuf [`CloudEvent`]. Behind the
//! cargo feature `sdk`, for library users who already hold SDK events and for
//! interoperability tests; the broker itself never needs it.
//!
//! Everything an SDK event can hold survives `cloudevents::Event` → cemesh →
//! `cloudevents::Event` (and through the protobuf encoding) unchanged. The SDK holds
//! less than cemesh, so the other direction is exact only for what it can hold:
//!
//! - extension types: the SDK has String, Boolean and Integer; Binary, URI,
//!   URI-reference and Timestamp extensions become Strings in their canonical form;
//! - `time` is a `DateTime<Utc>` in the SDK: the instant is kept, the sender's offset
//!   and spelling are not;
//! - JSON data becomes `Data::Json`, the same JSON value: whitespace and number
//!   spelling follow `serde_json`;
//! - an SDK `Integer` extension outside the CloudEvents 32-bit range is refused, and
//!   so is a `dataschema` that `url::Url` cannot parse (the SDK needs an absolute URL).
//!
//! SDK data without `datacontenttype` gets the type its variant implies
//! (`application/json` for `Data::Json`, `text/plain` for `Data::String`), so it
//! comes back as the same variant.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::event::{ExtensionValue, SpecVersion as SdkSpecVersion};
use cloudevents::{AttributesReader as _, AttributesWriter as _, Data, EventBuilder as _};

use crate::event::{AttributeValue, Event, SpecVersion};
use crate::pb::cloudevents::CloudEvent;
use crate::validate::EventError;

/// Converts an SDK event to cemesh's.
pub fn from_sdk(sdk: &cloudevents::Event) -> Result<Event, EventError> {
    let mut event = Event::new(sdk.id(), sdk.source().as_str(), sdk.ty());
    event.specversion = match sdk.specversion() {
        SdkSpecVersion::V03 => SpecVersion::V03,
        SdkSpecVersion::V10 => SpecVersion::V10,
    };
    event.datacontenttype = sdk.datacontenttype().map(str::to_owned);
    event.dataschema = sdk.dataschema().map(|u| u.as_str().to_owned());
    event.subject = sdk.subject().map(str::to_owned);
    event.time = sdk.time().map(rfc3339);
    let mut extensions: Vec<_> = sdk.iter_extensions().collect();
    extensions.sort_by_key(|(name, _)| *name);
    for (name, value) in extensions {
        let value = match value {
            ExtensionValue::String(s) => AttributeValue::String(s.clone()),
            ExtensionValue::Boolean(b) => AttributeValue::Boolean(*b),
            ExtensionValue::Integer(i) => {
                AttributeValue::Integer(i32::try_from(*i).map_err(|_| {
                    EventError::attr(
                        name,
                        format!("extension {name}: {i} is outside the CloudEvents Integer range (32 bits)"),
                    )
                })?)
            }
        };
        event.extensions.push((name.to_owned(), value));
    }
    event.data = match sdk.data() {
        None => None,
        Some(Data::Binary(b)) => Some(Bytes::copy_from_slice(b)),
        Some(Data::String(s)) => {
            event
                .datacontenttype
                .get_or_insert_with(|| "text/plain".to_owned());
            Some(Bytes::copy_from_slice(s.as_bytes()))
        }
        Some(Data::Json(v)) => {
            event
                .datacontenttype
                .get_or_insert_with(|| "application/json".to_owned());
            let json = serde_json::to_vec(v)
                .map_err(|e| EventError::attr("data", format!("data: {e}")))?;
            Some(Bytes::from(json))
        }
    };
    Ok(event)
}

/// The SDK's rendering of a time, which is also the canonical form of a protobuf
/// Timestamp: UTC, fraction digits only as needed.
fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Converts cemesh's event to an SDK event (see the module docs for what the SDK
/// cannot hold).
pub fn to_sdk(event: &Event) -> Result<cloudevents::Event, EventError> {
    macro_rules! build {
        ($builder:ty) => {{
            let mut b = <$builder>::new()
                .id(event.id.as_str())
                .source(event.source.as_str())
                .ty(event.ty.as_str());
            if let Some(subject) = &event.subject {
                b = b.subject(subject.as_str());
            }
            if let Some(time) = &event.time {
                b = b.time(time.as_str());
            }
            for (name, value) in &event.extensions {
                b = b.extension(name, extension_to_sdk(value));
            }
            b.build()
        }};
    }
    let built = match event.specversion {
        SpecVersion::V10 => build!(cloudevents::EventBuilderV10),
        SpecVersion::V03 => build!(cloudevents::EventBuilderV03),
    };
    let mut sdk = built.map_err(|e| {
        let msg = format!("not representable as a cloudevents::Event: {e}");
        match &e {
            cloudevents::event::EventBuilderError::MissingRequiredAttribute { attribute_name }
            | cloudevents::event::EventBuilderError::InvalidUriRefError { attribute_name }
            | cloudevents::event::EventBuilderError::ParseTimeError { attribute_name, .. }
            | cloudevents::event::EventBuilderError::ParseUrlError { attribute_name, .. } => {
                EventError::attr(*attribute_name, msg)
            }
        }
    })?;
    sdk.set_datacontenttype(event.datacontenttype.as_deref());
    if let Some(schema) = &event.dataschema {
        let name = event.specversion.dataschema_name();
        let url = url::Url::parse(schema).map_err(|e| {
            EventError::attr(
                name,
                format!("{name} {schema:?} is not an absolute URL: {e}"),
            )
        })?;
        sdk.set_dataschema(Some(url));
    }
    if let Some(data) = &event.data {
        sdk.set_data_unchecked(data_to_sdk(event.datacontenttype.as_deref(), data));
    }
    Ok(sdk)
}

fn extension_to_sdk(value: &AttributeValue) -> ExtensionValue {
    match value {
        AttributeValue::Boolean(b) => ExtensionValue::Boolean(*b),
        AttributeValue::Integer(i) => ExtensionValue::Integer(i64::from(*i)),
        AttributeValue::String(s) => ExtensionValue::String(s.clone()),
        other => ExtensionValue::String(other.to_canonical()),
    }
}

/// JSON types → `Data::Json` when the bytes parse; textual types → `Data::String`
/// when they are UTF-8; everything else → `Data::Binary`.
fn data_to_sdk(ct: Option<&str>, data: &Bytes) -> Data {
    if let Some(ct) = ct {
        if crate::json::is_json_content_type(Some(ct)) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                return Data::Json(v);
            }
        }
        if crate::protobuf::is_text_media_type(ct) {
            if let Ok(s) = std::str::from_utf8(data) {
                return Data::String(s.to_owned());
            }
        }
    }
    Data::Binary(data.to_vec())
}

/// Converts an SDK event to the protobuf message.
pub fn sdk_to_proto(sdk: &cloudevents::Event) -> Result<CloudEvent, EventError> {
    Ok(crate::protobuf::to_proto(&from_sdk(sdk)?))
}

/// Converts a protobuf message to an SDK event.
pub fn sdk_from_proto(msg: CloudEvent) -> Result<cloudevents::Event, EventError> {
    to_sdk(&crate::protobuf::from_proto(msg)?)
}

impl TryFrom<&cloudevents::Event> for Event {
    type Error = EventError;

    fn try_from(sdk: &cloudevents::Event) -> Result<Self, Self::Error> {
        from_sdk(sdk)
    }
}

impl TryFrom<&Event> for cloudevents::Event {
    type Error = EventError;

    fn try_from(event: &Event) -> Result<Self, Self::Error> {
        to_sdk(event)
    }
}

#[cfg(test)]
mod tests {
    use cloudevents::{EventBuilder as _, EventBuilderV03, EventBuilderV10};
    use proptest::prelude::*;
    use prost::Message as _;
    use serde_json::json;

    use super::*;

    fn through_proto(sdk: &cloudevents::Event) -> cloudevents::Event {
        let bytes = sdk_to_proto(sdk).unwrap().encode_to_vec();
        sdk_from_proto(CloudEvent::decode(bytes.as_slice()).unwrap()).unwrap()
    }

    #[test]
    fn full_sdk_event_round_trips() {
        let sdk = EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .subject("sub")
            .time("2026-01-01T10:00:00.25+02:00")
            .extension("flag", true)
            .extension("n", 42i64)
            .extension("s", "x y")
            .data_with_schema(
                "application/json",
                "https://example.com/schema",
                json!({"a": [1, 2.5, "z"], "b": null}),
            )
            .build()
            .unwrap();
        assert_eq!(through_proto(&sdk), sdk);
        assert_eq!(to_sdk(&from_sdk(&sdk).unwrap()).unwrap(), sdk);
        let e = from_sdk(&sdk).unwrap();
        assert_eq!(e.time.as_deref(), Some("2026-01-01T08:00:00.250Z"));
        assert_eq!(e.extension("n"), Some(&AttributeValue::Integer(42)));
    }

    #[test]
    fn what_the_sdk_cannot_hold() {
        let mut e = Event::new("1", "/s", "t");
        e.time = Some("2026-01-01T10:00:00+02:00".into());
        e.extensions = vec![
            (
                "bin".into(),
                AttributeValue::Binary(Bytes::from_static(&[1, 2])),
            ),
            ("u".into(), AttributeValue::Uri("https://a".into())),
        ];
        let sdk = to_sdk(&e).unwrap();
        assert_eq!(
            sdk.extension("bin"),
            Some(&ExtensionValue::String("AQI=".into()))
        );
        assert_eq!(
            sdk.time().map(rfc3339).as_deref(),
            Some("2026-01-01T08:00:00Z")
        );
        let big = EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .extension("big", i64::MAX)
            .build()
            .unwrap();
        assert_eq!(
            from_sdk(&big).unwrap_err().attribute.as_deref(),
            Some("big")
        );
    }

    #[test]
    fn data_variants_keep_their_kind() {
        let base = || EventBuilderV03::new().id("1").source("/s").ty("t");
        for sdk in [
            base().data("text/plain", "héllo").build().unwrap(),
            base()
                .data("application/octet-stream", vec![0u8, 255])
                .build()
                .unwrap(),
            base()
                .data("application/cloudevents+json", json!([1, {"k": "v"}]))
                .build()
                .unwrap(),
        ] {
            assert_eq!(through_proto(&sdk), sdk);
        }
        let mut no_type = base().build().unwrap();
        no_type.set_data_unchecked(json!({"k": 1}));
        let back = through_proto(&no_type);
        assert_eq!(back.datacontenttype(), Some("application/json"));
        assert_eq!(back.data(), no_type.data());
    }

    fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn sdk_data_strategy() -> impl Strategy<Value = Option<(String, Data)>> {
        prop_oneof![
            Just(None),
            json_strategy().prop_map(|v| Some(("application/json".to_owned(), Data::Json(v)))),
            any::<String>().prop_map(|s| Some(("text/plain".to_owned(), Data::String(s)))),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| Some(("application/octet-stream".to_owned(), Data::Binary(b)))),
        ]
    }

    fn extension_strategy() -> impl Strategy<Value = ExtensionValue> {
        prop_oneof![
            any::<String>().prop_map(ExtensionValue::String),
            any::<bool>().prop_map(ExtensionValue::Boolean),
            any::<i32>().prop_map(|i| ExtensionValue::Integer(i64::from(i))),
        ]
    }

    prop_compose! {
        fn sdk_event_strategy()(
            v03 in any::<bool>(),
            id in any::<String>(),
            source in ".+",
            ty in any::<String>(),
            subject in proptest::option::of(any::<String>()),
            time in proptest::option::of((0i64..253_402_300_799, 0u32..1_000_000_000)),
            schema in proptest::option::of("https://example\\.com/[a-z]{0,8}"),
            extensions in proptest::collection::vec(("[a-z0-9]{1,10}", extension_strategy()), 0..6),
            data in sdk_data_strategy(),
        ) -> cloudevents::Event {
            let mut e = if v03 {
                EventBuilderV03::new().id(id).source(source).ty(ty).build().unwrap()
            } else {
                EventBuilderV10::new().id(id).source(source).ty(ty).build().unwrap()
            };
            e.set_subject(subject);
            e.set_time(time.and_then(|(s, n)| DateTime::<Utc>::from_timestamp(s, n)));
            e.set_dataschema(schema.map(|s| url::Url::parse(&s).unwrap()));
            for (name, value) in extensions {
                if !crate::event::is_core_attribute(crate::SpecVersion::V03, &name)
                    && !crate::event::is_core_attribute(crate::SpecVersion::V10, &name)
                {
                    e.set_extension(&name, value);
                }
            }
            if let Some((ct, data)) = data {
                e.set_data(ct, data);
            }
            e
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn sdk_events_survive_cemesh_and_protobuf(sdk in sdk_event_strategy()) {
            prop_assert_eq!(to_sdk(&from_sdk(&sdk).unwrap()).unwrap(), sdk.clone());
            prop_assert_eq!(through_proto(&sdk), sdk);
        }
    }
}
