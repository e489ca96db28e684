//! The expression tree and its printer.
//!
//! The printer emits canonical CESQL with the fewest parentheses that keep
//! the tree shape, so that `parse(print(e)) == e`.

use std::fmt;

use super::functions::Function;
use super::like::LikePattern;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Bool(bool),
    Int(i32),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    And,
    Or,
    Xor,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinaryOp {
    /// Binding power; all binary operators are left-associative.
    pub(crate) fn precedence(self) -> u8 {
        match self {
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => PREC_LOGIC,
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => PREC_COMPARE,
            BinaryOp::Add | BinaryOp::Sub => PREC_ADD,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => PREC_MUL,
        }
    }

    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
            BinaryOp::Xor => "XOR",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }
}

// Precedence levels, loosest first (CESQL spec 3.6 / CESQLParser.g4).
pub(crate) const PREC_LOGIC: u8 = 1;
pub(crate) const PREC_COMPARE: u8 = 2;
pub(crate) const PREC_ADD: u8 = 3;
pub(crate) const PREC_MUL: u8 = 4;
pub(crate) const PREC_IN: u8 = 5;
pub(crate) const PREC_LIKE: u8 = 6;
pub(crate) const PREC_UNARY: u8 = 7;
const PREC_PRIMARY: u8 = 8;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Literal(Literal),
    /// Attribute reference; the name is lower-cased at parse time.
    Attribute(String),
    Exists(String),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Like {
        expr: Box<Expr>,
        pattern: LikePattern,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        set: Vec<Expr>,
        negated: bool,
    },
    Call {
        function: Function,
        args: Vec<Expr>,
    },
}

impl Expr {
    fn precedence(&self) -> u8 {
        match self {
            Expr::Binary { op, .. } => op.precedence(),
            Expr::In { .. } => PREC_IN,
            Expr::Like { .. } => PREC_LIKE,
            Expr::Not(_) | Expr::Negate(_) => PREC_UNARY,
            // A negative literal prints with a leading '-', which is fine
            // anywhere a unary operator is.
            Expr::Literal(_) | Expr::Attribute(_) | Expr::Exists(_) | Expr::Call { .. } => {
                PREC_PRIMARY
            }
        }
    }

    /// Prints `self`, parenthesized if it binds looser than `min`.
    fn fmt_prec(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            f.write_str("(")?;
            fmt::Display::fmt(self, f)?;
            f.write_str(")")
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

/// Writes `s` as a single-quoted CESQL string literal.
pub(crate) fn write_string_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("'")?;
    for c in s.chars() {
        match c {
            '\'' => f.write_str("\\'")?,
            '\\' => f.write_str("\\\\")?,
            c => fmt::Write::write_char(f, c)?,
        }
    }
    f.write_str("'")
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Expr]) -> fmt::Result {
    f.write_str("(")?;
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        fmt::Display::fmt(e, f)?;
    }
    f.write_str(")")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(Literal::Bool(true)) => f.write_str("TRUE"),
            Expr::Literal(Literal::Bool(false)) => f.write_str("FALSE"),
            Expr::Literal(Literal::Int(i)) => write!(f, "{i}"),
            Expr::Literal(Literal::Str(s)) => write_string_literal(f, s),
            Expr::Attribute(name) => f.write_str(name),
            Expr::Exists(name) => write!(f, "EXISTS {name}"),
            Expr::Not(e) => {
                f.write_str("NOT ")?;
                e.fmt_prec(f, PREC_UNARY)
            }
            Expr::Negate(e) => {
                f.write_str("-")?;
                // `-5` would parse back as the literal -5, not as a negation.
                if matches!(**e, Expr::Literal(Literal::Int(i)) if i >= 0) {
                    write!(f, "({e})")
                } else {
                    e.fmt_prec(f, PREC_UNARY)
                }
            }
            Expr::Binary { op, left, right } => {
                let p = op.precedence();
                left.fmt_prec(f, p)?;
                write!(f, " {} ", op.symbol())?;
                right.fmt_prec(f, p + 1)
            }
            Expr::Like {
                expr,
                pattern,
                negated,
            } => {
                expr.fmt_prec(f, PREC_LIKE)?;
                f.write_str(if *negated { " NOT LIKE " } else { " LIKE " })?;
                write_string_literal(f, pattern.source())
            }
            Expr::In { expr, set, negated } => {
                expr.fmt_prec(f, PREC_IN)?;
                f.write_str(if *negated { " NOT IN " } else { " IN " })?;
                write_list(f, set)
            }
            Expr::Call { function, args } => {
                f.write_str(function.name())?;
                write_list(f, args)
            }
        }
    }
}
