//! Hostile input for the HTTP decoder, as a property test: whatever headers and body a
//! client sends (every content mode, random `ce-` headers, random JSON-ish and raw
//! bytes), decoding never panics, and whatever it accepts is a valid event that
//! survives being sent on: encoded in binary mode and decoded again, it is equal.

use bytes::Bytes;
use cemesh_proto::http::{decode, encode_binary, BATCH_JSON, STRUCTURED_JSON};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(STRUCTURED_JSON.to_owned())),
        Just(Some(BATCH_JSON.to_owned())),
        Just(Some("application/cloudevents+protobuf".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("text/plain".to_owned())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

fn ce_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("ce-id".to_owned()),
        Just("ce-source".to_owned()),
        Just("ce-type".to_owned()),
        Just("ce-specversion".to_owned()),
        Just("ce-time".to_owned()),
        Just("ce-subject".to_owned()),
        Just("ce-dataschema".to_owned()),
        Just("ce-datacontenttype".to_owned()),
        "ce-[a-z0-9]{1,12}",
        "ce-[A-Za-z_-]{1,8}",
    ];
    let value = prop_oneof![
        Just(b"1.0".to_vec()),
        Just(b"/s".to_vec()),
        Just(b"2026-12-03T00:00:00Z".to_vec()),
        "[ -~]{0,30}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..30),
    ];
    proptest::collection::vec((name, value), 0..10)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // JSON-shaped: objects and arrays of CloudEvents-like members.
        r#"\{("(specversion|id|source|type|time|data|data_base64|datacontenttype|x)":("[ -!#-~]{0,12}"|[0-9]{1,4}|null|true|\[\]|\{\}),?){0,8}\}"#
            .prop_map(String::into_bytes),
        r#"\[(\{"specversion":"1.0","id":"[a-z0-9]{1,4}","source":"/s","type":"t"(,"[a-z]{1,5}":"[ -!#-~]{0,6}")?\},?){0,4}\]"#
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn decoding_never_panics_and_what_it_accepts_round_trips(
        ct in content_type(),
        ce in ce_headers(),
        body in body(),
    ) {
        let mut headers = HeaderMap::new();
        if let Some(ct) = &ct {
            if let Ok(v) = HeaderValue::from_str(ct) {
                headers.insert(http::header::CONTENT_TYPE, v);
            }
        }
        for (name, value) in &ce {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        }
        let Ok(events) = decode(&headers, Bytes::from(body)) else {
            return Ok(());
        };
        for event in events {
            let mut out = HeaderMap::new();
            let encoded = encode_binary(&event, &mut out).unwrap_or_default();
            let again = decode(&out, encoded).expect("an accepted event encodes to a valid request");
            prop_assert_eq!(again.len(), 1);
            prop_assert_eq!(&again[0], &event);
        }
    }
}
