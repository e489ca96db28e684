//! Dialect semantics (table tests) and load-time errors (paths and messages), from
//! manifest YAML through the typed specs to the dispatcher's compiled filter.

use bytes::Bytes;
use cemesh_proto::{AttributeValue, Event};
use proptest::prelude::*;

use cemesh_dispatcher::filter::DialectFilter;
use cemesh_dispatcher::FilterError;

use crate::manifest::{Mapping, Value};

fn compile(yaml: &str) -> Result<DialectFilter, FilterError> {
    let nodes: Vec<Value> = crate::manifest::parser::typed(yaml, "a test").expect("test YAML");
    super::compile_dialect(&nodes, "spec.filters")
}

fn filter(yaml: &str) -> DialectFilter {
    compile(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn error(yaml: &str) -> FilterError {
    match compile(yaml) {
        Ok(f) => panic!("{yaml} compiled to {f:?}"),
        Err(e) => e,
    }
}

/// An order event with a string, an integer, a boolean and a binary extension.
fn order() -> Event {
    let mut e = Event::new(
        "42",
        "https://shop.example/eu/orders",
        "com.shop.order.created",
    );
    e.subject = Some("order-42".into());
    e.set_extension("region", AttributeValue::String("eu-west".into()));
    e.set_extension("amount", AttributeValue::Integer(1500));
    e.set_extension("test", AttributeValue::Boolean(false));
    e.set_extension("sig", AttributeValue::Binary(Bytes::from_static(b"hi")));
    e
}

#[test]
fn each_dialect_matches_and_misses() {
    let e = order();
    #[rustfmt::skip]
    let cases: &[(&str, bool)] = &[
        ("[exact: {type: com.shop.order.created}]", true),
        ("[exact: {type: com.shop.order.Created}]", false),
        ("[exact: {type: com.shop.order.created, region: eu-west}]", true),
        ("[exact: {type: com.shop.order.created, region: us}]", false),
        ("[exact: {amount: '1500'}]", true),
        ("[exact: {test: 'false'}]", true),
        ("[exact: {sig: 'aGk='}]", true),
        ("[exact: {missing: x}]", false),
        ("[prefix: {type: com.shop.}]", true),
        ("[prefix: {type: com.Shop.}]", false),
        ("[prefix: {amount: '15'}]", true),
        ("[prefix: {missing: a}]", false),
        ("[suffix: {source: /eu/orders}]", true),
        ("[suffix: {source: /us/orders}]", false),
        ("[suffix: {test: lse}]", true),
        ("[suffix: {sig: '='}]", true),
        ("[suffix: {datacontenttype: json}]", false),
        ("[all: [{prefix: {type: com.}}, {exact: {region: eu-west}}]]", true),
        ("[all: [{prefix: {type: com.}}, {exact: {region: us}}]]", false),
        ("[any: [{exact: {region: us}}, {suffix: {source: /orders}}]]", true),
        ("[any: [{exact: {region: us}}, {exact: {region: ap}}]]", false),
        ("[not: {exact: {region: us}}]", true),
        ("[not: {exact: {region: eu-west}}]", false),
        ("[not: {exact: {missing: x}}]", true),
        ("[not: {not: {exact: {region: eu-west}}}]", true),
        ("[cesql: \"amount > 1000 AND region IN ('eu-west', 'eu-north')\"]", true),
        ("[cesql: \"amount > 2000\"]", false),
        ("[cesql: \"missing = 'x'\"]", false),
        ("[cesql: \"NOT (missing = 'x')\"]", false),
        ("[cesql: \"1\"]", false),
        ("[cesql: \"type LIKE '%order%' AND NOT test\"]", true),
        ("[cesql: \"sig = 'aGk='\"]", true),
        // The list is an AND.
        ("[prefix: {type: com.}, exact: {region: eu-west}]", true),
        ("[{prefix: {type: com.}}, {exact: {region: us}}]", false),
        (
            "[any: [{not: {cesql: \"amount < 100\"}}, {exact: {region: us}}]]",
            true,
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(filter(yaml).matches(&e), *want, "{yaml}");
    }
}

#[test]
fn the_knative_trigger_example_works() {
    let f = filter(
        r#"
- prefix: {type: com.shop.order.}
- any:
    - exact: {region: eu-west}
    - suffix: {source: /eu}
- not:
    exact: {test: "true"}
- cesql: "amount > 1000 AND currency IN ('EUR','GBP')"
"#,
    );
    let mut e = order();
    assert!(!f.matches(&e), "no currency: the CESQL clause fails");
    e.set_extension("currency", AttributeValue::String("EUR".into()));
    assert!(f.matches(&e));
    e.set_extension("test", AttributeValue::Boolean(true));
    assert!(!f.matches(&e));
}

#[test]
fn core_attributes_in_either_spec_version() {
    let mut e = order();
    e.dataschema = Some("https://schema/v1".into());
    assert!(filter("[exact: {dataschema: 'https://schema/v1'}]").matches(&e));
    assert!(!filter("[exact: {schemaurl: 'https://schema/v1'}]").matches(&e));
    e.specversion = cemesh_proto::SpecVersion::V03;
    assert!(filter("[exact: {schemaurl: 'https://schema/v1'}]").matches(&e));
    assert!(filter("[exact: {specversion: '0.3'}]").matches(&e));
}

#[test]
fn errors_name_the_node() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        ("[]", "spec.filters", "at least one filter"),
        ("[42]", "spec.filters[0]", "expected a filter object"),
        ("[{}]", "spec.filters[0]", "empty filter object"),
        (
            "[{exact: {a: b}, suffix: {a: b}}]",
            "spec.filters[0]",
            "multiple dialects found (exact, suffix)",
        ),
        ("[regex: {a: b}]", "spec.filters[0].regex", "unknown dialect \"regex\""),
        ("[sql: \"a = 'b'\"]", "spec.filters[0].sql", "\"cesql\""),
        ("[exact: {}]", "spec.filters[0].exact", "at least one attribute"),
        ("[exact: [a]]", "spec.filters[0].exact", "expected a map"),
        ("[exact: {Type: a}]", "spec.filters[0].exact.Type", "lower-case"),
        ("[prefix: {'': a}]", "spec.filters[0].prefix[\"\"]", "must not be empty"),
        ("[suffix: {'s pace': a}]", "spec.filters[0].suffix[\"s pace\"]", "lower-case"),
        ("[exact: {data: a}]", "spec.filters[0].exact.data", "cannot be filtered"),
        ("[prefix: {type: ''}]", "spec.filters[0].prefix.type", "must not be empty"),
        ("[exact: {amount: 7}]", "spec.filters[0].exact.amount", "quote it: \"7\""),
        ("[exact: {flag: true}]", "spec.filters[0].exact.flag", "a boolean"),
        ("[exact: {a: [b]}]", "spec.filters[0].exact.a", "expected a string, got a list"),
        ("[exact: {1: b}]", "spec.filters[0].exact[1]", "must be a string"),
        ("[all: []]", "spec.filters[0].all", "at least one filter"),
        ("[any: {exact: {a: b}}]", "spec.filters[0].any", "expected a list"),
        ("[not: {}]", "spec.filters[0].not", "empty filter object"),
        ("[not: [{exact: {a: b}}]]", "spec.filters[0].not", "expected a filter object"),
        ("[cesql: 1]", "spec.filters[0].cesql", "expected a string"),
        ("[cesql: ]", "spec.filters[0].cesql", "got nothing"),
        (
            "[{exact: {a: b}}, {any: [{exact: {a: b}}, {all: [{not: {prefix: {A: x}}}]}]}]",
            "spec.filters[1].any[1].all[0].not.prefix.A",
            "lower-case",
        ),
    ];
    for (yaml, path, message) in cases {
        let e = error(yaml);
        assert_eq!(e.path, *path, "{yaml}: {e}");
        assert!(e.message.contains(message), "{yaml}: {e}");
    }
}

#[test]
fn cesql_errors_carry_the_column() {
    let e = error("[exact: {a: b}, any: [{cesql: \"type = 'a' AND (source = 'b'\"}]]");
    assert_eq!(e.path, "spec.filters[1].any[0].cesql");
    assert!(
        e.message
            .starts_with("parse error at column 29: expected ')'"),
        "{}",
        e.message
    );
    let e = error("[cesql: \"type = \"]");
    assert!(e.message.starts_with("parse error at column 8"), "{e}");
    assert_eq!(
        e.to_string(),
        format!("spec.filters[0].cesql: {}", e.message)
    );
}

/// Random YAML trees shaped like filters (valid or not).
fn yaml_node() -> impl Strategy<Value = Value> {
    let name = prop::sample::select(&["type", "source", "region", "amount", "Bad", "", "data"][..]);
    let text = prop_oneof!["[a-z./]{0,6}", Just(String::new())];
    let leaf = prop_oneof![
        (
            prop::sample::select(&["exact", "prefix", "suffix"][..]),
            prop::collection::vec((name, text.clone()), 0..3)
        )
            .prop_map(|(d, pairs)| {
                let m: Mapping = pairs
                    .into_iter()
                    .map(|(k, v)| (Value::from(k), Value::from(v)))
                    .collect();
                single(d, Value::Mapping(m))
            }),
        "[a-z0-9 ='()%<>]{0,24}".prop_map(|s| single("cesql", Value::from(s))),
        text.prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        prop_oneof![
            (
                prop::sample::select(&["all", "any"][..]),
                prop::collection::vec(inner.clone(), 0..3)
            )
                .prop_map(|(d, v)| single(d, Value::Sequence(v))),
            inner.clone().prop_map(|n| single("not", n)),
            (inner.clone(), inner).prop_map(|(a, b)| {
                let mut m = Mapping::new();
                m.insert("not".into(), a);
                m.insert("all".into(), Value::Sequence(vec![b]));
                Value::Mapping(m)
            }),
        ]
    })
}

fn single(key: &str, value: Value) -> Value {
    let mut m = Mapping::new();
    m.insert(key.into(), value);
    Value::Mapping(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn compiling_and_evaluating_never_panic(nodes in prop::collection::vec(yaml_node(), 0..3)) {
        match super::compile_dialect(&nodes, "spec.filters") {
            Ok(f) => {
                let _ = f.matches(&order());
                // `not: not: x` is `x`.
                let nn = vec![single("not", single("not", single("all", Value::Sequence(nodes))))];
                let g = super::compile_dialect(&nn, "spec.filters").expect("still valid");
                prop_assert_eq!(g.matches(&order()), f.matches(&order()));
            }
            Err(e) => prop_assert!(e.path.starts_with("spec.filters"), "{}", e),
        }
    }
}
