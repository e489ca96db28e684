//! The storage encoding: how channels that persist events (sled, Kafka) turn an
//! [`Event`] into bytes and back. One function each way, so the format can change in
//! one place (the CloudEvents protobuf format is the intended successor).
//!
//! Format v1: a tag byte, then length-prefixed fields; every attribute keeps its type.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::event::{AttributeValue, Event, SpecVersion};

const FORMAT_V1: u8 = 1;

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt stored event: {0}")]
pub struct CodecError(pub &'static str);

/// Encodes an event for storage.
pub fn encode(event: &Event) -> Bytes {
    let mut b = BytesMut::with_capacity(64 + event.approx_size());
    b.put_u8(FORMAT_V1);
    b.put_u8(match event.specversion {
        SpecVersion::V03 => 3,
        SpecVersion::V10 => 10,
    });
    put_str(&mut b, &event.id);
    put_str(&mut b, &event.source);
    put_str(&mut b, &event.ty);
    for opt in [
        &event.datacontenttype,
        &event.dataschema,
        &event.subject,
        &event.time,
    ] {
        match opt {
            Some(s) => {
                b.put_u8(1);
                put_str(&mut b, s);
            }
            None => b.put_u8(0),
        }
    }
    b.put_u32(event.extensions.len() as u32);
    for (name, value) in &event.extensions {
        put_str(&mut b, name);
        match value {
            AttributeValue::Boolean(v) => {
                b.put_u8(0);
                b.put_u8(u8::from(*v));
            }
            AttributeValue::Integer(i) => {
                b.put_u8(1);
                b.put_i32(*i);
            }
            AttributeValue::String(s) => {
                b.put_u8(2);
                put_str(&mut b, s);
            }
            AttributeValue::Binary(d) => {
                b.put_u8(3);
                put_bytes(&mut b, d);
            }
            AttributeValue::Uri(s) => {
                b.put_u8(4);
                put_str(&mut b, s);
            }
            AttributeValue::UriRef(s) => {
                b.put_u8(5);
                put_str(&mut b, s);
            }
            AttributeValue::Timestamp(s) => {
                b.put_u8(6);
                put_str(&mut b, s);
            }
        }
    }
    match &event.data {
        Some(d) => {
            b.put_u8(1);
            put_bytes(&mut b, d);
        }
        None => b.put_u8(0),
    }
    b.freeze()
}

/// Decodes stored bytes; the data is sliced from `bytes` without a copy.
pub fn decode(bytes: &Bytes) -> Result<Event, CodecError> {
    let mut r = bytes.clone();
    if get_u8(&mut r)? != FORMAT_V1 {
        return Err(CodecError("unknown format version"));
    }
    let specversion = match get_u8(&mut r)? {
        3 => SpecVersion::V03,
        10 => SpecVersion::V10,
        _ => return Err(CodecError("unknown specversion")),
    };
    let id = get_str(&mut r)?;
    let source = get_str(&mut r)?;
    let ty = get_str(&mut r)?;
    let mut opts: [Option<String>; 4] = Default::default();
    for slot in &mut opts {
        if get_u8(&mut r)? == 1 {
            *slot = Some(get_str(&mut r)?);
        }
    }
    let [datacontenttype, dataschema, subject, time] = opts;
    let n = get_u32(&mut r)? as usize;
    let mut extensions = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let name = get_str(&mut r)?;
        let value = match get_u8(&mut r)? {
            0 => AttributeValue::Boolean(get_u8(&mut r)? != 0),
            1 => {
                if r.remaining() < 4 {
                    return Err(CodecError("truncated integer"));
                }
                AttributeValue::Integer(r.get_i32())
            }
            2 => AttributeValue::String(get_str(&mut r)?),
            3 => AttributeValue::Binary(get_bytes(&mut r)?),
            4 => AttributeValue::Uri(get_str(&mut r)?),
            5 => AttributeValue::UriRef(get_str(&mut r)?),
            6 => AttributeValue::Timestamp(get_str(&mut r)?),
            _ => return Err(CodecError("unknown attribute type")),
        };
        extensions.push((name, value));
    }
    let data = match get_u8(&mut r)? {
        1 => Some(get_bytes(&mut r)?),
        _ => None,
    };
    Ok(Event {
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
    })
}

fn put_str(b: &mut BytesMut, s: &str) {
    put_bytes(b, s.as_bytes());
}

fn put_bytes(b: &mut BytesMut, d: &[u8]) {
    b.put_u32(d.len() as u32);
    b.put_slice(d);
}

fn get_u8(r: &mut Bytes) -> Result<u8, CodecError> {
    if r.remaining() < 1 {
        return Err(CodecError("truncated"));
    }
    Ok(r.get_u8())
}

fn get_u32(r: &mut Bytes) -> Result<u32, CodecError> {
    if r.remaining() < 4 {
        return Err(CodecError("truncated length"));
    }
    Ok(r.get_u32())
}

fn get_bytes(r: &mut Bytes) -> Result<Bytes, CodecError> {
    let n = get_u32(r)? as usize;
    if r.remaining() < n {
        return Err(CodecError("truncated field"));
    }
    Ok(r.split_to(n))
}

fn get_str(r: &mut Bytes) -> Result<String, CodecError> {
    let b = get_bytes(r)?;
    String::from_utf8(b.to_vec()).map_err(|_| CodecError("invalid UTF-8 in a string field"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_type() {
        let mut e = Event::new("id", "/src", "t");
        e.time = Some("2026-01-01T00:00:00-07:00".into());
        e.datacontenttype = Some("application/octet-stream".into());
        e.extensions = vec![
            ("b".into(), AttributeValue::Boolean(true)),
            ("i".into(), AttributeValue::Integer(i32::MIN)),
            ("s".into(), AttributeValue::String("ü".into())),
            (
                "x".into(),
                AttributeValue::Binary(Bytes::from_static(&[0, 1])),
            ),
            ("u".into(), AttributeValue::Uri("https://a".into())),
            ("r".into(), AttributeValue::UriRef("/a".into())),
            (
                "ts".into(),
                AttributeValue::Timestamp("2026-01-01T00:00:00Z".into()),
            ),
        ];
        e.data = Some(Bytes::from_static(&[9, 8, 7]));
        assert_eq!(decode(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let full = encode(&Event::new("id", "/src", "t"));
        for n in 0..full.len() {
            assert!(decode(&full.slice(..n)).is_err());
        }
    }
}
