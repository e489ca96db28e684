//! The event type: every CloudEvents attribute as sent, data as raw bytes.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;

/// The CloudEvents versions cemesh accepts. 1.0 is current; 0.3 is still accepted, as
/// Knative does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecVersion {
    V03,
    V10,
}

impl SpecVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V03 => "0.3",
            SpecVersion::V10 => "1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1.0" => Some(SpecVersion::V10),
            "0.3" => Some(SpecVersion::V03),
            _ => None,
        }
    }

    /// The name of the data schema attribute in this version.
    pub fn dataschema_name(self) -> &'static str {
        match self {
            SpecVersion::V03 => "schemaurl",
            SpecVersion::V10 => "dataschema",
        }
    }
}

/// A typed extension attribute value: the seven CloudEvents types. Timestamps keep the
/// sender's text so the offset survives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    Boolean(bool),
    Integer(i32),
    String(String),
    Binary(Bytes),
    Uri(String),
    UriRef(String),
    Timestamp(String),
}

impl AttributeValue {
    /// The canonical string form (what goes into a `ce-` header).
    pub fn to_canonical(&self) -> String {
        self.as_ref().to_canonical()
    }

    pub fn as_ref(&self) -> AttrRef<'_> {
        match self {
            AttributeValue::Boolean(b) => AttrRef::Boolean(*b),
            AttributeValue::Integer(i) => AttrRef::Integer(*i),
            AttributeValue::String(s)
            | AttributeValue::Uri(s)
            | AttributeValue::UriRef(s)
            | AttributeValue::Timestamp(s) => AttrRef::Str(s),
            AttributeValue::Binary(b) => AttrRef::Binary(b),
        }
    }
}

/// A borrowed view of an attribute value, for filters: no allocation to look one up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrRef<'a> {
    Boolean(bool),
    Integer(i32),
    Str(&'a str),
    Binary(&'a Bytes),
}

impl<'a> AttrRef<'a> {
    pub fn to_canonical(self) -> String {
        match self {
            AttrRef::Boolean(b) => b.to_string(),
            AttrRef::Integer(i) => i.to_string(),
            AttrRef::Str(s) => s.to_owned(),
            AttrRef::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
        }
    }

    /// Compares the canonical string form with `expected` without allocating for
    /// strings, booleans and integers.
    pub fn canonical_eq(self, expected: &str) -> bool {
        match self {
            AttrRef::Str(s) => s == expected,
            AttrRef::Boolean(b) => expected == if b { "true" } else { "false" },
            AttrRef::Integer(i) => itoa::Buffer::new().format(i) == expected,
            AttrRef::Binary(_) => self.to_canonical() == expected,
        }
    }

    /// The value as a string when it is one (strings, URIs, timestamps).
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            AttrRef::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A CloudEvent as cemesh carries it from ingress to subscriber.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    pub specversion: SpecVersion,
    pub id: String,
    /// A URI-reference, as sent.
    pub source: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    /// `dataschema` (1.0) or `schemaurl` (0.3).
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    /// RFC 3339 text as sent, offset included.
    pub time: Option<String>,
    /// Extension attributes in arrival order; names are unique.
    pub extensions: Vec<(String, AttributeValue)>,
    /// The data exactly as it travels in an HTTP binary-mode body.
    pub data: Option<Bytes>,
    /// The data parsed as JSON, when a `data` filter first asks ([`Event::json_data`]).
    pub json: JsonData,
}

/// An event's data parsed as JSON, once, and shared by everyone holding the same
/// event (every trigger reading one `Arc<Event>`). Not part of the event's value:
/// equal whatever it holds, and a clone starts empty (its data may be changed).
#[derive(Default)]
pub struct JsonData(std::sync::OnceLock<Option<serde_json::Value>>);

impl Clone for JsonData {
    fn clone(&self) -> Self {
        JsonData::default()
    }
}

impl PartialEq for JsonData {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for JsonData {}

impl fmt::Debug for JsonData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0.get() {
            None => "not parsed",
            Some(None) => "not JSON",
            Some(Some(_)) => "parsed",
        })
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("specversion", &self.specversion.as_str())
            .field("id", &self.id)
            .field("source", &self.source)
            .field("type", &self.ty)
            .field("datacontenttype", &self.datacontenttype)
            .field("dataschema", &self.dataschema)
            .field("subject", &self.subject)
            .field("time", &self.time)
            .field("extensions", &self.extensions)
            .field("data_len", &self.data.as_ref().map(Bytes::len))
            .finish()
    }
}

