//! A YAML document as written, untyped: what the admin API shows back, what `apply`
//! sends, what a spec change is compared as, and the `spec.filters` nodes before they
//! are typed.
//!
//! serde-saphyr (see [`super::parser`]) deserializes straight into typed values and
//! has no tree of its own. `serde_json::Value` would do for most of a Kubernetes
//! object, but it turns every key into a string and sorts maps, so a filter's
//! `exact: {1: b}` would no longer be refused as a non-string attribute name and keys
//! would not come back in the order they were written. Hence this small tree: keys of
//! any type, in document order, numbers as JSON numbers (a Kubernetes object is JSON).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A node of a YAML document.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    /// Integers and finite floats (a non-finite float is refused by the parser).
    Number(serde_json::Number),
    String(String),
    Sequence(Vec<Value>),
    Mapping(Mapping),
}

/// A YAML mapping: entries in document order, keys of any type, no duplicates (the
/// parser refuses them). Equality ignores the order, as for a map.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    entries: Vec<(Value, Value)>,
}

impl Value {
    /// The value of `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_mapping().and_then(|m| m.get(key))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_mapping(&self) -> Option<&Mapping> {
        match self {
            Value::Mapping(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_mapping_mut(&mut self) -> Option<&mut Mapping> {
        match self {
            Value::Mapping(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<&[Value]> {
        match self {
            Value::Sequence(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// What this node is, as serde says it in `invalid type: <this>, expected ...`.
    pub fn unexpected(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("boolean `{b}`"),
            Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
            Value::Number(n) => format!("integer `{n}`"),
            Value::String(s) => format!("string {s:?}"),
            Value::Sequence(_) => "sequence".into(),
            Value::Mapping(_) => "map".into(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl Mapping {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of the string key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Sets `key` to `value`, in place if the key is there, else at the end.
    pub fn insert(&mut self, key: Value, value: Value) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Removes the string key `key`, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Value, &Value)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Value> {
        self.entries.iter().map(|(k, _)| k)
    }
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .entries
                .iter()
                .all(|(k, v)| other.entries.iter().any(|(ok, ov)| ok == k && ov == v))
    }
}

impl FromIterator<(Value, Value)> for Mapping {
    fn from_iter<I: IntoIterator<Item = (Value, Value)>>(iter: I) -> Self {
        let mut m = Mapping::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<'a> IntoIterator for &'a Mapping {
    type Item = (&'a Value, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Value, Value)>,
        fn(&'a (Value, Value)) -> (&'a Value, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => n.serialize(s),
            Value::String(v) => s.serialize_str(v),
            Value::Sequence(items) => items.serialize(s),
            Value::Mapping(m) => m.serialize(s),
        }
    }
}

impl Serialize for Mapping {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_i128<E: de::Error>(self, n: i128) -> Result<Value, E> {
        match i64::try_from(n) {
            Ok(n) => Ok(Value::Number(n.into())),
            Err(_) => self.visit_f64(n as f64),
        }
    }

    fn visit_u128<E: de::Error>(self, n: u128) -> Result<Value, E> {
        match u64::try_from(n) {
            Ok(n) => Ok(Value::Number(n.into())),
            Err(_) => self.visit_f64(n as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{n} is not a number a manifest can hold")))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some((k, v)) = map.next_entry()? {
            entries.push((k, v));
        }
        Ok(Value::Mapping(Mapping { entries }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Value {
        super::super::parser::value(yaml, "a test").expect("test YAML")
    }

    #[test]
    fn keys_keep_their_type_and_order() {
        let v = parse("b: 1\na: x\n1: true\nnull: ~\n");
        let m = v.as_mapping().unwrap();
        let keys: Vec<&Value> = m.keys().collect();
        assert_eq!(
            keys,
            [
                &Value::from("b"),
                &Value::from("a"),
                &Value::Number(1.into()),
                &Value::Null
            ]
        );
        assert_eq!(v.get("b"), Some(&Value::Number(1.into())));
        assert_eq!(m.get("a").and_then(Value::as_str), Some("x"));
    }

    #[test]
    fn maps_are_equal_whatever_their_order() {
        assert_eq!(
            parse("a: 1\nb: [x, {c: d}]\n"),
            parse("b: [x, {c: d}]\na: 1\n")
        );
        assert_ne!(parse("a: 1\nb: 2\n"), parse("a: 1\nb: 3\n"));
        assert_ne!(parse("a: 1\n"), parse("a: 1\nb: 2\n"));
        assert_ne!(parse("b: [x, y]\n"), parse("b: [y, x]\n"));
    }

    /// YAML 1.2 core schema, as serde_yaml read it: `yes`, `0755` and `1_000` are text.
    #[test]
    fn scalars_are_typed_by_the_core_schema() {
        let v = parse("a: yes\nb: 0755\nc: 1_000\nd: 1.5\ne: -3\nf: True\ng: ''\nh:\n");
        let get = |k: &str| v.get(k).unwrap().clone();
        assert_eq!(get("a"), Value::from("yes"));
        assert_eq!(get("b"), Value::from("0755"));
        assert_eq!(get("c"), Value::from("1_000"));
        assert_eq!(get("d").unexpected(), "floating point `1.5`");
        assert_eq!(get("e").unexpected(), "integer `-3`");
        assert_eq!(get("f"), Value::Bool(true));
        assert_eq!(get("g"), Value::from(""));
        assert_eq!(get("h"), Value::Null);
    }

    #[test]
    fn merge_keys_are_expanded_and_explicit_keys_win() {
        let v = parse(
            "base: &base {retry: 3, timeout: PT1S}
d:
  <<: *base
  retry: 5
",
        );
        assert_eq!(
            v.get("d"),
            Some(&parse(
                "retry: 5
timeout: PT1S
"
            ))
        );
    }

    #[test]
    fn a_document_survives_a_round_trip_through_yaml_and_json() {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    cemesh.dev/parallelism: \"8\"\n    note: \"true\"\n    empty: \"\"\n    nil: \"null\"\nspec:\n  broker: b\n  filters:\n    - cesql: \"type = 'a' AND x > 1\"\n    - exact: {type: \"1\"}\n  subscriber:\n    uri: http://x/y?a=b#c\n  delivery:\n    retry: 3\n    text: |\n      two\n      lines\n";
        let v = parse(text);
        let yaml = serde_saphyr::to_string(&v).unwrap();
        assert_eq!(parse(&yaml), v, "{yaml}");
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(parse(&json), v, "{json}");
        assert_eq!(
            serde_json::to_value(&v).unwrap()["metadata"]["annotations"]["note"],
            "true"
        );
    }
}
