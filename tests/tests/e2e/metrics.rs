//! Metrics and logs a Prometheus/Grafana user can trust, scraped from the real
//! binary: every metric has `# HELP` and the right `# TYPE`, counters end in
//! `_total`, durations are histograms in seconds, no series pairs a result with a code
//! that contradicts it, a dead-lettered event is not a subscriber's success, and
//! every per-trigger series names its broker. And one WARN line per event that
//! finally failed, with numbers for humans.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cemesh_proto::Event;
use cemesh_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A trigger on broker `default` matching `type`, with a `spec.delivery` body (YAML
/// lines indented by four spaces).
fn trigger(name: &str, sub: &str, ty: &str, delivery: &str) -> String {
    format!(
        "{}  delivery:\n{delivery}",
        trigger_yaml(name, "default", sub, &[("type", ty)])
    )
}

async fn send(c: &reqwest::Client, mesh: &Cemesh, id: &str, ty: &str) {
    let resp = post_binary(
        c,
        &mesh.broker_url("default", "default"),
        &Event::new(id, "/metrics-test", ty),
    )
    .await;
    assert_eq!(resp.status(), 202, "{id}");
}

async fn scrape(c: &reqwest::Client, mesh: &Cemesh) -> String {
    let resp = c.get(mesh.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// One sample line: its metric name, labels and value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name and value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
fn sum(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    all.iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// `# TYPE` per metric name, asserting each has its `# HELP` line first.
fn types(text: &str) -> BTreeMap<String, String> {
    let mut helped = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("name and help");
            assert!(!help.trim().is_empty(), "{name} has an empty HELP");
            helped.push(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and type");
            assert!(
                helped.iter().any(|h| h == name),
                "{name} has a TYPE and no HELP:\n{text}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} has two TYPE lines"
            );
        }
    }
    types
}

/// The metric a sample line belongs to (a histogram's `_bucket`/`_sum`/`_count`
/// belong to the histogram).
fn family<'a>(types: &BTreeMap<String, String>, sample: &'a str) -> Option<&'a str> {
    if types.contains_key(sample) {
        return Some(sample);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = sample.strip_suffix(suffix)?;
        (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_help_types_units_and_consistent_labels() {
    let ok = Subscriber::start().await;
    let failing = Subscriber::start().await;
    failing.set_status(500);
    let dls = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("ok", "default", &ok.url(), &[("type", "good")]),
        trigger(
            "failing",
            &failing.url(),
            "bad",
            &format!(
                "    retry: 2\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      uri: {}\n",
                dls.url()
            ),
        ),
    ]));
    let c = client();
    let url = mesh.broker_url("default", "default");

    // An accepted event delivered, an accepted event dead-lettered, a refused one,
    // and the webhook handshake (which carries no event).
    send(&c, &mesh, "good-1", "good").await;
    send(&c, &mesh, "bad-1", "bad").await;
    let refused = c.post(&url).body("not an event").send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let handshake = c
        .request(reqwest::Method::OPTIONS, &url)
        .header("WebHook-Request-Origin", "example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status(), 200);
    ok.wait_for(1, WAIT).await;
    failing.wait_for(3, WAIT).await;
    dls.wait_for(1, WAIT).await;

    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = scrape(&c, &mesh).await;
        let all = samples(&text);
        let dead = sum(
            &all,
            "cemesh_trigger_dead_letters_total",
            &[("trigger_name", "failing")],
        );
        let delivered = sum(
            &all,
            "cemesh_trigger_delivered_events_total",
            &[("trigger_name", "ok")],
        );
        if (dead >= 1.0 && delivered >= 1.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = samples(&text);

    // Every metric has HELP, then TYPE; every sample belongs to a typed metric.
    let types = types(&text);
    for s in &all {
        assert!(
            family(&types, &s.name).is_some(),
            "{} has no TYPE:\n{text}",
            s.name
        );
    }
    // Counters end in _total (no Knative aliases are kept), and only counters do.
    for (name, kind) in &types {
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
        assert!(!name.contains("latencies"), "{name}: durations are seconds");
        assert!(
            kind == "counter" || kind == "gauge" || kind == "histogram",
            "{name} is a {kind}"
        );
    }
    assert_eq!(types["process_cpu_seconds_total"], "counter");
    assert_eq!(types["process_resident_memory_bytes"], "gauge");
    assert!(sum(&all, "process_resident_memory_bytes", &[]) > 1e6);

    // Durations: histograms in seconds, with buckets from 0.5 ms to a minute.
    for name in [
        "cemesh_trigger_dispatch_duration_seconds",
        "cemesh_broker_ingress_request_duration_seconds",
        "cemesh_channel_append_duration_seconds",
    ] {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some("histogram"),
            "{name}"
        );
        let les: Vec<&str> = all
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .filter_map(|s| s.labels.get("le").map(String::as_str))
            .collect();
        for le in ["0.0005", "0.005", "1", "60", "+Inf"] {
            assert!(les.contains(&le), "{name} has no le={le}: {les:?}");
        }
    }
    let ok_labels = [("trigger_name", "ok"), ("response_code_class", "2xx")];
    let ok_seconds = sum(
        &all,
        "cemesh_trigger_dispatch_duration_seconds_sum",
        &ok_labels,
    );
    let ok_count = sum(
        &all,
        "cemesh_trigger_dispatch_duration_seconds_count",
        &ok_labels,
    );
    assert_eq!(ok_count, 1.0, "{text}");
    // One local delivery takes milliseconds: a value in seconds is well under 5.
    assert!(ok_seconds > 0.0 && ok_seconds < 5.0, "{ok_seconds}");

    // The ingress: result agrees with the code; the handshake counts no event.
    for s in all
        .iter()
        .filter(|s| s.name == "cemesh_broker_ingress_events_total")
    {
        let code = &s.labels["response_code"];
        let result = &s.labels["result"];
        assert_eq!(
            result == "accepted",
            code.starts_with('2'),
            "result={result} with response_code={code}:\n{text}"
        );
        assert_eq!(
            s.labels["response_code_class"],
            format!("{}xx", &code[..1]),
            "{text}"
        );
    }
    let ingress = |labels: &[(&str, &str)]| sum(&all, "cemesh_broker_ingress_events_total", labels);
    assert_eq!(
        ingress(&[("result", "accepted"), ("response_code", "202")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        ingress(&[("result", "refused"), ("response_code", "400")]),
        1.0,
        "{text}"
    );
    assert_eq!(ingress(&[]), 3.0, "{text}");

    // The dead-lettered event: three 5xx attempts, no 2xx, not delivered; the
    // dead-letter sink's 2xx is not the subscriber's.
    let attempts = |trigger: &str, class: &str| {
        sum(
            &all,
            "cemesh_trigger_dispatch_attempts_total",
            &[("trigger_name", trigger), ("response_code_class", class)],
        )
    };
    assert_eq!(attempts("failing", "5xx"), 3.0, "{text}");
    assert_eq!(attempts("failing", "2xx"), 0.0, "{text}");
    assert_eq!(attempts("ok", "2xx"), 1.0, "{text}");
    assert_eq!(
        sum(
            &all,
            "cemesh_trigger_delivered_events_total",
            &[("trigger_name", "failing")]
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &all,
            "cemesh_trigger_delivered_events_total",
            &[("trigger_name", "ok")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &all,
            "cemesh_trigger_retries_total",
            &[("trigger_name", "failing")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &all,
            "cemesh_trigger_dead_letters_total",
            &[("trigger_name", "failing"), ("destination", "sink")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &all,
            "cemesh_trigger_dead_letters_total",
            &[("destination", "store")]
        ),
        0.0,
        "{text}"
    );

    // Every per-trigger series names its namespace, broker and trigger.
    let per_trigger: Vec<&Sample> = all
        .iter()
        .filter(|s| s.name.starts_with("cemesh_trigger_"))
        .collect();
    for name in [
        "cemesh_trigger_in_flight",
        "cemesh_trigger_lag",
        "cemesh_trigger_delivery_rate",
        "cemesh_trigger_oldest_waiting_age_seconds",
        "cemesh_trigger_retries_total",
        "cemesh_trigger_dead_letters_total",
        "cemesh_trigger_delivered_events_total",
    ] {
        assert!(
            per_trigger.iter().any(|s| s.name == name),
            "no {name}:\n{text}"
        );
    }
    for s in per_trigger {
        assert_eq!(
            s.labels.get("broker_name").map(String::as_str),
            Some("default"),
            "{} {:?}",
            s.name,
            s.labels
        );
        assert_eq!(
            s.labels.get("namespace_name").map(String::as_str),
            Some("default")
        );
        assert!(s.labels.contains_key("trigger_name"), "{}", s.name);
    }

    // The dead-lettered event logged one WARN line.
    let logs = mesh.logs();
    let warns: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("bad-1"))
        .collect();
    assert_eq!(warns.len(), 1, "{logs}");
    assert!(warns[0].contains("dead-letter sink"), "{}", warns[0]);
}

/// `latency_ms=` values in a log line.
fn latencies(line: &str) -> Vec<&str> {
    line.match_indices("latency_ms=")
        .map(|(i, m)| {
            let rest = &line[i + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finally_failed_event_logs_one_warn_line_and_attempts_log_at_debug() {
    let failing = Subscriber::start().await;
    failing.set_status(503);
    let delivery = "    retry: 2\n    backoffDelay: PT0.01S\n";
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                trigger("failing", &failing.url(), "bad", delivery),
                // Nothing listens on port 1: attempts end without a response.
                trigger("unreachable", "http://127.0.0.1:1/", "lost", delivery),
            ]),
        )
        .arg("--log-level")
        .arg("info,cemesh_dispatcher=debug")
        .start();
    let c = client();
    send(&c, &mesh, "doomed-1", "bad").await;
    send(&c, &mesh, "lost-1", "lost").await;
    failing.wait_for(3, WAIT).await;
    for id in ["doomed-1", "lost-1"] {
        assert!(
            mesh.wait_for_log(&format!("event.id={id} "), WAIT)
                && mesh.wait_for_log("Event stored in the dead letters", WAIT),
            "{}",
            mesh.logs()
        );
    }
    // Both final lines are in (each event logs its WARN once, after its attempts).
    let deadline = Instant::now() + WAIT;
    while mesh
        .logs()
        .matches("Event stored in the dead letters")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", mesh.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a stray late line the chance to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = mesh.logs();

    for id in ["doomed-1", "lost-1"] {
        let of_event: Vec<&str> = logs
            .lines()
            .filter(|l| {
                l.contains(&format!("event.id={id} ")) || l.ends_with(&format!("event.id={id}"))
            })
            .collect();
        let warns: Vec<&&str> = of_event.iter().filter(|l| l.contains(" WARN ")).collect();
        assert_eq!(warns.len(), 1, "{id}: one WARN line:\n{logs}");
        assert!(
            warns[0].contains("Event stored in the dead letters"),
            "{}",
            warns[0]
        );
        assert!(warns[0].contains("attempts=3"), "{}", warns[0]);
        let attempts = of_event
            .iter()
            .filter(|l| l.contains(" DEBUG ") && l.contains("Delivery attempt failed"))
            .count();
        assert_eq!(attempts, 3, "{id}: each attempt at DEBUG:\n{logs}");
    }
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains("Delivery attempt failed")),
        "{logs}"
    );
    let doomed = logs
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("doomed-1"))
        .unwrap();
    assert!(doomed.contains("status=503"), "{doomed}");
    let lost = logs
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("lost-1"))
        .unwrap();
    assert!(!lost.contains("status="), "no response, no status: {lost}");

    assert!(!logs.contains("status=None"), "{logs}");
    let values: Vec<&str> = logs.lines().flat_map(latencies).collect();
    assert!(
        values.len() >= 6,
        "latency_ms on attempts and final lines:\n{logs}"
    );
    for v in values {
        let decimals = v.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 1, "latency_ms={v} is not rounded:\n{logs}");
        assert!(v.parse::<f64>().is_ok(), "latency_ms={v}");
    }
}
