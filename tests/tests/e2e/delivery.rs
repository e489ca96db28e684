//! Delivery semantics through the binary, with real subscribers that fail on purpose:
//! retry schedules, Retry-After, timeouts, status classes, dead letters (sink and
//! built-in store with its CLI), replies, the TTL loop guard, ordering and isolation.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A Trigger with annotations (jitter is always off here) and a `spec.delivery` body
/// (YAML lines indented by four spaces).
fn trigger(
    name: &str,
    sub: &str,
    filter: &[(&str, &str)],
    annotations: &[(&str, &str)],
    delivery: &str,
) -> String {
    let mut s = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/backoff-jitter: \"false\"\n"
    );
    for (k, v) in annotations {
        s.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    s.push_str(&format!(
        "spec:\n  broker: default\n  subscriber:\n    uri: {sub}\n"
    ));
    if !filter.is_empty() {
        s.push_str("  filter:\n    attributes:\n");
        for (k, v) in filter {
            s.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    if !delivery.is_empty() {
        s.push_str("  delivery:\n");
        s.push_str(delivery);
    }
    s
}

fn event(id: &str, ty: &str) -> Event {
    let mut e = Event::new(id, "/delivery-test", ty);
    e.subject = Some("subject-1".into());
    e.datacontenttype = Some("application/json".into());
    e.data = Some(bytes::Bytes::from_static(br#"{"n":1}"#));
    e.set_extension("region", AttributeValue::String("eu".into()));
    e
}

async fn send(mesh: &Cemesh, e: &Event) {
    send_to(&client(), &mesh.broker_url("default", "default"), e).await;
}

/// Posts `e` to a broker's ingress and asserts 202, naming the event and the body.
async fn send_to(c: &reqwest::Client, url: &str, e: &Event) {
    let resp = post_binary(c, url, e).await;
    let status = resp.status();
    assert_eq!(status, 202, "{}: {:?}", e.id, resp.text().await);
}

/// An event of the backpressure tests, with `kib` KiB of data.
fn flow_event(id: String, kib: usize) -> Event {
    let mut e = Event::new(id, "/flow", "t");
    e.data = Some(bytes::Bytes::from(vec![b'x'; kib << 10]));
    e
}

/// Gaps between consecutive requests, in milliseconds.
fn gaps(received: &[Received]) -> Vec<u128> {
    received
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_millis())
        .collect()
}

/// Each gap is never early, and late by less than half the step between the two
/// policies' schedules, so linear and exponential cannot pass for each other.
fn assert_gaps(got: &[u128], want: &[u128]) {
    assert_eq!(
        got.len(),
        want.len(),
        "gaps {got:?}, expected about {want:?}"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(
            *g + 15 >= *w && *g <= *w + 250,
            "gaps {got:?}, expected about {want:?} (-15/+250 ms)"
        );
    }
}

fn cli(mesh: &Cemesh, args: &[&str]) -> (bool, String) {
    let out = Command::new(cemesh_bin())
        .arg("deadletters")
        .args(["--admin", &mesh.admin_url("")])
        .args(args)
        .output()
        .expect("run cemesh deadletters");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

async fn dead_letters(mesh: &Cemesh, trigger: &str) -> serde_json::Value {
    client()
        .get(mesh.admin_url(&format!(
            "/v1/namespaces/default/triggers/{trigger}/deadletters"
        )))
        .send()
        .await
        .expect("GET deadletters")
        .json()
        .await
        .expect("JSON")
}

async fn wait_dead_letters(mesh: &Cemesh, trigger: &str, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = dead_letters(mesh, trigger).await;
        if page["total"].as_u64() == Some(n) {
            return page;
        }
        if Instant::now() > deadline {
            panic!(
                "{trigger} has {} dead letters, expected {n}: {page}",
                page["total"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_schedules_follow_the_policy() {
    let lin = Subscriber::start().await;
    let exp = Subscriber::start().await;
    lin.set_status(500);
    exp.set_status(503);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "linear",
            &lin.url(),
            &[],
            &[],
            "    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT0.3S\n",
        ),
        trigger(
            "exponential",
            &exp.url(),
            &[],
            &[],
            "    retry: 4\n    backoffPolicy: exponential\n    backoffDelay: PT0.1S\n",
        ),
    ]));
    send(&mesh, &event("e1", "t")).await;
    // Linear: 300, 600, 900 (exponential would wait 1200 the third time).
    let got = lin.wait_for(4, WAIT).await;
    assert_gaps(&gaps(&got), &[300, 600, 900]);
    let got = exp.wait_for(5, WAIT).await;
    assert_gaps(&gaps(&got), &[100, 200, 400, 800]);
    // retry N means N+1 attempts, no more.
    assert_eq!(lin.settle(Duration::from_millis(800)).await.len(), 4);
    assert_eq!(exp.count(), 5);
    wait_dead_letters(&mesh, "linear", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_max_caps_each_wait() {
    let sub = Subscriber::start().await;
    sub.set_status(500);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "t",
            &sub.url(),
            &[],
            &[("cemesh.dev/backoff-max", "250ms")],
            "    retry: 3\n    backoffDelay: PT0.1S\n",
        ),
    ]));
    send(&mesh, &event("e1", "t")).await;
    let got = sub.wait_for(4, WAIT).await;
    assert_gaps(&gaps(&got), &[100, 200, 250]);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_and_capped() {
    let honoured = Subscriber::start().await;
    honoured.set_status(429);
    honoured.set_response(&[("retry-after", "1")], b"");
    let capped = Subscriber::start().await;
    capped.set_status(503);
    capped.set_response(&[("retry-after", "30")], b"");
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "honoured",
            &honoured.url(),
            &[],
            &[],
            "    retry: 1\n    backoffDelay: PT0.05S\n    retryAfterMax: PT5S\n",
        ),
        trigger(
            "capped",
            &capped.url(),
            &[],
            &[],
            "    retry: 1\n    backoffDelay: PT0.05S\n    retryAfterMax: PT0.4S\n",
        ),
    ]));
    send(&mesh, &event("e1", "t")).await;
    assert_gaps(&gaps(&honoured.wait_for(2, WAIT).await), &[1000]);
    assert_gaps(&gaps(&capped.wait_for(2, WAIT).await), &[400]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_attempt_times_out_and_is_retried() {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_secs(3), Duration::ZERO);
    let dls = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "t",
            &sub.url(),
            &[],
            &[],
            &format!("    retry: 1\n    backoffDelay: PT0.05S\n    timeout: PT0.3S\n    deadLetterSink:\n      uri: {}\n", dls.url()),
        ),
    ]));
    let started = Instant::now();
    send(&mesh, &event("slow", "t")).await;
    let got = dls.wait_for(1, WAIT).await;
    let elapsed = started.elapsed();
    assert_eq!(sub.count(), 2, "one attempt and one retry");
    assert!(
        elapsed < Duration::from_secs(2),
        "timeouts not applied: {elapsed:?}"
    );
    let dead = got[0].event.clone().expect("a CloudEvent");
    assert_eq!(dead.id, "slow");
    assert!(
        dead.extension("knativeerrorcode").is_none(),
        "no response, no code"
    );
    assert!(dead.extension("knativeerrordest").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_status_class_is_retried_or_final() {
    let cases: [(u16, usize); 12] = [
        (301, 1),
        (400, 1),
        (401, 1),
        (403, 1),
        (404, 3),
        (408, 3),
        (409, 3),
        (413, 1),
        (422, 1),
        (429, 3),
        (500, 3),
        (503, 3),
    ];
    let mut subs = Vec::new();
    let mut manifests = vec![broker_yaml("default")];
    for (status, _) in cases {
        let sub = Subscriber::start().await;
        sub.set_status(status);
        manifests.push(trigger(
            &format!("s{status}"),
            &sub.url(),
            &[],
            &[],
            "    retry: 2\n    backoffDelay: PT0.02S\n",
        ));
        subs.push(sub);
    }
    let ok = Subscriber::start().await;
    ok.set_status(200);
    manifests.push(trigger("ok", &ok.url(), &[], &[], "    retry: 2\n"));
    let mesh = Cemesh::start(&docs(&manifests));
    send(&mesh, &event("e1", "t")).await;
    ok.wait_for(1, WAIT).await;
    for ((_, attempts), sub) in cases.iter().zip(&subs) {
        sub.wait_for(*attempts, WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for ((status, attempts), sub) in cases.iter().zip(&subs) {
        assert_eq!(sub.count(), *attempts, "status {status}");
        wait_dead_letters(&mesh, &format!("s{status}"), 1).await;
    }
    assert_eq!(ok.count(), 1);
    assert_eq!(dead_letters(&mesh, "ok").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_sink_gets_the_original_with_error_extensions() {
    let sub = Subscriber::start().await;
    sub.set_status(500);
    let body: Vec<u8> = (0..2048u32).map(|i| b'a' + (i % 26) as u8).collect();
    sub.set_response(&[("content-type", "text/plain")], &body);
    let dls = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "t",
            &sub.url(),
            &[],
            &[],
            &format!(
                "    retry: 1\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      uri: {}\n",
                dls.url()
            ),
        ),
    ]));
    let original = event("dead-1", "com.example.fails");
    send(&mesh, &original).await;
    let got = dls.wait_for(1, WAIT).await;
    let dead = got[0].event.clone().expect("a CloudEvent");
    assert_eq!(dead.id, original.id);
    assert_eq!(dead.source, original.source);
    assert_eq!(dead.ty, original.ty);
    assert_eq!(dead.subject, original.subject);
    assert_eq!(dead.data, original.data);
    assert_eq!(dead.extension("region"), original.extension("region"));
    assert_eq!(
        dead.extension("knativeerrordest"),
        Some(&AttributeValue::String(sub.url()))
    );
    assert_eq!(
        dead.extension("knativeerrorcode"),
        Some(&AttributeValue::String("500".into()))
    );
    let Some(AttributeValue::String(data)) = dead.extension("knativeerrordata") else {
        panic!("no knativeerrordata: {dead:?}");
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    assert_eq!(
        decoded,
        body[..1024],
        "the first KiB of the 2 KiB error body"
    );
    assert!(dead.extension("knativebrokerttl").is_none());
    // The broker survived the 2 KiB body and keeps delivering.
    sub.set_status(200);
    send(&mesh, &event("after", "t")).await;
    assert!(sub
        .wait_for(3, WAIT)
        .await
        .iter()
        .any(|r| r.event.as_ref().is_some_and(|e| e.id == "after")));
    assert_eq!(
        dls.settle(Duration::from_millis(300)).await.len(),
        1,
        "exactly one DLS delivery"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn builtin_store_keeps_what_the_sink_refuses_and_the_cli_redrives_it() {
    let sub = Subscriber::start().await;
    sub.set_status(500);
    let dls = Subscriber::start().await;
    dls.set_status(500);
    let other = Subscriber::start().await;
    other.set_status(422);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "t",
            &sub.url(),
            &[],
            &[],
            &format!(
                "    retry: 1\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      uri: {}\n",
                dls.url()
            ),
        ),
        trigger("nosink", &other.url(), &[], &[], "    retry: 1\n"),
    ]));
    for i in 0..3 {
        send(&mesh, &event(&format!("e{i}"), "t")).await;
    }
    let page = wait_dead_letters(&mesh, "t", 3).await;
    assert_eq!(page["total"], 3, "{page}");
    let first = &page["items"][0];
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("dead-letter sink failed"),
        "{first}"
    );
    // Two subscriber attempts and two sink attempts, each recorded with its target.
    let attempts = first["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{first}");
    let targets: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| (a["to"].as_str().unwrap(), a["url"].as_str().unwrap()))
        .collect();
    let (s, d) = (sub.url(), dls.url());
    assert_eq!(
        targets,
        [
            ("subscriber", s.as_str()),
            ("subscriber", s.as_str()),
            ("deadLetterSink", d.as_str()),
            ("deadLetterSink", d.as_str())
        ],
        "{first}"
    );
    assert_eq!(first["event"]["knativeerrorcode"], "500");
    // No sink at all: a 422 is final, stored after one attempt.
    let page = wait_dead_letters(&mesh, "nosink", 3).await;
    assert_eq!(page["items"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(other.count(), 3);

    let (ok, out) = cli(&mesh, &["list", "t"]);
    assert!(ok, "{out}");
    for i in 0..3 {
        assert!(out.contains(&format!("e{i}")), "{out}");
    }
    assert!(out.contains("3 of 3 shown"), "{out}");
    let id = first["id"].as_u64().unwrap();
    let (ok, out) = cli(&mesh, &["show", "t", &id.to_string()]);
    assert!(ok && out.contains("\"attempts\""), "{out}");
    let (ok, out) = cli(&mesh, &["show", "t", "999999"]);
    assert!(!ok && out.contains("no dead letter 999999"), "{out}");
    let (ok, out) = cli(&mesh, &["list", "nope"]);
    assert!(
        !ok && out.contains("trigger default/nope not found"),
        "{out}"
    );

    // Redriven while the subscriber still fails: each letter's outcome is printed.
    let (ok, out) = cli(&mesh, &["redrive", "t", "--id", &id.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains("OUTCOME"), "{out}");
    assert!(
        out.contains(first["event"]["id"].as_str().unwrap())
            && out.contains("failed again")
            && out.contains("stored as dead letter "),
        "{out}"
    );
    assert!(
        out.contains("0 of 1 redriven dead letter(s) delivered"),
        "{out}"
    );
    assert_eq!(wait_dead_letters(&mesh, "t", 3).await["total"], 3);

    sub.set_status(200);
    let before = sub.count();
    let (ok, out) = cli(&mesh, &["redrive", "t"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("to {}", sub.url())), "{out}");
    assert!(
        out.contains("3 of 3 redriven dead letter(s) delivered"),
        "{out}"
    );
    let got = sub.wait_for(before + 3, WAIT).await;
    let redriven: Vec<&Event> = got[before..]
        .iter()
        .filter_map(|r| r.event.as_ref())
        .collect();
    assert_eq!(redriven.len(), 3);
    for e in redriven {
        assert!(
            e.extension("knativeerrorcode").is_none(),
            "error extensions stripped: {e:?}"
        );
    }
    assert_eq!(wait_dead_letters(&mesh, "t", 0).await["total"], 0);

    let (ok, out) = cli(&mesh, &["purge", "nosink"]);
    assert!(ok && out.contains("deleted 3"), "{out}");
    assert_eq!(dead_letters(&mesh, "nosink").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_delivery_merges_with_the_broker_field_by_field() {
    let sub = Subscriber::start().await;
    sub.set_status(500);
    let broker_dls = Subscriber::start().await;
    let broker = format!(
        "{}spec:\n  delivery:\n    retry: 5\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      uri: {}\n",
        broker_yaml("default"),
        broker_dls.url()
    );
    let mesh = Cemesh::start(&docs(&[
        broker,
        // Sets only retry: keeps the broker's sink and backoff.
        trigger("t", &sub.url(), &[], &[], "    retry: 1\n"),
    ]));
    send(&mesh, &event("m1", "t")).await;
    let got = broker_dls.wait_for(1, WAIT).await;
    assert_eq!(got[0].event.as_ref().unwrap().id, "m1");
    assert_eq!(
        sub.count(),
        2,
        "the trigger's retry: 1 wins over the broker's 5"
    );
}

/// `broker` with trigger `first` (requests, to `first`, which replies) and trigger
/// `second` (the replies, to `second`).
fn replying_mesh(broker: String, first: &Subscriber, second: &Subscriber) -> Cemesh {
    Cemesh::start(&docs(&[
        broker,
        trigger(
            "first",
            &first.url(),
            &[("type", "com.example.request")],
            &[],
            "",
        ),
        trigger(
            "second",
            &second.url(),
            &[("type", "com.example.reply")],
            &[],
            "",
        ),
    ]))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_reaches_a_second_trigger_with_the_trace() {
    let first = Subscriber::start().await;
    first.set_status(200);
    let mut reply = Event::new("reply-1", "/replier", "com.example.reply");
    reply.data = Some(bytes::Bytes::from(vec![b'r'; 36_000]));
    reply.datacontenttype = Some("text/plain".into());
    first.set_reply(Some(reply));
    let second = Subscriber::start().await;
    let mesh = replying_mesh(broker_yaml("default"), &first, &second);
    let mut req = event("req-1", "com.example.request");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    req.set_extension("traceparent", AttributeValue::String(tp.into()));
    send(&mesh, &req).await;
    let got = second.wait_for(1, WAIT).await;
    let r = got[0].event.as_ref().unwrap();
    assert_eq!(r.id, "reply-1");
    assert_eq!(
        r.data.as_ref().map(|d| d.len()),
        Some(36_000),
        "long replies intact"
    );
    assert!(r.extension("knativearrivaltime").is_some());
    assert_eq!(
        got[0]
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
        Some(tp),
        "the producer's trace continues into the reply"
    );
    assert_eq!(second.settle(Duration::from_millis(300)).await.len(), 1);
    // A 2xx without an event is plain success.
    assert_eq!(dead_letters(&mesh, "first").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_matching_echo_stops_after_255_hops() {
    let echo = Subscriber::start().await;
    echo.set_status(200);
    echo.set_echo(true);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger("echo", &echo.url(), &[], &[], ""),
    ]));
    send(&mesh, &event("loop", "com.example.echo")).await;
    let page = wait_dead_letters(&mesh, "echo", 1).await;
    let got = echo.settle(Duration::from_millis(500)).await;
    assert_eq!(got.len(), 255, "1 original + 254 replies");
    assert!(
        page["items"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("knativebrokerttl exhausted"),
        "{page}"
    );
    for r in &got {
        assert!(
            !r.headers.contains_key("ce-knativebrokerttl"),
            "subscribers never see the TTL"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_mode_keeps_per_key_order_under_load() {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::ZERO, Duration::from_millis(4));
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "ordered",
            &sub.url(),
            &[],
            &[
                ("cemesh.dev/delivery-order", "ordered"),
                ("cemesh.dev/parallelism", "16"),
            ],
            "",
        ),
    ]));
    let c = client();
    let url = mesh.broker_url("default", "default");
    let keys = 8;
    let per_key = 40;
    // Sent in one batch per round so the channel order is known.
    for n in 0..per_key {
        let batch: Vec<Event> = (0..keys)
            .map(|k| {
                let mut e = Event::new(format!("k{k}-{n}"), "/ordered", "t");
                e.set_extension("partitionkey", AttributeValue::String(format!("k{k}")));
                e
            })
            .collect();
        let resp = c
            .post(&url)
            .header("content-type", cemesh_proto::http::BATCH_JSON)
            .body(cemesh_proto::json::encode_batch(&batch))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let got = sub.wait_for(keys * per_key, WAIT).await;
    assert_eq!(got.len(), keys * per_key);
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for r in &got {
        let id = &r.event.as_ref().unwrap().id;
        let (k, n) = id.split_once('-').unwrap();
        seen.entry(k.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    for (k, ns) in &seen {
        assert_eq!(
            *ns,
            (0..per_key).collect::<Vec<_>>(),
            "key {k} out of order"
        );
    }
    // Measured while the subscriber answers (not at arrival): one key never has two
    // deliveries in flight, while different keys do proceed in parallel.
    assert!(
        !sub.same_key_overlapped(),
        "two events of one key were in flight at once"
    );
    assert!(
        sub.max_in_flight() > 1,
        "keys were delivered one at a time, not in parallel"
    );
}

/// A trigger that leaves `cemesh.dev/parallelism` unset has 64 delivery slots of its
/// own and, while they are all busy, borrows up to 64 more that the process's such
/// triggers share; one that sets it keeps to exactly that many.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_without_a_parallelism_borrows_shared_slots_one_with_keeps_to_it() {
    let default = Subscriber::start().await;
    default.set_delay(Duration::from_millis(700), Duration::ZERO);
    let chosen = Subscriber::start().await;
    chosen.set_delay(Duration::from_millis(700), Duration::ZERO);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger("default-slots", &default.url(), &[], &[], ""),
        trigger(
            "chosen",
            &chosen.url(),
            &[],
            &[("cemesh.dev/parallelism", "64")],
            "",
        ),
    ]));
    let c = client();
    let url = mesh.broker_url("default", "default");
    for i in 0..200 {
        send_to(&c, &url, &flow_event(format!("slots-{i}"), 0)).await;
    }
    default.wait_for(200, Duration::from_secs(30)).await;
    chosen.wait_for(200, Duration::from_secs(30)).await;
    assert_eq!(
        default.max_in_flight(),
        128,
        "64 of its own and 64 borrowed"
    );
    assert_eq!(chosen.max_in_flight(), 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_subscriber_does_not_slow_another_trigger() {
    let hanging = Subscriber::start().await;
    hanging.set_delay(Duration::from_secs(60), Duration::ZERO);
    let fast = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "hanging",
            &hanging.url(),
            &[],
            &[("cemesh.dev/parallelism", "4")],
            "",
        ),
        trigger("fast", &fast.url(), &[], &[], ""),
    ]));
    let started = Instant::now();
    for i in 0..100 {
        send(&mesh, &event(&format!("h{i}"), "t")).await;
    }
    let got = fast.wait_for(100, WAIT).await;
    assert_eq!(got.len(), 100);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the fast trigger waited for the hanging one: {:?}",
        started.elapsed()
    );
    assert!(
        hanging.count() <= 4,
        "parallelism bounds the hanging trigger's requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rate_spaces_deliveries() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "slow",
            &sub.url(),
            &[],
            &[("cemesh.dev/max-rate", "20")],
            "",
        ),
    ]));
    for i in 0..10 {
        send(&mesh, &event(&format!("r{i}"), "t")).await;
    }
    let got = sub.wait_for(10, WAIT).await;
    // Paced, not bursts: no two back to back (arrivals jitter by a few ms, so half
    // the interval), and the whole run at the rate.
    let gaps = gaps(&got);
    for (i, g) in gaps.iter().enumerate() {
        assert!(
            *g >= 25,
            "events {i} and {} were {g} ms apart at 20/s",
            i + 1
        );
    }
    let span: u128 = gaps.iter().sum();
    assert!(span + 30 >= 9 * 50, "10 events at 20/s took only {span} ms");
}

