//! The storage encoding: how channels that persist events (sled, Kafka) turn an
//! [`Event`] into bytes and back. One function each way, so the format changes in one
//! place.
//!
//! The format is the CloudEvents protobuf format ([`crate::protobuf`]): a standard,
//! typed and compact encoding that any CloudEvents protobuf consumer can read from a
//! Kafka topic, that keeps every attribute exactly (see that module), and that decodes
//! data by slicing the stored buffer instead of copying it. One encode on ingress, one
//! decode on dispatch.
//!
//! Records written before the switch (cemesh's own "format v1", a tag byte `0x01` and
//! length-prefixed fields) still decode: a protobuf message never starts with `0x01`
//! (that would be field number 0), so the first byte tells the formats apart. A later
//! format can claim another such byte (`0x00`, `0x02`..`0x07`).

use bytes::Bytes;
use prost::Message as _;

use crate::event::Event;
use crate::pb::cloudevents::CloudEvent;

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt stored event: {0}")]
pub struct CodecError(pub String);

/// Encodes an event for storage.
pub fn encode(event: &Event) -> Bytes {
    Bytes::from(crate::protobuf::encode_event(event))
}

/// Decodes stored bytes; binary data is sliced from `bytes` without a copy. Events are
/// not validated again: they were when they came in.
pub fn decode(bytes: &Bytes) -> Result<Event, CodecError> {
    if bytes.first() == Some(&legacy::FORMAT_V1) {
        return legacy::decode(bytes).map_err(|e| CodecError(format!("legacy format: {}", e.0)));
    }
    let msg = CloudEvent::decode(bytes.clone()).map_err(|e| CodecError(e.to_string()))?;
    crate::protobuf::from_proto(msg).map_err(|e| CodecError(e.to_string()))
}

/// cemesh's first storage format, kept for reading records written before the switch
/// to protobuf.
mod legacy {
    use bytes::{Buf, Bytes};
    #[cfg(test)]
    use bytes::{BufMut, BytesMut};

    use crate::event::{AttributeValue, Event, SpecVersion};

    /// Why legacy bytes could not be decoded.
    #[derive(Debug)]
    pub(super) struct CodecError(pub(super) &'static str);

    pub(super) const FORMAT_V1: u8 = 1;

    /// Encodes an event in the legacy format (tests only: nothing writes it now).
    #[cfg(test)]
    pub(super) fn encode(event: &Event) -> Bytes {
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

    pub(super) fn decode(bytes: &Bytes) -> Result<Event, CodecError> {
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
            json: Default::default(),
        })
    }

    #[cfg(test)]
    fn put_str(b: &mut BytesMut, s: &str) {
        put_bytes(b, s.as_bytes());
    }

    #[cfg(test)]
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
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::event::AttributeValue;

    fn every_type() -> Event {
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
        e
    }

    #[test]
    fn round_trip_every_type() {
        let e = every_type();
        assert_eq!(decode(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn stored_data_is_sliced_not_copied() {
        let stored = encode(&every_type());
        let data = decode(&stored).unwrap().data.unwrap();
        let range = stored.as_ptr() as usize..stored.as_ptr() as usize + stored.len();
        assert!(range.contains(&(data.as_ptr() as usize)));
    }

    #[test]
    fn legacy_records_still_decode() {
        let e = every_type();
        let old = legacy::encode(&e);
        assert_eq!(old[0], legacy::FORMAT_V1);
        assert_eq!(decode(&old).unwrap(), e);
        for n in 0..old.len() {
            assert!(decode(&old.slice(..n)).is_err());
        }
    }

    /// A typical stored event: what an ingress stamps, a trace header and 1 KiB data.
    fn typical(json: bool) -> Event {
        let mut e = Event::new(
            "0192f1e4-8c1a-7b3e-9a2d-3f1e5c7b9d01",
            "https://shop.example/orders",
            "com.example.order.created",
        );
        e.time = Some("2026-11-24T10:00:00.123456+05:30".into());
        e.subject = Some("order-42".into());
        e.extensions = vec![
            (
                "traceparent".into(),
                AttributeValue::String(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ),
            ),
            (
                "knativearrivaltime".into(),
                AttributeValue::String("2026-11-24T04:30:00.124001Z".into()),
            ),
            ("knativebrokerttl".into(), AttributeValue::Integer(255)),
        ];
        if json {
            e.datacontenttype = Some("application/json".into());
            let mut data = String::from("{\"items\":[");
            let mut i = 0;
            while data.len() < 1000 {
                if i > 0 {
                    data.push(',');
                }
                data.push_str(&format!(
                    "{{\"sku\":\"A-{i:04}\",\"qty\":{i},\"price\":12.50}}"
                ));
                i += 1;
            }
            data.push_str("]}");
            e.data = Some(Bytes::from(data));
        } else {
            e.datacontenttype = Some("application/octet-stream".into());
            e.data = Some(Bytes::from(
                (0..1024u32)
                    .map(|i| (i * 7 % 251) as u8)
                    .collect::<Vec<_>>(),
            ));
        }
        e
    }

    fn ns_per_op(iterations: u32, mut f: impl FnMut()) -> f64 {
        for _ in 0..iterations / 10 {
            f();
        }
        let start = std::time::Instant::now();
        for _ in 0..iterations {
            f();
        }
        start.elapsed().as_nanos() as f64 / f64::from(iterations)
    }

    /// Size and speed of the storage encoding against the JSON structured format and
    /// the old format. Run with
    /// `cargo test -p cemesh-proto --release -- --ignored --nocapture storage_format`.
    #[test]
    #[ignore = "a measurement; run in release"]
    fn storage_format_size_and_speed() {
        use std::hint::black_box;
        const N: u32 = 200_000;
        for (label, e) in [
            ("1 KiB JSON data", typical(true)),
            ("1 KiB binary data", typical(false)),
        ] {
            let pb = encode(&e);
            let json = Bytes::from(crate::json::encode_event(&e));
            let old = legacy::encode(&e);
            assert_eq!(decode(&pb).unwrap(), e);
            // (JSON orders extensions by name, so compare the data only.)
            assert_eq!(crate::json::decode_event(&json).unwrap().data, e.data);
            println!(
                "{label}: data {} bytes",
                e.data.as_ref().map_or(0, Bytes::len)
            );
            println!("  format           size   encode ns   decode ns");
            let row = |name: &str, size: usize, enc: f64, dec: f64| {
                println!("  {name:<15} {size:>5} {enc:>11.0} {dec:>11.0}");
            };
            row(
                "protobuf",
                pb.len(),
                ns_per_op(N, || {
                    black_box(encode(black_box(&e)));
                }),
                ns_per_op(N, || {
                    black_box(decode(black_box(&pb)).unwrap());
                }),
            );
            row(
                "protobuf+valid.",
                pb.len(),
                f64::NAN,
                ns_per_op(N, || {
                    black_box(crate::protobuf::decode_event(black_box(pb.clone())).unwrap());
                }),
            );
            row(
                "JSON structured",
                json.len(),
                ns_per_op(N, || {
                    black_box(crate::json::encode_event(black_box(&e)));
                }),
                ns_per_op(N, || {
                    black_box(crate::json::decode_event(black_box(&json)).unwrap());
                }),
            );
            row(
                "old format v1",
                old.len(),
                ns_per_op(N, || {
                    black_box(legacy::encode(black_box(&e)));
                }),
                ns_per_op(N, || {
                    black_box(decode(black_box(&old)).unwrap());
                }),
            );
        }
    }

    proptest! {
        #[test]
        fn corrupt_bytes_are_an_error_not_a_panic(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&Bytes::from(body));
        }
    }
}
