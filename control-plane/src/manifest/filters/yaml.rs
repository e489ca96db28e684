//! A manifest's `spec.filters` YAML to the dispatcher's typed [`FilterSpec`]s,
//! checking the shape on the way: one dialect per filter object and a known one,
//! maps and lists where they belong, strings (not numbers or booleans) for values
//! and CESQL; for cemesh's `data` dialect, scalars kept with their YAML type and the
//! known tests with arguments of their type. What the filters mean (non-empty lists and values, attribute names,
//! CESQL syntax) is checked when the dispatcher compiles them. The first problem
//! found is returned, with the path of the node that holds it.

use cemesh_dispatcher::filter::{attr_path, DataTest, DataValue, FilterSpec};
use cemesh_dispatcher::FilterError;

use crate::manifest::{Mapping, Value};

const DIALECTS: &str = "exact, prefix, suffix, all, any, not, cesql or data";
const DATA_TESTS: &str = "equals, in, prefix, suffix, exists, gt, gte, lt or lte";

/// The `spec.filters` list.
pub fn specs(items: &[Value], path: &str) -> Result<Vec<FilterSpec>, FilterError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| spec(v, &format!("{path}[{i}]")))
        .collect()
}

/// One filter object: `{<dialect>: <argument>}`.
fn spec(node: &Value, path: &str) -> Result<FilterSpec, FilterError> {
    let Value::Mapping(map) = node else {
        return Err(FilterError::new(
            path,
            format!(
                "expected a filter object with one of {DIALECTS}, got {}",
                describe(node)
            ),
        ));
    };
    let mut entries = map.iter();
    let (dialect, arg) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        (None, _) => {
            return Err(FilterError::new(
                path,
                format!("empty filter object: expected one of {DIALECTS}"),
            ))
        }
        (Some(_), Some(_)) => {
            let names: Vec<String> = map.keys().map(key_text).collect();
            return Err(FilterError::new(
                path,
                format!(
                    "multiple dialects found ({}): a filter object holds exactly one; \
                     combine them with all",
                    names.join(", ")
                ),
            ));
        }
    };
    let Some(dialect) = dialect.as_str() else {
        return Err(FilterError::new(
            path,
            format!(
                "the dialect name must be a string (one of {DIALECTS}), got {}",
                describe(dialect)
            ),
        ));
    };
    let path = format!("{path}.{dialect}");
    let path = path.as_str();
    match dialect {
        "exact" => clauses(arg, path).map(FilterSpec::Exact),
        "prefix" => clauses(arg, path).map(FilterSpec::Prefix),
        "suffix" => clauses(arg, path).map(FilterSpec::Suffix),
        "all" => children(arg, path).map(FilterSpec::All),
        "any" => children(arg, path).map(FilterSpec::Any),
        "not" => spec(arg, path).map(|n| FilterSpec::Not(Box::new(n))),
        "cesql" => match arg {
            Value::String(src) => Ok(FilterSpec::Cesql(src.clone())),
            other => Err(FilterError::new(
                path,
                format!(
                    "expected a string holding a CESQL expression, got {}",
                    describe(other)
                ),
            )),
        },
        "data" => data(arg, path).map(FilterSpec::Data),
        "sql" => Err(FilterError::new(
            path,
            "unknown dialect \"sql\": Knative triggers call the CESQL dialect \"cesql\"",
        )),
        other => Err(FilterError::new(
            path,
            format!("unknown dialect {other:?}: expected one of {DIALECTS}"),
        )),
    }
}

