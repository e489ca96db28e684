//! Property tests: the parser and evaluator are total (never panic), the
//! printer round-trips, and a few algebraic laws hold.

use proptest::prelude::*;

use super::ast::{BinaryOp, Expr, Literal};
use super::functions::Function;
use super::like::LikePattern;
use super::test_support::{MapEvent, Owned};
use super::{Expression, Value};

const OPS: [BinaryOp; 14] = [
    BinaryOp::And,
    BinaryOp::Or,
    BinaryOp::Xor,
    BinaryOp::Eq,
    BinaryOp::NotEq,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Mod,
];

const ATTRS: [&str; 6] = ["s", "n", "b", "num", "missing", "x1"];
const FUNCS: [&str; 18] = [
    "LENGTH",
    "CONCAT",
    "CONCAT_WS",
    "LOWER",
    "UPPER",
    "TRIM",
    "LEFT",
    "RIGHT",
    "SUBSTRING",
    "ABS",
    "INT",
    "BOOL",
    "STRING",
    "IS_BOOL",
    "IS_INT",
    "FOO",
    "MY_FN",
    "IS_STRING",
];

fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c%_\\\\'\"]{0,6}",
        "(true|FALSE|-?[0-9]{1,3}| x |é)",
        any::<String>(),
    ]
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        any::<bool>().prop_map(|b| Expr::Literal(Literal::Bool(b))),
        prop_oneof![any::<i32>(), -5i32..5].prop_map(|i| Expr::Literal(Literal::Int(i))),
        small_string().prop_map(|s| Expr::Literal(Literal::Str(s))),
        prop::sample::select(&ATTRS[..]).prop_map(|a| Expr::Attribute(a.to_string())),
        prop::sample::select(&ATTRS[..]).prop_map(|a| Expr::Exists(a.to_string())),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            inner.clone().prop_map(|e| Expr::Negate(Box::new(e))),
            (prop::sample::select(&OPS[..]), inner.clone(), inner.clone()).prop_map(
                |(op, l, r)| Expr::Binary {
                    op,
                    left: Box::new(l),
                    right: Box::new(r),
                }
            ),
            (inner.clone(), small_string(), any::<bool>()).prop_map(|(e, p, negated)| {
                Expr::Like {
                    expr: Box::new(e),
                    pattern: LikePattern::new(p),
                    negated,
                }
            }),
            (
                inner.clone(),
                prop::collection::vec(inner.clone(), 1..4),
                any::<bool>()
            )
                .prop_map(|(e, set, negated)| Expr::In {
                    expr: Box::new(e),
                    set,
                    negated,
                }),
            (
                prop::sample::select(&FUNCS[..]),
                prop::collection::vec(inner, 0..4)
            )
                .prop_map(|(name, args)| Expr::Call {
                    function: Function::resolve(name, args.len()),
                    args,
                }),
        ]
    })
}

