//! The tree-walking evaluator.
//!
//! Every operator is total: on an error it records it and goes on with the
//! spec's default value. Two rules shape the code:
//!
//! * An operand that raised an error (a missing attribute, a division by
//!   zero, a failed cast, ...) makes the operator or function consuming it
//!   return the zero value of *its own* return type, without evaluating
//!   further operands (CESQL 3.2 for missing attributes, and the TCK's
//!   `true AND (1 != 1 / 0)` is `false`): `missing = 2` is `false`,
//!   `-missing` is `0`, `NOT missing` is `false`, `1 / missing` is `0`
//!   without a division error. A bare missing attribute is `false`.
//! * An operator's *own* failed implicit cast records a `cast` error and
//!   yields the target type's zero value, and the operator proceeds with it
//!   (`NOT 10` is `true`, per the TCK). For the ambiguous `=`/`!=` and for
//!   `IN`, a failed cast makes the comparison false (CESQL 3.7).
//!
//! Strings are `Cow`s borrowed from the expression or the event; only
//! functions that build new text (CONCAT, LOWER, ...) and Integer-to-String
//! casts allocate. Comparisons against integers format into a stack buffer.

use std::borrow::Cow;

mod calls;

use super::ast::{BinaryOp, Expr, Literal};
use super::functions::Function;
use super::{ErrorKind, EvalError, EventAttributes, Value};

/// Where errors go: a list (complete evaluation) or just a flag (filters).
enum Sink<'s> {
    Collect(&'s mut Vec<EvalError>),
    Flag(&'s mut bool),
}

pub(crate) struct Ctx<'a, 's, E: ?Sized> {
    event: &'a E,
    sink: Sink<'s>,
    /// Errors raised so far; a subtree failed iff this grew while it ran.
    raised: usize,
}

/// Evaluates `root`, appending every error to `errors`.
pub(crate) fn evaluate<'a, E: EventAttributes + ?Sized>(
    root: &'a Expr,
    event: &'a E,
    errors: &mut Vec<EvalError>,
) -> Value<'a> {
    let mut ctx = Ctx {
        event,
        sink: Sink::Collect(errors),
        raised: 0,
    };
    ctx.node(root)
}

/// Evaluates `root`, only setting `failed` on errors (no messages built).
pub(crate) fn evaluate_flag<'a, E: EventAttributes + ?Sized>(
    root: &'a Expr,
    event: &'a E,
    failed: &mut bool,
) -> Value<'a> {
    let mut ctx = Ctx {
        event,
        sink: Sink::Flag(failed),
        raised: 0,
    };
    ctx.node(root)
}

/// An `i32` formatted on the stack, for Integer-to-String comparisons.
pub(crate) struct IntStr {
    buf: [u8; 11],
    start: usize,
}

