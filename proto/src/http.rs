//! The CloudEvents HTTP binding: content-mode detection, binary mode with
//! percent-encoded `ce-` headers, structured and batched JSON and protobuf.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use crate::event::{AttributeValue, Event, SpecVersion};
use crate::validate::{check_name, is_token, validate, EventError};

pub const STRUCTURED_JSON: &str = "application/cloudevents+json";
pub const BATCH_JSON: &str = "application/cloudevents-batch+json";
pub use crate::protobuf::{BATCH_PROTOBUF, STRUCTURED_PROTOBUF};

/// How a request carries its event(s), from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

/// Why a request does not yield events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Invalid(#[from] EventError),
    #[error(
        "unsupported content type {0:?}: use binary mode, {STRUCTURED_JSON}, {BATCH_JSON}, \
         {STRUCTURED_PROTOBUF} or {BATCH_PROTOBUF}"
    )]
    UnsupportedMediaType(String),
}

/// Whether a message with this Content-Type (and a `ce-specversion` header or
/// not) is a CloudEvent at all: structured or batch by its type, binary by
/// `ce-specversion`. Most answers to a delivery are not, and skip a reply's work.
pub fn is_cloudevent(content_type: Option<&str>, has_specversion: bool) -> bool {
    has_specversion || detect_mode(content_type) != Mode::Binary
}

/// Detects the mode per the binding: batch prefix first (it contains the structured
/// prefix), case-insensitively.
pub fn detect_mode(content_type: Option<&str>) -> Mode {
    let Some(ct) = content_type else {
        return Mode::Binary;
    };
    let ct = ct.trim_start();
    if starts_with_ignore_case(ct, "application/cloudevents-batch") {
        Mode::Batch
    } else if starts_with_ignore_case(ct, "application/cloudevents") {
        Mode::Structured
    } else {
        Mode::Binary
    }
}

/// `s` starts with the ASCII `prefix`, in any case (no lowercase copy: this runs
/// on every request and every delivery's answer).
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn format_of(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes the events of one HTTP request (or response) in any supported mode.
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Vec<Event>, DecodeError> {
    decode_with_mode(headers, body).map(|(_, events)| events)
}

/// [`decode`], also saying which mode the request used (a batch's errors name the
/// event's index).
pub fn decode_with_mode(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Mode, Vec<Event>), DecodeError> {
    let ct = match headers.get(CONTENT_TYPE) {
        Some(v) => Some(v.to_str().map_err(|_| {
            EventError::attr("datacontenttype", "Content-Type is not visible ASCII")
        })?),
        None => None,
    };
    let mode = detect_mode(ct);
    let events = match mode {
        Mode::Binary => Ok(vec![decode_binary(headers, body)?]),
        Mode::Structured => {
            let ct = ct.unwrap_or_default();
            match format_of(ct).as_str() {
                STRUCTURED_JSON => Ok(vec![crate::json::decode_event(&body)?]),
                STRUCTURED_PROTOBUF => Ok(vec![crate::protobuf::decode_event(body)?]),
                _ => Err(DecodeError::UnsupportedMediaType(ct.to_owned())),
            }
        }
        Mode::Batch => {
            let ct = ct.unwrap_or_default();
            match format_of(ct).as_str() {
                BATCH_JSON => Ok(crate::json::decode_batch(&body)?),
                BATCH_PROTOBUF => Ok(crate::protobuf::decode_batch(body)?),
                _ => Err(DecodeError::UnsupportedMediaType(ct.to_owned())),
            }
        }
    }?;
    Ok((mode, events))
}

/// The header that makes a message a binary-mode CloudEvent, parsed once (a lookup
/// by `&str` parses the name every time).
const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");

/// Whether the headers look like a binary-mode CloudEvent.
pub fn has_binary_event(headers: &HeaderMap) -> bool {
    headers.contains_key(CE_SPECVERSION)
}

/// Decodes a binary-mode message: `ce-` headers are attributes, the body is the data.
pub fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<Event, EventError> {
    let spec = match headers.get(CE_SPECVERSION) {
        None => {
            return Err(EventError::attr(
                "specversion",
                "not a CloudEvent: binary mode needs the ce-specversion, ce-id, ce-source and ce-type headers \
                 (or send Content-Type: application/cloudevents+json)",
            ))
        }
        Some(v) => decode_header_value("specversion", v.as_bytes())?,
    };
    let specversion = SpecVersion::parse(&spec).ok_or_else(|| {
        EventError::attr(
            "specversion",
            format!("specversion {spec:?} is not supported (use \"1.0\" or \"0.3\")"),
        )
    })?;
    let mut event = Event::new(String::new(), String::new(), String::new());
    event.specversion = specversion;
    let schema_name = specversion.dataschema_name();
    // One walk over every value: a name's values come one after the other, so a
    // repeated header is the same name twice in a row (no lookup by name).
    let mut previous: Option<&HeaderName> = None;
    for (name, raw) in headers.iter() {
        let repeated = previous == Some(name);
        previous = Some(name);
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if repeated {
            return Err(EventError::attr(
                attr,
                format!("header ce-{attr} appears more than once"),
            ));
        }
        if attr == "specversion" {
            continue;
        }
        let value = decode_header_value(attr, raw.as_bytes())?;
        match attr {
            "id" => event.id = value,
            "source" => event.source = value,
            "type" => event.ty = value,
            "subject" => event.subject = Some(value),
            "time" => event.time = Some(value),
            "datacontenttype" => {
                return Err(EventError::attr(
                    "datacontenttype",
                    "binary mode carries datacontenttype in Content-Type; a ce-datacontenttype header is not allowed",
                ))
            }
            _ if attr == schema_name => event.dataschema = Some(value),
            _ => {
                check_name(attr)?;
                event
                    .extensions
                    .push((attr.to_owned(), AttributeValue::String(value)));
            }
        }
    }
    // Content-Type is an ordinary HTTP header, not a `ce-` one: taken as it is, never
    // percent-decoded (binding §3.1.1).
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().map_err(|_| {
            EventError::attr("datacontenttype", "Content-Type is not visible ASCII")
        })?;
        event.datacontenttype = Some(ct.to_owned());
    }
    if !body.is_empty() {
        event.data = Some(body);
    }
    validate(&event)?;
    Ok(event)
}

