//! CloudEvents SQL (CESQL v1) expressions: parser and evaluator.
//!
//! Subscriptions and Knative-style triggers can filter events with a CESQL
//! expression such as `type LIKE 'com.example.%' AND source IN ('a', 'b')`.
//! A broker evaluates the same filter against every event it routes, so this
//! module splits the work in two:
//!
//! * [`Expression::parse`] runs once per subscription: a hand-written lexer and
//!   a precedence-climbing parser build an AST, resolve built-in functions by
//!   name and arity and pre-compile `LIKE` patterns.
//! * [`Expression::evaluate`] / [`Expression::matches`] run per event. They only
//!   borrow from the expression and from the event, so the common filter shapes
//!   (string comparisons, `LIKE`, `IN` over literals, `EXISTS`) do not
//!   allocate.
//!
//! The module knows nothing about the broker's event type: events are seen
//! through the small [`EventAttributes`] trait.
//!
//! Semantics follow the CESQL v1 specification and its TCK (see
//! `tests/cesql_tck.rs`): every operator is total, errors are collected next
//! to the value instead of aborting, and a missing attribute makes the
//! operator (or function) that consumes it return its type's zero value.
//!
//! Where the spec, its grammar and its TCK leave room, this implementation
//! decides (each choice is pinned by a unit test):
//!
//! * `AND`, `OR` and `XOR` share one precedence level and associate left
//!   (spec 3.6 "left to right"; the ANTLR grammar marks them right-assoc).
//!   `NOT` and unary `-` bind tighter than `LIKE`/`IN` and every binary
//!   operator, as in the grammar: `NOT a = b` is `(NOT a) = b`.
//! * `5-3` is a subtraction; a sign directly before digits is part of the
//!   literal (`-2147483648` is valid, `2147483648` is a parse error).
//! * An operand that raised any error makes its consumer return its zero
//!   value (the TCK's `true AND (1 != 1 / 0)` is `false`), but an
//!   operator's own failed cast proceeds with the zero value (`NOT 10` is
//!   `true` with a cast error, also from the TCK).
//! * Integers are never implicitly Booleans (the TCK's `NOT 10`), in every
//!   operator; `BOOL(10)` is `true`.
//! * Integer overflow in `+ - * /` is a math error with value `0`; negating
//!   or `ABS` of `-2147483648` gives `2147483647` and a math error.
//! * String literals: `\'` / `\"` (and doubled quotes) give the quote, `\\`
//!   gives `\`, any other `\x` is kept verbatim for `LIKE` (`\%`, `\_`).
//! * `IN` short-circuits at the first equal element; a missing element
//!   makes it `false`.
//! * `INT`, `BOOL`, `STRING`, `IS_INT`, `IS_BOOL` (from the TCK and earlier
//!   drafts) are provided besides the v1 built-ins.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;

mod ast;
mod eval;
mod functions;
mod lexer;
mod like;
mod parser;

#[cfg(test)]
mod proptests;

/// A CESQL value: what literals, attributes and expressions evaluate to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// `TRUE` / `FALSE`.
    Boolean(bool),
    /// A 32-bit signed integer.
    Integer(i32),
    /// A string, borrowed from the event or the expression when possible.
    String(Cow<'a, str>),
}

/// The value of a CloudEvent attribute as handed to CESQL.
///
/// Binary, URI, URI-reference and Timestamp attributes are passed as their
/// canonical string forms, as the CESQL spec prescribes.
pub type AttrValue<'a> = Value<'a>;

impl Value<'_> {
    /// Detaches the value from whatever it borrows.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Boolean(b) => Value::Boolean(b),
            Value::Integer(i) => Value::Integer(i),
            Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
        }
    }

    /// The CESQL type name: `Boolean`, `Integer` or `String`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Boolean(_) => "Boolean",
            Value::Integer(_) => "Integer",
            Value::String(_) => "String",
        }
    }

    /// `Some(b)` if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// `Some(i)` if this is an integer.
    pub fn as_i32(&self) -> Option<i32> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// `Some(s)` if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Value<'_> {
    /// Formats the value the way the CESQL `STRING` cast would.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => f.write_str(s),
        }
    }
}

/// A CloudEvent as CESQL sees it: attribute lookup by (lower-case) name.
pub trait EventAttributes {
    /// The attribute's value, or `None` when the event does not have it.
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>>;

    /// Whether the event has the attribute (`EXISTS name`).
    ///
    /// Override when producing the value is costlier than checking presence
    /// (e.g. a timestamp that must be formatted).
    fn has_attribute(&self, name: &str) -> bool {
        self.attribute(name).is_some()
    }

    /// The event's data as JSON, for `DATA(path)`; `None` when it has none or the
    /// data is not JSON.
    fn json_data(&self) -> Option<&serde_json::Value> {
        None
    }
}

impl<T: EventAttributes + ?Sized> EventAttributes for &T {
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        (**self).attribute(name)
    }

    fn has_attribute(&self, name: &str) -> bool {
        (**self).has_attribute(name)
    }

    fn json_data(&self) -> Option<&serde_json::Value> {
        (**self).json_data()
    }
}

