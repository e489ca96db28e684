//! The event path: a Knative Trigger routes a POSTed CloudEvent to a subscriber.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;
use http::header::CONTENT_TYPE;

const WAIT: Duration = Duration::from_secs(20);

fn sample(id: &str) -> Event {
    let mut e = Event::new(
        id,
        "https://shop.example/orders",
        "com.example.order.created",
    );
    e.subject = Some("order 42".into());
    e.time = Some("2026-11-24T10:00:00.123+05:30".into());
    e.dataschema = Some("https://schema.example/order/v1".into());
    e.datacontenttype = Some("application/json".into());
    e.data = Some(Bytes::from_static(
        br#"{"total": 12.50, "items": ["a", "b"]}"#,
    ));
    e.set_extension("region", AttributeValue::String("eu-west".into()));
    e.set_extension("tenant", AttributeValue::String("acme corp €".into()));
    e
}

/// Everything but the id and the arrival time the ingress adds.
fn comparable(e: &Event) -> Event {
    let mut e = e.clone();
    e.id.clear();
    e.remove_extension("knativearrivaltime");
    e
}

async fn one_trigger(filter: &[(&str, &str)]) -> (Cemesh, Subscriber) {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("t", "default", &sub.url(), filter),
    ]));
    (mesh, sub)
}