/// Unquotes an RFC 7230 quoted-string if needed, then does one round of
/// percent-decoding; the result must be valid UTF-8 (overlong forms are refused).
pub fn decode_header_value(attr: &str, raw: &[u8]) -> Result<String, EventError> {
    let unquoted;
    let raw = if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
        let mut out = Vec::with_capacity(raw.len());
        let mut it = raw[1..raw.len() - 1].iter();
        while let Some(&b) = it.next() {
            if b == b'\\' {
                if let Some(&n) = it.next() {
                    out.push(n);
                }
            } else {
                out.push(b);
            }
        }
        unquoted = out;
        &unquoted[..]
    } else {
        raw
    };
    if !raw.contains(&b'%') {
        return String::from_utf8(raw.to_vec()).map_err(|_| bad_utf8(attr));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            if let (Some(h), Some(l)) = (
                raw.get(i + 1).and_then(|&c| hex(c)),
                raw.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        // A '%' not followed by two hex digits is kept as it is.
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad_utf8(attr))
}

fn bad_utf8(attr: &str) -> EventError {
    EventError::attr(
        attr,
        format!("header ce-{attr} does not decode to valid UTF-8"),
    )
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a header value: space, `"`, `%` and everything outside printable
/// ASCII, as UTF-8 bytes in upper-case hex.
pub fn encode_header_value(value: &str) -> HeaderValue {
    let mut out = Vec::with_capacity(value.len());
    encode_header_value_into(value, &mut out);
    // Every byte is visible ASCII now: the value always passes.
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// [`encode_header_value`] appended to `out`.
pub fn encode_header_value_into(value: &str, out: &mut Vec<u8>) {
    // No early exit, so the bytes are checked many at a time.
    if value.bytes().fold(true, |safe, b| safe & header_safe(b)) {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for b in value.bytes() {
        if header_safe(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'%',
                b"0123456789ABCDEF"[(b >> 4) as usize],
                b"0123456789ABCDEF"[(b & 15) as usize],
            ]);
        }
    }
}

/// A byte [`encode_header_value`] keeps as it is (every other becomes `%XX`).
fn header_safe(b: u8) -> bool {
    (0x21..=0x7E).contains(&b) && b != b'"' && b != b'%'
}

/// Bytes [`encode_header_value`] makes of `value`, without encoding it.
pub fn encoded_header_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| if header_safe(b) { 1 } else { 3 })
        .sum()
}