/// Events that waited for a delivery slot (the subscriber was slow) are still paced
/// when they go, not fired back to back.
#[tokio::test(flavor = "multi_thread")]
async fn max_rate_paces_events_that_waited_for_a_slot() {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_millis(1200), Duration::ZERO);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "paced",
            &sub.url(),
            &[],
            &[
                ("cemesh.dev/max-rate", "10"),
                ("cemesh.dev/parallelism", "1"),
            ],
            "",
        ),
    ]));
    send(&mesh, &event("slow", "t")).await;
    sub.wait_for(1, WAIT).await;
    sub.set_delay(Duration::ZERO, Duration::ZERO);
    for i in 0..6 {
        send(&mesh, &event(&format!("p{i}"), "t")).await;
    }
    let got = sub.wait_for(7, WAIT).await;
    assert_eq!(got.len(), 7);
    for (i, g) in gaps(&got[1..]).iter().enumerate() {
        assert!(
            *g >= 50,
            "events p{i} and p{} were {g} ms apart at 10/s",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_start_grace_keeps_the_retry_budget_while_a_subscriber_wakes() {
    let cold = Subscriber::start().await;
    cold.set_status(503);
    let plain = Subscriber::start().await;
    plain.set_status(503);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "graced",
            &cold.url(),
            &[],
            &[("cemesh.dev/cold-start-grace", "10s")],
            "    retry: 1\n    backoffDelay: PT0.1S\n",
        ),
        trigger(
            "plain",
            &plain.url(),
            &[],
            &[],
            "    retry: 1\n    backoffDelay: PT0.1S\n",
        ),
    ]));
    send(&mesh, &event("wake", "t")).await;
    // Plenty of 503s while "starting": more than retry + 1.
    cold.wait_for(5, WAIT).await;
    cold.set_status(200);
    let deadline = Instant::now() + WAIT;
    while !cold.received().iter().any(|r| r.status_sent == 200) {
        assert!(
            Instant::now() < deadline,
            "never delivered after the subscriber woke"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dead_letters(&mesh, "graced").await["total"], 0);
    // Without the grace, the same failures use up the budget.
    wait_dead_letters(&mesh, "plain", 1).await;
    assert_eq!(plain.count(), 2);
}

