//! cemesh's `data` filter dialect: tests on fields of the event's JSON data, which
//! Knative's dialects cannot reach (knative/eventing#8274), in the spirit of
//! EventBridge's content filters.
//!
//! Paths are `super::jsonpath`'s: `order.items[*].sku` passes when any item's `sku`
//! passes.
//!
//! The data is parsed once per event, when a filter first asks, and shared by every
//! trigger that holds the same event ([`Event::json_data`]); a trigger without a
//! `data` filter never parses it. Data that is not JSON (by its content type, or
//! failing to parse) passes no `data` test except `exists: false`, and never fails
//! the trigger.

use cemesh_proto::Event;
use serde_json::Value;

use super::attr::attr_path;
use super::jsonpath::{parse_path, reaches, Step};
use super::FilterError;

/// A scalar as a `data` filter writes it; compared with JSON by type (`100` is not
/// `"100"`).
#[derive(Debug, Clone, PartialEq)]
pub enum DataValue {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
}

/// One test of a value in the event's data.
#[derive(Debug, Clone, PartialEq)]
pub enum DataTest {
    Equals(DataValue),
    /// Equal to one of these.
    In(Vec<DataValue>),
    Prefix(String),
    Suffix(String),
    /// Whether the path leads to a value (`null` included).
    Exists(bool),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
}

/// A compiled `path: tests` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DataClause {
    steps: Box<[Step]>,
    tests: Box<[DataTest]>,
    /// Every test is `exists: false`: the clause holds where the path leads nowhere.
    absent: bool,
}

impl DataClause {
    /// Compiles one entry; `path` is where it sits in the manifest.
    pub(crate) fn compile(
        json_path: &str,
        tests: &[DataTest],
        path: &str,
    ) -> Result<DataClause, FilterError> {
        let at = attr_path(path, json_path);
        let steps = parse_path(json_path).map_err(|m| FilterError::new(&at, m))?;
        if tests.is_empty() {
            return Err(FilterError::new(
                at,
                "expected a value or at least one test (equals, in, prefix, suffix, exists, gt, gte, lt, lte)",
            ));
        }
        for t in tests {
            match t {
                DataTest::Prefix(s) | DataTest::Suffix(s) if s.is_empty() => {
                    return Err(FilterError::new(
                        at,
                        "prefix and suffix must not be empty (they would match every string)",
                    ))
                }
                DataTest::In(v) if v.is_empty() => {
                    return Err(FilterError::new(at, "in needs at least one value"))
                }
                _ => {}
            }
        }
        Ok(DataClause {
            steps: steps.into_boxed_slice(),
            absent: tests.iter().all(|t| *t == DataTest::Exists(false)),
            tests: tests.into(),
        })
    }

    /// Whether the event's data passes every test at this path.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        let data = event.json_data();
        if self.absent {
            return !data.is_some_and(|d| reaches(d, &self.steps, &mut |_| true));
        }
        let Some(data) = data else {
            return false;
        };
        reaches(data, &self.steps, &mut |v| {
            self.tests.iter().all(|t| passes(t, v))
        })
    }
}

fn passes(test: &DataTest, v: &Value) -> bool {
    let num = || v.as_f64();
    match test {
        DataTest::Exists(e) => *e,
        DataTest::Equals(want) => equals(want, v),
        DataTest::In(wants) => wants.iter().any(|w| equals(w, v)),
        DataTest::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
        DataTest::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(p.as_str())),
        DataTest::Gt(n) => num().is_some_and(|x| x > *n),
        DataTest::Gte(n) => num().is_some_and(|x| x >= *n),
        DataTest::Lt(n) => num().is_some_and(|x| x < *n),
        DataTest::Lte(n) => num().is_some_and(|x| x <= *n),
    }
}

