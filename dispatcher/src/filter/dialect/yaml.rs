//! YAML nodes to the compiled tree, checking everything on the way (see the module
//! docs of `dialect` for what is refused and why). The first problem found is
//! returned, with the path of the node that holds it.

use serde_yaml::{Mapping, Value};

use super::{Clause, Node};
use crate::filter::attr::AttrKey;
use crate::filter::cesql::Expression;
use crate::filter::FilterError;

const DIALECTS: &str = "exact, prefix, suffix, all, any, not or cesql";

/// The top-level list: an implicit `all`.
pub(super) fn compile_list(filters: &[Value], path: &str) -> Result<Node, FilterError> {
    if filters.is_empty() {
        return Err(FilterError::new(path, "expected at least one filter"));
    }
    let mut nodes = compile_children(filters, path)?;
    Ok(if nodes.len() == 1 {
        nodes.remove(0)
    } else {
        Node::All(nodes.into_boxed_slice())
    })
}

fn compile_children(items: &[Value], path: &str) -> Result<Vec<Node>, FilterError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| compile_node(v, &format!("{path}[{i}]")))
        .collect()
}

/// One filter object: `{<dialect>: <argument>}`.
fn compile_node(node: &Value, path: &str) -> Result<Node, FilterError> {
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
        "exact" => clauses(arg, path).map(Node::Exact),
        "prefix" => clauses(arg, path).map(Node::Prefix),
        "suffix" => clauses(arg, path).map(Node::Suffix),
        "all" => children(arg, path).map(Node::All),
        "any" => children(arg, path).map(Node::Any),
        "not" => compile_node(arg, path).map(|n| Node::Not(Box::new(n))),
        "cesql" => cesql(arg, path),
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

/// The argument of `exact`, `prefix` and `suffix`: a non-empty map of attribute
/// names to non-empty strings.
fn clauses(arg: &Value, path: &str) -> Result<Box<[Clause]>, FilterError> {
    let map = mapping(arg, path, "a map of attribute names to strings")?;
    if map.is_empty() {
        return Err(FilterError::new(
            path,
            "expected at least one attribute: an empty map would match every event",
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let Some(name) = name.as_str() else {
            return Err(FilterError::new(
                format!("{path}[{}]", key_text(name)),
                format!("an attribute name must be a string, got {}", describe(name)),
            ));
        };
        let at = attr_path(path, name);
        check_attribute_name(name).map_err(|m| FilterError::new(&at, m))?;
        let value = match value {
            Value::String(s) if s.is_empty() => {
                return Err(FilterError::new(
                    at,
                    "the value must not be empty (Knative would ignore this filter and \
                     forward every event); to require the attribute, use cesql: \
                     \"EXISTS name\"",
                ))
            }
            Value::String(s) => s.as_str(),
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
        out.push(Clause {
            key: AttrKey::new(name),
            value: value.into(),
        });
    }
    Ok(out.into_boxed_slice())
}

/// The argument of `all` and `any`: a non-empty list of filter objects.
fn children(arg: &Value, path: &str) -> Result<Box<[Node]>, FilterError> {
    let Value::Sequence(items) = arg else {
        return Err(FilterError::new(
            path,
            format!("expected a list of filter objects, got {}", describe(arg)),
        ));
    };
    if items.is_empty() {
        return Err(FilterError::new(
            path,
            "expected at least one filter (Knative would treat an empty list as \
             \"no filter\" and forward every event)",
        ));
    }
    compile_children(items, path).map(Vec::into_boxed_slice)
}

fn cesql(arg: &Value, path: &str) -> Result<Node, FilterError> {
    let Value::String(src) = arg else {
        return Err(FilterError::new(
            path,
            format!(
                "expected a string holding a CESQL expression, got {}",
                describe(arg)
            ),
        ));
    };
    Expression::parse(src)
        .map(|e| Node::Cesql(Box::new(e)))
        .map_err(|e| FilterError::new(path, e.to_string()))
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

/// CloudEvents naming rules: `[a-z0-9]+`, not `data`.
fn check_attribute_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the attribute name must not be empty".into());
    }
    if name == "data" {
        return Err("\"data\" is not an attribute: event data cannot be filtered".into());
    }
    cemesh_proto::validate::check_name(name).map_err(|_| {
        format!(
            "attribute name {name:?} is not a CloudEvents name: use lower-case letters a-z \
             and digits 0-9 only"
        )
    })
}

/// `path.name`, or `path["odd name"]` when the name would not read as one segment.
fn attr_path(path: &str, name: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("{path}.{name}")
    } else {
        format!("{path}[{name:?}]")
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
        Value::Tagged(_) => "a tagged value",
    }
}