/// The error categories of the CESQL spec (section 3.3), named as in the TCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The expression text is not valid CESQL.
    Parse,
    /// Division or remainder by zero, integer overflow.
    Math,
    /// An implicit or explicit type cast failed.
    Cast,
    /// No function with that name and arity.
    MissingFunction,
    /// A built-in function rejected its arguments.
    FunctionEvaluation,
    /// The expression addressed an attribute the event does not have.
    MissingAttribute,
    /// Anything else (not produced by the built-ins).
    Generic,
}

impl ErrorKind {
    /// The TCK spelling: `parse`, `math`, `cast`, `missingFunction`,
    /// `functionEvaluation`, `missingAttribute`, `generic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::Generic => "generic",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error raised while evaluating an expression. Evaluation goes on after
/// it: the failing operator yields the spec's default value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    kind: ErrorKind,
    message: String,
}

impl EvalError {
    pub(crate) fn new(kind: ErrorKind, message: String) -> Self {
        EvalError { kind, message }
    }

    /// The spec's error category.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What went wrong, with the offending value or name.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind, self.message)
    }
}

impl std::error::Error for EvalError {}

/// The expression text is not valid CESQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    column: usize,
    message: String,
}

impl ParseError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> Self {
        ParseError {
            column,
            message: message.into(),
        }
    }

    /// 1-based column (in characters) where the problem was found; one past
    /// the last character for an unexpected end of input.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What was wrong, e.g. `expected ')'`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Always [`ErrorKind::Parse`]; handy when mixing with [`EvalError`]s.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Parse
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parse error at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// The outcome of [`Expression::evaluate`]: a value plus the errors raised on
/// the way (empty, and unallocated, when all went well).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation<'a> {
    value: Value<'a>,
    errors: Vec<EvalError>,
}

impl<'a> Evaluation<'a> {
    /// The expression's value (the spec's default where errors occurred).
    pub fn value(&self) -> &Value<'a> {
        &self.value
    }

    /// The errors, in the order they were raised.
    pub fn errors(&self) -> &[EvalError] {
        &self.errors
    }

    /// True when no error was raised.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The filter view: boolean `true` without any error.
    pub fn is_match(&self) -> bool {
        self.errors.is_empty() && self.value == Value::Boolean(true)
    }

    /// Splits into value and errors.
    pub fn into_parts(self) -> (Value<'a>, Vec<EvalError>) {
        (self.value, self.errors)
    }
}

/// A compiled CESQL expression. Parse once, evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: ast::Expr,
}

impl Expression {
    /// Parses (and compiles) a CESQL expression.
    pub fn parse(src: &str) -> Result<Expression, ParseError> {
        parser::parse(src).map(|root| Expression { root })
    }

    /// Evaluates against an event, collecting every error (the spec's
    /// "complete evaluation mode").
    pub fn evaluate<'a, E: EventAttributes + ?Sized>(&'a self, event: &'a E) -> Evaluation<'a> {
        let mut errors = Vec::new();
        let value = eval::evaluate(&self.root, event, &mut errors);
        Evaluation { value, errors }
    }

    /// The filter view (CESQL spec 1.2): `true` only if the expression
    /// evaluates to boolean `true` without any error. Builds no error
    /// messages.
    pub fn matches<E: EventAttributes + ?Sized>(&self, event: &E) -> bool {
        let mut failed = false;
        let value = eval::evaluate_flag(&self.root, event, &mut failed);
        !failed && value == Value::Boolean(true)
    }
}

impl fmt::Display for Expression {
    /// Prints the expression back as CESQL (canonical spelling, minimal
    /// parentheses); parsing the output yields an equal [`Expression`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.root, f)
    }
}

impl std::str::FromStr for Expression {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::parse(s)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A map-backed event for unit tests.
    use super::{AttrValue, EventAttributes};
    use std::borrow::Cow;
    use std::collections::HashMap;

    #[derive(Debug, Default, Clone)]
    pub struct MapEvent(pub HashMap<String, Owned>);

    #[derive(Debug, Clone)]
    pub enum Owned {
        B(bool),
        I(i32),
        S(String),
    }

    impl MapEvent {
        /// A valid event with the four required attributes.
        pub fn new() -> Self {
            let mut m = MapEvent::default();
            m.set("specversion", Owned::S("1.0".into()));
            m.set("id", Owned::S("myId".into()));
            m.set("source", Owned::S("localhost.localdomain".into()));
            m.set("type", Owned::S("myType".into()));
            m
        }

        pub fn set(&mut self, k: &str, v: Owned) -> &mut Self {
            self.0.insert(k.to_string(), v);
            self
        }

        pub fn with(mut self, k: &str, v: &str) -> Self {
            self.set(k, Owned::S(v.to_string()));
            self
        }
    }

    impl EventAttributes for MapEvent {
        fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
            self.0.get(name).map(|v| match v {
                Owned::B(b) => AttrValue::Boolean(*b),
                Owned::I(i) => AttrValue::Integer(*i),
                Owned::S(s) => AttrValue::String(Cow::Borrowed(s)),
            })
        }
    }
}
