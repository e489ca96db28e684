//! The JSON event format (`application/cloudevents+json`) and its batch form.
//!
//! JSON `data` is kept as the exact text the producer sent (a `RawValue`), so a JSON
//! payload reaches subscribers byte for byte.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::event::{AttributeValue, Event, SpecVersion};
use crate::validate::{check_name, validate, EventError};

type RawMap = HashMap<String, Box<RawValue>>;

/// Decodes one structured-mode event and validates it.
pub fn decode_event(body: &[u8]) -> Result<Event, EventError> {
    let map: RawMap = serde_json::from_slice(body)
        .map_err(|e| EventError::msg(format!("body is not a JSON CloudEvent object: {e}")))?;
    from_raw_map(map)
}

/// Decodes a JSON batch (an array of events, possibly empty). The batch is refused
/// whole if any event is invalid; the error names the index.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let maps: Vec<RawMap> = serde_json::from_slice(body).map_err(|e| {
        EventError::msg(format!(
            "body is not a JSON array of CloudEvent objects: {e}"
        ))
    })?;
    let mut events = Vec::with_capacity(maps.len());
    for (i, map) in maps.into_iter().enumerate() {
        let id = map
            .get("id")
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        let event = from_raw_map(map).map_err(|e| e.in_batch(i, id.as_deref()))?;
        if let Some(first) = events.first() {
            let first: &Event = first;
            if first.specversion != event.specversion {
                return Err(EventError::attr(
                    "specversion",
                    "all events of a batch must share specversion",
                )
                .in_batch(i, Some(&event.id)));
            }
        }
        events.push(event);
    }
    Ok(events)
}

fn from_raw_map(mut map: RawMap) -> Result<Event, EventError> {
    let specversion = match map.remove("specversion") {
        None => {
            return Err(EventError::attr(
                "specversion",
                "required attribute specversion is missing",
            ))
        }
        Some(raw) => {
            let s = string_attr("specversion", &raw)?.unwrap_or_default();
            SpecVersion::parse(&s).ok_or_else(|| {
                EventError::attr(
                    "specversion",
                    format!("specversion {s:?} is not supported (use \"1.0\" or \"0.3\")"),
                )
            })?
        }
    };
    let mut take = |name: &str| -> Result<Option<String>, EventError> {
        match map.remove(name) {
            Some(raw) => string_attr(name, &raw),
            None => Ok(None),
        }
    };
    let id = take("id")?.unwrap_or_default();
    let source = take("source")?.unwrap_or_default();
    let ty = take("type")?.unwrap_or_default();
    let mut datacontenttype = take("datacontenttype")?;
    let dataschema = take(specversion.dataschema_name())?;
    let subject = take("subject")?;
    let time = take("time")?;
    let content_encoding = if specversion == SpecVersion::V03 {
        take("datacontentencoding")?
    } else {
        None
    };
    let data_raw = map.remove("data");
    let data_b64 = map.remove("data_base64");

    let data = match (data_raw, data_b64) {
        (Some(_), Some(_)) => {
            return Err(EventError::attr(
                "data",
                "data and data_base64 must not both be present",
            ))
        }
        (None, Some(b64)) => match string_attr("data_base64", &b64)? {
            None => None,
            Some(s) => Some(decode_base64("data_base64", &s)?),
        },
        (Some(raw), None) => {
            if content_encoding.as_deref() == Some("base64") {
                match string_attr("data", &raw)? {
                    None => None,
                    Some(s) => Some(decode_base64("data", &s)?),
                }
            } else if is_json_content_type(datacontenttype.as_deref()) {
                if datacontenttype.is_none() {
                    // The JSON format implies application/json; say so explicitly when
                    // the event moves to another binding (spec, JSON format §2.4).
                    datacontenttype = Some("application/json".to_owned());
                }
                Some(Bytes::copy_from_slice(raw.get().as_bytes()))
            } else {
                match serde_json::from_str::<Value>(raw.get()) {
                    Ok(Value::String(s)) => Some(Bytes::from(s)),
                    Ok(Value::Null) => None,
                    _ => {
                        return Err(EventError::attr(
                            "data",
                            "data must be a JSON string when datacontenttype is not JSON",
                        ))
                    }
                }
            }
        }
        (None, None) => None,
    };

    let mut extensions = Vec::with_capacity(map.len());
    let mut names: Vec<_> = map.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, raw) in names {
        check_name(&name)?;
        let value: Value = serde_json::from_str(raw.get())
            .map_err(|e| EventError::attr(name.as_str(), format!("{name}: {e}")))?;
        let value = match value {
            Value::Null => continue,
            Value::Bool(b) => AttributeValue::Boolean(b),
            Value::String(s) => AttributeValue::String(s),
            Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => AttributeValue::Integer(i),
                None => {
                    return Err(EventError::attr(
                        name.as_str(),
                        format!("extension {name}: {n} is not a 32-bit integer"),
                    ))
                }
            },
            Value::Array(_) | Value::Object(_) => {
                return Err(EventError::attr(
                    name.as_str(),
                    format!(
                        "extension {name}: arrays and objects are not CloudEvents attribute values"
                    ),
                ))
            }
        };
        extensions.push((name, value));
    }

    let event = Event {
        specversion,
        id,
        source,
        ty,
        datacontenttype,
        dataschema,
        subject,
        time,
        extensions,
        data,
        json: Default::default(),
    };
    validate(&event)?;
    Ok(event)
}

fn string_attr(name: &str, raw: &RawValue) -> Result<Option<String>, EventError> {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::String(s)) => Ok(Some(s)),
        Ok(Value::Null) => Ok(None),
        _ => Err(EventError::attr(
            name,
            format!("attribute {name} must be a JSON string"),
        )),
    }
}

