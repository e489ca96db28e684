use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;

use super::*;
use crate::pb::cloudevents::cloud_event::{
    AttributesEntry, CloudEventAttributeValue as Value, Data,
};

/// Names an extension may not take in generated events: the core attributes of
/// either version.
const RESERVED: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "schemaurl",
    "subject",
    "time",
];

fn full_event() -> Event {
    let mut e = Event::new("id-1", "https://example.com/src", "com.example.t");
    e.datacontenttype = Some("application/json; charset=utf-8".into());
    e.dataschema = Some("https://example.com/schema".into());
    e.subject = Some("subj".into());
    e.time = Some("2026-01-01T00:00:00.120+02:00".into());
    e.extensions = vec![
        ("zbool".into(), AttributeValue::Boolean(true)),
        ("int".into(), AttributeValue::Integer(i32::MIN)),
        ("str".into(), AttributeValue::String("ü €".into())),
        (
            "bin".into(),
            AttributeValue::Binary(Bytes::from_static(&[0, 255])),
        ),
        ("uri".into(), AttributeValue::Uri("https://a/b".into())),
        ("uriref".into(), AttributeValue::UriRef("/a/b".into())),
        (
            "ts".into(),
            AttributeValue::Timestamp("2026-01-01T00:00:00Z".into()),
        ),
    ];
    e.data = Some(Bytes::from_static(br#"{"b": 1.50, "a":[1,2]}"#));
    e
}

#[test]
fn full_event_round_trips_and_uses_the_spec_types() {
    let e = full_event();
    let msg = to_proto(&e);
    assert_eq!(msg.spec_version, "1.0");
    let attr = |k: &str| {
        msg.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.attr)
    };
    assert!(matches!(attr("dataschema"), Some(Attr::CeUri(_))));
    assert!(matches!(attr("ts"), Some(Attr::CeTimestamp(_))));
    assert_eq!(
        attr("time"),
        Some(Attr::CeTimestamp(prost_types::Timestamp {
            seconds: 1_767_218_400,
            nanos: 120_000_000
        }))
    );
    assert!(matches!(msg.data, Some(Data::TextData(_))), "JSON is text");
    let bytes = encode_event(&e);
    assert_eq!(decode_event(Bytes::from(bytes)).unwrap(), e);
}

#[test]
fn canonical_timestamps_carry_no_text_and_others_do() {
    let v = timestamp_value("2026-01-01T00:00:00Z").unwrap();
    assert!(v.cemesh_timestamp_text.is_empty());
    let v = timestamp_value("2026-01-01T00:00:00.5Z").unwrap();
    assert_eq!(v.cemesh_timestamp_text, "2026-01-01T00:00:00.5Z");
    let v = timestamp_value("2026-01-01T00:00:00.500Z").unwrap();
    assert!(v.cemesh_timestamp_text.is_empty());
    assert!(
        timestamp_value("2026-12-31T23:59:60Z").is_none(),
        "leap second"
    );
}

#[test]
fn foreign_timestamp_text_naming_another_instant_is_ignored() {
    let ts = prost_types::Timestamp {
        seconds: 0,
        nanos: 0,
    };
    let got = timestamp_text("time", &ts, "2026-01-01T00:00:00Z".into()).unwrap();
    assert_eq!(got, "1970-01-01T00:00:00Z");
}

#[test]
fn data_placement_follows_the_spec() {
    let mut e = Event::new("1", "/s", "t");
    let place = |e: &Event| to_proto(e).data;
    e.data = Some(Bytes::from_static(b"hi"));
    assert!(
        matches!(place(&e), Some(Data::BinaryData(_))),
        "no type: bytes"
    );
    for ct in [
        "text/plain",
        "application/json",
        "application/cloudevents+json",
        "Application/XML",
        "image/svg+xml",
    ] {
        e.datacontenttype = Some(ct.into());
        assert!(matches!(place(&e), Some(Data::TextData(_))), "{ct}");
    }
    e.datacontenttype = Some("text/plain".into());
    e.data = Some(Bytes::from_static(&[0xff, 0xfe]));
    assert!(
        matches!(place(&e), Some(Data::BinaryData(_))),
        "invalid UTF-8 stays bytes"
    );
    e.datacontenttype = Some("application/protobuf".into());
    assert!(
        matches!(place(&e), Some(Data::BinaryData(_))),
        "no dataschema: bytes"
    );
    e.dataschema = Some("type.googleapis.com/x.Y".into());
    assert!(matches!(place(&e), Some(Data::ProtoData(_))));
    assert_eq!(from_proto(to_proto(&e)).unwrap(), e);
    e.data = Some(Bytes::new());
    assert_eq!(
        from_proto(to_proto(&e)).unwrap(),
        e,
        "empty data is not absent data"
    );
}

#[test]
fn foreign_proto_data_implies_type_and_schema() {
    let msg = CloudEvent {
        id: "1".into(),
        source: "/s".into(),
        spec_version: "1.0".into(),
        r#type: "t".into(),
        attributes: vec![],
        data: Some(Data::ProtoData(prost_types::Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![8, 1],
        })),
    };
    let e = from_proto(msg.clone()).unwrap();
    assert_eq!(e.datacontenttype.as_deref(), Some(PROTOBUF_DATA));
    assert_eq!(e.dataschema.as_deref(), Some("type.googleapis.com/x.Y"));
    assert_eq!(e.data.as_deref(), Some(&[8u8, 1][..]));
    let back = to_proto(&e);
    assert_eq!(back.data, msg.data);
}