fn equals(want: &DataValue, v: &Value) -> bool {
    match (want, v) {
        (DataValue::Null, Value::Null) => true,
        (DataValue::Bool(a), Value::Bool(b)) => a == b,
        (DataValue::Number(a), Value::Number(b)) => b.as_f64() == Some(*a),
        (DataValue::String(a), Value::String(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(data: &str, content_type: Option<&str>) -> Event {
        let mut e = Event::new("1", "/s", "t");
        e.datacontenttype = content_type.map(str::to_owned);
        e.data = Some(Bytes::from(data.to_owned()));
        e
    }

    fn clause(path: &str, tests: Vec<DataTest>) -> DataClause {
        DataClause::compile(path, &tests, "spec.filters[0].data").unwrap()
    }

    const ORDER: &str = r#"{"order":{"total":120.5,"id":"A-1","vip":true,"note":null,
        "items":[{"sku":"ABC-1","qty":2},{"sku":"XYZ-9","qty":1}],"a.b":7}}"#;

    #[test]
    fn paths_reach_nested_fields_array_elements_and_any_element() {
        let e = event(ORDER, Some("application/json"));
        let yes =
            |p: &str, t: DataTest| assert!(clause(p, vec![t.clone()]).matches(&e), "{p} {t:?}");
        let no =
            |p: &str, t: DataTest| assert!(!clause(p, vec![t.clone()]).matches(&e), "{p} {t:?}");
        yes(
            "order.id",
            DataTest::Equals(DataValue::String("A-1".into())),
        );
        yes("$.order.items[1].sku", DataTest::Prefix("XYZ".into()));
        yes(
            "order.items[*].sku",
            DataTest::Equals(DataValue::String("ABC-1".into())),
        );
        no(
            "order.items[*].sku",
            DataTest::Equals(DataValue::String("NOPE".into())),
        );
        no("order.items[5].sku", DataTest::Exists(true));
        yes("order[\"a.b\"]", DataTest::Equals(DataValue::Number(7.0)));
        yes("order.note", DataTest::Exists(true));
        yes("order.note", DataTest::Equals(DataValue::Null));
        yes("order.missing", DataTest::Exists(false));
        no("order.id", DataTest::Exists(false));
    }

    #[test]
    fn values_compare_by_type_and_numbers_by_range() {
        let e = event(ORDER, None);
        let m = |p: &str, t: Vec<DataTest>| clause(p, t).matches(&e);
        assert!(m(
            "order.total",
            vec![DataTest::Gt(100.0), DataTest::Lte(120.5)]
        ));
        assert!(!m(
            "order.total",
            vec![DataTest::Gt(100.0), DataTest::Lt(120.5)]
        ));
        assert!(
            !m("order.id", vec![DataTest::Gt(0.0)]),
            "a string is no number"
        );
        assert!(m(
            "order.vip",
            vec![DataTest::Equals(DataValue::Bool(true))]
        ));
        assert!(!m(
            "order.vip",
            vec![DataTest::Equals(DataValue::String("true".into()))]
        ));
        assert!(m(
            "order.items[0].qty",
            vec![DataTest::In(vec![
                DataValue::Number(1.0),
                DataValue::Number(2.0)
            ])]
        ));
    }

    #[test]
    fn data_that_is_not_json_passes_nothing_but_exists_false() {
        for e in [
            event("not json", Some("application/json")),
            event(ORDER, Some("text/plain")),
            Event::new("1", "/s", "t"),
        ] {
            assert!(!clause("order.id", vec![DataTest::Exists(true)]).matches(&e));
            assert!(clause("order.id", vec![DataTest::Exists(false)]).matches(&e));
        }
        let cloudevents_json = event(ORDER, Some("application/vnd.api+json; charset=utf-8"));
        assert!(clause("order.id", vec![DataTest::Exists(true)]).matches(&cloudevents_json));
    }

    #[test]
    fn bad_paths_and_empty_tests_are_refused_naming_the_entry() {
        for (p, why) in [
            ("", "it is empty"),
            ("a..b", "an empty key"),
            ("a.", "it ends with a dot"),
            ("a[x]", "inside [ ]"),
            ("a[0", "not closed"),
        ] {
            let e = DataClause::compile(p, &[DataTest::Exists(true)], "f.data").unwrap_err();
            assert!(e.message.contains(why), "{p}: {e}");
        }
        let e = DataClause::compile("a", &[DataTest::Prefix(String::new())], "f.data").unwrap_err();
        assert_eq!(e.path, "f.data.a");
        let e = DataClause::compile("a.b", &[], "f.data").unwrap_err();
        assert_eq!(e.path, "f.data[\"a.b\"]");
    }

    #[test]
    fn cesql_reads_data_with_data_and_data_exists() {
        use crate::filter::cesql::{ErrorKind, Expression};
        let e = event(ORDER, Some("application/json"));
        let yes = |src: &str| assert!(Expression::parse(src).unwrap().matches(&e), "{src}");
        let no = |src: &str| assert!(!Expression::parse(src).unwrap().matches(&e), "{src}");
        yes("DATA('order.id') LIKE 'A-%' AND DATA('order.items[1].qty') = 1");
        yes("DATA_EXISTS('order.items[*].sku') AND NOT DATA_EXISTS('order.nope')");
        yes("DATA('order.vip')");
        yes("DATA('order.total') = '120.5'");
        no("DATA('order.nope') = ''");
        let missing = Expression::parse("DATA('order.nope')").unwrap();
        let r = missing.evaluate(&e);
        assert_eq!(r.errors()[0].kind(), ErrorKind::MissingAttribute);
        // A literal path is compiled with the expression: a bad one is refused then.
        let refused = Expression::parse("DATA('a..b')").unwrap_err().to_string();
        assert!(refused.contains("an empty key"), "{refused}");
        // A computed one is checked when it is evaluated.
        let computed = Expression::parse("DATA(CONCAT('a..', 'b'))").unwrap();
        let r = computed.evaluate(&e);
        assert_eq!(r.errors()[0].kind(), ErrorKind::FunctionEvaluation);
        assert!(Expression::parse("DATA(CONCAT('order.', 'id')) = 'A-1'")
            .unwrap()
            .matches(&e));
        let text = event("x", Some("text/plain"));
        assert!(!Expression::parse("DATA_EXISTS('x')")
            .unwrap()
            .matches(&text));
    }
}
