//! The live control plane through the binary: hot reload, the admin API and its CLI,
//! `tail`, metrics, trace propagation and graceful shutdown.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cemesh_proto::Event;
use cemesh_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// Runs `cemesh <args> --admin <mesh admin>` and returns (success, stdout+stderr).
fn cli(mesh: &Cemesh, args: &[&str]) -> (bool, String) {
    let out = Command::new(cemesh_bin())
        .args(args)
        .args(["--admin", &mesh.admin_url("")])
        .stdin(Stdio::null())
        .output()
        .expect("run cemesh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn cemesh_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(cemesh_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cemesh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn cesql_trigger(name: &str, sub: &str, cesql: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: default\n  filters:\n    - cesql: \"{cesql}\"\n  subscriber:\n    uri: {sub}\n"
    )
}

async fn send(c: &reqwest::Client, url: &str, id: &str, ty: &str) -> bool {
    post_binary(c, url, &Event::new(id, "/cp", ty))
        .await
        .status()
        == 202
}

fn ids_of(sub: &Subscriber) -> Vec<String> {
    sub.ids()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn editing_a_filter_takes_effect_and_other_triggers_lose_nothing() {
    let a = Subscriber::start().await;
    let b = Subscriber::start().await;
    let mesh = Cemesh::builder()
        .manifest("broker.yaml", &broker_yaml("default"))
        .manifest("a.yaml", &cesql_trigger("a", &a.url(), "type = 'x'"))
        .manifest("b.yaml", &trigger_yaml("b", "default", &b.url(), &[]))
        .start();
    let url = mesh.broker_url("default", "default");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (accepted, stop, url) = (accepted.clone(), stop.clone(), url.clone());
        tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let ty = if n % 2 == 0 { "x" } else { "y" };
                let id = format!("{ty}-{n}");
                if send(&c, &url, &id, ty).await {
                    accepted.lock().unwrap().push(id);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let edited_at = Instant::now();
    std::fs::write(
        mesh.dir().join("config/a.yaml"),
        cesql_trigger("a", &a.url(), "type = 'y'"),
    )
    .unwrap();
    // The edit takes effect within 2 s.
    let deadline = edited_at + Duration::from_secs(2);
    loop {
        if a.ids().iter().any(|id| id.starts_with("y-")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edited filter did not take effect within 2 s; logs:\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("filter edit effective after {:?}", edited_at.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    // Enough events on both sides of the edit for the checks below to mean something.
    assert!(accepted.len() > 50, "only {} events sent", accepted.len());

    // The untouched trigger got every event exactly once.
    let deadline = Instant::now() + WAIT;
    while b.count() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = b.settle(Duration::from_millis(300)).await;
    let got_ids: Vec<String> = got
        .iter()
        .filter_map(|r| r.event.as_ref().map(|e| e.id.clone()))
        .collect();
    let unique: HashSet<&String> = got_ids.iter().collect();
    assert_eq!(
        unique.len(),
        got_ids.len(),
        "the unchanged trigger saw duplicates"
    );
    assert_eq!(
        got_ids.len(),
        accepted.len(),
        "the unchanged trigger lost events"
    );
    // The edited trigger keeps its cursor: nothing twice, and after the switch only y.
    let a_ids = ids_of(&a);
    let a_unique: HashSet<&String> = a_ids.iter().collect();
    assert_eq!(
        a_unique.len(),
        a_ids.len(),
        "the edited trigger saw duplicates"
    );
    let first_y = a_ids.iter().position(|id| id.starts_with("y-")).unwrap();
    assert!(
        a_ids[first_y..].iter().all(|id| id.starts_with("y-")),
        "x after the switch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_edit_keeps_the_old_configuration_and_get_shows_why() {
    let a = Subscriber::start().await;
    let mesh = Cemesh::builder()
        .manifest("broker.yaml", &broker_yaml("default"))
        .manifest("a.yaml", &cesql_trigger("a", &a.url(), "type = 'x'"))
        .start();
    std::fs::write(
        mesh.dir().join("config/a.yaml"),
        cesql_trigger("a", &a.url(), "type = = 'y'"),
    )
    .unwrap();
    assert!(
        mesh.wait_for_log("Reload rejected", WAIT),
        "no rejection logged:\n{}",
        mesh.logs()
    );
    // The old filter still runs.
    let c = client();
    let url = mesh.broker_url("default", "default");
    assert!(send(&c, &url, "still-x", "x").await);
    assert!(send(&c, &url, "not-y", "y").await);
    a.wait_for(1, WAIT).await;
    assert_eq!(a.settle(Duration::from_millis(300)).await.len(), 1);
    assert_eq!(a.ids(), ["still-x"]);

    let (ok, out) = cli(&mesh, &["get", "triggers", "-A"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(" a "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("True") && line.contains("InvalidEdit"),
        "{out}"
    );
    let (ok, out) = cli(
        &mesh,
        &["get", "triggers", "a", "-n", "default", "-o", "json"],
    );
    assert!(ok && out.contains("parse error at column"), "{out}");
    let ready: serde_json::Value = client()
        .get(mesh.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["rejected_reload"][0]
            .as_str()
            .unwrap()
            .contains("spec.filters[0].cesql"),
        "{ready}"
    );

    // Fixing the file applies it and clears the error.
    std::fs::write(
        mesh.dir().join("config/a.yaml"),
        cesql_trigger("a", &a.url(), "type = 'y'"),
    )
    .unwrap();
    assert!(mesh.wait_for_log("Configuration reloaded", WAIT));
    let (_, out) = cli(&mesh, &["get", "triggers"]);
    assert!(!out.contains("InvalidEdit"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_applied_triggers_survive_restart_and_file_owned_ones_are_409() {
    let sub = Subscriber::start().await;
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest("broker.yaml", &broker_yaml("default"))
        .start();
    let manifest = mesh.dir().join("api-trigger.yaml");
    std::fs::write(&manifest, trigger_yaml("api", "default", &sub.url(), &[])).unwrap();
    let (ok, out) = cli(&mesh, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("trigger.eventing.knative.dev/api created"),
        "{out}"
    );
    let (ok, out) = cli(&mesh, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok && out.contains("api unchanged"), "{out}");

    let c = client();
    assert!(send(&c, &mesh.broker_url("default", "default"), "before", "t").await);
    sub.wait_for(1, WAIT).await;

    mesh.restart();
    let (ok, out) = cli(&mesh, &["get", "triggers", "-n", "default"]);
    assert!(ok && out.contains("api") && out.contains("True"), "{out}");
    assert!(send(&c, &mesh.broker_url("default", "default"), "after", "t").await);
    // (kill -9 may redeliver "before": at least once.)
    let deadline = Instant::now() + WAIT;
    while !sub.ids().iter().any(|id| id == "after") {
        assert!(
            Instant::now() < deadline,
            "the API trigger did not deliver after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The broker comes from a file: the API may not change or delete it.
    let resp = c
        .put(mesh.admin_url("/v1/namespaces/default/brokers/default"))
        .body(broker_yaml("default"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("broker.yaml"),
        "{body}"
    );
    let (ok, out) = cli(&mesh, &["delete", "broker", "default"]);
    assert!(
        !ok && out.contains("409") && out.contains("broker.yaml"),
        "{out}"
    );

    // An invalid PUT: 400 listing every problem, nothing changes.
    let bad = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\n  annotations:\n    cemesh.dev/parallelism: \"0\"\nspec:\n  broker: nope\n  subscriber:\n    uri: http://127.0.0.1:1/\n";
    let resp = c
        .put(mesh.admin_url("/v1/namespaces/default/triggers/bad"))
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("spec.broker"),
        "{body}"
    );

    let (ok, out) = cli(&mesh, &["delete", "trigger", "api"]);
    assert!(ok && out.contains("deleted"), "{out}");
    mesh.restart();
    let (_, out) = cli(&mesh, &["get", "triggers"]);
    assert!(!out.contains("api"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_events_as_they_arrive() {
    let mesh = Cemesh::start(&broker_yaml("default"));
    let mut child = Command::new(cemesh_bin())
        .args([
            "tail",
            "default",
            "--filter",
            "type = 'wanted'",
            "--count",
            "3",
        ])
        .args(["--admin", &mesh.admin_url("")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let c = client();
    let url = mesh.broker_url("default", "default");
    // Keep sending until the tail has seen three (it may connect after the first).
    let started = Instant::now();
    let mut n = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "tail failed");
            break;
        }
        assert!(started.elapsed() < WAIT, "tail printed nothing");
        n += 1;
        assert!(send(&c, &url, &format!("skip-{n}"), "other").await);
        assert!(send(&c, &url, &format!("want-{n}"), "wanted").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|e| e["type"] == "wanted"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_happened() {
    let ok = Subscriber::start().await;
    let failing = Subscriber::start().await;
    failing.set_status(500);
    let failing_trigger = format!(
        "{}  delivery:\n    retry: 2\n    backoffDelay: PT0.01S\n",
        trigger_yaml("failing", "default", &failing.url(), &[("type", "bad")])
    );
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("ok", "default", &ok.url(), &[("type", "good")]),
        failing_trigger,
    ]));
    let c = client();
    let url = mesh.broker_url("default", "default");
    for i in 0..10 {
        assert!(send(&c, &url, &format!("g{i}"), "good").await);
    }
    for i in 0..5 {
        assert!(send(&c, &url, &format!("b{i}"), "bad").await);
    }
    ok.wait_for(10, WAIT).await;
    failing.wait_for(15, WAIT).await;
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = mesh.metrics_text().await;
        if metric_sum(
            &text,
            "cemesh_trigger_dead_letters_total",
            &["trigger_name=\"failing\""],
        ) >= 5.0
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = |name: &str, labels: &[&str]| metric_sum(&text, name, labels);
    assert_eq!(
        m(
            "cemesh_broker_ingress_events_total",
            &["broker_name=\"default\"", "result=\"accepted\""]
        ),
        15.0,
        "{text}"
    );
    assert_eq!(
        m(
            "cemesh_trigger_dispatch_attempts_total",
            &["trigger_name=\"ok\"", "response_code_class=\"2xx\""]
        ),
        10.0,
        "{text}"
    );
    assert_eq!(
        m(
            "cemesh_trigger_dispatch_attempts_total",
            &["trigger_name=\"failing\"", "response_code_class=\"5xx\""]
        ),
        15.0,
        "{text}"
    );
    assert_eq!(
        m(
            "cemesh_trigger_retries_total",
            &["trigger_name=\"failing\""]
        ),
        10.0,
        "{text}"
    );
    assert_eq!(
        m(
            "cemesh_trigger_dead_letters_total",
            &["trigger_name=\"failing\"", "destination=\"store\""]
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        m("cemesh_trigger_lag", &["trigger_name=\"ok\""]),
        0.0,
        "{text}"
    );
    assert!(
        m(
            "cemesh_trigger_dispatch_duration_seconds_count",
            &["trigger_name=\"ok\""]
        ) >= 10.0,
        "{text}"
    );
    assert!(m("process_resident_memory_bytes", &[]) > 1e6, "{text}");
    assert!(
        text.contains("cemesh_channel_append_duration_seconds"),
        "{text}"
    );
    // Refused requests are counted with their code.
    let resp = c.post(&url).body("not an event").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let text = mesh.metrics_text().await;
    assert_eq!(
        metric_sum(
            &text,
            "cemesh_broker_ingress_events_total",
            &["result=\"refused\"", "response_code=\"400\""]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producers_trace_reaches_the_subscriber_and_the_reply() {
    let first = Subscriber::start().await;
    first.set_status(200);
    first.set_reply(Some(Event::new("reply", "/r", "reply.type")));
    let second = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml(
            "first",
            "default",
            &first.url(),
            &[("type", "request.type")],
        ),
        trigger_yaml(
            "second",
            "default",
            &second.url(),
            &[("type", "reply.type")],
        ),
    ]));
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = http::HeaderMap::new();
    let body =
        cemesh_proto::http::encode_binary(&Event::new("req", "/p", "request.type"), &mut headers)
            .unwrap_or_default();
    let resp = client()
        .post(mesh.broker_url("default", "default"))
        .headers(headers)
        .header("traceparent", tp)
        .header("tracestate", "vendor=1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let got = first.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers.get("traceparent").unwrap(), tp);
    assert_eq!(got[0].headers.get("tracestate").unwrap(), "vendor=1");
    let got = second.wait_for(1, WAIT).await;
    let reply_tp = got[0].headers.get("traceparent").unwrap().to_str().unwrap();
    assert_eq!(&reply_tp[3..35], &tp[3..35], "same trace id on the reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_on_sled_loses_nothing_and_exits_0() {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_millis(20), Duration::ZERO);
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .arg("--shutdown-grace")
        .arg("10s")
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                trigger_yaml("t", "default", &sub.url(), &[]),
            ]),
        )
        .start();
    let url = mesh.broker_url("default", "default");
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let refused_503 = Arc::new(Mutex::new(0u32));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (url, accepted, stop, refused) = (
            url.clone(),
            accepted.clone(),
            stop.clone(),
            refused_503.clone(),
        );
        producers.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("p{p}-{n}");
                match c
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/t")
                    .header("ce-type", "t")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => {
                        accepted.lock().unwrap().insert(id);
                    }
                    Ok(r) if r.status() == 503 => {
                        assert!(r.headers().contains_key("retry-after"));
                        *refused.lock().unwrap() += 1;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = Instant::now();
    let status = mesh.terminate();
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.await.unwrap();
    }
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        mesh.logs()
    );
    assert!(took < Duration::from_secs(12), "shutdown took {took:?}");
    let accepted = accepted.lock().unwrap().clone();
    println!(
        "SIGTERM: {} accepted, {} answered 503 while draining, exit after {took:?}",
        accepted.len(),
        refused_503.lock().unwrap()
    );
    sub.set_delay(Duration::ZERO, Duration::ZERO);
    mesh.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let got: HashSet<String> = sub.ids().into_iter().collect();
        let missing = accepted.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} accepted events lost across SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_lists_every_problem_offline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.yaml"),
        docs(&[
            broker_yaml("default"),
            trigger_yaml("t", "default", "http://127.0.0.1:1/", &[]),
        ]),
    )
    .unwrap();
    let (ok, out) = cemesh_cmd(&["validate", dir.path().to_str().unwrap()]);
    assert!(
        ok && out.contains("valid: 1 broker(s), 1 trigger(s)"),
        "{out}"
    );
    std::fs::write(
        dir.path().join("bad.yaml"),
        docs(&[
            cesql_trigger("c", "http://127.0.0.1:1/", "type = "),
            trigger_yaml("u", "missing", "http://127.0.0.1:1/", &[]),
        ]),
    )
    .unwrap();
    let (ok, out) = cemesh_cmd(&["validate", dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("bad.yaml: document 1 (Trigger default/c)")
            && out.contains("spec.filters[0].cesql"),
        "{out}"
    );
    assert!(
        out.contains("bad.yaml: document 2 (Trigger default/u)") && out.contains("spec.broker"),
        "{out}"
    );
    assert!(out.contains("2 problem(s) found"), "{out}");
}
