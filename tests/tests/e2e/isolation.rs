//! A down or stuck subscriber never blocks the broker (issue 18): a trigger past its
//! `cemesh.dev/max-lag` moves its oldest waiting events to its dead letters
//! (`backlog-overflow`, redrivable) while the ingress and the other triggers go on;
//! a circuit breaker holds a down subscriber's events instead of burning their
//! retries into dead letters, probes it, and resumes when it answers.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use cemesh_proto::Event;
use cemesh_tests::*;

const WAIT: Duration = Duration::from_secs(30);

fn trigger(name: &str, sub: &str, annotations: &[(&str, &str)], delivery: &str) -> String {
    let mut s = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/backoff-jitter: \"false\"\n"
    );
    for (k, v) in annotations {
        s.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    s.push_str(&format!(
        "spec:\n  broker: default\n  subscriber:\n    uri: {sub}\n"
    ));
    if !delivery.is_empty() {
        s.push_str("  delivery:\n");
        s.push_str(delivery);
    }
    s
}

fn broker(annotations: &[(&str, &str)]) -> String {
    let mut s = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    cemesh.dev/channel: sled\n".to_owned();
    for (k, v) in annotations {
        s.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    s
}

fn event(i: usize) -> Event {
    let mut e = Event::new(format!("e{i}"), "/isolation-test", "t");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(bytes::Bytes::from(format!("{{\"n\":{i}}}")));
    e
}

/// Posts events `range` from `workers` concurrent producers; returns the statuses.
async fn post_all(mesh: &Cemesh, range: std::ops::Range<usize>, workers: usize) -> Vec<u16> {
    let url = mesh.broker_url("default", "default");
    let client = client();
    let ids: Vec<usize> = range.collect();
    let chunks: Vec<Vec<usize>> = ids
        .chunks(ids.len().div_ceil(workers).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (url, client) = (url.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in chunk {
                let resp = post_binary(&client, &url, &event(i)).await;
                statuses.push(resp.status().as_u16());
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("producer"));
    }
    all
}

async fn dead_letter_page(mesh: &Cemesh, trigger: &str) -> serde_json::Value {
    mesh.admin_json(&format!(
        "/v1/namespaces/default/triggers/{trigger}/deadletters?limit=1000"
    ))
    .await
}

async fn stats(mesh: &Cemesh, trigger: &str) -> serde_json::Value {
    mesh.admin_json(&format!("/v1/namespaces/default/triggers/{trigger}"))
        .await["status"]["stats"]
        .clone()
}

fn ids_since(sub: &Subscriber, since: Instant) -> HashSet<String> {
    sub.received()
        .into_iter()
        .filter(|r| r.at >= since)
        .filter_map(|r| r.event.map(|e| e.id))
        .collect()
}

fn deadletters_cli(mesh: &Cemesh, args: &[&str]) -> (bool, String) {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_trigger_overflows_to_its_dead_letters_and_never_blocks_the_broker() {
    let stuck = Subscriber::start().await;
    stuck.set_delay(Duration::from_secs(3600), Duration::ZERO);
    let healthy = Subscriber::start().await;
    // The broker's cap (600) is below the 800 events: before per-trigger limits, the
    // stuck trigger held the broker's retention and the ingress answered 429.
    let mesh = Cemesh::start(&docs(&[
        broker(&[("cemesh.dev/max-backlog", "600")]),
        trigger(
            "a",
            &stuck.url(),
            &[
                ("cemesh.dev/max-lag", "300"),
                ("cemesh.dev/parallelism", "16"),
            ],
            "    timeout: PT2S\n",
        ),
        trigger("b", &healthy.url(), &[], ""),
    ]));

    let statuses = post_all(&mesh, 0..800, 8).await;
    let refused: Vec<_> = statuses.iter().filter(|s| **s != 202).collect();
    assert!(
        refused.is_empty(),
        "{} of 800 posts were not accepted: {:?}",
        refused.len(),
        &refused[..refused.len().min(10)]
    );
    let got = healthy.wait_for(800, WAIT).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|r| r.event.clone().map(|e| e.id))
        .collect();
    assert_eq!(ids.len(), 800, "the healthy trigger got every event");

    // A's overflow is in its dead letters with the reason; its lag is back within
    // the limit.
    let deadline = Instant::now() + WAIT;
    let (overflowed, lag) = loop {
        let s = stats(&mesh, "a").await;
        let (o, lag) = (
            s["backlogOverflow"].as_u64().unwrap_or(0),
            s["lag"].as_u64().unwrap_or(u64::MAX),
        );
        if o >= 500 && lag <= 300 {
            break (o, lag);
        }
        assert!(Instant::now() < deadline, "trigger a did not overflow: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(overflowed <= 800, "{overflowed}");
    let s = stats(&mesh, "a").await;
    assert_eq!(s["maxLag"], "300 records", "{s}");
    let page = dead_letter_page(&mesh, "a").await;
    let total = page["total"].as_u64().unwrap();
    assert!(total >= 500, "{page}");
    for item in page["items"].as_array().unwrap() {
        let reason = item["reason"].as_str().unwrap();
        assert!(reason.starts_with("backlog-overflow"), "{reason}");
    }
    // The oldest went first: e0 is a dead letter, the newest is not.
    let letter_ids: HashSet<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        letter_ids.contains("e0"),
        "the oldest event overflowed first"
    );
    assert!(
        !letter_ids.contains("e799"),
        "the newest event stays waiting"
    );
    assert!(lag <= 300);

    let metrics = mesh.metrics_text().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("cemesh_trigger_backlog_overflow_events_total")
                && l.contains("trigger_name=\"a\"")
        })
        .unwrap_or_else(|| panic!("no overflow metric in\n{metrics}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 500.0, "{line}");

    // A recovers: what still waited is delivered, and the overflow redrives to
    // completion; every event reaches A.
    let recovered = Instant::now();
    stuck.set_delay(Duration::ZERO, Duration::ZERO);
    let (ok, out) = deadletters_cli(&mesh, &["redrive", "a"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{total} of {total} redriven dead letter(s) delivered"
        )),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = ids_since(&stuck, recovered);
        if got.len() == 800 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trigger a got {} of 800 events after it recovered",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead_letter_page(&mesh, "a").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breaker_holds_a_down_subscribers_events_and_loses_none_to_dead_letters() {
    let sub = Subscriber::start().await;
    sub.set_status(503);
    // Without the breaker, retry 2 with 50 ms backoff dead-letters every event of
    // the outage within a second.
    let mesh = Cemesh::start(&docs(&[
        broker(&[]),
        trigger(
            "t",
            &sub.url(),
            &[
                ("cemesh.dev/parallelism", "8"),
                ("cemesh.dev/breaker-failures", "3"),
                ("cemesh.dev/breaker-window", "0s"),
                ("cemesh.dev/breaker-probe-delay", "200ms"),
                ("cemesh.dev/breaker-probe-max", "800ms"),
            ],
            "    retry: 2\n    backoffDelay: PT0.05S\n",
        ),
    ]));
    let outage_started = Instant::now();
    let statuses = post_all(&mesh, 0..200, 4).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");

    // Open, and the autoscaler still sees the lag.
    let deadline = Instant::now() + WAIT;
    loop {
        let scale = mesh
            .admin_json("/v1/namespaces/default/triggers/t/scale")
            .await;
        if scale["breakerOpen"] == true && scale["lag"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(scale["active"], true, "{scale}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker did not open: {scale}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = stats(&mesh, "t").await;
    assert_eq!(s["breaker"]["state"], "open", "{s}");
    let (ok, out) = {
        let out = Command::new(cemesh_bin())
            .args(["describe", "trigger", "t", "--admin", &mesh.admin_url("")])
            .output()
            .expect("run cemesh describe");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert!(
        ok && out.contains("Circuit breaker:") && out.contains("open since"),
        "{out}"
    );

    // The outage lasts 4 s in all.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(outage_started.elapsed())).await;
    let during = sub.count();
    let outage = outage_started.elapsed();
    // Attempts during the outage: the parallelism's worth in flight when it opened
    // (and the failures before), then one probe at a time, at least 100 ms apart
    // (200 ms doubling to 800 ms, halved at most by jitter).
    let probes_at_most = (outage.as_millis() / 100) as usize + 1;
    assert!(
        during <= 8 * 3 + probes_at_most,
        "{during} attempts in a {outage:?} outage; the probe schedule allows {probes_at_most} probes"
    );
    assert_eq!(dead_letter_page(&mesh, "t").await["total"], 0);

    sub.set_status(200);
    let recovered = Instant::now();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = ids_since(&sub, recovered);
        if got.len() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 200 delivered after recovery",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead_letter_page(&mesh, "t").await["total"], 0);
    let s = stats(&mesh, "t").await;
    assert_eq!(s["breaker"]["state"], "closed", "{s}");
    assert_eq!(s["deadLettered"], 0, "{s}");
    assert!(s["breaker"]["openedTotal"].as_u64().unwrap() >= 1, "{s}");
    let metrics = mesh.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cemesh_trigger_breaker_opened_total")
                && l.contains("trigger_name=\"t\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cemesh_trigger_breaker_open{")
                && l.contains("trigger_name=\"t\"")
                && l.ends_with(" 0")),
        "the gauge says closed again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_burst_of_failures_keeps_knatives_retries_with_the_default_breaker() {
    // The breaker is on by default, but opens only once failures have lasted its
    // window (10 s): a few failing events are retried and dead-lettered as in Knative.
    let sub = Subscriber::start().await;
    sub.set_status(500);
    let mesh = Cemesh::start(&docs(&[
        broker(&[]),
        trigger(
            "t",
            &sub.url(),
            &[],
            "    retry: 2\n    backoffDelay: PT0.02S\n",
        ),
    ]));
    let statuses = post_all(&mesh, 0..3, 1).await;
    assert!(statuses.iter().all(|s| *s == 202));
    let deadline = Instant::now() + WAIT;
    loop {
        let page = dead_letter_page(&mesh, "t").await;
        if page["total"] == 3 {
            let attempts = page["items"][0]["attempts"].as_array().unwrap().len();
            assert_eq!(attempts, 3, "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = stats(&mesh, "t").await;
    assert_eq!(
        s["breaker"]["state"], "closed",
        "a blip under the window: {s}"
    );
}

/// `event(i)` with an extension `name` of `bytes` bytes.
fn wide(i: usize, name: &str, bytes: usize) -> Event {
    let mut e = event(i);
    e.set_extension(
        name,
        cemesh_proto::AttributeValue::String("x".repeat(bytes)),
    );
    e
}

async fn post_json(url: &str, content_type: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = client()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// A refusal that names `attribute` and says why.
fn assert_names(status: u16, body: &serde_json::Value, attribute: &str, says: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["attribute"], attribute, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn attributes_too_large_for_binary_headers_are_refused_at_the_ingress() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[broker(&[]), trigger("t", &sub.url(), &[], "")]));
    let url = mesh.broker_url("default", "default");

    // Binary mode: a 20 KB ce- header reaches the ingress (under its 64 KiB head
    // limit) but no subscriber's server would take it back.
    let resp = post_binary(&client(), &url, &wide(0, "big", 20_000)).await;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_names(
        status,
        &body,
        "big",
        "over the 8192 bytes a header may take",
    );

    // Structured: the 100 KB extension of the issue.
    let json = cemesh_proto::json::encode_event(&wide(1, "big", 100_000));
    let (status, body) = post_json(&url, "application/cloudevents+json", json).await;
    assert_names(status, &body, "big", "header");

    // Each under the line limit, too many together: the largest is named.
    let mut e = wide(2, "a", 6_000);
    e.set_extension("b", cemesh_proto::AttributeValue::String("y".repeat(7_000)));
    e.set_extension("c", cemesh_proto::AttributeValue::String("z".repeat(5_000)));
    let json = cemesh_proto::json::encode_event(&e);
    let (status, body) = post_json(&url, "application/cloudevents+json", json).await;
    assert_names(
        status,
        &body,
        "b",
        "over the 16384 bytes they may take together",
    );

    // A batch names the event; none of it is stored.
    let batch = [event(3), event(4), wide(5, "big", 9_000)];
    let json = cemesh_proto::json::encode_batch(&batch);
    let (status, body) = post_json(&url, "application/cloudevents-batch+json", json).await;
    assert_names(status, &body, "big", "batch event at index 2");

    // Within the budget: accepted and delivered in binary mode, header intact.
    let resp = post_binary(&client(), &url, &wide(6, "fits", 7_000)).await;
    assert_eq!(resp.status(), 202);
    let got = sub.wait_for(1, WAIT).await;
    let ids: Vec<String> = got
        .iter()
        .filter_map(|r| r.event.clone().map(|e| e.id))
        .collect();
    assert_eq!(ids, ["e6"], "only the event within the budget was stored");
    assert_eq!(got[0].headers["ce-fits"].len(), 7_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn structured_triggers_take_large_attributes_and_the_budget_is_configurable() {
    let json_sub = Subscriber::start().await;
    let binary_sub = Subscriber::start().await;
    let mut binary = trigger("bin", &binary_sub.url(), &[], "");
    binary.push_str("  filter:\n    attributes:\n      type: small\n");
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker(&[]),
                trigger("json", &json_sub.url(), &[], "    format: json\n"),
                binary,
            ]),
        )
        .arg("--max-header-line-bytes")
        .arg("32KiB")
        .arg("--max-header-bytes-total")
        .arg("40KiB")
        .start();
    let url = mesh.broker_url("default", "default");

    // Only a structured trigger matches: a 100 KB attribute is deliverable.
    let json = cemesh_proto::json::encode_event(&wide(0, "big", 100_000));
    let (status, body) = post_json(&url, "application/cloudevents+json", json).await;
    assert_eq!(status, 202, "{body}");
    let got = json_sub.wait_for(1, WAIT).await;
    let e = got[0].event.clone().expect("a structured event");
    assert_eq!(e.id, "e0");
    assert_eq!(
        e.extension("big").map(|v| v.to_canonical().len()),
        Some(100_000)
    );

    // A binary trigger matches too: past the configured 32 KiB, refused.
    let mut e = wide(1, "big", 40_000);
    e.ty = "small".into();
    let json = cemesh_proto::json::encode_event(&e);
    let (status, body) = post_json(&url, "application/cloudevents+json", json).await;
    assert_names(
        status,
        &body,
        "big",
        "over the 32768 bytes a header may take",
    );

    // Under the raised limit (over the default 8 KiB): accepted, and the binary
    // subscriber gets it as a header.
    let mut e = wide(2, "big", 20_000);
    e.ty = "small".into();
    let resp = post_binary(&client(), &url, &e).await;
    assert_eq!(resp.status(), 202);
    let got = binary_sub.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["ce-big"].len(), 20_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_set_to_pause_stops_at_its_max_lag_keeps_every_event_and_resumes() {
    let slow = Subscriber::start().await;
    slow.set_delay(Duration::from_millis(100), Duration::ZERO);
    let healthy = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker(&[]),
        trigger(
            "a",
            &slow.url(),
            &[
                ("cemesh.dev/max-lag", "30"),
                ("cemesh.dev/max-lag-action", "pause"),
                ("cemesh.dev/parallelism", "2"),
            ],
            "",
        ),
        trigger("b", &healthy.url(), &[], ""),
    ]));

    let statuses = post_all(&mesh, 0..200, 4).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(healthy.wait_for(200, WAIT).await.len(), 200);

    // Past 30 waiting, A pauses and says so; nothing more is attempted.
    let deadline = Instant::now() + WAIT;
    let paused = loop {
        let s = stats(&mesh, "a").await;
        if s["paused"].is_object() {
            break s;
        }
        assert!(Instant::now() < deadline, "trigger a did not pause: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(paused["maxLag"], "30 records, then pause", "{paused}");
    let reason = paused["paused"]["reason"].as_str().unwrap();
    assert!(reason.contains("max-lag"), "{reason}");
    // Attempts in flight when it paused finish; then nothing moves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = slow.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(slow.count(), before, "a paused trigger sends nothing");
    assert!(before < 200, "paused before its backlog was delivered");
    let page = dead_letter_page(&mesh, "a").await;
    assert_eq!(page["total"], 0, "pause keeps every event: {page}");
    let s = stats(&mesh, "a").await;
    assert!(s["lag"].as_u64().unwrap() > 30, "{s}");
    assert_eq!(
        mesh.admin_json("/v1/namespaces/default/triggers/a/scale")
            .await["paused"],
        true
    );
    let metrics = mesh.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cemesh_trigger_paused{")
                && l.contains("trigger_name=\"a\"")
                && l.ends_with(" 1")),
        "the gauge says paused"
    );
    let (ok, out, err) = cemesh_cli(&["describe", "trigger", "a", "--admin", &mesh.admin_url("")]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Paused:") && out.contains("cemesh resume a -n default"),
        "{out}"
    );

    // Resumed (the subscriber fast again): every event arrives, none twice.
    slow.set_delay(Duration::ZERO, Duration::ZERO);
    let (ok, out, err) = cemesh_cli(&["resume", "a", "--admin", &mesh.admin_url("")]);
    assert!(ok && out.contains("resumed"), "{out}{err}");
    let got = slow.wait_for(200, WAIT).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|r| r.event.clone().map(|e| e.id))
        .collect();
    assert_eq!(ids.len(), 200, "every event delivered after the resume");
    let s = stats(&mesh, "a").await;
    assert!(s["paused"].is_null(), "{s}");
    assert_eq!(dead_letter_page(&mesh, "a").await["total"], 0);
    let (ok, out, _) = cemesh_cli(&["resume", "a", "--admin", &mesh.admin_url("")]);
    assert!(ok && out.contains("was not paused"), "{out}");
}
