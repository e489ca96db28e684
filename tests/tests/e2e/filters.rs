//! Trigger filters end to end: one broker, a trigger per dialect (Knative's
//! `spec.filters`: exact, prefix, suffix, all, any, not, cesql, and cemesh's data; the legacy
//! `spec.filter.attributes`; and `filters` overriding `filter`), each with its own
//! subscriber. Every event must reach exactly the triggers whose filter it passes.
//! A trigger with a bad CESQL expression is reported (log and `/readyz`, naming the
//! trigger, the node and the column) and does not start, while the others deliver.

use std::collections::BTreeSet;
use std::time::Duration;

use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;
use http::header::CONTENT_TYPE;

const WAIT: Duration = Duration::from_secs(20);

/// A Trigger manifest; `spec` is the YAML of the filter fields, indented by 2.
fn trigger(name: &str, subscriber: &str, spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: default\n  subscriber:\n    uri: {subscriber}\n{spec}"
    )
}

/// The triggers under test: name, filter spec, ids of the events it must receive.
const TRIGGERS: &[(&str, &str, &[&str])] = &[
    (
        "exact",
        "  filters:\n    - exact: {type: com.example.a}\n",
        &["e1", "e4"],
    ),
    (
        "exact-typed",
        "  filters:\n    - exact: {amount: \"500\"}\n",
        &["e2"],
    ),
    (
        "prefix",
        "  filters:\n    - prefix: {type: com.example.}\n",
        &["e1", "e2", "e4"],
    ),
    (
        "suffix",
        "  filters:\n    - suffix: {source: /eu}\n",
        &["e1", "e3", "e4"],
    ),
    (
        "all",
        "  filters:\n    - all:\n        - prefix: {type: com.example.}\n        - exact: {region: eu}\n",
        &["e1"],
    ),
    (
        "any",
        "  filters:\n    - any:\n        - exact: {type: com.example.b}\n        - exact: {region: us}\n",
        &["e2", "e5"],
    ),
    (
        "not",
        "  filters:\n    - not:\n        prefix: {type: com.example.}\n",
        &["e3", "e5"],
    ),
    (
        "cesql",
        "  filters:\n    - cesql: \"amount > 100 AND region IN ('eu', 'us') AND type LIKE '%.%'\"\n",
        &["e2", "e3"],
    ),
    (
        "list-is-and",
        "  filters:\n    - prefix: {type: com.example.}\n    - not: {exact: {region: us}}\n",
        // e4 has no region: `exact` fails on it, so `not` passes.
        &["e1", "e4"],
    ),
    (
        "legacy",
        "  filter:\n    attributes:\n      type: com.example.b\n",
        &["e2"],
    ),
    (
        "filters-override-filter",
        "  filter:\n    attributes:\n      type: com.example.a\n  filters:\n    - exact: {type: other.c}\n",
        &["e3"],
    ),
    (
        "empty-filters-keep-filter",
        "  filter:\n    attributes:\n      type: com.example.b\n  filters: []\n",
        &["e2"],
    ),
    ("no-filter", "", &["e1", "e2", "e3", "e4", "e5"]),
];

const BAD_CESQL: &str = "  filters:\n    - exact: {type: com.example.a}\n    - any:\n        - exact: {region: eu}\n        - cesql: \"type = 'a' AND (source = 'b'\"\n";

/// The events: `e4` lacks `region`, `e5` lacks `amount`.
fn events() -> Vec<Event> {
    let ev = |id: &str, ty: &str, source: &str, region: Option<&str>, amount: Option<i32>| {
        let mut e = Event::new(id, source, ty);
        if let Some(r) = region {
            e.set_extension("region", AttributeValue::String(r.into()));
        }
        if let Some(a) = amount {
            e.set_extension("amount", AttributeValue::Integer(a));
        }
        e
    };
    vec![
        ev("e1", "com.example.a", "/shop/eu", Some("eu"), Some(50)),
        ev("e2", "com.example.b", "/shop/us", Some("us"), Some(500)),
        ev("e3", "other.c", "/shop/eu", Some("eu"), Some(200)),
        ev("e4", "com.example.a", "/shop/eu", None, Some(150)),
        ev("e5", "other.d", "/x", Some("us"), None),
    ]
}

