//! Evaluating a call to a built-in function: arguments are evaluated lazily through
//! the evaluator's context (so an argument's error makes the call return its zero
//! value, as the spec says), then cast to the parameter types.

use std::borrow::Cow;

use super::{cast_string, parse_bool, parse_int, Ctx};
use crate::filter::cesql::ast::Expr;
use crate::filter::cesql::functions::Builtin;
use crate::filter::cesql::{ErrorKind, EventAttributes, Value};

/// Byte offset of the `n`th character (or the end).
fn char_offset(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// `s[range]`, still borrowed when `s` was.
fn slice(s: Cow<'_, str>, start: usize, end: usize) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[start..end]),
        Cow::Owned(o) if start == 0 && end == o.len() => Cow::Owned(o),
        Cow::Owned(o) => Cow::Owned(o[start..end].to_string()),
    }
}

/// Evaluates a built-in call: arguments are evaluated left to right, then
/// cast to the parameter types; an argument that raised an error (e.g. a
/// missing attribute) makes the call return its return type's zero value.
pub(crate) fn call<'a, E: EventAttributes + ?Sized>(
    ctx: &mut Ctx<'a, '_, E>,
    f: Builtin,
    args: &'a [Expr],
) -> Value<'a> {
    match f {
        Builtin::Concat => return concat(ctx, None, args),
        Builtin::ConcatWs => {
            let Some((sep, rest)) = args.split_first() else {
                return f.zero();
            };
            return match ctx.eval(sep) {
                Some(s) => concat(ctx, Some(cast_string(s)), rest),
                None => f.zero(),
            };
        }
        _ => {}
    }
    // Fixed arity 1..=3 (guaranteed by `Function::resolve`).
    let mut vals: [Option<Value<'a>>; 3] = [None, None, None];
    for (slot, arg) in vals.iter_mut().zip(args) {
        let Some(v) = ctx.eval(arg) else {
            return f.zero();
        };
        *slot = Some(v);
    }
    let [Some(a), b, c] = vals else {
        return f.zero();
    };
    match f {
        Builtin::Length => {
            let s = cast_string(a);
            Value::Integer(i32::try_from(char_len(&s)).unwrap_or(i32::MAX))
        }
        Builtin::Lower => Value::String(Cow::Owned(cast_string(a).to_lowercase())),
        Builtin::Upper => Value::String(Cow::Owned(cast_string(a).to_uppercase())),
        Builtin::Trim => {
            let s = cast_string(a);
            let start = s.len() - s.trim_start().len();
            let end = start + s.trim().len();
            Value::String(slice(s, start, end))
        }
        Builtin::Left | Builtin::Right => {
            let s = cast_string(a);
            let n = b.map_or(0, |b| ctx.int(b));
            Value::String(left_right(ctx, f, s, n))
        }
        Builtin::Substring | Builtin::SubstringLen => {
            let s = cast_string(a);
            let pos = b.map_or(0, |b| ctx.int(b));
            let len = c.map(|c| ctx.int(c));
            Value::String(substring(ctx, s, pos, len))
        }
        Builtin::Abs => {
            let i = ctx.int(a);
            Value::Integer(i.checked_abs().unwrap_or_else(|| {
                ctx.error(ErrorKind::Math, || format!("ABS({i}) overflows"));
                i32::MAX
            }))
        }
        Builtin::Int => match a {
            Value::String(s) => match parse_int(&s) {
                Some(i) => Value::Integer(i),
                None => {
                    ctx.error(ErrorKind::Cast, || {
                        format!("INT: cannot cast String '{s}' to Integer")
                    });
                    Value::Integer(0)
                }
            },
            other => Value::Integer(ctx.int(other)),
        },
        Builtin::Bool => match a {
            Value::Integer(i) => Value::Boolean(i != 0),
            Value::String(s) => match parse_bool(&s) {
                Some(b) => Value::Boolean(b),
                None => {
                    ctx.error(ErrorKind::Cast, || {
                        format!("BOOL: cannot cast String '{s}' to Boolean")
                    });
                    Value::Boolean(false)
                }
            },
            Value::Boolean(b) => Value::Boolean(b),
        },
        Builtin::String => Value::String(cast_string(a)),
        Builtin::IsBool => Value::Boolean(match &a {
            Value::Boolean(_) => true,
            Value::String(s) => parse_bool(s).is_some(),
            Value::Integer(_) => false,
        }),
        Builtin::IsInt => Value::Boolean(match &a {
            Value::Integer(_) => true,
            Value::String(s) => parse_int(s).is_some(),
            Value::Boolean(_) => false,
        }),
        Builtin::Data | Builtin::DataExists => data(ctx, f, a),
        Builtin::Concat | Builtin::ConcatWs => f.zero(),
    }
}