#[test]
fn the_spec_map_encoding_decodes() {
    // Hand-written bytes of the spec schema's `map<string, CloudEventAttributeValue>`
    // entry {"subject": ce_string "x"}: field 5, entry {1: key, 2: value {3: "x"}}.
    let mut body = CloudEvent {
        id: "1".into(),
        source: "/s".into(),
        spec_version: "1.0".into(),
        r#type: "t".into(),
        attributes: vec![],
        data: None,
    }
    .encode_to_vec();
    let value = [0x1a, 0x01, b'x'];
    let mut entry = vec![0x0a, 7];
    entry.extend_from_slice(b"subject");
    entry.extend_from_slice(&[0x12, value.len() as u8]);
    entry.extend_from_slice(&value);
    body.push(0x2a);
    body.push(entry.len() as u8);
    body.extend_from_slice(&entry);
    let e = decode_event(Bytes::from(body)).unwrap();
    assert_eq!(e.subject.as_deref(), Some("x"));
}

#[test]
fn refusals_name_the_attribute() {
    let base = || to_proto(&Event::new("1", "/s", "t"));
    let mut m = base();
    m.spec_version = "2.0".into();
    assert_eq!(
        from_proto(m).unwrap_err().attribute.as_deref(),
        Some("specversion")
    );
    let mut m = base();
    m.id.clear();
    let err = decode_event(Bytes::from(m.encode_to_vec())).unwrap_err();
    assert_eq!(err.attribute.as_deref(), Some("id"));
    let mut m = base();
    m.attributes.push(AttributesEntry {
        key: "subject".into(),
        value: Some(value(Attr::CeInteger(1))),
    });
    assert_eq!(
        from_proto(m).unwrap_err().attribute.as_deref(),
        Some("subject")
    );
    let mut m = base();
    m.attributes.push(AttributesEntry {
        key: "ext".into(),
        value: None,
    });
    assert_eq!(from_proto(m).unwrap_err().attribute.as_deref(), Some("ext"));
    let mut m = base();
    m.attributes.push(AttributesEntry {
        key: "Bad".into(),
        value: Some(value(Attr::CeBoolean(true))),
    });
    let err = decode_event(Bytes::from(m.encode_to_vec())).unwrap_err();
    assert_eq!(err.attribute.as_deref(), Some("Bad"));
    assert!(decode_event(Bytes::from_static(b"\xff\xff")).is_err());
}

#[test]
fn repeated_keys_behave_as_a_map() {
    let mut m = to_proto(&Event::new("1", "/s", "t"));
    for i in [1, 2] {
        m.attributes.push(AttributesEntry {
            key: "n".into(),
            value: Some(value(Attr::CeInteger(i))),
        });
    }
    let e = from_proto(m).unwrap();
    assert_eq!(e.extensions, vec![("n".into(), AttributeValue::Integer(2))]);
}

