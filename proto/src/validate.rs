//! Validation per CloudEvents 1.0.2 (§1.6 of the spec notes): what makes an event
//! invalid. The ingress refuses such events with a 400 naming the attribute.

use crate::event::{AttrRef, AttributeValue, Event};

/// Why an event was refused, and which attribute was at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    /// The attribute at fault, when there is one.
    pub attribute: Option<String>,
    pub message: String,
}

impl EventError {
    pub fn attr(attribute: impl Into<String>, message: impl Into<String>) -> Self {
        EventError {
            attribute: Some(attribute.into()),
            message: message.into(),
        }
    }

    pub fn msg(message: impl Into<String>) -> Self {
        EventError {
            attribute: None,
            message: message.into(),
        }
    }

    /// The same problem, said of the event at `index` (counted from 0) of a batch,
    /// with the event's `id` when it has one, so a producer finds it without
    /// guessing the index base.
    pub fn in_batch(self, index: usize, id: Option<&str>) -> Self {
        let which = match id {
            Some(id) if !id.is_empty() => {
                format!("batch event at index {index} (from 0, id {id:?})")
            }
            _ => format!("batch event at index {index} (from 0)"),
        };
        EventError {
            attribute: self.attribute,
            message: format!("{which}: {}", self.message),
        }
    }
}