/// Ingress backpressure that follows delivery (issue 20), with no hold
/// (`cemesh.dev/backpressure-hold: 0s`): a producer sending faster than the trigger
/// delivers gets 429 with `Retry-After` and a body naming the broker's window once
/// the delivering trigger is that far behind; every accepted event is delivered, and
/// once the subscriber catches up the ingress takes events again. The window is per
/// broker (`cemesh.dev/backpressure-window`, on memory and sled alike).
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_faster_than_delivery_is_held_back_with_429_and_loses_nothing() {
    for channel in ["memory", "sled"] {
        let sub = Subscriber::start().await;
        sub.set_delay(Duration::from_millis(20), Duration::ZERO);
        let broker = format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    cemesh.dev/channel: {channel}\n    cemesh.dev/backpressure-window: 32KiB\n    cemesh.dev/backpressure-hold: 0s\n"
        );
        let trigger = trigger_yaml("slow", "default", &sub.url(), &[]).replace(
            "metadata:\n  name: slow\n",
            "metadata:\n  name: slow\n  annotations:\n    cemesh.dev/parallelism: \"2\"\n",
        );
        let mesh = Cemesh::builder()
            .manifest("mesh.yaml", &docs(&[broker, trigger]))
            .start();
        let c = client();
        let url = mesh.broker_url("default", "default");
        let mut accepted = Vec::new();
        let mut refusal = None;
        for i in 0..500 {
            let e = flow_event(format!("{channel}-{i}"), 1);
            let r = post_binary(&c, &url, &e).await;
            match r.status().as_u16() {
                202 => accepted.push(e.id.clone()),
                429 => {
                    refusal = Some(r);
                    break;
                }
                other => panic!("{channel}: {other} {}", r.text().await.unwrap()),
            }
        }
        let refusal = refusal.unwrap_or_else(|| panic!("{channel}: 500 events never held back"));
        assert!(
            accepted.len() >= 16 && accepted.len() < 200,
            "{channel}: held back after {} events",
            accepted.len()
        );
        assert!(refusal.headers().get("retry-after").is_some());
        let body = refusal.text().await.unwrap();
        assert!(body.contains("backpressure window"), "{channel}: {body}");
        // Everything accepted arrives; then the ingress takes events again.
        let got = sub.wait_for(accepted.len(), Duration::from_secs(60)).await;
        let ids: std::collections::HashSet<String> = got
            .iter()
            .filter_map(|r| r.event.as_ref().map(|e| e.id.clone()))
            .collect();
        for id in &accepted {
            assert!(
                ids.contains(id),
                "{channel}: {id} accepted, never delivered"
            );
        }
        let again = post_binary(
            &c,
            &url,
            &Event::new(format!("{channel}-again"), "/flow", "t"),
        )
        .await;
        assert_eq!(again.status(), 202, "{channel}");
    }
}