#[test]
fn batches() {
    let events = vec![full_event(), Event::new("2", "/s", "t")];
    let body = Bytes::from(encode_batch(&events));
    assert_eq!(decode_batch(body).unwrap(), events);
    assert_eq!(decode_batch(Bytes::new()).unwrap(), vec![]);
    let mut bad = events.clone();
    bad[1].id.clear();
    let err = decode_batch(Bytes::from(encode_batch(&bad))).unwrap_err();
    assert!(
        err.message.starts_with("batch event at index 1 (from 0"),
        "{err}"
    );
    let mut mixed = events;
    mixed[1].specversion = SpecVersion::V03;
    let err = decode_batch(Bytes::from(encode_batch(&mixed))).unwrap_err();
    assert_eq!(err.attribute.as_deref(), Some("specversion"));
}

// ---- property tests -------------------------------------------------------------

fn timestamp_text_strategy() -> impl Strategy<Value = String> {
    (
        0i64..253_402_300_799, // 0000..9999
        prop_oneof![
            Just(0u32),
            0u32..1_000_000_000,
            (0u32..1000).prop_map(|m| m * 1_000_000)
        ],
        prop_oneof![
            Just(None),
            (-86_399i32..86_399).prop_map(|s| Some(s / 60 * 60))
        ],
        prop_oneof![
            Just(SecondsFormat::AutoSi),
            Just(SecondsFormat::Secs),
            Just(SecondsFormat::Millis),
            Just(SecondsFormat::Micros),
            Just(SecondsFormat::Nanos)
        ],
    )
        .prop_map(|(secs, nanos, offset, fmt)| {
            let utc = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap_or_default();
            match offset.and_then(FixedOffset::east_opt) {
                Some(off) => utc.with_timezone(&off).to_rfc3339_opts(fmt, false),
                None => utc.to_rfc3339_opts(fmt, true),
            }
        })
}

fn time_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => timestamp_text_strategy(),
        1 => any::<String>(),
        1 => Just("2026-12-31T23:59:60Z".to_owned()),
        1 => Just("2026-01-01t00:00:00z".to_owned()),
    ]
}

fn attribute_value_strategy() -> impl Strategy<Value = AttributeValue> {
    prop_oneof![
        any::<bool>().prop_map(AttributeValue::Boolean),
        any::<i32>().prop_map(AttributeValue::Integer),
        any::<String>().prop_map(AttributeValue::String),
        proptest::collection::vec(any::<u8>(), 0..32)
            .prop_map(|b| AttributeValue::Binary(Bytes::from(b))),
        any::<String>().prop_map(AttributeValue::Uri),
        any::<String>().prop_map(AttributeValue::UriRef),
        time_strategy().prop_map(AttributeValue::Timestamp),
    ]
}

fn content_type_strategy() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/plain; charset=utf-8".to_owned())),
        Just(Some("application/octet-stream".to_owned())),
        Just(Some("application/protobuf".to_owned())),
        Just(Some("application/vnd.x+xml".to_owned())),
        any::<String>().prop_map(Some),
    ]
}

fn data_strategy() -> impl Strategy<Value = Option<Bytes>> {
    prop_oneof![
        Just(None),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| Some(Bytes::from(b))),
        any::<String>().prop_map(|s| Some(Bytes::from(s))),
    ]
}

prop_compose! {
    fn event_strategy()(
        v03 in any::<bool>(),
        id in any::<String>(),
        source in any::<String>(),
        ty in any::<String>(),
        datacontenttype in content_type_strategy(),
        dataschema in proptest::option::of(any::<String>()),
        subject in proptest::option::of(any::<String>()),
        time in proptest::option::of(time_strategy()),
        extensions in proptest::collection::vec(("[a-z0-9]{1,12}", attribute_value_strategy()), 0..8),
        data in data_strategy(),
    ) -> Event {
        let mut e = Event::new(id, source, ty);
        e.specversion = if v03 { SpecVersion::V03 } else { SpecVersion::V10 };
        e.datacontenttype = datacontenttype;
        e.dataschema = dataschema;
        e.subject = subject;
        e.time = time;
        for (name, value) in extensions {
            if !RESERVED.contains(&name.as_str()) && e.extension(&name).is_none() {
                e.extensions.push((name, value));
            }
        }
        e.data = data;
        e
    }
}

