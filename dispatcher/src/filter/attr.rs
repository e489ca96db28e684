//! How filters read an event's attributes.
//!
//! Two views of the same [`Event`]:
//!
//! * [`AttrKey`]: an attribute name resolved when the filter is compiled. Core
//!   attributes become a field access, so the `exact`, `prefix` and `suffix` dialects
//!   do not compare the name against every core name for every event; extensions keep
//!   their name for the (short, linear) extension lookup.
//! * [`EventAttributes`] for [`Event`]: what CESQL expressions see. Strings are
//!   borrowed; only a Binary extension is turned into text (its canonical base64
//!   form), which is the one place attribute access allocates.
//!
//! Non-string attributes are compared through their canonical string form (CloudEvents
//! 1.0 "type system"): `true`/`false`, base-10 integers, base64 binary. Integers are
//! formatted on the stack.

use std::borrow::Cow;

use cemesh_proto::{AttrRef, Event};

use super::cesql::{AttrValue, EventAttributes, Value};

/// An attribute name compiled for fast lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttrKey {
    SpecVersion,
    Id,
    Source,
    Type,
    DataContentType,
    Subject,
    Time,
    /// `dataschema` (1.0) / `schemaurl` (0.3): which one is core depends on the event.
    DataSchema(&'static str),
    Extension(Box<str>),
}

impl AttrKey {
    pub(crate) fn new(name: &str) -> Self {
        match name {
            "specversion" => AttrKey::SpecVersion,
            "id" => AttrKey::Id,
            "source" => AttrKey::Source,
            "type" => AttrKey::Type,
            "datacontenttype" => AttrKey::DataContentType,
            "subject" => AttrKey::Subject,
            "time" => AttrKey::Time,
            "dataschema" => AttrKey::DataSchema("dataschema"),
            "schemaurl" => AttrKey::DataSchema("schemaurl"),
            other => AttrKey::Extension(other.into()),
        }
    }

    /// The attribute's value on `event`, as [`Event::attribute`] would return it.
    pub(crate) fn get<'e>(&self, event: &'e Event) -> Option<AttrRef<'e>> {
        let s = |o: &'e Option<String>| o.as_deref().map(AttrRef::Str);
        match self {
            AttrKey::SpecVersion => Some(AttrRef::Str(event.specversion.as_str())),
            AttrKey::Id => Some(AttrRef::Str(&event.id)),
            AttrKey::Source => Some(AttrRef::Str(&event.source)),
            AttrKey::Type => Some(AttrRef::Str(&event.ty)),
            AttrKey::DataContentType => s(&event.datacontenttype),
            AttrKey::Subject => s(&event.subject),
            AttrKey::Time => s(&event.time),
            // In the other spec version the name is an ordinary extension.
            AttrKey::DataSchema(n) if *n == event.specversion.dataschema_name() => {
                s(&event.dataschema)
            }
            AttrKey::DataSchema(n) => event.extension(n).map(|v| v.as_ref()),
            AttrKey::Extension(n) => event.extension(n).map(|v| v.as_ref()),
        }
    }
}

/// Calls `f` with the canonical string form of `v`; allocates only for Binary.
pub(crate) fn with_canonical<R>(v: AttrRef<'_>, f: impl FnOnce(&str) -> R) -> R {
    match v {
        AttrRef::Str(s) => f(s),
        AttrRef::Boolean(b) => f(if b { "true" } else { "false" }),
        AttrRef::Integer(i) => f(itoa::Buffer::new().format(i)),
        AttrRef::Binary(_) => f(&v.to_canonical()),
    }
}

/// CESQL's view of an event. Binary, URI, URI-reference and Timestamp attributes are
/// strings (their canonical forms), as the CESQL spec prescribes.
impl EventAttributes for Event {
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        Event::attribute(self, name).map(|v| match v {
            AttrRef::Str(s) => Value::String(Cow::Borrowed(s)),
            AttrRef::Boolean(b) => Value::Boolean(b),
            AttrRef::Integer(i) => Value::Integer(i),
            AttrRef::Binary(_) => Value::String(Cow::Owned(v.to_canonical())),
        })
    }

    fn has_attribute(&self, name: &str) -> bool {
        // Skips the base64 encoding a Binary value would need.
        Event::attribute(self, name).is_some()
    }

    fn json_data(&self) -> Option<&serde_json::Value> {
        Event::json_data(self)
    }
}

/// `path.name`, or `path["odd name"]` when the name would not read as one segment.
pub fn attr_path(path: &str, name: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("{path}.{name}")
    } else {
        format!("{path}[{name:?}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cemesh_proto::{AttributeValue, SpecVersion};

    fn full_event() -> Event {
        let mut e = Event::new("1", "/s", "t");
        e.datacontenttype = Some("application/json".into());
        e.dataschema = Some("https://schema".into());
        e.subject = Some("sub".into());
        e.time = Some("2026-01-01T00:00:00Z".into());
        e.set_extension("n", AttributeValue::Integer(-7));
        e.set_extension("b", AttributeValue::Boolean(true));
        e.set_extension("bin", AttributeValue::Binary(Bytes::from_static(b"hi")));
        e.set_extension("schemaurl", AttributeValue::String("ext".into()));
        e
    }

    #[test]
    fn keys_agree_with_event_attribute() {
        let mut e = full_event();
        for name in [
            "specversion",
            "id",
            "source",
            "type",
            "datacontenttype",
            "dataschema",
            "schemaurl",
            "subject",
            "time",
            "n",
            "b",
            "bin",
            "missing",
        ] {
            let key = AttrKey::new(name);
            assert_eq!(key.get(&e), e.attribute(name), "{name}");
            e.specversion = SpecVersion::V03;
            assert_eq!(key.get(&e), e.attribute(name), "0.3 {name}");
            e.specversion = SpecVersion::V10;
        }
    }

    #[test]
    fn canonical_strings() {
        let e = full_event();
        let canon = |n: &str| with_canonical(e.attribute(n).unwrap(), str::to_owned);
        assert_eq!(canon("n"), "-7");
        assert_eq!(canon("b"), "true");
        assert_eq!(canon("bin"), "aGk=");
        assert_eq!(canon("type"), "t");
    }

    #[test]
    fn cesql_sees_typed_values() {
        let e = full_event();
        let view: &dyn EventAttributes = &e;
        assert_eq!(view.attribute("n"), Some(Value::Integer(-7)));
        assert_eq!(view.attribute("b"), Some(Value::Boolean(true)));
        assert_eq!(view.attribute("bin"), Some(Value::String("aGk=".into())));
        assert_eq!(
            view.attribute("time"),
            Some(Value::String("2026-01-01T00:00:00Z".into()))
        );
        assert!(view.has_attribute("bin"));
        assert!(!view.has_attribute("missing"));
    }
}
