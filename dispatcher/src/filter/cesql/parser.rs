//! Precedence-climbing parser for `CESQLParser.g4`.
//!
//! Precedence, loosest first (spec 3.6; all binary operators associate to
//! the left, "evaluated left to right when the precedence is equal"):
//!
//! 1. `AND`, `OR`, `XOR` (one level, like the grammar's single alternative)
//! 2. `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`
//! 3. `+`, `-`
//! 4. `*`, `/`, `%`
//! 5. postfix `[NOT] IN (...)`
//! 6. postfix `[NOT] LIKE 'pattern'`
//! 7. prefix `NOT`, `-`
//! 8. literals, attributes, `EXISTS name`, function calls, `( ... )`
//!
//! Nesting is capped (tree height [`MAX_DEPTH`], parser recursion
//! [`MAX_RECURSION`]) so that hostile input can overflow the stack neither
//! here nor in the recursive evaluator, printer and destructor.

use super::ast::{
    BinaryOp, Expr, Literal, PREC_ADD, PREC_COMPARE, PREC_IN, PREC_LIKE, PREC_LOGIC, PREC_MUL,
    PREC_UNARY,
};
use super::functions::{Builtin, Function};
use super::lexer::{column, tokenize, Tok, Token};
use super::like::LikePattern;
use super::ParseError;

/// Maximum height of the expression tree.
pub(crate) const MAX_DEPTH: usize = 256;

/// Maximum recursion of the parser (each prefix operator, right operand,
/// parenthesis or argument list is one level).
const MAX_RECURSION: usize = 128;

/// A parsed subtree and its height.
type Parsed = Result<(Expr, usize), ParseError>;

pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        depth: 0,
    };
    let (expr, _) = p.expr(0)?;
    let t = p.peek();
    if t.tok != Tok::Eof {
        return Err(p.error_at(t.offset, format!("unexpected {}", t.tok.describe())));
    }
    Ok(expr)
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

fn binary_op(t: &Tok) -> Option<BinaryOp> {
    Some(match t {
        Tok::And => BinaryOp::And,
        Tok::Or => BinaryOp::Or,
        Tok::Xor => BinaryOp::Xor,
        Tok::Eq => BinaryOp::Eq,
        Tok::NotEq => BinaryOp::NotEq,
        Tok::Lt => BinaryOp::Lt,
        Tok::Le => BinaryOp::Le,
        Tok::Gt => BinaryOp::Gt,
        Tok::Ge => BinaryOp::Ge,
        Tok::Plus => BinaryOp::Add,
        Tok::Minus => BinaryOp::Sub,
        Tok::Star => BinaryOp::Mul,
        Tok::Slash => BinaryOp::Div,
        Tok::Percent => BinaryOp::Mod,
        _ => return None,
    })
}

// Keep the precedence table in one place (ast.rs) but check it matches the
// module docs above.
const _: () = assert!(
    PREC_LOGIC < PREC_COMPARE
        && PREC_COMPARE < PREC_ADD
        && PREC_ADD < PREC_MUL
        && PREC_MUL < PREC_IN
        && PREC_IN < PREC_LIKE
        && PREC_LIKE < PREC_UNARY
);

/// What follows an operand in `expr_inner`'s loop.
enum Infix {
    Binary(BinaryOp),
    Like { negated: bool },
    In { negated: bool },
}

impl Infix {
    fn precedence(&self) -> u8 {
        match self {
            Infix::Binary(op) => op.precedence(),
            Infix::Like { .. } => PREC_LIKE,
            Infix::In { .. } => PREC_IN,
        }
    }
}