fn proto_value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Attr::CeBoolean),
        any::<i32>().prop_map(Attr::CeInteger),
        any::<String>().prop_map(Attr::CeString),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(|b| Attr::CeBytes(Bytes::from(b))),
        any::<String>().prop_map(Attr::CeUri),
        any::<String>().prop_map(Attr::CeUriRef),
        (-62_135_596_800i64..253_402_300_799, 0i32..1_000_000_000).prop_map(|(seconds, nanos)| {
            Attr::CeTimestamp(prost_types::Timestamp { seconds, nanos })
        }),
    ]
    .prop_map(value)
}

prop_compose! {
    /// A message as any spec-conformant producer may write it: data in the arm the
    /// spec's rules choose for its content type, no cemesh timestamp text.
    fn proto_strategy()(
        id in any::<String>(),
        source in any::<String>(),
        ty in any::<String>(),
        datacontenttype in content_type_strategy(),
        subject in proptest::option::of(any::<String>()),
        time in proptest::option::of((-62_135_596_800i64..253_402_300_799, 0i32..1_000_000_000)),
        extensions in proptest::collection::vec(("[a-z0-9]{1,12}", proto_value_strategy()), 0..8),
        data in data_strategy(),
    ) -> CloudEvent {
        let mut attributes = Vec::new();
        if let Some(ct) = &datacontenttype {
            attributes.push(AttributesEntry { key: "datacontenttype".into(), value: Some(value(Attr::CeString(ct.clone()))) });
        }
        if let Some(s) = subject {
            attributes.push(AttributesEntry { key: "subject".into(), value: Some(value(Attr::CeString(s))) });
        }
        if let Some((seconds, nanos)) = time {
            attributes.push(AttributesEntry { key: "time".into(), value: Some(value(Attr::CeTimestamp(prost_types::Timestamp { seconds, nanos }))) });
        }
        for (key, v) in extensions {
            if !RESERVED.contains(&key.as_str()) && !attributes.iter().any(|a| a.key == key) {
                attributes.push(AttributesEntry { key, value: Some(v) });
            }
        }
        let data = data.map(|d| {
            let text = datacontenttype.as_deref().is_some_and(is_text_media_type);
            match std::str::from_utf8(&d) {
                Ok(s) if text => Data::TextData(s.to_owned()),
                _ => Data::BinaryData(d),
            }
        });
        CloudEvent { id, source, spec_version: "1.0".into(), r#type: ty, attributes, data }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn event_to_proto_and_back_is_lossless(e in event_strategy()) {
        prop_assert_eq!(from_proto(to_proto(&e)).unwrap(), e.clone());
        let bytes = Bytes::from(encode_event(&e));
        let msg = CloudEvent::decode(bytes).unwrap();
        prop_assert_eq!(from_proto(msg).unwrap(), e);
    }

    #[test]
    fn encoding_from_the_event_writes_the_message_s_bytes(e in event_strategy()) {
        prop_assert_eq!(encode_event(&e), to_proto(&e).encode_to_vec());
    }

    #[test]
    fn proto_to_event_and_back_is_lossless(m in proto_strategy()) {
        let e = from_proto(m.clone()).unwrap();
        prop_assert_eq!(to_proto(&e), m);
    }

    #[test]
    fn batches_round_trip(events in proptest::collection::vec(event_strategy(), 0..4)) {
        let msg = CloudEventBatch::decode(Bytes::from(encode_batch(&events))).unwrap();
        let back: Vec<Event> = msg.events.into_iter().map(|m| from_proto(m).unwrap()).collect();
        prop_assert_eq!(back, events);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_event(Bytes::from(body.clone()));
        let _ = decode_batch(Bytes::from(body));
    }
}
