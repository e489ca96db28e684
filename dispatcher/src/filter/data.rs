//! cemesh's `data` filter dialect: tests on fields of the event's JSON data, which
//! Knative's dialects cannot reach (knative/eventing#8274), in the spirit of
//! EventBridge's content filters. No crate fits: JSONPath engines evaluate a general
//! query language per call, while a filter needs a fixed path resolved against
//! `serde_json::Value` without allocating, so the small path language is here.
//!
//! Paths: dot-separated object keys, each optionally followed by `[N]` (an array
//! element) or `[*]` (any element); a leading `$.` is allowed, and `["a.b"]` names a
//! key holding dots. `order.items[*].sku` passes when any item's `sku` passes.
//!
//! The data is parsed once per event, when a filter first asks, and shared by every
//! trigger that holds the same event ([`Event::json_data`]); a trigger without a
//! `data` filter never parses it. Data that is not JSON (by its content type, or
//! failing to parse) passes no `data` test except `exists: false`, and never fails
//! the trigger.

use cemesh_proto::Event;
use serde_json::Value;

use super::attr::attr_path;
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

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(Box<str>),
    Index(usize),
    AnyElement,
}

/// A compiled `path: tests` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DataClause {
    steps: Box<[Step]>,
    tests: Box<[DataTest]>,
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
            tests: tests.into(),
        })
    }

    /// Whether the event's data passes every test at this path.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        let data = event.json_data();
        if self.tests.iter().all(|t| *t == DataTest::Exists(false)) {
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

/// Whether some value the path leads to satisfies `f`.
fn reaches(v: &Value, steps: &[Step], f: &mut dyn FnMut(&Value) -> bool) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return f(v);
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => m.get(&**k).is_some_and(|v| reaches(v, rest, f)),
        (Step::Index(i), Value::Array(a)) => a.get(*i).is_some_and(|v| reaches(v, rest, f)),
        (Step::AnyElement, Value::Array(a)) => a.iter().any(|v| reaches(v, rest, f)),
        _ => false,
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

/// `a.b[0].c[*]`, `$.a`, `["a.b"].c`.
fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("{text:?} is not a data path: {why}");
    let rest = text.strip_prefix("$.").unwrap_or(text);
    let b = rest.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    let mut expect_key = true;
    while i < b.len() {
        match b[i] {
            b'[' => {
                let end = rest[i..]
                    .find(']')
                    .map(|e| i + e)
                    .ok_or_else(|| bad("a [ is not closed"))?;
                let inner = rest[i + 1..end].trim();
                let quoted = inner.len() >= 2
                    && ((inner.starts_with('"') && inner.ends_with('"'))
                        || (inner.starts_with('\'') && inner.ends_with('\'')));
                steps.push(if inner == "*" {
                    Step::AnyElement
                } else if quoted {
                    Step::Key(inner[1..inner.len() - 1].into())
                } else {
                    Step::Index(
                        inner
                            .parse()
                            .map_err(|_| bad("inside [ ] goes an index, * or a quoted key"))?,
                    )
                });
                i = end + 1;
                expect_key = false;
            }
            b'.' => {
                if expect_key {
                    return Err(bad("an empty key"));
                }
                i += 1;
                expect_key = true;
                if i == b.len() {
                    return Err(bad("it ends with a dot"));
                }
            }
            _ => {
                let end = rest[i..].find(['.', '[']).map_or(rest.len(), |e| i + e);
                steps.push(Step::Key(rest[i..end].into()));
                i = end;
                expect_key = false;
            }
        }
    }
    if steps.is_empty() {
        return Err(bad("it is empty"));
    }
    Ok(steps)
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
}
