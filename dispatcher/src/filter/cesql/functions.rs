//! Built-in functions (CESQL 3.5) plus the casting helpers `INT`, `BOOL`,
//! `STRING`, `IS_BOOL` and `IS_INT` that the TCK and earlier drafts use, and
//! cemesh's `DATA(path)` and `DATA_EXISTS(path)` on the event's JSON data (names
//! outside the spec's, which leaves room for user functions).
//!
//! Functions are resolved by (case-insensitive) name and arity at parse
//! time; a call that matches nothing evaluates to `false` with a
//! `missingFunction` error, as the spec requires. This module is the catalogue the
//! parser and the tree use; evaluating a call is `eval::calls`.

use std::borrow::Cow;

use super::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    SubstringLen,
    Abs,
    Int,
    Bool,
    String,
    IsBool,
    IsInt,
    Data,
    DataExists,
}

/// (name, builtin, minimum arity, variadic)
const TABLE: [(&str, Builtin, usize, bool); 18] = [
    ("LENGTH", Builtin::Length, 1, false),
    ("CONCAT", Builtin::Concat, 0, true),
    ("CONCAT_WS", Builtin::ConcatWs, 1, true),
    ("LOWER", Builtin::Lower, 1, false),
    ("UPPER", Builtin::Upper, 1, false),
    ("TRIM", Builtin::Trim, 1, false),
    ("LEFT", Builtin::Left, 2, false),
    ("RIGHT", Builtin::Right, 2, false),
    ("SUBSTRING", Builtin::Substring, 2, false),
    ("SUBSTRING", Builtin::SubstringLen, 3, false),
    ("ABS", Builtin::Abs, 1, false),
    ("INT", Builtin::Int, 1, false),
    ("BOOL", Builtin::Bool, 1, false),
    ("STRING", Builtin::String, 1, false),
    ("IS_BOOL", Builtin::IsBool, 1, false),
    ("IS_INT", Builtin::IsInt, 1, false),
    ("DATA", Builtin::Data, 1, false),
    ("DATA_EXISTS", Builtin::DataExists, 1, false),
];

/// The target of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Function {
    Builtin(Builtin),
    /// `DATA` or `DATA_EXISTS` of a literal path, compiled when the expression is
    /// parsed (a call with any other argument stays a `Builtin`).
    DataAt {
        builtin: Builtin,
        steps: Box<[crate::filter::jsonpath::Step]>,
    },
    /// No function with this (upper-cased) name and the call's arity.
    Unknown(String),
}

impl Function {
    pub(crate) fn resolve(name: &str, arity: usize) -> Function {
        TABLE
            .iter()
            .find(|(n, _, min, variadic)| {
                n.eq_ignore_ascii_case(name) && (arity == *min || (*variadic && arity > *min))
            })
            .map_or_else(
                || Function::Unknown(name.to_ascii_uppercase()),
                |(_, b, _, _)| Function::Builtin(*b),
            )
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Function::Builtin(b) | Function::DataAt { builtin: b, .. } => b.name(),
            Function::Unknown(n) => n,
        }
    }
}

impl Builtin {
    pub(crate) fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(_, b, _, _)| *b == self)
            .map_or("?", |(n, _, _, _)| n)
    }

    /// Zero value of the return type, used when an argument is missing.
    pub(crate) fn zero(self) -> Value<'static> {
        match self {
            Builtin::Length | Builtin::Abs | Builtin::Int => Value::Integer(0),
            Builtin::Bool | Builtin::IsBool | Builtin::IsInt | Builtin::DataExists => {
                Value::Boolean(false)
            }
            _ => Value::String(Cow::Borrowed("")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::MapEvent;
    use super::super::{ErrorKind, Expression, Value};
    use super::{Builtin, Function};

    fn run(src: &str) -> (Value<'static>, Vec<ErrorKind>) {
        let e = Expression::parse(src).unwrap_or_else(|err| panic!("{src}: {err}"));
        let ev = MapEvent::new().with("s", "  héllo wörld ");
        let r = e.evaluate(&ev);
        let kinds = r.errors().iter().map(|e| e.kind()).collect();
        (r.value().clone().into_owned(), kinds)
    }

    fn s(v: &str) -> Value<'static> {
        Value::String(v.to_string().into())
    }

    #[test]
    fn resolution() {
        assert_eq!(
            Function::resolve("concat_ws", 1),
            Function::Builtin(Builtin::ConcatWs)
        );
        assert_eq!(
            Function::resolve("Concat", 0),
            Function::Builtin(Builtin::Concat)
        );
        assert_eq!(
            Function::resolve("substring", 3),
            Function::Builtin(Builtin::SubstringLen)
        );
        assert_eq!(
            Function::resolve("concat_ws", 0),
            Function::Unknown("CONCAT_WS".into())
        );
        assert_eq!(Function::resolve("abs", 2), Function::Unknown("ABS".into()));
    }

    #[test]
    fn unicode_strings() {
        assert_eq!(run("LENGTH(s)"), (Value::Integer(14), vec![]));
        assert_eq!(run("TRIM(s)"), (s("héllo wörld"), vec![]));
        assert_eq!(run("LEFT(TRIM(s), 2)"), (s("hé"), vec![]));
        assert_eq!(run("RIGHT(TRIM(s), 3)"), (s("rld"), vec![]));
        assert_eq!(run("SUBSTRING(TRIM(s), 2, 4)"), (s("éllo"), vec![]));
        assert_eq!(run("SUBSTRING(TRIM(s), -5)"), (s("wörld"), vec![]));
        assert_eq!(run("UPPER(s)"), (s("  HÉLLO WÖRLD "), vec![]));
        assert_eq!(run("LOWER('ÀB')"), (s("àb"), vec![]));
    }

    #[test]
    fn casts_and_errors() {
        use ErrorKind::{Cast, FunctionEvaluation as FE, MissingFunction};
        assert_eq!(run("CONCAT_WS('-', 1, TRUE, 'x')"), (s("1-true-x"), vec![]));
        assert_eq!(run("LEFT('abc', 'x')"), (s(""), vec![Cast]));
        assert_eq!(run("SUBSTRING('abc', 1, -1)"), (s(""), vec![FE]));
        assert_eq!(run("SUBSTRING('abc', 2, 100)"), (s("bc"), vec![]));
        assert_eq!(run("SUBSTRING('abc', -3, 1)"), (s("a"), vec![]));
        assert_eq!(run("SUBSTRING('abc', -4)"), (s(""), vec![FE]));
        assert_eq!(run("IS_BOOL('True')"), (Value::Boolean(true), vec![]));
        assert_eq!(run("IS_BOOL(1)"), (Value::Boolean(false), vec![]));
        assert_eq!(run("IS_INT('-12')"), (Value::Boolean(true), vec![]));
        assert_eq!(run("IS_INT(TRUE)"), (Value::Boolean(false), vec![]));
        assert_eq!(run("IS_INT('1.5')"), (Value::Boolean(false), vec![]));
        assert_eq!(
            run("IS_STRING('a')"),
            (Value::Boolean(false), vec![MissingFunction])
        );
        assert_eq!(run("ABS('-3')"), (Value::Integer(3), vec![]));
        assert_eq!(run("STRING(-12)"), (s("-12"), vec![]));
    }
}
