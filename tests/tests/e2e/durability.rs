//! The sled channel through the binary: a 202 survives `kill -9`, a backlog survives a
//! restart, memory stays bounded under a large backlog.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cemesh_proto::Event;
use cemesh_tests::*;

fn sled_broker(name: &str, annotations: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/channel: sled\n"
    );
    for (k, v) in annotations {
        s.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    s
}

/// 8 producers POST continuously; the broker is killed with SIGKILL mid-stream and
/// restarted; every event that got a 202 must reach the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_accepted_event() {
    let sub = Subscriber::start().await;
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest(
            "mesh.yaml",
            &docs(&[
                sled_broker("default", &[]),
                trigger_yaml("t", "default", &sub.url(), &[]),
            ]),
        )
        .start();
    let url = Arc::new(Mutex::new(mesh.broker_url("default", "default")));
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..8 {
        let (url, accepted, stop) = (url.clone(), accepted.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("p{p}-{n}");
                let target = url.lock().unwrap().clone();
                let mut headers = http::HeaderMap::new();
                let body = cemesh_proto::http::encode_binary(
                    &Event::new(&id, "/durability", "test.kill9"),
                    &mut headers,
                )
                .unwrap_or_default();
                let resp = c
                    .post(&target)
                    .headers(headers)
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 202 => {
                        accepted.lock().unwrap().insert(id);
                    }
                    // Refused while down: the producer would send again; so do we, with
                    // a new id, which is irrelevant to what is being tested.
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = accepted.lock().unwrap().len();
    mesh.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    mesh.restart();
    *url.lock().unwrap() = mesh.broker_url("default", "default");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        before_kill > 100,
        "too few events accepted before the kill ({before_kill}) for the test to mean anything"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let got: HashSet<String> = sub.ids().into_iter().collect();
        let missing: Vec<&String> = accepted.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivered = sub.ids();
    let unique: HashSet<&String> = delivered.iter().collect();
    println!(
        "kill -9: {} accepted ({before_kill} before the kill), {} deliveries, {} unique, {} redelivered, {missing} lost",
        accepted.len(),
        delivered.len(),
        unique.len(),
        delivered.len() - unique.len()
    );
    assert_eq!(missing, 0, "accepted events lost across kill -9");
}

/// Events accepted while the subscriber is down stay in the channel across a broker
/// restart and are all delivered once it comes back.
#[tokio::test(flavor = "multi_thread")]
async fn backlog_survives_restart_while_subscriber_is_down() {
    let sub = Subscriber::start().await;
    sub.set_status(503);
    let trigger = format!(
        "{}  delivery:\n    retry: 1000\n    backoffPolicy: linear\n    backoffDelay: PT0.1S\n",
        trigger_yaml("t", "default", &sub.url(), &[])
    ) + "  # keeps retrying while the subscriber is down\n";
    let trigger = trigger.replace(
        "metadata:\n  name: t\n",
        "metadata:\n  name: t\n  annotations:\n    cemesh.dev/backoff-jitter: \"off\"\n    cemesh.dev/backoff-max: 200ms\n",
    );
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest("mesh.yaml", &docs(&[sled_broker("default", &[]), trigger]))
        .start();
    let c = client();
    let url = mesh.broker_url("default", "default");
    for i in 0..200 {
        let resp = post_binary(&c, &url, &Event::new(format!("b{i}"), "/d", "test.backlog")).await;
        assert_eq!(resp.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.terminate();
    mesh.restart();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub.set_status(200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<String> = sub
            .received()
            .into_iter()
            .filter(|r| r.status_sent == 200)
            .filter_map(|r| r.event.map(|e| e.id))
            .collect();
        if (0..200).all(|i| got.contains(&format!("b{i}"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 200 backlog events delivered after restart; logs:\n{}",
            got.len(),
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 1-million-event backlog keeps the broker's RSS under 256 MiB: events are read
/// from disk in bounded batches. Slow (about a minute); run with
/// `cargo test --release -p cemesh-tests --test e2e -- --ignored million`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn million_event_backlog_keeps_rss_bounded() {
    let sub = Subscriber::start().await;
    sub.set_status(503);
    let trigger = format!(
        "{}  delivery:\n    retry: 100000\n    backoffDelay: PT10S\n",
        trigger_yaml("t", "default", &sub.url(), &[])
    );
    let mesh = Cemesh::builder()
        .channel("sled")
        .manifest(
            "mesh.yaml",
            &docs(&[
                sled_broker("default", &[("cemesh.dev/max-backlog", "2000000")]),
                trigger,
            ]),
        )
        .start();
    let c = client();
    let url = mesh.broker_url("default", "default");
    let per_batch = 1000;
    let mut peak = 0;
    for b in 0..1000 {
        let batch: Vec<Event> = (0..per_batch)
            .map(|i| {
                let mut e = Event::new(format!("m{b}-{i}"), "/million", "test.million");
                e.data = Some(bytes::Bytes::from(vec![b'x'; 100]));
                e
            })
            .collect();
        let resp = c
            .post(&url)
            .header("content-type", cemesh_proto::http::BATCH_JSON)
            .body(cemesh_proto::json::encode_batch(&batch))
            .send()
            .await
            .expect("POST batch");
        assert_eq!(resp.status(), 202, "batch {b}");
        if b % 50 == 0 {
            peak = peak.max(mesh.rss_kib().expect("the broker's RSS (/proc/PID/status)"));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    peak = peak.max(mesh.rss_kib().expect("the broker's RSS (/proc/PID/status)"));
    println!("1M-event backlog: peak RSS {} MiB", peak / 1024);
    assert!(peak < 256 * 1024, "RSS {} KiB over 256 MiB", peak);
}