impl IntStr {
    pub(crate) fn new(i: i32) -> Self {
        let mut buf = [0u8; 11];
        let mut start = buf.len();
        let mut n = i.unsigned_abs();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if i < 0 {
            start -= 1;
            buf[start] = b'-';
        }
        IntStr { buf, start }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or_default()
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// String-to-Boolean cast (CESQL 3.7): case-insensitive `true` / `false`.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// String-to-Integer cast: optional sign, base-10 digits, 32-bit range.
pub(crate) fn parse_int(s: &str) -> Option<i32> {
    s.parse().ok()
}

/// Cast to String (never fails).
pub(crate) fn cast_string(v: Value<'_>) -> Cow<'_, str> {
    match v {
        Value::String(s) => s,
        Value::Integer(i) => Cow::Owned(i.to_string()),
        Value::Boolean(b) => Cow::Borrowed(bool_str(b)),
    }
}

/// Casts `other` to `target`'s type and compares (the `=` and `IN` rule).
/// `None` when the cast is impossible.
fn cast_eq(target: &Value<'_>, other: &Value<'_>) -> Option<bool> {
    match (target, other) {
        (Value::Boolean(t), Value::Boolean(o)) => Some(t == o),
        (Value::Integer(t), Value::Integer(o)) => Some(t == o),
        (Value::String(t), Value::String(o)) => Some(t == o),
        (Value::Integer(t), Value::String(o)) => parse_int(o).map(|o| *t == o),
        (Value::Integer(t), Value::Boolean(o)) => Some(*t == i32::from(*o)),
        (Value::String(t), Value::Integer(o)) => Some(t.as_ref() == IntStr::new(*o).as_str()),
        (Value::String(t), Value::Boolean(o)) => Some(t.as_ref() == bool_str(*o)),
        (Value::Boolean(t), Value::String(o)) => parse_bool(o).map(|o| *t == o),
        // Integers never turn into booleans implicitly (see `Ctx::boolean`).
        (Value::Boolean(_), Value::Integer(_)) => None,
    }
}

impl<'a, E: EventAttributes + ?Sized> Ctx<'a, '_, E> {
    /// Records an error; the message is only built when errors are collected.
    pub(crate) fn error(&mut self, kind: ErrorKind, message: impl FnOnce() -> String) {
        self.raised += 1;
        match &mut self.sink {
            Sink::Collect(v) => v.push(EvalError::new(kind, message())),
            Sink::Flag(f) => **f = true,
        }
    }

    /// Implicit cast to Integer; `0` and a cast error when impossible.
    pub(crate) fn int(&mut self, v: Value<'a>) -> i32 {
        match v {
            Value::Integer(i) => i,
            Value::Boolean(b) => i32::from(b),
            Value::String(s) => match parse_int(&s) {
                Some(i) => i,
                None => {
                    self.error(ErrorKind::Cast, || {
                        format!("cannot cast String '{s}' to Integer")
                    });
                    0
                }
            },
        }
    }

    /// Implicit cast to Boolean; `false` and a cast error when impossible.
    ///
    /// Integer operands are a cast error here (the TCK's `NOT 10`); the
    /// explicit `BOOL()` function does convert integers.
    pub(crate) fn boolean(&mut self, v: Value<'a>) -> bool {
        match v {
            Value::Boolean(b) => b,
            Value::String(s) => match parse_bool(&s) {
                Some(b) => b,
                None => {
                    self.error(ErrorKind::Cast, || {
                        format!("cannot cast String '{s}' to Boolean")
                    });
                    false
                }
            },
            Value::Integer(i) => {
                self.error(ErrorKind::Cast, || {
                    format!("Integer {i} is not implicitly a Boolean (use BOOL({i}))")
                });
                false
            }
        }
    }

    /// Evaluates an operand: `None` when it raised an error (already
    /// reported), in which case the caller returns its own zero value.
    pub(crate) fn eval(&mut self, e: &'a Expr) -> Option<Value<'a>> {
        let before = self.raised;
        let v = self.node(e);
        (self.raised == before).then_some(v)
    }

    /// A node's value, even when it raised errors (the top-level result).
    fn node(&mut self, e: &'a Expr) -> Value<'a> {
        match e {
            Expr::Literal(Literal::Bool(b)) => Value::Boolean(*b),
            Expr::Literal(Literal::Int(i)) => Value::Integer(*i),
            Expr::Literal(Literal::Str(s)) => Value::String(Cow::Borrowed(s)),
            Expr::Attribute(name) => match self.event.attribute(name) {
                Some(v) => v,
                None => {
                    self.error(ErrorKind::MissingAttribute, || {
                        format!("attribute '{name}' is not present on the event")
                    });
                    // The type is unknown: the spec says assume Boolean.
                    Value::Boolean(false)
                }
            },
            Expr::Exists(name) => Value::Boolean(self.event.has_attribute(name)),
            Expr::Not(inner) => match self.eval(inner) {
                Some(v) => Value::Boolean(!self.boolean(v)),
                None => Value::Boolean(false),
            },
            Expr::Negate(inner) => match self.eval(inner) {
                Some(v) => {
                    let i = self.int(v);
                    Value::Integer(i.checked_neg().unwrap_or_else(|| {
                        self.error(ErrorKind::Math, || format!("integer overflow in -({i})"));
                        i32::MAX
                    }))
                }
                None => Value::Integer(0),
            },
            Expr::Binary { op, left, right } => self.binary(*op, left, right),
            Expr::Like {
                expr,
                pattern,
                negated,
            } => match self.eval(expr) {
                Some(v) => {
                    let hit = match &v {
                        Value::String(s) => pattern.matches(s),
                        Value::Integer(i) => pattern.matches(IntStr::new(*i).as_str()),
                        Value::Boolean(b) => pattern.matches(bool_str(*b)),
                    };
                    Value::Boolean(hit != *negated)
                }
                None => Value::Boolean(false),
            },
            Expr::In { expr, set, negated } => self.in_set(expr, set, *negated),
            Expr::Call { function, args } => match function {
                Function::Builtin(b) => calls::call(self, *b, args),
                Function::DataAt { builtin, steps } => calls::data_at(self, *builtin, steps),
                Function::Unknown(name) => {
                    self.error(ErrorKind::MissingFunction, || {
                        format!("no function {name} taking {} argument(s)", args.len())
                    });
                    Value::Boolean(false)
                }
            },
        }
    }

    fn binary(&mut self, op: BinaryOp, left: &'a Expr, right: &'a Expr) -> Value<'a> {
        match op {
            BinaryOp::And | BinaryOp::Or => {
                // Short-circuit (CESQL 3.4.2); a failed operand makes the
                // whole operation false.
                let Some(l) = self.eval(left) else {
                    return Value::Boolean(false);
                };
                let l = self.boolean(l);
                if l == (op == BinaryOp::Or) {
                    return Value::Boolean(l);
                }
                match self.eval(right) {
                    Some(r) => Value::Boolean(self.boolean(r)),
                    None => Value::Boolean(false),
                }
            }
            _ => {
                let Some(l) = self.eval(left) else {
                    return zero_of(op);
                };
                let Some(r) = self.eval(right) else {
                    return zero_of(op);
                };
                self.strict_binary(op, l, r)
            }
        }
    }

    /// Binary operators that evaluate both operands.
    fn strict_binary(&mut self, op: BinaryOp, l: Value<'a>, r: Value<'a>) -> Value<'a> {
        match op {
            BinaryOp::Xor => {
                let l = self.boolean(l);
                Value::Boolean(l != self.boolean(r))
            }
            BinaryOp::Eq | BinaryOp::NotEq => match cast_eq(&r, &l) {
                Some(eq) => Value::Boolean(eq == (op == BinaryOp::Eq)),
                None => {
                    self.error(ErrorKind::Cast, || {
                        format!(
                            "cannot cast {} '{l}' to {} for {}",
                            l.type_name(),
                            r.type_name(),
                            op.symbol()
                        )
                    });
                    Value::Boolean(false)
                }
            },
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
                let l = self.int(l);
                let r = self.int(r);
                Value::Boolean(match op {
                    BinaryOp::Lt => l < r,
                    BinaryOp::Le => l <= r,
                    BinaryOp::Gt => l > r,
                    _ => l >= r,
                })
            }
            _ => {
                let l = self.int(l);
                let r = self.int(r);
                Value::Integer(self.arithmetic(op, l, r))
            }
        }
    }

    fn arithmetic(&mut self, op: BinaryOp, l: i32, r: i32) -> i32 {
        if matches!(op, BinaryOp::Div | BinaryOp::Mod) && r == 0 {
            self.error(ErrorKind::Math, || {
                format!("division by zero in {l} {} {r}", op.symbol())
            });
            return 0;
        }
        let result = match op {
            BinaryOp::Add => l.checked_add(r),
            BinaryOp::Sub => l.checked_sub(r),
            BinaryOp::Mul => l.checked_mul(r),
            BinaryOp::Div => l.checked_div(r),
            // i32::MIN % -1 is mathematically 0: no overflow to report.
            _ => Some(l.wrapping_rem(r)),
        };
        result.unwrap_or_else(|| {
            self.error(ErrorKind::Math, || {
                format!("integer overflow in {l} {} {r}", op.symbol())
            });
            0
        })
    }

    fn in_set(&mut self, expr: &'a Expr, set: &'a [Expr], negated: bool) -> Value<'a> {
        let Some(x) = self.eval(expr) else {
            return Value::Boolean(false);
        };
        for item in set {
            // Lazily evaluated, stops at the first hit like OR.
            let Some(v) = self.eval(item) else {
                return Value::Boolean(false);
            };
            match cast_eq(&x, &v) {
                Some(true) => return Value::Boolean(!negated),
                Some(false) => {}
                None => self.error(ErrorKind::Cast, || {
                    format!(
                        "cannot cast IN element {} '{v}' to {}",
                        v.type_name(),
                        x.type_name()
                    )
                }),
            }
        }
        Value::Boolean(negated)
    }
}