impl Event {
    /// A copy without the data (for records that keep attributes only, such as the
    /// event journal).
    pub fn attributes_only(&self) -> Event {
        Event {
            specversion: self.specversion,
            id: self.id.clone(),
            source: self.source.clone(),
            ty: self.ty.clone(),
            datacontenttype: self.datacontenttype.clone(),
            dataschema: self.dataschema.clone(),
            subject: self.subject.clone(),
            time: self.time.clone(),
            extensions: self.extensions.clone(),
            data: None,
            json: JsonData::default(),
        }
    }

    /// A minimal valid 1.0 event, handy for tests and tools.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        Event {
            specversion: SpecVersion::V10,
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: Vec::new(),
            data: None,
            json: JsonData::default(),
        }
    }

    /// The data as JSON: parsed at the first call, `None` when the content type is
    /// not JSON (`application/json`, `text/json`, `*+json`; absent counts as JSON)
    /// or the data does not parse.
    pub fn json_data(&self) -> Option<&serde_json::Value> {
        self.json
            .0
            .get_or_init(|| {
                let is_json = self.datacontenttype.as_deref().is_none_or(|ct| {
                    let media = ct.split(';').next().unwrap_or("").trim();
                    media.eq_ignore_ascii_case("application/json")
                        || media.eq_ignore_ascii_case("text/json")
                        || media.to_ascii_lowercase().ends_with("+json")
                });
                let data = self.data.as_deref().filter(|_| is_json)?;
                serde_json::from_slice(data).ok()
            })
            .as_ref()
    }

    /// Looks up any attribute, core or extension, by its lower-case name.
    pub fn attribute(&self, name: &str) -> Option<AttrRef<'_>> {
        match name {
            "specversion" => Some(AttrRef::Str(self.specversion.as_str())),
            "id" => Some(AttrRef::Str(&self.id)),
            "source" => Some(AttrRef::Str(&self.source)),
            "type" => Some(AttrRef::Str(&self.ty)),
            "datacontenttype" => self.datacontenttype.as_deref().map(AttrRef::Str),
            "subject" => self.subject.as_deref().map(AttrRef::Str),
            "time" => self.time.as_deref().map(AttrRef::Str),
            _ if name == self.specversion.dataschema_name() => {
                self.dataschema.as_deref().map(AttrRef::Str)
            }
            _ => self.extension(name).map(AttributeValue::as_ref),
        }
    }

    pub fn extension(&self, name: &str) -> Option<&AttributeValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Sets an extension, replacing an existing one of the same name.
    pub fn set_extension(&mut self, name: &str, value: AttributeValue) {
        match self.extensions.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.extensions.push((name.to_owned(), value)),
        }
    }

    pub fn remove_extension(&mut self, name: &str) -> Option<AttributeValue> {
        let idx = self.extensions.iter().position(|(n, _)| n == name)?;
        Some(self.extensions.remove(idx).1)
    }

    /// Every attribute but the data, core ones first, as (name, value) pairs.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, AttrRef<'_>)> {
        let core = [
            ("specversion", Some(AttrRef::Str(self.specversion.as_str()))),
            ("id", Some(AttrRef::Str(&self.id))),
            ("source", Some(AttrRef::Str(&self.source))),
            ("type", Some(AttrRef::Str(&self.ty))),
            (
                "datacontenttype",
                self.datacontenttype.as_deref().map(AttrRef::Str),
            ),
            (
                self.specversion.dataschema_name(),
                self.dataschema.as_deref().map(AttrRef::Str),
            ),
            ("subject", self.subject.as_deref().map(AttrRef::Str)),
            ("time", self.time.as_deref().map(AttrRef::Str)),
        ];
        core.into_iter()
            .filter_map(|(n, v)| v.map(|v| (n, v)))
            .chain(
                self.extensions
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_ref())),
            )
    }

    /// A rough size in bytes, for limits and metrics.
    pub fn approx_size(&self) -> usize {
        self.attributes()
            .map(|(n, v)| {
                n.len()
                    + match v {
                        AttrRef::Str(s) => s.len(),
                        AttrRef::Binary(b) => b.len(),
                        _ => 8,
                    }
            })
            .sum::<usize>()
            + self.data.as_ref().map_or(0, Bytes::len)
    }
}

/// Whether a name is one of the context attributes the spec defines for `version`.
pub fn is_core_attribute(version: SpecVersion, name: &str) -> bool {
    matches!(
        name,
        "specversion" | "id" | "source" | "type" | "datacontenttype" | "subject" | "time"
    ) || name == version.dataschema_name()
}