/// What subscribers' HTTP servers accept of a binary-mode event's headers: any one
/// header line (`name: value`) and all of them together. Common servers refuse more
/// (nginx 8 KiB a line, Node.js 16 KiB in all, Tomcat and Jetty 8 KiB in all), and an
/// event they refuse can only end as a dead letter, so the ingress refuses it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBudget {
    /// Bytes of one header line at most (`0`: no limit).
    pub line: usize,
    /// Bytes of the event's header lines together at most (`0`: no limit).
    pub total: usize,
}

impl HeaderBudget {
    pub const DEFAULT_LINE: usize = 8 * 1024;
    pub const DEFAULT_TOTAL: usize = 16 * 1024;

    /// No limit at all (both `0`): nothing to measure.
    pub fn is_off(&self) -> bool {
        self.line == 0 && self.total == 0
    }
}

impl Default for HeaderBudget {
    fn default() -> Self {
        HeaderBudget {
            line: Self::DEFAULT_LINE,
            total: Self::DEFAULT_TOTAL,
        }
    }
}

/// Bytes of each header line [`encode_binary`] writes for `event` (`name: value`), as
/// (attribute, bytes); `Content-Type` counts as `datacontenttype`.
pub fn binary_header_lines(event: &Event) -> impl Iterator<Item = (&str, usize)> {
    event.attributes().map(|(name, value)| {
        let len = match (name, value) {
            ("datacontenttype", crate::AttrRef::Str(ct)) => {
                let plain = ct.bytes().all(|b| b == b'\t' || (0x20..=0x7E).contains(&b));
                let value = if plain {
                    ct.len()
                } else {
                    encoded_header_len(ct)
                };
                "content-type: ".len() + value
            }
            (_, crate::AttrRef::Str(s)) => encoded_header_len(s) + name.len() + "ce-: ".len(),
            (_, other) => encoded_header_len(&other.to_canonical()) + name.len() + "ce-: ".len(),
        };
        (name, len)
    })
}

/// Refuses an event whose binary-mode headers go past `budget`, naming the attribute
/// (the largest one when only the total is past).
pub fn check_binary_headers(event: &Event, budget: HeaderBudget) -> Result<(), EventError> {
    if surely_within(event, budget) {
        return Ok(());
    }
    count_binary_headers(event, budget)
}

/// [`check_binary_headers`], counting every value's encoded bytes.
fn count_binary_headers(event: &Event, budget: HeaderBudget) -> Result<(), EventError> {
    let mut total = 0;
    let mut largest = ("", 0);
    for (name, len) in binary_header_lines(event) {
        if budget.line > 0 && len > budget.line {
            return Err(EventError::attr(
                name,
                format!(
                    "in binary-mode HTTP this attribute is a {len}-byte header, over the {} bytes a header may take \
                     (subscribers' servers refuse more; --max-header-line-bytes): move the value into the event's data, \
                     or deliver structured (spec.delivery.format: json) on every trigger that matches it",
                    budget.line
                ),
            ));
        }
        total += len;
        if len > largest.1 {
            largest = (name, len);
        }
    }
    if budget.total > 0 && total > budget.total {
        return Err(EventError::attr(
            largest.0,
            format!(
                "in binary-mode HTTP the event's headers take {total} bytes, over the {} bytes they may take together \
                 (subscribers' servers refuse more; --max-header-bytes-total); the largest is this attribute's ({} bytes): \
                 move values into the event's data, or deliver structured (spec.delivery.format: json) on every trigger \
                 that matches it",
                budget.total, largest.1
            ),
        ));
    }
    Ok(())
}

/// Whether `event`'s binary-mode headers fit `budget` even if every byte of every
/// value were percent-encoded: then nothing needs counting byte by byte (nearly every
/// event, at the cost of one length per attribute).
fn surely_within(event: &Event, budget: HeaderBudget) -> bool {
    let mut total = 0;
    for (name, value) in event.attributes() {
        let line = header_line_bound(name, value);
        if budget.line > 0 && line > budget.line {
            return false;
        }
        total += line;
    }
    budget.total == 0 || total <= budget.total
}

/// At least the bytes [`binary_header_lines`] counts for one attribute, found from
/// lengths alone: percent-encoding makes at most three bytes of one, and
/// `content-type: ` is shorter than `ce-datacontenttype: `.
fn header_line_bound(name: &str, value: crate::AttrRef<'_>) -> usize {
    let canonical = match value {
        crate::AttrRef::Boolean(_) => "false".len(),
        crate::AttrRef::Integer(_) => "-2147483648".len(),
        crate::AttrRef::Str(s) => s.len(),
        crate::AttrRef::Binary(b) => b.len().div_ceil(3) * 4,
    };
    3 * canonical + name.len() + "ce-: ".len()
}