fn decode_base64(name: &str, s: &str) -> Result<Bytes, EventError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(Bytes::from)
        .map_err(|e| EventError::attr(name, format!("{name} is not valid Base64: {e}")))
}

/// `*/json` or `*/*+json`, parameters ignored, case-insensitive; absent means JSON.
pub fn is_json_content_type(ct: Option<&str>) -> bool {
    let Some(ct) = ct else { return true };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((_, sub)) = essence.split_once('/') else {
        return false;
    };
    sub.eq_ignore_ascii_case("json")
        || (sub.len() > 5 && sub.as_bytes()[sub.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

fn is_text_content_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    let lower = essence.to_ascii_lowercase();
    lower.starts_with("text/") || lower.ends_with("+xml") || lower == "application/xml"
}

/// Encodes one event in the JSON format.
pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + event.data.as_ref().map_or(0, |d| d.len() * 4 / 3));
    write_event(&mut out, event);
    out
}

/// Encodes events as a JSON batch.
pub fn encode_batch(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(&mut out, e);
    }
    out.push(b']');
    out
}

fn write_event(out: &mut Vec<u8>, event: &Event) {
    out.push(b'{');
    let mut first = true;
    for (name, value) in event.attributes() {
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, name);
        out.push(b':');
        match value {
            crate::AttrRef::Boolean(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            crate::AttrRef::Integer(i) => {
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes())
            }
            crate::AttrRef::Str(s) => write_str(out, s),
            crate::AttrRef::Binary(b) => {
                write_str(out, &base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }
    if let Some(data) = &event.data {
        let ct = event.datacontenttype.as_deref();
        let as_json = is_json_content_type(ct)
            && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
        let as_text =
            !as_json && ct.is_some_and(is_text_content_type) && std::str::from_utf8(data).is_ok();
        if !first {
            out.push(b',');
        }
        if as_json {
            out.extend_from_slice(b"\"data\":");
            out.extend_from_slice(data);
        } else if as_text {
            out.extend_from_slice(b"\"data\":");
            write_str(out, std::str::from_utf8(data).unwrap_or_default());
        } else {
            out.extend_from_slice(b"\"data_base64\":");
            write_str(out, &base64::engine::general_purpose::STANDARD.encode(data));
        }
    }
    out.push(b'}');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_is_kept_byte_for_byte() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"b": 1.50, "a":[1,2]}}"#;
        let e = decode_event(body).unwrap();
        assert_eq!(e.data.as_deref(), Some(&br#"{"b": 1.50, "a":[1,2]}"#[..]));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        let again = decode_event(&encode_event(&e)).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn extensions_are_typed() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","flag":true,"n":-5,"s":"x","gone":null}"#;
        let e = decode_event(body).unwrap();
        assert_eq!(e.extension("flag"), Some(&AttributeValue::Boolean(true)));
        assert_eq!(e.extension("n"), Some(&AttributeValue::Integer(-5)));
        assert_eq!(e.extension("gone"), None);
    }

    #[test]
    fn invalid_events_name_the_attribute() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"id":"1","source":"/s","type":"t"}"#, "specversion"),
            (br#"{"specversion":"1.0","source":"/s","type":"t"}"#, "id"),
            (br#"{"specversion":"1.0","id":5,"source":"/s","type":"t"}"#, "id"),
            (br#"{"specversion":"2.0","id":"1","source":"/s","type":"t"}"#, "specversion"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":1.5}"#, "x"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#, "data"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#, "time"),
        ];
        for (body, attr) in cases {
            let err = decode_event(body).unwrap_err();
            assert_eq!(
                err.attribute.as_deref(),
                Some(*attr),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn binary_and_text_data_round_trip() {
        let mut e = Event::new("1", "/s", "t");
        e.datacontenttype = Some("application/octet-stream".into());
        e.data = Some(Bytes::from_static(&[0, 159, 146, 150, 255]));
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
        e.datacontenttype = Some("text/plain".into());
        e.data = Some(Bytes::from_static("héllo \"q\"".as_bytes()));
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
    }

    #[test]
    fn non_ascii_content_types_do_not_panic() {
        assert!(!is_json_content_type(Some("a/p𞺁y")));
        let body = "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"datacontenttype\":\"a/p\u{1ee81}y\",\"data\":\"x\"}";
        assert!(decode_event(body.as_bytes()).is_err());
    }

    #[test]
    fn batch_is_refused_whole() {
        let body = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","source":"/s","type":"t"}]"#;
        let err = decode_batch(body).unwrap_err();
        assert!(err.message.contains("event at index 1"), "{err}");
        assert_eq!(decode_batch(b"[]").unwrap().len(), 0);
    }

    #[test]
    fn a_batch_error_names_the_index_base_and_the_id() {
        let err = decode_batch(
            br#"[{"specversion":"1.0","id":"a","source":"/s","type":"t"},
                 {"specversion":"1.0","id":"b","source":"","type":"t"},
                 {"specversion":"1.0","source":"/s","type":"t"}]"#,
        )
        .unwrap_err();
        assert!(
            err.message
                .starts_with("batch event at index 1 (from 0, id \"b\"): "),
            "{err}"
        );
        let err = decode_batch(
            br#"[{"specversion":"1.0","id":"a","source":"/s","type":"t"},
                 {"specversion":"1.0","source":"/s","type":"t"}]"#,
        )
        .unwrap_err();
        assert!(
            err.message.starts_with("batch event at index 1 (from 0): "),
            "{err}"
        );
        assert_eq!(err.attribute.as_deref(), Some("id"));
    }
}