/// The argument of `exact`, `prefix` and `suffix`: a map of attribute names to
/// strings.
fn clauses(arg: &Value, path: &str) -> Result<Vec<(String, String)>, FilterError> {
    let map = mapping(arg, path, "a map of attribute names to strings")?;
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let Some(name) = name.as_str() else {
            return Err(FilterError::new(
                format!("{path}[{}]", key_text(name)),
                format!("an attribute name must be a string, got {}", describe(name)),
            ));
        };
        let at = attr_path(path, name);
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Bool(_) | Value::Number(_) => {
                return Err(FilterError::new(
                    at,
                    format!(
                        "expected a string, got {}; quote it: \"{}\"",
                        describe(value),
                        scalar_text(value)
                    ),
                ))
            }
            other => {
                return Err(FilterError::new(
                    at,
                    format!("expected a string, got {}", describe(other)),
                ))
            }
        };
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// The argument of `data`: JSON paths to a value (equal to it) or a map of tests.
fn data(arg: &Value, path: &str) -> Result<Vec<(String, Vec<DataTest>)>, FilterError> {
    let map = mapping(arg, path, "a map of data paths to a value or tests")?;
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let Some(json_path) = key.as_str() else {
            return Err(FilterError::new(
                format!("{path}[{}]", key_text(key)),
                format!("a data path must be a string, got {}", describe(key)),
            ));
        };
        let at = attr_path(path, json_path);
        let tests = match value {
            Value::Mapping(tests) => tests
                .iter()
                .map(|(op, arg)| data_test(op, arg, &at))
                .collect::<Result<Vec<_>, _>>()?,
            Value::Sequence(_) => {
                return Err(FilterError::new(
                    at,
                    "a list is not a value here: for one of several values write in: [...]",
                ))
            }
            scalar => vec![DataTest::Equals(data_value(scalar, &at)?)],
        };
        out.push((json_path.to_owned(), tests));
    }
    Ok(out)
}

fn data_test(op: &Value, arg: &Value, path: &str) -> Result<DataTest, FilterError> {
    let name = op.as_str().unwrap_or("");
    let at = format!("{path}.{name}");
    let number = || match arg {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| FilterError::new(&at, "expected a number")),
        other => Err(FilterError::new(
            &at,
            format!("expected a number, got {}", describe(other)),
        )),
    };
    let text = || match arg {
        Value::String(s) => Ok(s.clone()),
        other => Err(FilterError::new(
            &at,
            format!("expected a string, got {}", describe(other)),
        )),
    };
    Ok(match name {
        "equals" => DataTest::Equals(data_value(arg, &at)?),
        "in" => match arg {
            Value::Sequence(items) => DataTest::In(
                items
                    .iter()
                    .map(|v| data_value(v, &at))
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(FilterError::new(
                    at,
                    format!("expected a list of values, got {}", describe(other)),
                ))
            }
        },
        "prefix" => DataTest::Prefix(text()?),
        "suffix" => DataTest::Suffix(text()?),
        "exists" => match arg {
            Value::Bool(b) => DataTest::Exists(*b),
            other => {
                return Err(FilterError::new(
                    at,
                    format!("expected true or false, got {}", describe(other)),
                ))
            }
        },
        "gt" => DataTest::Gt(number()?),
        "gte" => DataTest::Gte(number()?),
        "lt" => DataTest::Lt(number()?),
        "lte" => DataTest::Lte(number()?),
        _ => {
            return Err(FilterError::new(
                path,
                format!("unknown test {:?}: expected {DATA_TESTS}", key_text(op)),
            ))
        }
    })
}

/// A scalar of a `data` filter, kept with its YAML type.
fn data_value(v: &Value, path: &str) -> Result<DataValue, FilterError> {
    Ok(match v {
        Value::Null => DataValue::Null,
        Value::Bool(b) => DataValue::Bool(*b),
        Value::Number(n) => DataValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => DataValue::String(s.clone()),
        other => {
            return Err(FilterError::new(
                path,
                format!(
                    "expected a string, number, boolean or null, got {}",
                    describe(other)
                ),
            ))
        }
    })
}

/// The argument of `all` and `any`: a list of filter objects.
fn children(arg: &Value, path: &str) -> Result<Vec<FilterSpec>, FilterError> {
    let Value::Sequence(items) = arg else {
        return Err(FilterError::new(
            path,
            format!("expected a list of filter objects, got {}", describe(arg)),
        ));
    };
    specs(items, path)
}

fn mapping<'v>(arg: &'v Value, path: &str, expected: &str) -> Result<&'v Mapping, FilterError> {
    match arg {
        Value::Mapping(m) => Ok(m),
        other => Err(FilterError::new(
            path,
            format!("expected {expected}, got {}", describe(other)),
        )),
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => scalar_text(other),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => describe(other).into(),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
    }
}
