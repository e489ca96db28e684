//! The path language of filters on event data (the `data` dialect and CESQL's
//! `DATA` functions): dot-separated object keys, each optionally followed by `[N]`
//! (an array element) or `[*]` (any element); a leading `$.` is allowed, and
//! `["a.b"]` names a key holding dots. No crate fits: JSONPath engines evaluate a
//! general query language per call, while a filter needs a fixed path resolved
//! against `serde_json::Value` without allocating.

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(Box<str>),
    Index(usize),
    AnyElement,
}

/// Whether some value the path leads to satisfies `f`.
pub(crate) fn reaches(v: &Value, steps: &[Step], f: &mut dyn FnMut(&Value) -> bool) -> bool {
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

/// The first value the path leads to (the first element of each `[*]` that has one).
pub(crate) fn first<'v>(v: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => first(m.get(&**k)?, rest),
        (Step::Index(i), Value::Array(a)) => first(a.get(*i)?, rest),
        (Step::AnyElement, Value::Array(a)) => a.iter().find_map(|v| first(v, rest)),
        _ => None,
    }
}

/// `a.b[0].c[*]`, `$.a`, `["a.b"].c`.
pub(crate) fn parse_path(text: &str) -> Result<Vec<Step>, String> {
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
