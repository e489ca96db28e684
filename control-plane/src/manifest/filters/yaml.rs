//! A manifest's `spec.filters` YAML to the dispatcher's typed [`FilterSpec`]s,
//! checking the shape on the way: one dialect per filter object and a known one,
//! maps and lists where they belong, strings (not numbers or booleans) for values
//! and CESQL. What the filters mean (non-empty lists and values, attribute names,
//! CESQL syntax) is checked when the dispatcher compiles them. The first problem
//! found is returned, with the path of the node that holds it.

use cemesh_dispatcher::filter::{attr_path, FilterSpec};
use cemesh_dispatcher::FilterError;

use crate::manifest::{Mapping, Value};

const DIALECTS: &str = "exact, prefix, suffix, all, any, not or cesql";

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