/// With the default hold (1 s), producers faster than delivery are paced, not
/// refused: past the window each request waits for the acks that make room, so
/// every one is answered 202 and the backlog stays about the window (when the last
/// is accepted, nearly all the others are delivered). A request held past its
/// broker's hold (`cemesh.dev/backpressure-hold`) is answered 429 naming the window
/// and the hold. `cemesh_broker_ingress_backpressure_held_seconds` counts both.
#[tokio::test(flavor = "multi_thread")]
async fn producers_faster_than_delivery_are_paced_within_the_hold() {
    for channel in ["memory", "sled"] {
        let slow = Subscriber::start().await;
        slow.set_delay(Duration::from_millis(10), Duration::ZERO);
        let stuck = Subscriber::start().await;
        stuck.set_delay(Duration::from_secs(1), Duration::ZERO);
        let broker = |name: &str, hold: &str| {
            format!(
                "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/channel: {channel}\n    cemesh.dev/backpressure-window: 16KiB\n{hold}"
            )
        };
        let trigger = |name: &str, broker: &str, url: &str, parallelism: u32| {
            trigger_yaml(name, broker, url, &[]).replace(
                &format!("metadata:\n  name: {name}\n"),
                &format!("metadata:\n  name: {name}\n  annotations:\n    cemesh.dev/parallelism: \"{parallelism}\"\n"),
            )
        };
        let mesh = Cemesh::builder()
            .manifest(
                "mesh.yaml",
                &docs(&[
                    broker("paced", ""),
                    trigger("slow", "paced", &slow.url(), 2),
                    broker("short", "    cemesh.dev/backpressure-hold: 300ms\n"),
                    trigger("stuck", "short", &stuck.url(), 1),
                ]),
            )
            .start();

        // Eight producers, 30 events each, against ~200 deliveries a second.
        let url = mesh.broker_url("default", "paced");
        let producers: Vec<_> = (0..8)
            .map(|p| {
                let (c, url) = (client(), url.clone());
                tokio::spawn(async move {
                    for i in 0..30 {
                        send_to(&c, &url, &flow_event(format!("{p}-{i}"), 1)).await;
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        let delivered = slow.count();
        assert!(
            delivered >= 240 - 60,
            "{channel}: 240 accepted but only {delivered} delivered: not paced"
        );
        slow.wait_for(240, Duration::from_secs(60)).await;

        // Held for 300 ms, then refused.
        let c = client();
        let url = mesh.broker_url("default", "short");
        let refusal = loop {
            let e = flow_event(format!("{channel}-short"), 1);
            let started = std::time::Instant::now();
            let r = post_binary(&c, &url, &e).await;
            match r.status().as_u16() {
                202 => continue,
                429 => break (r, started.elapsed()),
                other => panic!("{channel}: {other} {}", r.text().await.unwrap()),
            }
        };
        assert!(
            refusal.1 >= Duration::from_millis(300),
            "{channel}: refused after {:?}, before the hold",
            refusal.1
        );
        assert!(refusal.0.headers().get("retry-after").is_some());
        let body = refusal.0.text().await.unwrap();
        assert!(
            body.contains("backpressure window") && body.contains("held 300 ms"),
            "{channel}: {body}"
        );
        // Both show in the held-time histogram, by result.
        let text = mesh.metrics_text().await;
        let held = |broker: &str, result: &str| {
            metric_sum(
                &text,
                "cemesh_broker_ingress_backpressure_held_seconds_count",
                &[
                    &format!("broker_name=\"{broker}\""),
                    &format!("result=\"{result}\""),
                ],
            )
        };
        assert!(held("paced", "let_in") >= 1.0, "{channel}: {text}");
        assert_eq!(held("paced", "refused"), 0.0, "{channel}");
        assert!(held("short", "refused") >= 1.0, "{channel}: {text}");
    }
}

/// The backpressure window counts what waits for delivery, not what is in flight
/// (memory and sled, a 16 KiB window): one event retrying at the head of the log
/// (30 s backoff) does not hold the ingress (hold `0s`: a held producer would see
/// 429) while the 100 KiB behind it are delivered; and a trigger delivering 8 KiB
/// events to a slow subscriber keeps all 8 of its slots busy, 64 KiB in flight, four
/// times the window (its producer paced by the reads, within a 5 s hold).
#[tokio::test(flavor = "multi_thread")]
async fn the_backpressure_window_counts_waiting_events_not_deliveries_in_flight() {
    for channel in ["memory", "sled"] {
        let flaky = Subscriber::start().await;
        flaky.set_status(500);
        let slow = Subscriber::start().await;
        slow.set_delay(Duration::from_millis(300), Duration::ZERO);
        let broker = |name: &str, hold: &str| {
            format!(
                "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/channel: {channel}\n    cemesh.dev/backpressure-window: 16KiB\n    cemesh.dev/backpressure-hold: {hold}\n"
            )
        };
        let on = |trigger: String, broker: &str| {
            trigger.replace("  broker: default\n", &format!("  broker: {broker}\n"))
        };
        let mesh = Cemesh::builder()
            .manifest(
                "mesh.yaml",
                &docs(&[
                    broker("retrying", "0s"),
                    on(
                        trigger(
                            "flaky",
                            &flaky.url(),
                            &[],
                            &[],
                            "    retry: 3\n    backoffDelay: PT30S\n",
                        ),
                        "retrying",
                    ),
                    broker("wide", "5s"),
                    on(
                        trigger(
                            "slow",
                            &slow.url(),
                            &[],
                            &[("cemesh.dev/parallelism", "8")],
                            "",
                        ),
                        "wide",
                    ),
                ]),
            )
            .start();
        let c = client();

        // The head fails once and waits 30 s for its retry; the rest succeed.
        let url = mesh.broker_url("default", "retrying");
        send_to(&c, &url, &flow_event(format!("{channel}-head"), 1)).await;
        flaky.wait_for(1, WAIT).await;
        flaky.set_status(202);
        for i in 0..100 {
            // A 429 here names the event: it was held behind the retrying head.
            send_to(&c, &url, &flow_event(format!("{channel}-{i}"), 1)).await;
            flaky.wait_for(i + 2, WAIT).await;
        }

        // 24 events of 8 KiB, one producer: 8 in flight.
        let url = mesh.broker_url("default", "wide");
        for i in 0..24 {
            send_to(&c, &url, &flow_event(format!("{channel}-wide-{i}"), 8)).await;
        }
        slow.wait_for(24, Duration::from_secs(30)).await;
        assert_eq!(slow.max_in_flight(), 8, "{channel}");
    }
}

/// A forward proxy that answers every request itself: it keeps each request line
/// (a proxied request names the whole target URL) and answers 200.
async fn recording_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = lines.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    kept.lock().unwrap().push(request_line.trim().to_owned());
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if stream.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, lines)
}

/// With `HTTP_PROXY` in the environment, deliveries go through that proxy (as
/// Knative's dispatcher's do); the subscriber itself is never called.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_use_the_proxy_the_environment_names() {
    let sub = Subscriber::start().await;
    let (proxy, lines) = recording_proxy().await;
    let mesh = Cemesh::builder()
        .manifest(
            "m.yaml",
            &docs(&[
                broker_yaml("default"),
                trigger("t", &sub.url(), &[], &[], ""),
            ]),
        )
        .env("HTTP_PROXY", &proxy)
        .start();
    send(&mesh, &event("via-proxy", "t")).await;
    let deadline = Instant::now() + WAIT;
    while lines.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the proxy saw nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = lines.lock().unwrap().clone();
    assert_eq!(seen, [format!("POST {} HTTP/1.1", sub.url())]);
    assert_eq!(sub.settle(Duration::from_millis(300)).await.len(), 0);
}

/// A reply longer than the broker's own body limit is not read: the event it
/// answered becomes a dead letter whose reason names the limit, and the reply never
/// enters the broker. A reply within the limit still does.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_longer_than_the_broker_s_body_limit_is_refused_not_buffered() {
    let first = Subscriber::start().await;
    let mut long = Event::new("reply-long", "/replier", "com.example.reply");
    long.data = Some(bytes::Bytes::from(vec![b'r'; 64 * 1024]));
    long.datacontenttype = Some("text/plain".into());
    first.set_reply(Some(long));
    let second = Subscriber::start().await;
    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    cemesh.dev/max-body-size: 16KiB\n".to_owned();
    let mesh = replying_mesh(broker, &first, &second);
    send(&mesh, &event("asks-long", "com.example.request")).await;
    let page = wait_dead_letters(&mesh, "first", 1).await;
    let text = page.to_string();
    assert!(text.contains("asks-long"), "{page}");
    assert!(
        text.contains("longer than the 16384-byte body limit of default/default"),
        "{page}"
    );
    assert_eq!(second.settle(Duration::from_millis(500)).await.len(), 0);

    let mut short = Event::new("reply-short", "/replier", "com.example.reply");
    short.data = Some(bytes::Bytes::from(vec![b's'; 8 * 1024]));
    short.datacontenttype = Some("text/plain".into());
    first.set_reply(Some(short));
    send(&mesh, &event("asks-short", "com.example.request")).await;
    let got = second.wait_for(1, WAIT).await;
    assert_eq!(got[0].event.as_ref().unwrap().id, "reply-short");
    assert_eq!(dead_letters(&mesh, "first").await["total"], 1);

    // A long answer that is no CloudEvent is no reply: plain success.
    first.set_reply(None);
    first.set_response(&[("content-type", "text/plain")], &vec![b'x'; 64 * 1024]);
    send(&mesh, &event("asks-nothing", "com.example.request")).await;
    let deadline = Instant::now() + WAIT;
    while !first.ids().iter().any(|id| id == "asks-nothing") {
        assert!(Instant::now() < deadline, "asks-nothing never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second.settle(Duration::from_millis(500)).await.len(), 1);
    assert_eq!(dead_letters(&mesh, "first").await["total"], 1);
}