#[tokio::test(flavor = "multi_thread")]
async fn all_three_modes_deliver_identical_events() {
    let (mesh, sub) = one_trigger(&[]).await;
    let url = mesh.broker_url("default", "default");
    let c = client();

    let resp = post_binary(&c, &url, &sample("binary")).await;
    assert_eq!(resp.status(), 202);
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, "application/cloudevents+json; charset=utf-8")
        .body(cemesh_proto::json::encode_event(&sample("structured")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, "application/cloudevents-batch+json")
        .body(cemesh_proto::json::encode_batch(&[
            sample("batch1"),
            sample("batch2"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let got = sub.wait_for(4, WAIT).await;
    assert_eq!(got.len(), 4, "logs:\n{}", mesh.logs());
    let expected = comparable(&sample("x"));
    let mut ids = Vec::new();
    for r in &got {
        let e = r.event.as_ref().expect("a valid CloudEvent");
        assert_eq!(comparable(e), expected, "event {}", e.id);
        // Delivered in binary mode, data byte for byte.
        assert_eq!(r.headers.get("ce-id").unwrap(), e.id.as_str());
        assert_eq!(&r.body[..], br#"{"total": 12.50, "items": ["a", "b"]}"#);
        assert_eq!(
            r.headers.get("ce-time").unwrap(),
            "2026-11-24T10:00:00.123+05:30"
        );
        assert_eq!(
            r.headers.get("ce-tenant").unwrap(),
            "acme%20corp%20%E2%82%AC"
        );
        assert!(e.extension("knativearrivaltime").is_some());
        ids.push(e.id.clone());
    }
    ids.sort();
    assert_eq!(ids, ["batch1", "batch2", "binary", "structured"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_data_and_extensions_survive() {
    let (mesh, sub) = one_trigger(&[]).await;
    let url = mesh.broker_url("default", "default");
    let c = client();
    let all_bytes: Vec<u8> = (0..=255u8).collect();

    let mut e = Event::new("bin", "/sensors/7", "com.example.blob");
    e.datacontenttype = Some("application/octet-stream".into());
    e.data = Some(Bytes::from(all_bytes.clone()));
    e.set_extension("quoted", AttributeValue::String("say \"hi\" 100%".into()));
    e.set_extension("emoji", AttributeValue::String("😀".into()));
    assert_eq!(post_binary(&c, &url, &e).await.status(), 202);

    // The same bytes through structured mode travel as data_base64.
    let mut s = e.clone();
    s.id = "structured-bin".into();
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, "application/cloudevents+json")
        .body(cemesh_proto::json::encode_event(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // Typed extensions from JSON arrive as their canonical strings.
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, "application/cloudevents+json")
        .body(
            r#"{"specversion":"1.0","id":"typed","source":"/s","type":"t","flag":true,"count":-7}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let got = sub.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "logs:\n{}", mesh.logs());
    for r in &got {
        let ev = r.event.as_ref().unwrap();
        if ev.id == "typed" {
            assert_eq!(r.headers.get("ce-flag").unwrap(), "true");
            assert_eq!(r.headers.get("ce-count").unwrap(), "-7");
            continue;
        }
        assert_eq!(&r.body[..], &all_bytes[..], "data of {}", ev.id);
        assert_eq!(
            r.headers.get(CONTENT_TYPE).unwrap(),
            "application/octet-stream"
        );
        assert_eq!(
            ev.extension("quoted"),
            Some(&AttributeValue::String("say \"hi\" 100%".into()))
        );
        assert_eq!(
            ev.extension("emoji"),
            Some(&AttributeValue::String("😀".into()))
        );
    }
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    /// Text the JSON error must contain.
    message: &'static str,
    attribute: Option<&'static str>,
}

fn ce<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    for (k, v) in extra {
        h.retain(|(hk, _)| hk != k);
        if !v.is_empty() {
            h.push((k, v));
        }
    }
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn each_error_code_names_the_problem() {
    let sub = Subscriber::start().await;
    let small = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: small\n  annotations:\n    cemesh.dev/max-body-size: 1KiB\n";
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        small.to_owned(),
        trigger_yaml("t", "default", &sub.url(), &[]),
    ]));
    let c = client();
    let cases = vec![
        Case { name: "missing id", method: "POST", path: "/default/default", headers: ce(&[("ce-id", "")]), body: vec![], status: 400, message: "id", attribute: Some("id") },
        Case { name: "missing specversion", method: "POST", path: "/default/default", headers: ce(&[("ce-specversion", "")]), body: vec![], status: 400, message: "ce-specversion", attribute: Some("specversion") },
        Case { name: "unsupported specversion", method: "POST", path: "/default/default", headers: ce(&[("ce-specversion", "2.0")]), body: vec![], status: 400, message: "not supported", attribute: Some("specversion") },
        Case { name: "bad source", method: "POST", path: "/default/default", headers: ce(&[("ce-source", "a b<c>")]), body: vec![], status: 400, message: "URI-reference", attribute: Some("source") },
        Case { name: "bad time", method: "POST", path: "/default/default", headers: ce(&[("ce-time", "yesterday")]), body: vec![], status: 400, message: "RFC 3339", attribute: Some("time") },
        Case { name: "ce-datacontenttype header", method: "POST", path: "/default/default", headers: ce(&[("ce-datacontenttype", "text/plain")]), body: vec![], status: 400, message: "Content-Type", attribute: Some("datacontenttype") },
        Case { name: "overlong UTF-8", method: "POST", path: "/default/default", headers: ce(&[("ce-subject", "%C0%A0")]), body: vec![], status: 400, message: "UTF-8", attribute: Some("subject") },
        Case { name: "bad extension name", method: "POST", path: "/default/default", headers: vec![("content-type", "application/cloudevents+json")], body: br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad_Name":"x"}"#.to_vec(), status: 400, message: "a-z", attribute: Some("Bad_Name") },
        Case { name: "structured not JSON", method: "POST", path: "/default/default", headers: vec![("content-type", "application/cloudevents+json")], body: b"{nope".to_vec(), status: 400, message: "JSON", attribute: None },
        Case { name: "batch with one bad event", method: "POST", path: "/default/default", headers: vec![("content-type", "application/cloudevents-batch+json")], body: br#"[{"specversion":"1.0","id":"ok","source":"/s","type":"t"},{"specversion":"1.0","source":"/s","type":"t"}]"#.to_vec(), status: 400, message: "batch event at index 1 (from 0)", attribute: Some("id") },
        Case { name: "unsupported format", method: "POST", path: "/default/default", headers: vec![("content-type", "application/cloudevents+avro")], body: b"x".to_vec(), status: 415, message: "unsupported content type", attribute: None },
        Case { name: "root", method: "POST", path: "/", headers: ce(&[]), body: vec![], status: 404, message: "no broker", attribute: None },
        Case { name: "unknown broker", method: "POST", path: "/default/nope", headers: ce(&[]), body: vec![], status: 404, message: "default/nope", attribute: None },
        Case { name: "unknown namespace", method: "POST", path: "/other/default", headers: ce(&[]), body: vec![], status: 404, message: "other/default", attribute: None },
        Case { name: "three segments", method: "POST", path: "/a/b/c", headers: ce(&[]), body: vec![], status: 400, message: "/{namespace}/{broker}", attribute: None },
        Case { name: "one segment", method: "POST", path: "/default", headers: ce(&[]), body: vec![], status: 400, message: "/{namespace}/{broker}", attribute: None },
        Case { name: "GET", method: "GET", path: "/default/default", headers: vec![], body: vec![], status: 405, message: "POST", attribute: None },
        Case { name: "PUT", method: "PUT", path: "/default/default", headers: ce(&[]), body: vec![], status: 405, message: "POST", attribute: None },
        Case { name: "DELETE", method: "DELETE", path: "/default/default", headers: vec![], body: vec![], status: 405, message: "POST", attribute: None },
        Case { name: "over the limit", method: "POST", path: "/default/small", headers: ce(&[]), body: vec![b'x'; 2048], status: 413, message: "1024 bytes", attribute: None },
        Case { name: "over the default 1 MiB limit", method: "POST", path: "/default/default", headers: ce(&[]), body: vec![b'x'; (1 << 20) + 1], status: 413, message: "1048576 bytes", attribute: None },
    ];
    for case in cases {
        let url = format!("http://{}{}", mesh.ingress, case.path);
        let mut req = c
            .request(case.method.parse().unwrap(), &url)
            .body(case.body.clone());
        for (k, v) in &case.headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: serde_json::Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: body not JSON: {e}", case.name));
        assert_eq!(status, case.status, "{}: {body}", case.name);
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error in {body}", case.name));
        assert!(
            msg.contains(case.message),
            "{}: {msg:?} should mention {:?}",
            case.name,
            case.message
        );
        assert_eq!(
            body["attribute"].as_str(),
            case.attribute,
            "{}: {body}",
            case.name
        );
        if status == 405 {
            assert_eq!(allow.as_deref(), Some("POST, OPTIONS"), "{}", case.name);
        }
    }
    // Nothing refused was delivered, not even the valid half of the batch.
    assert!(sub.settle(Duration::from_millis(300)).await.is_empty());

    // A query string is ignored; the limit counts the event: its ce- headers and body.
    let resp = c
        .post(format!("{}?x=1", mesh.broker_url("default", "small")))
        .headers(header_map(&ce(&[])))
        .body(vec![b'x'; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = c
        .post(mesh.broker_url("default", "small"))
        .headers(header_map(&ce(&[("ce-note", &"n".repeat(200))])))
        .body(vec![b'x'; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("ce- headers (")
            && body["error"]
                .as_str()
                .unwrap()
                .contains("limit of 1024 bytes"),
        "{body}"
    );

    // 431 has the same JSON body as every refusal: a 200 KB extension, too many headers.
    let big = "x".repeat(200 * 1024);
    let resp = c
        .post(mesh.broker_url("default", "default"))
        .headers(header_map(&ce(&[("ce-big", &big)])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let body: serde_json::Value = resp.json().await.expect("431 with a JSON body");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at most 65536 are allowed"),
        "{body}"
    );
    let url = mesh.broker_url("default", "default");
    let resp = post_with_extra_headers(&c, &url, 150).await;
    assert_eq!(resp.status(), 431);
    let body: serde_json::Value = resp.json().await.expect("431 with a JSON body");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at most 100 are allowed"),
        "{body}"
    );
    // Past the HTTP server's own limit (256 headers): 431 still, its bare one.
    let resp = post_with_extra_headers(&c, &url, 300).await;
    assert_eq!(resp.status(), 431);
    assert!(sub.settle(Duration::from_millis(200)).await.is_empty());

    // The webhook abuse-protection handshake.
    let resp = c
        .request(http::Method::OPTIONS, mesh.broker_url("default", "default"))
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("webhook-allowed-origin").unwrap(),
        "eventemitter.example.com"
    );
    assert!(resp.headers().get("webhook-allowed-rate").is_some());
}

/// A valid binary-mode event with `extra` more headers (`x-h0: 1`, ...).
async fn post_with_extra_headers(
    c: &reqwest::Client,
    url: &str,
    extra: usize,
) -> reqwest::Response {
    let mut pairs = ce(&[]);
    let names: Vec<String> = (0..extra).map(|i| format!("x-h{i}")).collect();
    pairs.extend(names.iter().map(|n| (n.as_str(), "1")));
    c.post(url)
        .headers(header_map(&pairs))
        .send()
        .await
        .unwrap()
}

fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::try_from(*k).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_route_to_the_right_trigger_only() {
    let orders = Subscriber::start().await;
    let eu_payments = Subscriber::start().await;
    let everything = Subscriber::start().await;
    let present = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("orders", "default", &orders.url(), &[("type", "order")]),
        trigger_yaml(
            "eu-payments",
            "default",
            &eu_payments.url(),
            &[("type", "payment"), ("region", "eu")],
        ),
        trigger_yaml("everything", "default", &everything.url(), &[]),
        trigger_yaml("has-region", "default", &present.url(), &[("region", "")]),
    ]));
    let url = mesh.broker_url("default", "default");
    let c = client();
    let send = |id: &str, ty: &str, region: Option<&str>| {
        let mut e = Event::new(id, "/s", ty);
        if let Some(r) = region {
            e.set_extension("region", AttributeValue::String(r.into()));
        }
        e
    };
    for e in [
        send("o1", "order", None),
        send("o2", "Order", None),
        send("p-eu", "payment", Some("eu")),
        send("p-us", "payment", Some("us")),
        send("p-none", "payment", None),
        send("empty-region", "other", Some("")),
    ] {
        assert_eq!(post_binary(&c, &url, &e).await.status(), 202);
    }
    let ids = |s: &Subscriber| {
        let mut v: Vec<String> = s
            .received()
            .iter()
            .map(|r| r.event.as_ref().unwrap().id.clone())
            .collect();
        v.sort();
        v
    };
    everything.wait_for(6, WAIT).await;
    // Deliveries for one broker run in parallel; give the others a moment too.
    orders.settle(Duration::from_millis(300)).await;
    assert_eq!(ids(&everything).len(), 6);
    assert_eq!(ids(&orders), ["o1"]);
    assert_eq!(ids(&eu_payments), ["p-eu"]);
    assert_eq!(ids(&present), ["p-eu", "p-us"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_triggers_both_get_a_matching_event() {
    let a = Subscriber::start().await;
    let b = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("a", "default", &a.url(), &[("type", "t")]),
        trigger_yaml("b", "default", &b.url(), &[("source", "/s")]),
    ]));
    assert_eq!(
        post_binary(
            &client(),
            &mesh.broker_url("default", "default"),
            &Event::new("1", "/s", "t")
        )
        .await
        .status(),
        202
    );
    assert_eq!(a.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(b.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(a.settle(Duration::from_millis(200)).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriber_refs_resolve_through_the_services_map() {
    let sub = Subscriber::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let server_config = tmp.path().join("cemesh.yaml");
    std::fs::write(
        &server_config,
        format!("services:\n  display:\n    url: http://{}\n", sub.addr),
    )
    .unwrap();
    let trigger = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: by-ref\n  namespace: shop\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: display\n    uri: /hooks/events\n";
    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: shop\n";
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &docs(&[broker.to_owned(), trigger.to_owned()]))
        .arg("--config")
        .arg(server_config.to_str().unwrap())
        .start();
    assert_eq!(
        post_binary(
            &client(),
            &mesh.broker_url("shop", "default"),
            &Event::new("1", "/s", "t")
        )
        .await
        .status(),
        202
    );
    let got = sub.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "logs:\n{}", mesh.logs());
    assert_eq!(got[0].headers.get("kn-namespace").unwrap(), "shop");
    assert!(
        mesh.logs()
            .contains(&format!("subscriber=http://{}/hooks/events", sub.addr)),
        "{}",
        mesh.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_manifests_fail_start_up_with_a_useful_message() {
    let bad = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: orders\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:1\n  filter:\n    attributes: [type, order]\n";
    let err = Cemesh::builder()
        .manifest("triggers.yaml", bad)
        .start_expect_failure();
    assert!(err.contains("triggers.yaml: document 2 (Trigger default/orders), line 15: spec.filter.attributes: invalid type: sequence, expected a map"), "{err}");

    let syntax = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: [oops\n";
    let err = Cemesh::builder()
        .manifest("broken.yml", syntax)
        .start_expect_failure();
    assert!(err.contains("broken.yml: document 1"), "{err}");
    assert!(err.contains("invalid YAML"), "{err}");

    let unknown_field = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscribr:\n    uri: http://x\n";
    let err = Cemesh::builder()
        .manifest("t.yaml", unknown_field)
        .start_expect_failure();
    assert!(err.contains("unknown field `subscribr`"), "{err}");
    assert!(err.contains("line 7"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_trigger_is_reported_while_the_others_run() {
    let good = Subscriber::start().await;
    let unknown_kind = "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: p\n".to_owned();
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        unknown_kind,
        trigger_yaml("bad", "default", &good.url(), &[("Type", "x")]),
        trigger_yaml("good", "default", &good.url(), &[]),
    ]));
    let logs = mesh.logs();
    assert!(logs.contains("(Trigger default/bad): spec.filter.attributes.Type: attribute name \\\"Type\\\" must match ^[a-z][a-z0-9]*$")
        || logs.contains("(Trigger default/bad): spec.filter.attributes.Type: attribute name \"Type\" must match ^[a-z][a-z0-9]*$"), "{logs}");
    assert!(
        logs.contains(
            "(CronJob default/p), line 7: kind: kind CronJob (batch/v1) is not run by cemesh"
        ),
        "{logs}"
    );
    assert_eq!(
        post_binary(
            &client(),
            &mesh.broker_url("default", "default"),
            &Event::new("1", "/s", "t")
        )
        .await
        .status(),
        202
    );
    assert_eq!(good.wait_for(1, WAIT).await.len(), 1);
    let ready: serde_json::Value = client()
        .get(mesh.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["triggers"], serde_json::json!(["default/good"]));
    let problems: Vec<&str> = ready["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("Trigger default/bad")),
        "{ready}"
    );
    assert!(
        problems.iter().any(|p| p.contains("CronJob default/p")),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_concurrent_events_are_delivered_exactly_once() {
    const N: usize = 10_000;
    const PRODUCERS: usize = 64;
    let (mesh, sub) = one_trigger(&[]).await;
    let url = mesh.broker_url("default", "default");
    let c = client();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for i in (p..N).step_by(PRODUCERS) {
                let mut e = Event::new(format!("e{i}"), "/load", "com.example.load");
                e.data = Some(Bytes::from(format!("{{\"i\":{i}}}")));
                e.datacontenttype = Some("application/json".into());
                let status = post_binary(&c, &url, &e).await.status();
                assert_eq!(status, 202, "event {i}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = sub.wait_for(N, Duration::from_secs(120)).await;
    let got = {
        let extra = sub.settle(Duration::from_millis(500)).await;
        if extra.len() > got.len() {
            extra
        } else {
            got
        }
    };
    let ids: HashSet<String> = got
        .iter()
        .map(|r| r.event.as_ref().unwrap().id.clone())
        .collect();
    println!(
        "delivered {} requests, {} distinct events",
        got.len(),
        ids.len()
    );
    assert_eq!(ids.len(), N, "every event delivered");
    assert_eq!(got.len(), N, "no duplicates");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_display_subcommands_work_together() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut display = std::process::Command::new(cemesh_bin())
        .args(["display", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml(
            "display",
            "default",
            &format!("http://127.0.0.1:{port}"),
            &[],
        ),
    ]));
    // Wait for the display to listen.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = std::process::Command::new(cemesh_bin())
        .args([
            "send",
            "--to",
            &mesh.broker_url("default", "default"),
            "--type",
            "com.example.hello",
            "--source",
            "/cli",
            "--id",
            "cli-1",
            "--data",
            r#"{"msg":"hello"}"#,
            "--extension",
            "region=eu",
            "--mode",
            "structured",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("202"));

    let mut stdout = display.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if String::from_utf8_lossy(&buf).contains("\"msg\": \"hello\"") {
                break;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let printed = reader.join().unwrap();
    let _ = display.kill();
    let _ = display.wait();
    assert!(printed.contains("☁️  cloudevents.Event"), "{printed}");
    assert!(printed.contains("  id: cli-1"), "{printed}");
    assert!(printed.contains("  type: com.example.hello"), "{printed}");
    assert!(printed.contains("  region: eu"), "{printed}");
    assert!(printed.contains("\"msg\": \"hello\""), "{printed}");
}