/// The zero value of a strict binary operator's return type.
fn zero_of(op: BinaryOp) -> Value<'static> {
    match op {
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => {
            Value::Integer(0)
        }
        _ => Value::Boolean(false),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{MapEvent, Owned};
    use super::super::{ErrorKind, Expression, Value};
    use super::IntStr;

    fn run(src: &str, ev: &MapEvent) -> (Value<'static>, Vec<ErrorKind>) {
        let e = Expression::parse(src).unwrap_or_else(|err| panic!("{src}: {err}"));
        let r = e.evaluate(ev);
        let kinds = r.errors().iter().map(|e| e.kind()).collect();
        (r.value().clone().into_owned(), kinds)
    }

    fn val(src: &str) -> Value<'static> {
        let (v, errs) = run(src, &MapEvent::new());
        assert!(errs.is_empty(), "{src}: {errs:?}");
        v
    }

    fn err(src: &str) -> (Value<'static>, Vec<ErrorKind>) {
        run(src, &MapEvent::new())
    }

    #[test]
    fn int_str() {
        for i in [0, 7, -7, 10, 12345, i32::MAX, i32::MIN] {
            assert_eq!(IntStr::new(i).as_str(), i.to_string());
        }
    }

    #[test]
    fn integer_overflow() {
        use ErrorKind::Math;
        assert_eq!(val("2147483647"), Value::Integer(i32::MAX));
        assert_eq!(val("-2147483648"), Value::Integer(i32::MIN));
        assert_eq!(err("2147483647 + 1"), (Value::Integer(0), vec![Math]));
        assert_eq!(err("-2147483648 - 1"), (Value::Integer(0), vec![Math]));
        assert_eq!(err("65536 * 65536"), (Value::Integer(0), vec![Math]));
        assert_eq!(err("-2147483648 / -1"), (Value::Integer(0), vec![Math]));
        assert_eq!(val("-2147483648 % -1"), Value::Integer(0));
        assert_eq!(
            err("-(-2147483648)"),
            (Value::Integer(i32::MAX), vec![Math])
        );
        assert_eq!(
            err("ABS(-2147483648)"),
            (Value::Integer(i32::MAX), vec![Math])
        );
        assert_eq!(val("-7 / 2"), Value::Integer(-3));
        assert_eq!(val("-7 % 2"), Value::Integer(-1));
        assert_eq!(val("7 % -2"), Value::Integer(1));
        assert_eq!(
            err("INT('2147483648')"),
            (Value::Integer(0), vec![ErrorKind::Cast])
        );
        assert_eq!(val("INT('+42')"), Value::Integer(42));
    }

    #[test]
    fn casts_and_equality() {
        assert_eq!(val("'5' = 5"), Value::Boolean(true));
        assert_eq!(val("5 = '5'"), Value::Boolean(true));
        assert_eq!(val("'05' = 5"), Value::Boolean(true));
        assert_eq!(val("5 = '05'"), Value::Boolean(false));
        assert_eq!(
            err("1 = TRUE"),
            (Value::Boolean(false), vec![ErrorKind::Cast])
        );
        assert_eq!(
            err("'abc' = 1"),
            (Value::Boolean(false), vec![ErrorKind::Cast])
        );
        assert_eq!(
            err("'abc' != 1"),
            (Value::Boolean(false), vec![ErrorKind::Cast])
        );
        assert_eq!(val("TRUE = 1"), Value::Boolean(true));
        assert_eq!(
            err("1 AND TRUE"),
            (Value::Boolean(false), vec![ErrorKind::Cast])
        );
        assert_eq!(err("'x' + 1"), (Value::Integer(1), vec![ErrorKind::Cast]));
        assert_eq!(val("BOOL(2) AND 'TRUE'"), Value::Boolean(true));
        assert_eq!(val("-10 LIKE '-1_'"), Value::Boolean(true));
        assert_eq!(val("'10' < 9"), Value::Boolean(false));
    }

    #[test]
    fn missing_attributes() {
        use ErrorKind::MissingAttribute as M;
        assert_eq!(err("missing"), (Value::Boolean(false), vec![M]));
        assert_eq!(err("NOT (missing = 1)"), (Value::Boolean(false), vec![M]));
        assert_eq!(
            err("NOT (1 / 0 = 0)"),
            (Value::Boolean(false), vec![ErrorKind::Math])
        );
        assert_eq!(
            err("NOT NOT 10"),
            (Value::Boolean(false), vec![ErrorKind::Cast])
        );
        assert_eq!(err("missing / 0 + 1"), (Value::Integer(0), vec![M]));
        assert_eq!(
            err("missing NOT LIKE 'a'"),
            (Value::Boolean(false), vec![M])
        );
        assert_eq!(err("missing NOT IN (1)"), (Value::Boolean(false), vec![M]));
        assert_eq!(err("1 IN (missing, 1)"), (Value::Boolean(false), vec![M]));
        assert_eq!(val("1 IN (1, missing)"), Value::Boolean(true));
        assert_eq!(err("missing OR TRUE"), (Value::Boolean(false), vec![M]));
        assert_eq!(val("TRUE OR missing"), Value::Boolean(true));
        assert_eq!(err("LENGTH(missing)"), (Value::Integer(0), vec![M]));
        assert_eq!(
            err("CONCAT('a', missing)"),
            (Value::String("".into()), vec![M])
        );
        assert_eq!(err("UNKNOWN(missing)").1, vec![ErrorKind::MissingFunction]);
        assert_eq!(val("EXISTS missing"), Value::Boolean(false));
    }

    #[test]
    fn attribute_types() {
        let mut ev = MapEvent::new();
        ev.set("n", Owned::I(10)).set("b", Owned::B(true));
        assert_eq!(run("n + 1", &ev).0, Value::Integer(11));
        assert_eq!(run("n = '10'", &ev).0, Value::Boolean(true));
        assert_eq!(run("b AND n > 5", &ev).0, Value::Boolean(true));
        assert_eq!(run("b = 'TRUE'", &ev).0, Value::Boolean(false));
        assert_eq!(run("'TRUE' = b", &ev).0, Value::Boolean(true));
        assert_eq!(run("n IN ('9', '10')", &ev).0, Value::Boolean(true));
    }

    #[test]
    fn matches_is_the_filter_view() {
        let ev = MapEvent::new().with("subject", "abc");
        let m = |s: &str| Expression::parse(s).expect("parse").matches(&ev);
        assert!(m("subject = 'abc'"));
        assert!(!m("subject = 'abd'"));
        assert!(!m("subject"));
        assert!(!m("LENGTH(subject)"));
        assert!(m("TRUE OR 1 / 0 = 0"));
        assert!(!m("FALSE OR (1 / 0 = 0)"));
        assert!(!m("missing = 'x' OR TRUE"));
    }
}