/// `datacontenttype` as the `Content-Type` header: the media type exactly as it came
/// in (percent-encoding is for `ce-` headers only). A value no header can carry (one
/// from a structured event with control characters) falls back to percent-encoding
/// rather than being dropped.
fn content_type_value(ct: &str) -> HeaderValue {
    HeaderValue::from_str(ct).unwrap_or_else(|_| encode_header_value(ct))
}

/// Encodes an event in binary mode: the headers to add and the body.
pub fn encode_binary(event: &Event, headers: &mut HeaderMap) -> Option<Bytes> {
    encode_binary_except(event, headers, None)
}

/// [`encode_binary`] leaving out the attribute `skip` (a delivery's
/// `knativebrokerttl`, which a subscriber is not shown).
pub fn encode_binary_except(
    event: &Event,
    headers: &mut HeaderMap,
    skip: Option<&str>,
) -> Option<Bytes> {
    for (name, value) in event.attributes() {
        if name == "datacontenttype" || skip == Some(name) {
            continue;
        }
        // Made when compiled (`from_static` checks the name each time it runs).
        const ID: HeaderName = HeaderName::from_static("ce-id");
        const SOURCE: HeaderName = HeaderName::from_static("ce-source");
        const TYPE: HeaderName = HeaderName::from_static("ce-type");
        const SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
        const TIME: HeaderName = HeaderName::from_static("ce-time");
        const DATASCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
        const ARRIVAL_TIME: HeaderName = HeaderName::from_static("ce-knativearrivaltime");
        const BROKER_TTL: HeaderName = HeaderName::from_static("ce-knativebrokerttl");
        const TRACEPARENT: HeaderName = HeaderName::from_static("ce-traceparent");
        const TRACESTATE: HeaderName = HeaderName::from_static("ce-tracestate");
        let header = match name {
            "specversion" => CE_SPECVERSION,
            "id" => ID,
            "source" => SOURCE,
            "type" => TYPE,
            "subject" => SUBJECT,
            "time" => TIME,
            "dataschema" => DATASCHEMA,
            crate::knative::ARRIVAL_TIME => ARRIVAL_TIME,
            crate::knative::BROKER_TTL => BROKER_TTL,
            "traceparent" => TRACEPARENT,
            "tracestate" => TRACESTATE,
            _ => match extension_header(name) {
                Some(h) => h,
                None => continue,
            },
        };
        let value = match value {
            crate::AttrRef::Str(s) => encode_header_value(s),
            other => encode_header_value(&other.to_canonical()),
        };
        headers.insert(header, value);
    }
    if let Some(ct) = &event.datacontenttype {
        headers.insert(CONTENT_TYPE, content_type_value(ct));
    }
    event.data.clone()
}

/// [`encode_binary_except`] written straight into an HTTP/1.1 request head, for a
/// client that writes its own: the same headers as `name: value\r\n` lines, without
/// building a header map (its hashing and checks were a twentieth of a delivery's
/// instructions). Returns the body.
pub fn write_binary_head(event: &Event, skip: Option<&str>, out: &mut Vec<u8>) -> Option<Bytes> {
    for (name, value) in event.attributes() {
        if name == "datacontenttype" || skip == Some(name) {
            continue;
        }
        match value {
            crate::AttrRef::Str(s) => header_line(name, s, out),
            other => header_line(name, &other.to_canonical(), out),
        }
    }
    if let Some(ct) = &event.datacontenttype {
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(content_type_value(ct).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    event.data.clone()
}

/// `ce-{name}: {value}\r\n`, the value encoded; nothing if no header can carry the
/// name.
fn header_line(name: &str, value: &str, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"ce-");
    if !push_header_name(name, out) {
        out.truncate(start);
        return;
    }
    out.extend_from_slice(b": ");
    encode_header_value_into(value, out);
    out.extend_from_slice(b"\r\n");
}

/// Appends `name` as a header name spells it (lower case); `false` if no header can
/// carry it (as [`HeaderName::from_bytes`] decides: token characters only).
fn push_header_name(name: &str, out: &mut Vec<u8>) -> bool {
    // Attribute names are lower-case letters and digits (CloudEvents §3.1.1).
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        out.extend_from_slice(name.as_bytes());
        return true;
    }
    if !is_token(name) {
        return false;
    }
    out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
    true
}