fn event() -> impl Strategy<Value = MapEvent> {
    (small_string(), any::<i32>(), any::<bool>(), small_string()).prop_map(|(s, n, b, num)| {
        let mut ev = MapEvent::new();
        ev.set("s", Owned::S(s))
            .set("n", Owned::I(n))
            .set("b", Owned::B(b))
            .set("num", Owned::S(num));
        ev
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parser_never_panics_on_any_string(src in any::<String>()) {
        let _ = Expression::parse(&src);
    }

    #[test]
    fn parser_never_panics_on_cesql_like_text(
        src in "[a-zA-Z0-9_ '\"\\\\()%,<>=!+*/-]{0,64}|((NOT|AND|OR|LIKE|IN|EXISTS|-|\\(|\\)|a|1|'x'|,) ){0,24}"
    ) {
        if let Ok(e) = Expression::parse(&src) {
            // Whatever parses also prints back to the same tree.
            let printed = e.to_string();
            prop_assert_eq!(Expression::parse(&printed).ok(), Some(e), "{}", printed);
        }
    }

    #[test]
    fn print_then_parse_is_identity(root in expr()) {
        let e = Expression { root };
        let printed = e.to_string();
        let back = Expression::parse(&printed);
        prop_assert_eq!(back.as_ref().ok(), Some(&e), "{} -> {:?}", printed, back);
    }

    #[test]
    fn evaluator_never_panics_and_views_agree(root in expr(), ev in event()) {
        let e = Expression { root };
        let full = e.evaluate(&ev);
        prop_assert_eq!(full.is_match(), e.matches(&ev));
        // Deterministic.
        prop_assert_eq!(e.evaluate(&ev), full);
    }

    #[test]
    fn not_not_is_identity_on_booleans(root in expr(), ev in event()) {
        let x = Expression { root: root.clone() };
        let r = x.evaluate(&ev);
        if let (Value::Boolean(b), true) = (r.value(), r.is_ok()) {
            let nn = Expression {
                root: Expr::Not(Box::new(Expr::Not(Box::new(root)))),
            };
            let r2 = nn.evaluate(&ev);
            prop_assert_eq!(r2.value(), &Value::Boolean(*b));
            prop_assert!(r2.is_ok());
        }
    }

    #[test]
    fn like_percent_matches_everything(s in any::<String>()) {
        prop_assert!(LikePattern::new("%".into()).matches(&s));
        // A pattern without wildcards or backslashes matches exactly itself.
        let plain: String = s.chars().filter(|c| !matches!(c, '%' | '_' | '\\')).collect();
        prop_assert!(LikePattern::new(plain.clone()).matches(&plain));
        prop_assert_eq!(LikePattern::new(plain.clone()).matches(&s), plain == s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn like_agrees_with_the_reference(
        pattern in "[ab%_\\\\é]{0,10}",
        text in "[abé]{0,8}|[ab%_\\\\é]{0,14}",
    ) {
        prop_assert_eq!(
            LikePattern::new(pattern.clone()).matches(&text),
            reference_like(&text, &pattern),
            "{:?} LIKE {:?}", text, pattern
        );
    }

    #[test]
    fn like_agrees_with_the_reference_on_long_segments(
        text in prop::collection::vec(prop::sample::select(vec!['a', 'b', 'é']), 0..400),
        from in 0usize..400,
        len in 0usize..300,
        holes in prop::collection::vec(prop::bool::weighted(0.7), 300),
        tweak in prop::option::of((0usize..300, prop::sample::select(vec!['a', 'b', '%']))),
        anchored in any::<(bool, bool)>(),
    ) {
        // A piece of the text with most characters turned into `_`, so long
        // segments with inner `_`s both match and (tweaked) do not.
        let from = from.min(text.len());
        let to = (from + len).min(text.len());
        let mut piece: Vec<char> = text[from..to]
            .iter()
            .zip(&holes)
            .map(|(c, hole)| if *hole { '_' } else { *c })
            .collect();
        if let Some((at, c)) = tweak {
            if at < piece.len() {
                piece[at] = c;
            }
        }
        let pattern = format!(
            "{}{}{}",
            if anchored.0 { "" } else { "%" },
            piece.iter().collect::<String>(),
            if anchored.1 { "" } else { "%" },
        );
        let text: String = text.into_iter().collect();
        prop_assert_eq!(
            LikePattern::new(pattern.clone()).matches(&text),
            reference_like(&text, &pattern),
            "{:?} LIKE {:?}", text, pattern
        );
    }
}

/// The obvious `LIKE`: its own reading of the pattern and an O(n·m) table.
fn reference_like(text: &str, pattern: &str) -> bool {
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut toks = Vec::new();
    let mut p = pattern.chars().peekable();
    while let Some(c) = p.next() {
        toks.push(match c {
            '%' => Tok::Any,
            '_' => Tok::One,
            '\\' => match p.peek() {
                Some(&n) if matches!(n, '%' | '_' | '\\') => {
                    p.next();
                    Tok::Lit(n)
                }
                _ => Tok::Lit('\\'),
            },
            c => Tok::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // row[i]: the tokens so far match text[..i].
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for tok in &toks {
        let mut next = vec![false; text.len() + 1];
        for i in 0..=text.len() {
            next[i] = match tok {
                Tok::Any => row[i] || (i > 0 && next[i - 1]),
                Tok::One => i > 0 && row[i - 1],
                Tok::Lit(c) => i > 0 && row[i - 1] && text[i - 1] == *c,
            };
        }
        row = next;
    }
    row[text.len()]
}