// The recursive functions below are kept small, with message formatting in
// separate cold functions: their stack frames (large in debug builds) are
// what bounds the usable nesting depth.
impl Parser<'_> {
    fn peek(&self) -> &Token {
        // The token list always ends with Eof, and `pos` never passes it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn peek2(&self) -> &Token {
        &self.toks[(self.pos + 1).min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    #[cold]
    #[inline(never)]
    fn error_at(&self, offset: usize, msg: impl Into<String>) -> ParseError {
        ParseError::new(column(self.src, offset), msg)
    }

    /// "expected `what`, found <token at offset>".
    #[cold]
    #[inline(never)]
    fn expected(&self, what: &str, found: &Token) -> ParseError {
        self.error_at(
            found.offset,
            format!("expected {what}, found {}", found.tok.describe()),
        )
    }

    #[cold]
    #[inline(never)]
    fn too_deep(&self, offset: usize) -> ParseError {
        self.error_at(
            offset,
            format!(
                "expression nested too deeply (limits: {MAX_RECURSION} nested operands, \
                 {MAX_DEPTH} tree levels)"
            ),
        )
    }

    /// Consumes `want` or fails with "expected `what`, found ...".
    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), ParseError> {
        if &self.peek().tok == want {
            self.bump();
            Ok(())
        } else {
            Err(self.expected(what, self.peek()))
        }
    }

    /// Wraps a new node, enforcing the depth limit.
    fn node(&self, e: Expr, height: usize, offset: usize) -> Parsed {
        if height > MAX_DEPTH {
            return Err(self.too_deep(offset));
        }
        Ok((e, height))
    }

    /// Parses an expression whose operators all bind at least `min_prec`.
    fn expr(&mut self, min_prec: u8) -> Parsed {
        if self.depth >= MAX_RECURSION {
            return Err(self.too_deep(self.peek().offset));
        }
        self.depth += 1;
        let result = self.expr_inner(min_prec);
        self.depth -= 1;
        result
    }

    fn expr_inner(&mut self, min_prec: u8) -> Parsed {
        let (mut lhs, mut h) = self.prefix()?;
        while let Some(infix) = self.infix()? {
            if infix.precedence() < min_prec {
                break;
            }
            (lhs, h) = self.infix_rest(lhs, h, infix)?;
        }
        Ok((lhs, h))
    }

    /// Classifies the next token as an infix/postfix operator, if it is one.
    fn infix(&self) -> Result<Option<Infix>, ParseError> {
        let t = &self.peek().tok;
        if let Some(op) = binary_op(t) {
            return Ok(Some(Infix::Binary(op)));
        }
        Ok(Some(match (t, &self.peek2().tok) {
            (Tok::Like, _) => Infix::Like { negated: false },
            (Tok::In, _) => Infix::In { negated: false },
            (Tok::Not, Tok::Like) => Infix::Like { negated: true },
            (Tok::Not, Tok::In) => Infix::In { negated: true },
            (Tok::Not, _) => return Err(self.expected("LIKE or IN after NOT", self.peek2())),
            _ => return Ok(None),
        }))
    }

    /// Consumes the operator and its right-hand side.
    fn infix_rest(&mut self, lhs: Expr, h: usize, infix: Infix) -> Parsed {
        let offset = self.bump().offset;
        let lhs = Box::new(lhs);
        match infix {
            Infix::Binary(op) => {
                let (rhs, rh) = self.expr(op.precedence() + 1)?;
                let e = Expr::Binary {
                    op,
                    left: lhs,
                    right: Box::new(rhs),
                };
                self.node(e, 1 + h.max(rh), offset)
            }
            Infix::Like { negated } => {
                if negated {
                    self.bump();
                }
                let p = self.bump();
                let Tok::Str(pattern) = p.tok else {
                    return Err(self.expected("a string literal as the LIKE pattern", &p));
                };
                let e = Expr::Like {
                    expr: lhs,
                    pattern: LikePattern::new(pattern),
                    negated,
                };
                self.node(e, h + 1, offset)
            }
            Infix::In { negated } => {
                if negated {
                    self.bump();
                }
                let (set, sh) = self.list(false)?;
                let e = Expr::In {
                    expr: lhs,
                    set,
                    negated,
                };
                self.node(e, 1 + h.max(sh), offset)
            }
        }
    }

    /// `( expr, ... )`; `allow_empty` for function arguments, not for IN.
    /// Returns the items and their greatest height.
    fn list(&mut self, allow_empty: bool) -> Result<(Vec<Expr>, usize), ParseError> {
        self.expect(&Tok::LParen, "'('")?;
        let mut items = Vec::new();
        let mut height = 0;
        if self.peek().tok == Tok::RParen {
            if allow_empty {
                self.bump();
                return Ok((items, height));
            }
            return Err(self.error_at(self.peek().offset, "the IN set must not be empty"));
        }
        loop {
            let (e, h) = self.expr(0)?;
            items.push(e);
            height = height.max(h);
            match self.peek().tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RParen => {
                    self.bump();
                    return Ok((items, height));
                }
                _ => return Err(self.expected("',' or ')'", self.peek())),
            }
        }
    }

    fn prefix(&mut self) -> Parsed {
        match (&self.peek().tok, &self.peek2().tok) {
            (Tok::Not | Tok::Minus | Tok::Plus, _) => self.unary(),
            (Tok::LParen, _) => {
                self.bump();
                let e = self.expr(0)?;
                self.expect(&Tok::RParen, "')'")?;
                Ok(e)
            }
            (Tok::FnName(_), _) | (Tok::Ident(_), Tok::LParen) => self.call(),
            _ => self.atom(),
        }
    }

    /// `NOT x`, `-x`, and signed integer literals.
    fn unary(&mut self) -> Parsed {
        let t = self.bump();
        if let (Tok::Minus | Tok::Plus, Tok::Int(n)) = (&t.tok, &self.peek().tok) {
            let (n, negative) = (*n, t.tok == Tok::Minus);
            self.bump();
            return self.int_literal(n, negative, t.offset);
        }
        if t.tok == Tok::Plus {
            return Err(self.error_at(t.offset, "'+' must be followed by an integer literal"));
        }
        let (e, h) = self.expr(PREC_UNARY)?;
        let e = Box::new(e);
        let e = if t.tok == Tok::Not {
            Expr::Not(e)
        } else {
            Expr::Negate(e)
        };
        self.node(e, h + 1, t.offset)
    }

    /// An integer literal's value, `negative` when a '-' preceded it.
    fn int_literal(&self, magnitude: u64, negative: bool, offset: usize) -> Parsed {
        let v = if negative {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        };
        match v.and_then(|v| i32::try_from(v).ok()) {
            Some(i) => Ok((Expr::Literal(Literal::Int(i)), 1)),
            None => Err(self.error_at(
                offset,
                "integer literal out of the 32-bit range -2147483648..=2147483647",
            )),
        }
    }

    /// `NAME(args...)`.
    fn call(&mut self) -> Parsed {
        let t = self.bump();
        let name = match t.tok {
            Tok::Ident(name) if name.bytes().any(|b| b.is_ascii_digit()) => {
                return Err(self.error_at(
                    t.offset,
                    format!("invalid function name '{name}': only letters and '_' are allowed"),
                ));
            }
            Tok::Ident(name) | Tok::FnName(name) => name,
            other => return Err(self.expected("a function name", &Token { tok: other, ..t })),
        };
        if self.peek().tok != Tok::LParen {
            return Err(self.expected(&format!("'(' after function name {name}"), self.peek()));
        }
        let (args, h) = self.list(true)?;
        let mut function = Function::resolve(&name, args.len());
        // A literal data path is compiled here, once, and checked at load time.
        if let (
            Function::Builtin(b @ (Builtin::Data | Builtin::DataExists)),
            [Expr::Literal(Literal::Str(path))],
        ) = (&function, args.as_slice())
        {
            let steps = crate::filter::jsonpath::parse_path(path)
                .map_err(|m| self.error_at(t.offset, format!("{}: {m}", b.name())))?;
            function = Function::DataAt {
                builtin: *b,
                steps: steps.into_boxed_slice(),
            };
        }
        self.node(Expr::Call { function, args }, h + 1, t.offset)
    }

    /// Literals, attributes and `EXISTS name` (nothing recursive).
    fn atom(&mut self) -> Parsed {
        let t = self.bump();
        let e = match t.tok {
            Tok::Int(n) => return self.int_literal(n, false, t.offset),
            Tok::Str(s) => Expr::Literal(Literal::Str(s)),
            Tok::True => Expr::Literal(Literal::Bool(true)),
            Tok::False => Expr::Literal(Literal::Bool(false)),
            Tok::Ident(name) => Expr::Attribute(name.to_ascii_lowercase()),
            Tok::Exists => {
                let n = self.bump();
                match n.tok {
                    Tok::Ident(name) => Expr::Exists(name.to_ascii_lowercase()),
                    _ => return Err(self.expected("an attribute name after EXISTS", &n)),
                }
            }
            other => return Err(self.expected("an expression", &Token { tok: other, ..t })),
        };
        Ok((e, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Expression;
    use super::{MAX_DEPTH, MAX_RECURSION};

    /// Parses and prints back fully canonical CESQL.
    fn show(src: &str) -> String {
        Expression::parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .to_string()
    }

    fn fail(src: &str) -> (usize, String) {
        let e = Expression::parse(src).expect_err(src);
        (e.column(), e.message().to_string())
    }

    /// Prints with every binary/postfix node parenthesized, to see the shape.
    fn shape(src: &str) -> String {
        use super::super::ast::Expr;
        fn go(e: &Expr) -> String {
            match e {
                Expr::Binary { op, left, right } => {
                    format!("({} {} {})", go(left), op.symbol(), go(right))
                }
                Expr::Not(e) => format!("(NOT {})", go(e)),
                Expr::Negate(e) => format!("(- {})", go(e)),
                Expr::Like { expr, negated, .. } => {
                    format!("({} {}LIKE)", go(expr), if *negated { "NOT " } else { "" })
                }
                Expr::In { expr, negated, .. } => {
                    format!("({} {}IN)", go(expr), if *negated { "NOT " } else { "" })
                }
                other => other.to_string(),
            }
        }
        go(&super::parse(src).unwrap_or_else(|e| panic!("{src}: {e}")))
    }

    #[test]
    fn precedence() {
        assert_eq!(shape("4 * 2 + 4 / 2"), "((4 * 2) + (4 / 2))");
        assert_eq!(
            shape("1 + 2 * 3 = 7 AND TRUE"),
            "(((1 + (2 * 3)) = 7) AND TRUE)"
        );
        assert_eq!(shape("a OR b AND c"), "((a OR b) AND c)");
        assert_eq!(shape("a AND b OR c XOR d"), "(((a AND b) OR c) XOR d)");
        assert_eq!(shape("1 - 2 - 3"), "((1 - 2) - 3)");
        assert_eq!(shape("5-3"), "(5 - 3)");
        assert_eq!(shape("5 - -3"), "(5 - -3)");
        assert_eq!(shape("--10"), "(- -10)");
        assert_eq!(shape("-a * b"), "((- a) * b)");
        assert_eq!(shape("NOT a = b"), "((NOT a) = b)");
        assert_eq!(shape("NOT a LIKE 'x'"), "((NOT a) LIKE)");
        assert_eq!(shape("a NOT LIKE 'x' AND b"), "((a NOT LIKE) AND b)");
        assert_eq!(shape("1 + 2 IN (3)"), "(1 + (2 IN))");
        assert_eq!(shape("a LIKE 'x' IN (TRUE)"), "((a LIKE) IN)");
        assert_eq!(shape("NOT EXISTS a AND b"), "((NOT EXISTS a) AND b)");
        assert_eq!(shape("(a OR b) AND c"), "((a OR b) AND c)");
        assert_eq!(shape("a AND (b OR c)"), "(a AND (b OR c))");
    }

    #[test]
    fn canonical_printing() {
        assert_eq!(
            show("int(hop) < int(ttl) and int(hop) < 1000"),
            "INT(hop) < INT(ttl) AND INT(hop) < 1000"
        );
        assert_eq!(show("a <> b"), "a != b");
        assert_eq!(show("EXISTS SOURCE"), "EXISTS source");
        assert_eq!(show("Id"), "id");
        assert_eq!(show("a AND (b OR c)"), "a AND (b OR c)");
        assert_eq!(show("(a AND b) OR c"), "a AND b OR c");
        assert_eq!(show("(1 IN (1)) LIKE 'x'"), "(1 IN (1)) LIKE 'x'");
        assert_eq!(show("-(5)"), "-(5)");
        assert_eq!(show("- 5"), "-5");
        assert_eq!(show("+5"), "5");
        assert_eq!(show(r#""it's""#), r"'it\'s'");
        assert_eq!(show(r"'a\_b' LIKE 'a\_b'"), r"'a\\_b' LIKE 'a\\_b'");
        assert_eq!(show("concat_ws(',', 'a')"), "CONCAT_WS(',', 'a')");
        assert_eq!(show("foo()"), "FOO()");
        for src in [
            r"'a\_b\\'",
            "x NOT IN (1, 'b', c)",
            "NOT NOT TRUE",
            "--(5)",
            "-(-5)",
        ] {
            let once = show(src);
            assert_eq!(show(&once), once, "{src}");
        }
    }

    #[test]
    fn integer_literal_range() {
        assert_eq!(show("-2147483648"), "-2147483648");
        assert_eq!(show("2147483647"), "2147483647");
        assert_eq!(fail("2147483648").0, 1);
        assert_eq!(fail("1 + -2147483649").0, 5);
        assert_eq!(fail("99999999999999999999999999").0, 1);
    }

    #[test]
    fn error_columns() {
        assert_eq!(
            fail("ABC("),
            (5, "expected an expression, found end of input".into())
        );
        assert_eq!(
            fail("(1 + 2"),
            (7, "expected ')', found end of input".into())
        );
        assert_eq!(fail("x LIKE 123").0, 8);
        assert!(fail("x LIKE 123").1.contains("string literal"));
        assert_eq!(fail("a IN ()"), (7, "the IN set must not be empty".into()));
        assert_eq!(fail("a IN 1").0, 6);
        assert_eq!(fail("1 2").0, 3);
        assert_eq!(fail("a NOT b").0, 7);
        assert_eq!(fail("EXISTS 1").0, 8);
        assert_eq!(fail("EXISTS f_x").0, 8);
        assert_eq!(fail("CONCAT_WS").0, 10);
        assert_eq!(fail("f1(2)").0, 1);
        assert_eq!(fail("'é' = = 1").0, 7);
        assert_eq!(fail("").0, 1);
        assert_eq!(fail("+a").0, 1);
        assert_eq!(fail("f(1 2)").0, 5);
        assert_eq!(fail("a = 1)").0, 6);
    }

    #[test]
    fn depth_limit() {
        let n = MAX_RECURSION - 1;
        let ok = format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert!(Expression::parse(&ok).is_ok());
        let n = MAX_RECURSION + 1;
        let deep = format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert!(fail(&deep).1.contains("too deeply"));
        assert!(fail(&"NOT ".repeat(100_000)).1.contains("too deeply"));
        assert!(fail(&"-".repeat(100_000)).1.contains("too deeply"));
        let chain = format!("a{}", " OR a".repeat(MAX_DEPTH + 5));
        assert!(fail(&chain).1.contains("too deeply"));
        let chain = format!("a{}", " OR a".repeat(MAX_DEPTH - 1));
        assert!(Expression::parse(&chain).is_ok());
    }

    /// The deepest accepted input of every recursive shape can be parsed,
    /// evaluated, printed, cloned, compared and dropped on a 1 MiB stack
    /// (half a default thread's) in a debug build.
    #[test]
    fn deepest_inputs_fit_the_stack() {
        let worker = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let ev = super::super::test_support::MapEvent::new().with("a", "x");
                // (prefix, innermost, suffix), repeated n times around.
                let shapes = [
                    ("NOT ", "TRUE", ""),
                    ("NOT (", "TRUE", ")"),
                    ("-", "a", ""),
                    ("-(", "1", ")"),
                    ("CONCAT_WS(',', ", "'a'", ")"),
                    ("SUBSTRING(", "'a'", ", 1, 1)"),
                    ("LENGTH(", "a", ")"),
                    ("(", "a", " IN ('x') = TRUE)"),
                    ("(", "1", " + 1)"),
                    ("1 - (", "1", ")"),
                    ("(", "1", ")"),
                    ("", "a = 'x'", " AND a = 'x'"),
                    ("", "a", " LIKE 'x'"),
                    ("", "1", " * 1"),
                ];
                for (pre, mid, post) in shapes {
                    let build = |n: usize| format!("{}{mid}{}", pre.repeat(n), post.repeat(n));
                    // The largest n that still parses.
                    let n = (0..=MAX_DEPTH + 1)
                        .rev()
                        .find(|n| Expression::parse(&build(*n)).is_ok())
                        .expect("n = 0 parses");
                    assert!(n >= MAX_RECURSION / 2 - 1, "{pre}{mid}{post}: only {n}");
                    let e = Expression::parse(&build(n)).expect("parses");
                    let _ = e.evaluate(&ev);
                    let _ = e.matches(&ev);
                    let printed = e.to_string();
                    // (Not assert_eq: a failure would Debug-print the tree.)
                    assert!(
                        Expression::parse(&printed).as_ref() == Ok(&e),
                        "{pre}{mid}{post}"
                    );
                    assert!(e.clone() == e);
                }
            })
            .expect("spawn");
        assert!(worker.join().is_ok());
    }
}
