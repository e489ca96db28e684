//! Evaluating a compiled filter allocates nothing on the common path (DESIGN.md,
//! "Filters"): string, integer and boolean attributes, every dialect, and the CESQL
//! operators a filter normally uses (comparisons, `AND`/`OR`/`NOT`, `LIKE`, `IN`,
//! `EXISTS`, missing attributes).
//!
//! A counting global allocator sees every allocation of the process, so this file
//! holds a single test: no other test thread can allocate while it measures.

use std::alloc::System;

use cemesh_dispatcher::filter::{AttributesFilter, DialectFilter, FilterSpec};
use cemesh_dispatcher::Filter;
use cemesh_proto::{AttributeValue, Event};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn event() -> Event {
    let mut e = Event::new(
        "1",
        "https://shop.example/eu/orders",
        "com.shop.order.created",
    );
    e.subject = Some("order-42".into());
    e.time = Some("2026-11-24T10:00:00Z".into());
    e.set_extension("region", AttributeValue::String("eu-west".into()));
    e.set_extension("amount", AttributeValue::Integer(1500));
    e.set_extension("test", AttributeValue::Boolean(false));
    e
}

fn dialect(yaml: &str) -> Filter {
    let nodes: Vec<serde_json::Value> = serde_saphyr::from_str(yaml).expect("YAML");
    let specs: Vec<FilterSpec> = nodes.iter().map(spec).collect();
    Filter::Dialect(DialectFilter::compile(&specs, "spec.filters").expect("valid filter"))
}

/// Well-formed test YAML to specs (the control plane's reader checks real manifests).
fn spec(node: &serde_json::Value) -> FilterSpec {
    let (dialect, arg) = node
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("a filter object");
    let pairs = || {
        arg.as_object()
            .expect("a map")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    };
    let list = || arg.as_array().expect("a list").iter().map(spec).collect();
    match dialect.as_str() {
        "exact" => FilterSpec::Exact(pairs()),
        "prefix" => FilterSpec::Prefix(pairs()),
        "suffix" => FilterSpec::Suffix(pairs()),
        "all" => FilterSpec::All(list()),
        "any" => FilterSpec::Any(list()),
        "not" => FilterSpec::Not(Box::new(spec(arg))),
        "cesql" => FilterSpec::Cesql(arg.as_str().unwrap().to_owned()),
        other => panic!("dialect {other}"),
    }
}

#[test]
fn evaluating_filters_does_not_allocate() {
    let legacy = Filter::Attributes(
        AttributesFilter::new(
            &[("type", "com.shop.order.created"), ("amount", "1500")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            "spec.filter.attributes",
        )
        .expect("valid"),
    );
    let filters = [
        legacy,
        dialect("[exact: {type: com.shop.order.created, region: eu-west, amount: '1500', test: 'false', subject: order-42}]"),
        dialect("[prefix: {type: com.shop., amount: '15'}, suffix: {source: /orders, test: lse}]"),
        dialect("[any: [{exact: {missing: x}}, {not: {exact: {region: us}}}]]"),
        dialect("[all: [{prefix: {time: '2026-'}}, {exact: {specversion: '1.0'}}]]"),
        dialect(
            "[cesql: \"type LIKE 'com.shop.%' AND region IN ('eu-north', 'eu-west') AND amount > 1000\"]",
        ),
        dialect("[cesql: \"NOT test AND EXISTS subject AND source LIKE '%/eu/%' AND amount = '1500'\"]"),
        dialect("[cesql: \"EXISTS missing OR subject != 'order-41' AND region NOT LIKE 'us%'\"]"),
        // A missing attribute is an evaluation error: no match, and no message built.
        dialect("[cesql: \"missing = 'x' OR TRUE\"]"),
    ];
    let e = event();
    let expected: Vec<bool> = filters.iter().map(|f| f.matches(&e)).collect();
    assert_eq!(
        expected,
        [true, true, true, true, true, true, true, true, false]
    );

    let region = Region::new(GLOBAL);
    let mut hits = 0;
    for _ in 0..100 {
        for f in &filters {
            hits += usize::from(f.matches(&e));
        }
    }
    let stats = region.change();
    assert_eq!(hits, 100 * (filters.len() - 1));
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "filter evaluation allocated: {stats:?}"
    );

    // The counter does see allocations: a Binary attribute is compared through its
    // base64 text, built per evaluation (the documented exception).
    let mut with_binary = e.clone();
    with_binary.set_extension(
        "sig",
        AttributeValue::Binary(bytes::Bytes::from_static(b"hi")),
    );
    let binary = dialect("[exact: {sig: 'aGk='}]");
    let region = Region::new(GLOBAL);
    assert!(binary.matches(&with_binary));
    assert!(region.change().allocations > 0);
}