/// Polls until `sub` has at least `n` requests or `WAIT` passed. (Polling, because
/// `Subscriber::wait_for` can miss a notification that lands between its count check
/// and its first poll of `Notified`, and then sleeps until the timeout.)
async fn wait_count(sub: &Subscriber, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while sub.count() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_dialect_routes_only_matching_events() {
    let mut subs = Vec::new();
    let mut manifests = vec![broker_yaml("default")];
    for (name, spec, _) in TRIGGERS {
        let sub = Subscriber::start().await;
        manifests.push(trigger(name, &sub.url(), spec));
        subs.push(sub);
    }
    let bad_sub = Subscriber::start().await;
    manifests.push(trigger("bad-cesql", &bad_sub.url(), BAD_CESQL));
    let mesh = Cemesh::start(&docs(&manifests));

    // The bad trigger is reported with its name, the node and the column...
    let expected_problem = "(Trigger default/bad-cesql): spec.filters[1].any[1].cesql: \
                            parse error at column 29: expected ')'";
    assert!(
        mesh.wait_for_log(expected_problem, WAIT),
        "logs:\n{}",
        mesh.logs()
    );
    let ready: serde_json::Value = client()
        .get(mesh.admin_url("/readyz"))
        .send()
        .await
        .expect("GET /readyz")
        .json()
        .await
        .expect("readyz JSON");
    let problems = ready["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains(expected_problem))),
        "{ready}"
    );
    // ...and does not run, while every other trigger does.
    let running: BTreeSet<&str> = ready["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(!running.contains("default/bad-cesql"), "{ready}");
    for (name, _, _) in TRIGGERS {
        assert!(
            running.contains(format!("default/{name}").as_str()),
            "{ready}"
        );
    }

    // Odd events in binary mode (extensions arrive as strings), even ones structured
    // (`amount` stays an Integer): filters see canonical strings either way.
    let url = mesh.broker_url("default", "default");
    let c = client();
    for (i, e) in events().iter().enumerate() {
        let status = if i % 2 == 0 {
            post_binary(&c, &url, e).await.status()
        } else {
            c.post(&url)
                .header(CONTENT_TYPE, "application/cloudevents+json")
                .body(cemesh_proto::json::encode_event(e))
                .send()
                .await
                .expect("POST")
                .status()
        };
        assert_eq!(status, 202, "event {}", e.id);
    }

    for ((_, _, want), sub) in TRIGGERS.iter().zip(&subs) {
        wait_count(sub, want.len()).await;
    }
    // Give stray deliveries time to show up before asserting exact sets.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut wrong = Vec::new();
    for ((name, _, want), sub) in TRIGGERS.iter().zip(&subs) {
        let got: BTreeSet<String> = sub
            .received()
            .iter()
            .map(|r| {
                r.event
                    .as_ref()
                    .map_or("<invalid>".into(), |e| e.id.clone())
            })
            .collect();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        if got != want || sub.count() != want.len() {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\nlogs:\n{}",
        wrong.join("\n"),
        mesh.logs()
    );
    assert_eq!(bad_sub.count(), 0);
}

/// cemesh's `data` dialect through the binary: nested paths, array elements, types,
/// ranges, existence, inside `any` and `not`, and data that is not JSON.
#[tokio::test(flavor = "multi_thread")]
async fn data_filters_route_on_json_fields() {
    const DATA_TRIGGERS: &[(&str, &str, &[&str])] = &[
        (
            "big-orders",
            "  filters:\n    - data:\n        order.total: {gt: 100, lte: 1000}\n        order.currency: EUR\n",
            &["d1"],
        ),
        (
            "sku",
            "  filters:\n    - data:\n        order.items[*].sku: {prefix: ABC}\n",
            &["d1", "d3"],
        ),
        (
            "vip-or-express",
            "  filters:\n    - any:\n        - data: {customer.vip: true}\n        - data: {\"$.shipping.express\": {exists: true}}\n",
            &["d2", "d3"],
        ),
        (
            "not-typed",
            "  filters:\n    - not:\n        data: {order.total: {in: [\"50\", 999999]}}\n    - exact: {type: order.placed}\n",
            &["d1", "d2", "d3", "d4"],
        ),
        (
            "no-email",
            "  filters:\n    - data: {customer.email: {exists: false}}\n",
            &["d2", "d4"],
        ),
        // CESQL casts d3's string "500" to an Integer for `>`, as it does attributes.
        (
            "cesql-data",
            "  filters:\n    - cesql: \"DATA('order.total') > 100 AND DATA_EXISTS('order.items[*].sku')\"\n",
            &["d1", "d3"],
        ),
    ];
    let json = |id: &str, data: &str| {
        let mut e = Event::new(id, "/shop", "order.placed");
        e.datacontenttype = Some("application/json".into());
        e.data = Some(bytes::Bytes::from(data.to_owned()));
        e
    };
    let mut text = Event::new("d4", "/shop", "order.placed");
    text.datacontenttype = Some("text/plain".into());
    text.data = Some(bytes::Bytes::from_static(b"order.total=500"));
    let events = vec![
        json(
            "d1",
            r#"{"order":{"total":500,"currency":"EUR","items":[{"sku":"XYZ-1"},{"sku":"ABC-2"}]},"customer":{"vip":false,"email":"a@b.c"}}"#,
        ),
        json(
            "d2",
            r#"{"order":{"total":50,"currency":"EUR","items":[]},"customer":{"vip":true}}"#,
        ),
        json(
            "d3",
            r#"{"order":{"total":"500","items":[{"sku":"ABC-9"}]},"customer":{"email":"x@y.z"},"shipping":{"express":null}}"#,
        ),
        text,
    ];
    let mut subs = Vec::new();
    let mut manifests = vec![broker_yaml("default")];
    for (name, spec, _) in DATA_TRIGGERS {
        let sub = Subscriber::start().await;
        manifests.push(trigger(name, &sub.url(), spec));
        subs.push(sub);
    }
    let mesh = Cemesh::start(&docs(&manifests));
    let url = mesh.broker_url("default", "default");
    let c = client();
    for e in &events {
        assert_eq!(post_binary(&c, &url, e).await.status(), 202, "{}", e.id);
    }
    for ((_, _, want), sub) in DATA_TRIGGERS.iter().zip(&subs) {
        wait_count(sub, want.len()).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut wrong = Vec::new();
    for ((name, _, want), sub) in DATA_TRIGGERS.iter().zip(&subs) {
        let got: BTreeSet<String> = sub.ids().into_iter().collect();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        if got != want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\nlogs:\n{}", mesh.logs());
}

/// A `data` filter cemesh cannot use is refused naming the node.
#[test]
fn bad_data_filters_are_refused_naming_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    for (spec, problem) in [
        (
            "  filters:\n    - data: {order.total: {above: 5}}\n",
            "spec.filters[0].data[\"order.total\"]: unknown test \"above\"",
        ),
        (
            "  filters:\n    - data: {\"order..total\": 5}\n",
            "is not a data path: an empty key",
        ),
        (
            "  filters:\n    - data: {order.total: {gt: \"5\"}}\n",
            "spec.filters[0].data[\"order.total\"].gt: expected a number, got a string",
        ),
        (
            "  filters:\n    - data: {order.tags: [a, b]}\n",
            "for one of several values write in: [...]",
        ),
        (
            "  filters:\n    - data: {}\n",
            "expected at least one data path",
        ),
    ] {
        let file = tmp.path().join("t.yaml");
        std::fs::write(
            &file,
            format!(
                "{}---\n{}",
                broker_yaml("default"),
                trigger("t", "http://127.0.0.1:1/", spec)
            ),
        )
        .unwrap();
        let (ok, out, err) = cemesh_cli(&["validate", file.to_str().unwrap()]);
        let all = format!("{out}{err}");
        assert!(!ok && all.contains(problem), "{problem:?} in:\n{all}");
    }
}
