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