/// `DATA(path)`: the value at `path` in the event's JSON data (strings, booleans
/// and integers as themselves, other numbers, `null`, objects and arrays as JSON
/// text), a `missingAttribute` error when there is none; `DATA_EXISTS(path)`:
/// whether there is one.
fn data<'a, E: EventAttributes + ?Sized>(
    ctx: &mut Ctx<'a, '_, E>,
    f: Builtin,
    path: Value<'a>,
) -> Value<'a> {
    let path = cast_string(path);
    let steps = match crate::filter::jsonpath::parse_path(&path) {
        Ok(s) => s,
        Err(m) => {
            ctx.error(ErrorKind::FunctionEvaluation, || {
                format!("{}: {m}", f.name())
            });
            return f.zero();
        }
    };
    data_at(ctx, f, &steps)
}

/// `DATA`/`DATA_EXISTS` of a compiled path (see [`data`]).
pub(crate) fn data_at<'a, E: EventAttributes + ?Sized>(
    ctx: &mut Ctx<'a, '_, E>,
    f: Builtin,
    steps: &[crate::filter::jsonpath::Step],
) -> Value<'a> {
    let event: &'a E = ctx.event;
    let found = event
        .json_data()
        .and_then(|d| crate::filter::jsonpath::first(d, steps));
    if f == Builtin::DataExists {
        return Value::Boolean(found.is_some());
    }
    match found {
        None => {
            ctx.error(ErrorKind::MissingAttribute, || {
                "DATA: the event's data has nothing at that path".to_owned()
            });
            f.zero()
        }
        Some(serde_json::Value::String(s)) => Value::String(Cow::Borrowed(s)),
        Some(serde_json::Value::Bool(b)) => Value::Boolean(*b),
        Some(serde_json::Value::Number(n)) => {
            match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => Value::Integer(i),
                None => Value::String(Cow::Owned(n.to_string())),
            }
        }
        Some(other) => Value::String(Cow::Owned(other.to_string())),
    }
}

/// CONCAT / CONCAT_WS: allocates only when two or more pieces are joined.
fn concat<'a, E: EventAttributes + ?Sized>(
    ctx: &mut Ctx<'a, '_, E>,
    sep: Option<Cow<'a, str>>,
    args: &'a [Expr],
) -> Value<'a> {
    let mut out: Option<Cow<'a, str>> = None;
    for arg in args {
        let Some(v) = ctx.eval(arg) else {
            return Value::String(Cow::Borrowed(""));
        };
        let piece = cast_string(v);
        out = Some(match out {
            None => piece,
            Some(acc) => {
                let mut acc = acc.into_owned();
                if let Some(sep) = &sep {
                    acc.push_str(sep);
                }
                acc.push_str(&piece);
                Cow::Owned(acc)
            }
        });
    }
    Value::String(out.unwrap_or(Cow::Borrowed("")))
}

fn left_right<'a, E: EventAttributes + ?Sized>(
    ctx: &mut Ctx<'a, '_, E>,
    f: Builtin,
    s: Cow<'a, str>,
    n: i32,
) -> Cow<'a, str> {
    let Ok(n) = usize::try_from(n) else {
        ctx.error(ErrorKind::FunctionEvaluation, || {
            format!("{}: length {n} is negative", f.name())
        });
        return s;
    };
    let len = char_len(&s);
    if n >= len {
        return s;
    }
    if f == Builtin::Left {
        let end = char_offset(&s, n);
        slice(s, 0, end)
    } else {
        let start = char_offset(&s, len - n);
        let end = s.len();
        slice(s, start, end)
    }
}

fn substring<'a, E: EventAttributes + ?Sized>(
    ctx: &mut Ctx<'a, '_, E>,
    s: Cow<'a, str>,
    pos: i32,
    len: Option<i32>,
) -> Cow<'a, str> {
    let n = char_len(&s) as i64;
    let p = i64::from(pos);
    if p > n || p < -n {
        ctx.error(ErrorKind::FunctionEvaluation, || {
            format!("SUBSTRING: position {pos} is out of range for a string of length {n}")
        });
        return Cow::Borrowed("");
    }
    if let Some(l) = len.filter(|l| *l < 0) {
        ctx.error(ErrorKind::FunctionEvaluation, || {
            format!("SUBSTRING: length {l} is negative")
        });
        return Cow::Borrowed("");
    }
    if p == 0 {
        return Cow::Borrowed("");
    }
    // Character indices, 0-based, within 0..=n.
    let begin = if p > 0 { p - 1 } else { n + p };
    let end = len.map_or(n, |l| (begin + i64::from(l)).min(n));
    let (begin, end) = (begin as usize, end as usize);
    let start_byte = char_offset(&s, begin);
    let end_byte = start_byte + char_offset(&s[start_byte..], end - begin);
    slice(s, start_byte, end_byte)
}
