//! Knative's `spec.filter.attributes`: every listed attribute must equal its value
//! exactly (case-sensitive, extensions included). An empty value means "present and
//! non-empty", as Knative's MT broker does.

use std::collections::BTreeMap;

use cemesh_proto::{AttrRef, Event};

use super::FilterError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributesFilter {
    entries: Box<[(Box<str>, Box<str>)]>,
}

impl AttributesFilter {
    /// Compiles the map; `path` is where it sits in the manifest, for errors.
    pub fn new(attributes: &BTreeMap<String, String>, path: &str) -> Result<Self, FilterError> {
        let mut entries = Vec::with_capacity(attributes.len());
        for (name, value) in attributes {
            if !is_valid_name(name) {
                return Err(FilterError::new(
                    format!("{path}.{name}"),
                    format!("attribute name {name:?} must match ^[a-z][a-z0-9]*$"),
                ));
            }
            entries.push((name.as_str().into(), value.as_str().into()));
        }
        // Most selective first is unknowable; `type` is the usual discriminator.
        entries.sort_by_key(|(n, _): &(Box<str>, Box<str>)| (&**n != "type", n.clone()));
        Ok(AttributesFilter {
            entries: entries.into_boxed_slice(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.entries
            .iter()
            .all(|(name, expected)| match event.attribute(name) {
                None => false,
                Some(value) if expected.is_empty() => !is_empty_value(value),
                Some(value) => value.canonical_eq(expected),
            })
    }
}

fn is_empty_value(v: AttrRef<'_>) -> bool {
    match v {
        AttrRef::Str(s) => s.is_empty(),
        AttrRef::Binary(b) => b.is_empty(),
        AttrRef::Boolean(_) | AttrRef::Integer(_) => false,
    }
}

fn is_valid_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cemesh_proto::AttributeValue;

    fn filter(pairs: &[(&str, &str)]) -> AttributesFilter {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AttributesFilter::new(&map, "spec.filter.attributes").unwrap()
    }

    #[test]
    fn exact_and_case_sensitive() {
        let mut e = Event::new("1", "/s", "com.example.a");
        e.set_extension("region", AttributeValue::String("eu".into()));
        e.set_extension("n", AttributeValue::Integer(7));
        assert!(filter(&[]).matches(&e));
        assert!(filter(&[("type", "com.example.a")]).matches(&e));
        assert!(!filter(&[("type", "com.example.A")]).matches(&e));
        assert!(filter(&[("type", "com.example.a"), ("region", "eu")]).matches(&e));
        assert!(!filter(&[("type", "com.example.a"), ("region", "us")]).matches(&e));
        assert!(filter(&[("n", "7")]).matches(&e));
        assert!(!filter(&[("missing", "x")]).matches(&e));
    }

    #[test]
    fn empty_value_means_present_and_non_empty() {
        let mut e = Event::new("1", "/s", "t");
        assert!(!filter(&[("subject", "")]).matches(&e));
        e.subject = Some("x".into());
        assert!(filter(&[("subject", "")]).matches(&e));
    }

    #[test]
    fn bad_names_are_refused_with_the_path() {
        let map = [("Type".to_string(), "x".to_string())]
            .into_iter()
            .collect();
        let err = AttributesFilter::new(&map, "spec.filter.attributes").unwrap_err();
        assert_eq!(err.path, "spec.filter.attributes.Type");
        let map = [("1a".to_string(), "x".to_string())].into_iter().collect();
        assert!(AttributesFilter::new(&map, "p").is_err());
    }
}