/// `ce-{name}` as a header name, spelled in a stack buffer (no `format!`) unless the
/// name is unusually long; `None` if it is no valid header name.
fn extension_header(name: &str) -> Option<HeaderName> {
    const ROOM: usize = 64;
    if name.len() > ROOM - 3 {
        return HeaderName::try_from(format!("ce-{name}")).ok();
    }
    let mut buf = [0u8; ROOM];
    buf[..3].copy_from_slice(b"ce-");
    buf[3..3 + name.len()].copy_from_slice(name.as_bytes());
    HeaderName::from_bytes(&buf[..3 + name.len()]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    #[test]
    fn modes() {
        assert_eq!(detect_mode(None), Mode::Binary);
        assert_eq!(detect_mode(Some("application/json")), Mode::Binary);
        assert_eq!(
            detect_mode(Some("Application/CloudEvents+JSON; charset=utf-8")),
            Mode::Structured
        );
        assert_eq!(
            detect_mode(Some("application/cloudevents-batch+json")),
            Mode::Batch
        );
        assert_eq!(
            detect_mode(Some(" Application/CloudEvents-Batch+JSON")),
            Mode::Batch
        );
        assert_eq!(detect_mode(Some("application/cloudevent")), Mode::Binary);
    }

    #[test]
    fn percent_encoding_round_trip() {
        let v = encode_header_value("Euro € 😀");
        assert_eq!(v.to_str().unwrap(), "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert_eq!(decode_header_value("x", v.as_bytes()).unwrap(), "Euro € 😀");
        assert_eq!(decode_header_value("x", b"100%").unwrap(), "100%");
        assert_eq!(
            decode_header_value("x", b"\"a \\\"b\\\"\"").unwrap(),
            "a \"b\""
        );
        assert!(decode_header_value("x", b"%C0%A0").is_err());
        assert_eq!(decode_header_value("x", b"%e2%82%ac").unwrap(), "€");
    }

    #[test]
    fn binary_decode_and_encode() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "a%20b"),
            ("ce-source", "/src"),
            ("ce-type", "t"),
            ("ce-time", "2026-01-01T00:00:00+02:00"),
            ("ce-myext", "v"),
            ("content-type", "application/octet-stream"),
        ]);
        let e = decode_binary(&h, Bytes::from_static(&[1, 2, 255])).unwrap();
        assert_eq!(e.id, "a b");
        assert_eq!(e.time.as_deref(), Some("2026-01-01T00:00:00+02:00"));
        let mut out = HeaderMap::new();
        let body = encode_binary(&e, &mut out);
        assert_eq!(decode_binary(&out, body.unwrap()).unwrap(), e);
    }

    #[test]
    fn binary_rejections() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ];
        let mut h = headers(&base);
        h.insert("ce-datacontenttype", HeaderValue::from_static("text/plain"));
        assert_eq!(
            decode_binary(&h, Bytes::new())
                .unwrap_err()
                .attribute
                .as_deref(),
            Some("datacontenttype")
        );
        let h = headers(&base[1..]);
        assert_eq!(
            decode_binary(&h, Bytes::new())
                .unwrap_err()
                .attribute
                .as_deref(),
            Some("specversion")
        );
        let h = headers(&[base[0], base[2], base[3]]);
        assert_eq!(
            decode_binary(&h, Bytes::new())
                .unwrap_err()
                .attribute
                .as_deref(),
            Some("id")
        );
        for twice in ["ce-specversion", "ce-id", "ce-myext"] {
            let mut h = headers(&base);
            h.append("ce-myext", HeaderValue::from_static("1"));
            h.append(twice, HeaderValue::from_static("1.0"));
            let err = decode_binary(&h, Bytes::new()).unwrap_err();
            assert_eq!(err.attribute.as_deref(), twice.strip_prefix("ce-"));
            assert!(err.message.contains("more than once"), "{}", err.message);
        }
        let mut h = headers(&base);
        h.insert("ce-id", HeaderValue::from_static("%C0%A0"));
        assert_eq!(
            decode_binary(&h, Bytes::new())
                .unwrap_err()
                .attribute
                .as_deref(),
            Some("id")
        );
    }

    #[test]
    fn binary_encoding_leaves_out_the_skipped_attribute() {
        let mut e = Event::new("1", "/s", "t");
        e.set_extension("knativebrokerttl", crate::AttributeValue::Integer(255));
        e.set_extension("myext", crate::AttributeValue::String("v".into()));
        e.set_extension("Bad Name", crate::AttributeValue::String("x".into()));
        let (mut all, mut some) = (HeaderMap::new(), HeaderMap::new());
        encode_binary(&e, &mut all);
        encode_binary_except(&e, &mut some, Some("knativebrokerttl"));
        assert_eq!(all["ce-knativebrokerttl"], "255");
        assert!(!some.contains_key("ce-knativebrokerttl"));
        all.remove("ce-knativebrokerttl");
        assert_eq!(all, some);
        assert_eq!(some["ce-myext"], "v");
        // A name no header can carry is left out.
        assert_eq!(some.len(), 5, "{some:?}");
    }

    #[test]
    fn a_binary_head_written_directly_has_the_header_map_s_lines() {
        let mut e = Event::new("1", "/s", "t");
        e.set_extension("knativebrokerttl", AttributeValue::Integer(255));
        e.set_extension("myext", AttributeValue::String("Euro € 100% \"q\"".into()));
        e.set_extension("flag", AttributeValue::Boolean(true));
        e.set_extension("Bad Name", AttributeValue::String("x".into()));
        e.set_extension("UPPER", AttributeValue::String("y".into()));
        e.subject = Some("tab\there".into());
        e.time = Some("2026-12-05T10:00:00Z".into());
        e.dataschema = Some("http://example.com/schema".into());
        e.datacontenttype = Some("text/plain; charset=utf-8".into());
        e.data = Some(Bytes::from_static(b"body"));
        let mut old = e.clone();
        old.specversion = crate::SpecVersion::V03;
        for (e, skip) in [(&e, None), (&e, Some("knativebrokerttl")), (&old, None)] {
            let mut map = HeaderMap::new();
            let body = encode_binary_except(e, &mut map, skip);
            let mut from_map: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect();
            let mut head = Vec::new();
            assert_eq!(write_binary_head(e, skip, &mut head), body);
            let head = String::from_utf8(head).unwrap();
            let mut written: Vec<String> = head
                .strip_suffix("\r\n")
                .unwrap()
                .split("\r\n")
                .map(String::from)
                .collect();
            from_map.sort();
            written.sort();
            assert_eq!(written, from_map);
        }
    }

    #[test]
    fn protobuf_structured_and_batch() {
        let mut e = Event::new("1", "/s", "t");
        e.datacontenttype = Some("text/plain".into());
        e.data = Some(Bytes::from_static(b"hello"));
        let h = headers(&[("content-type", "Application/CloudEvents+Protobuf")]);
        let body = Bytes::from(crate::protobuf::encode_event(&e));
        assert_eq!(decode(&h, body).unwrap(), vec![e.clone()]);
        let h = headers(&[("content-type", BATCH_PROTOBUF)]);
        let body = Bytes::from(crate::protobuf::encode_batch(&[e.clone(), e.clone()]));
        assert_eq!(decode(&h, body).unwrap(), vec![e.clone(), e]);
        let h = headers(&[("content-type", STRUCTURED_PROTOBUF)]);
        assert!(matches!(
            decode(&h, Bytes::from_static(b"{}")),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn unsupported_formats() {
        let h = headers(&[("content-type", "application/cloudevents+avro")]);
        assert!(matches!(
            decode(&h, Bytes::new()),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn header_lines_are_measured_as_they_are_encoded() {
        for v in ["plain", "Euro € 😀", "100% \"q\"", "tab\there", ""] {
            assert_eq!(encoded_header_len(v), encode_header_value(v).len(), "{v:?}");
        }
        let mut e = Event::new("1", "/s", "t");
        e.set_extension("big", AttributeValue::String("é".repeat(10)));
        e.set_extension("n", AttributeValue::Integer(-12));
        e.datacontenttype = Some("text/plain; charset=utf-8".into());
        let mut out = HeaderMap::new();
        encode_binary(&e, &mut out);
        let mut measured: Vec<(String, usize)> = binary_header_lines(&e)
            .map(|(n, l)| (n.to_owned(), l))
            .collect();
        let mut actual: Vec<(String, usize)> = out
            .iter()
            .map(|(n, v)| {
                let attr = n.as_str().strip_prefix("ce-").unwrap_or("datacontenttype");
                (attr.to_owned(), n.as_str().len() + 2 + v.len())
            })
            .collect();
        measured.sort();
        actual.sort();
        assert_eq!(measured, actual);
    }

    #[test]
    fn header_budget_names_the_attribute() {
        let budget = HeaderBudget {
            line: 100,
            total: 200,
        };
        let mut e = Event::new("1", "/s", "t");
        e.set_extension("small", AttributeValue::String("x".repeat(80)));
        assert!(check_binary_headers(&e, budget).is_ok());
        e.set_extension("big", AttributeValue::String("x".repeat(95)));
        let err = check_binary_headers(&e, budget).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("big"));
        assert!(err.message.contains("103-byte header"), "{}", err.message);
        // Under the line limit each, over the total together: the largest is named.
        e.set_extension("big", AttributeValue::String("x".repeat(85)));
        e.set_extension("other", AttributeValue::String("x".repeat(60)));
        let err = check_binary_headers(&e, budget).unwrap_err();
        assert_eq!(err.attribute.as_deref(), Some("big"));
        assert!(err.message.contains("together"), "{}", err.message);
        let off = HeaderBudget { line: 0, total: 0 };
        assert!(check_binary_headers(&e, off).is_ok());
    }

    #[test]
    fn the_quick_bound_never_passes_what_counting_refuses() {
        let mut e = Event::new("1", "/s", "t");
        e.set_extension("s", AttributeValue::String("Euro € \"100%\" x\ty".into()));
        e.set_extension("n", AttributeValue::Integer(i32::MIN));
        e.set_extension("b", AttributeValue::Boolean(false));
        e.set_extension(
            "bin",
            AttributeValue::Binary(Bytes::from_static(b"\0\x01\xff\x03")),
        );
        e.datacontenttype = Some("text/plain; name=\"é\"".into());
        for ((name, value), (_, counted)) in e.attributes().zip(binary_header_lines(&e)) {
            assert!(header_line_bound(name, value) >= counted, "{name}");
        }
        let mut quick = 0;
        for line in (0..300).step_by(3) {
            for total in (0..1200).step_by(7) {
                let budget = HeaderBudget { line, total };
                if surely_within(&e, budget) {
                    quick += 1;
                    assert!(count_binary_headers(&e, budget).is_ok(), "{budget:?}");
                }
            }
        }
        assert!(quick > 0);
        // An everyday event is passed without counting.
        let mut everyday = Event::new(
            "7f9c2ba4-e88f-11ea-adc1-0242ac120002",
            "/orders",
            "order.created",
        );
        everyday.set_extension(
            crate::knative::ARRIVAL_TIME,
            AttributeValue::Timestamp("2026-12-05T12:00:00.123456Z".into()),
        );
        assert!(surely_within(&everyday, HeaderBudget::default()));
    }

    #[test]
    fn extension_headers_are_spelled_whatever_the_name_s_length() {
        for name in [
            "a",
            "knativearrivaltime",
            "traceparent",
            &"x".repeat(61),
            &"y".repeat(62),
            &"z".repeat(300),
        ] {
            assert_eq!(
                extension_header(name).unwrap().as_str(),
                format!("ce-{name}")
            );
        }
        assert!(extension_header("a b").is_none());
        let mut e = Event::new("1", "/s", "t");
        for name in [
            "dataschema",
            "knativearrivaltime",
            "traceparent",
            "tracestate",
            "other",
        ] {
            e.set_extension(name, AttributeValue::String("v".into()));
        }
        let mut out = HeaderMap::new();
        encode_binary(&e, &mut out);
        for name in ["knativearrivaltime", "traceparent", "tracestate", "other"] {
            assert_eq!(out.get(format!("ce-{name}")).unwrap(), "v", "{name}");
        }
    }

    #[test]
    fn content_type_goes_out_as_it_came_in() {
        for ct in [
            "text/plain; charset=utf-8",
            "application/json; charset=utf-8",
            "multipart/form-data; boundary=\"a b\"",
            "text/plain; name=100%25",
        ] {
            let h = headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("content-type", ct),
            ]);
            let e = decode_binary(&h, Bytes::from_static(b"x")).unwrap();
            assert_eq!(e.datacontenttype.as_deref(), Some(ct));
            let mut out = HeaderMap::new();
            encode_binary(&e, &mut out);
            assert_eq!(out.get(CONTENT_TYPE).unwrap().to_str().unwrap(), ct);
        }
    }
}