/// Checks every rule the spec makes about attributes.
pub fn validate(event: &Event) -> Result<(), EventError> {
    required(&event.id, "id")?;
    required(&event.source, "source")?;
    required(&event.ty, "type")?;
    if !is_uri_reference(&event.source) {
        return Err(EventError::attr(
            "source",
            format!("source {:?} is not a valid URI-reference", event.source),
        ));
    }
    if let Some(ct) = &event.datacontenttype {
        if !is_media_type(ct) {
            return Err(EventError::attr(
                "datacontenttype",
                format!("datacontenttype {ct:?} is not a valid media type (RFC 2046)"),
            ));
        }
    }
    let schema_name = event.specversion.dataschema_name();
    if let Some(schema) = &event.dataschema {
        if !is_absolute_uri(schema) {
            return Err(EventError::attr(
                schema_name,
                format!("{schema_name} {schema:?} is not a non-empty absolute URI"),
            ));
        }
    }
    if let Some(subject) = &event.subject {
        if subject.is_empty() {
            return Err(EventError::attr("subject", "subject must not be empty"));
        }
    }
    if let Some(time) = &event.time {
        if !is_rfc3339(time) {
            return Err(EventError::attr(
                "time",
                format!("time {time:?} is not an RFC 3339 timestamp"),
            ));
        }
    }
    for (name, value) in &event.extensions {
        check_name(name)?;
        if crate::event::is_core_attribute(event.specversion, name) {
            return Err(EventError::attr(
                name.as_str(),
                format!("attribute {name:?} appears twice"),
            ));
        }
        match value {
            AttributeValue::Uri(u) if !is_absolute_uri(u) => {
                return Err(EventError::attr(
                    name.as_str(),
                    format!("{name} is not an absolute URI"),
                ));
            }
            AttributeValue::UriRef(u) if !is_uri_reference(u) => {
                return Err(EventError::attr(
                    name.as_str(),
                    format!("{name} is not a URI-reference"),
                ));
            }
            AttributeValue::Timestamp(t) if !is_rfc3339(t) => {
                return Err(EventError::attr(
                    name.as_str(),
                    format!("{name} is not an RFC 3339 timestamp"),
                ));
            }
            _ => {}
        }
    }
    for (i, (name, _)) in event.extensions.iter().enumerate() {
        if event.extensions[..i].iter().any(|(n, _)| n == name) {
            return Err(EventError::attr(
                name.as_str(),
                format!("attribute {name:?} appears twice"),
            ));
        }
    }
    for (name, value) in event.attributes() {
        if let AttrRef::Str(s) = value {
            // Printable ASCII, nearly every value, is allowed without decoding a char.
            if s.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
                continue;
            }
            if let Some(c) = s.chars().find(|&c| !is_allowed_char(c)) {
                return Err(EventError::attr(
                    name,
                    format!(
                        "attribute {name} contains U+{:04X}, which a CloudEvents String must not contain",
                        c as u32
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn required(value: &str, name: &str) -> Result<(), EventError> {
    if value.is_empty() {
        Err(EventError::attr(
            name,
            format!("required attribute {name} is missing or empty"),
        ))
    } else {
        Ok(())
    }
}

/// Attribute names: ASCII lower-case letters and digits, at least one; `data` is
/// reserved.
pub fn check_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::attr(
            name,
            format!("attribute name {name:?} must consist of a-z and 0-9 only"),
        ));
    }
    if name == "data" {
        return Err(EventError::attr(
            name,
            "\"data\" is reserved and cannot be an attribute name",
        ));
    }
    Ok(())
}

/// No C0/C1 controls and no noncharacters (lone surrogates cannot occur in a Rust
/// string).
fn is_allowed_char(c: char) -> bool {
    let u = c as u32;
    !(u <= 0x1F
        || (0x7F..=0x9F).contains(&u)
        || (0xFDD0..=0xFDEF).contains(&u)
        || (u & 0xFFFE) == 0xFFFE)
}

/// RFC 3339 date-time, as the spec's Timestamp type requires.
pub fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// RFC 2046 media type: `type/subtype` of token characters, then `; param=value`s.
pub fn is_media_type(s: &str) -> bool {
    // The common form, `type/subtype` alone, in one pass.
    if let Some(slash) = s.bytes().position(|b| b == b'/') {
        let (ty, sub) = (&s.as_bytes()[..slash], &s.as_bytes()[slash + 1..]);
        if !ty.is_empty() && !sub.is_empty() && ty.iter().chain(sub).all(|&b| is(b, TOKEN)) {
            return true;
        }
    }
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    if !is_token(ty) || !is_token(sub) {
        return false;
    }
    parts.all(|p| {
        let p = p.trim();
        if p.is_empty() {
            return true;
        }
        match p.split_once('=') {
            Some((k, v)) => {
                is_token(k.trim())
                    && (is_token(v.trim())
                        || (v.len() >= 2 && v.starts_with('"') && v.ends_with('"')))
            }
            None => false,
        }
    })
}

/// An RFC 7230 token: one or more token characters (a header name, a media type's
/// parts and parameters).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| is(b, TOKEN))
}

/// Byte classes, looked up once a byte: every accepted event's `source` and
/// `datacontenttype` go through these, and scanning a list of allowed punctuation
/// for each byte cost several times the table (`bench/README.md`, "Byte classes
/// looked up").
const TOKEN: u8 = 1;
const URI: u8 = 2;

const CLASSES: [u8; 256] = {
    let t = mark([0; 256], b"0123456789", TOKEN | URI);
    let t = mark(t, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", TOKEN | URI);
    let t = mark(t, b"abcdefghijklmnopqrstuvwxyz", TOKEN | URI);
    let t = mark(t, b"!#$%&'*+-.^_`|~", TOKEN);
    mark(t, b"-._~:/?#[]@!$&'()*+,;=", URI)
};

/// `table` with `class` added to each of `bytes`.
const fn mark(mut table: [u8; 256], bytes: &[u8], class: u8) -> [u8; 256] {
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] |= class;
        i += 1;
    }
    table
}

fn is(b: u8, class: u8) -> bool {
    CLASSES[b as usize] & class != 0
}

/// RFC 3986 URI-reference: allowed characters only, well-formed percent escapes, and a
/// valid scheme when there is one.
pub fn is_uri_reference(s: &str) -> bool {
    if !uri_chars_ok(s) {
        return false;
    }
    match scheme_end(s) {
        Some(end) => is_scheme(&s[..end]),
        None => true,
    }
}

/// RFC 3986 absolute URI: a scheme, then the rest.
pub fn is_absolute_uri(s: &str) -> bool {
    !s.is_empty() && uri_chars_ok(s) && scheme_end(s).is_some_and(|end| is_scheme(&s[..end]))
}

/// Where the scheme would end: the first ':' that comes before any '/', '?' or '#'.
fn scheme_end(s: &str) -> Option<usize> {
    let colon = s.find(':')?;
    if s[..colon].contains(['/', '?', '#']) {
        return None;
    }
    Some(colon)
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

fn uri_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !is(c, URI) {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_classes_are_rfc_7230_tokens_and_rfc_3986_uri_characters() {
        for b in 0..=255u8 {
            let token = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            let uri = b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b);
            assert_eq!(is(b, TOKEN), token, "token {b:#04x}");
            assert_eq!(is(b, URI), uri, "uri {b:#04x}");
        }
        assert!(is_media_type("application/cloudevents+json; charset=utf-8"));
        assert!(!is_media_type("application/json\u{e9}"));
        assert!(!is_media_type("text/pl ain"));
    }

    #[test]
    fn uri_reference_forms() {
        for ok in [
            "/sensors/x",
            "1-555-123-4567",
            "https://a.example/b?c#d",
            "urn:x:y",
            "a%20b",
        ] {
            assert!(is_uri_reference(ok), "{ok}");
        }
        for bad in ["a b", "http://a/<b>", "%zz", "1http://x", "a%2"] {
            assert!(!is_uri_reference(bad), "{bad}");
        }
    }

    #[test]
    fn absolute_uri_needs_scheme() {
        assert!(is_absolute_uri("https://schema.example/v1"));
        assert!(!is_absolute_uri("/relative"));
        assert!(!is_absolute_uri(""));
    }

    #[test]
    fn media_types() {
        assert!(is_media_type("application/json"));
        assert!(is_media_type("text/plain; charset=utf-8"));
        assert!(is_media_type(
            "application/cloudevents+json; charset=\"UTF-8\""
        ));
        assert!(!is_media_type("json"));
        assert!(!is_media_type("text/"));
        assert!(!is_media_type("text/plain; charset"));
        assert!(!is_media_type("/plain"));
        assert!(!is_media_type("a/b/c"));
        assert!(!is_media_type("text/pl\u{e9}"));
        assert!(is_media_type(" text/plain "));
    }

    #[test]
    fn timestamps_keep_any_offset() {
        assert!(is_rfc3339("2026-11-24T10:00:00+05:30"));
        assert!(is_rfc3339("2026-11-24T10:00:00.123456Z"));
        assert!(!is_rfc3339("2026-11-24 10:00"));
    }

    #[test]
    fn names_and_strings() {
        assert!(check_name("myext1").is_ok());
        assert!(check_name("MyExt").is_err());
        assert!(check_name("data").is_err());
        assert!(check_name("").is_err());
        let mut e = Event::new("1", "/s", "t");
        e.subject = Some("bad\u{7}".into());
        assert_eq!(
            validate(&e).unwrap_err().attribute.as_deref(),
            Some("subject")
        );
        // Either side of printable ASCII, and past it.
        for bad in ["del\u{7f}", "nel\u{85}", "\u{1f}", "\u{FDD0}"] {
            e.subject = Some(bad.into());
            assert!(validate(&e).is_err(), "{bad:?}");
        }
        for good in [" ~", "é€😀", "\u{a0}"] {
            e.subject = Some(good.into());
            assert!(validate(&e).is_ok(), "{good:?}");
        }
        e.subject = Some("ok".into());
        e.extensions
            .push(("x".into(), AttributeValue::String("\u{FFFE}".into())));
        assert_eq!(validate(&e).unwrap_err().attribute.as_deref(), Some("x"));
    }
}
