//! Deduplication at the ingress (`cemesh.dev/dedup-window`), through the binary: a
//! producer that sends every event twice, the copies at once, gets each delivered
//! once, counted as duplicates; the window outlives a kill -9 of a sled broker.

use std::collections::HashSet;
use std::time::Duration;

use cemesh_proto::Event;
use cemesh_tests::*;

const BROKER: &str = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    cemesh.dev/dedup-window: 10m\n";

/// Sends each event twice at once; every send must be answered 202.
async fn send_twice(url: &str, events: &[Event]) {
    let c = client();
    let sends = events.iter().flat_map(|e| [e.clone(), e.clone()]).map(|e| {
        let (c, url) = (c.clone(), url.to_owned());
        async move { (e.id.clone(), post_binary(&c, &url, &e).await.status()) }
    });
    for (id, status) in futures::future::join_all(sends).await {
        assert_eq!(status, 202, "event {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_retrying_every_send_gets_each_event_delivered_once_across_a_kill_9() {
    let sub = Subscriber::start().await;
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest(
            "mesh.yaml",
            &docs(&[
                BROKER.to_owned(),
                trigger_yaml("t", "default", &sub.url(), &[]),
            ]),
        )
        .start();
    let events: Vec<Event> = (0..200)
        .map(|i| Event::new(format!("d{i}"), "/retrying", "test.dedup"))
        .collect();
    let url = mesh.broker_url("default", "default");
    for chunk in events.chunks(25) {
        send_twice(&url, chunk).await;
    }
    sub.wait_for(200, Duration::from_secs(20)).await;
    let got = sub.settle(Duration::from_millis(800)).await;
    let ids: HashSet<String> = sub.ids().into_iter().collect();
    assert_eq!((got.len(), ids.len()), (200, 200), "each event once");
    let metrics = mesh.metrics_text().await;
    let dups = metrics
        .lines()
        .find(|l| l.starts_with("cemesh_broker_ingress_duplicates_total{"))
        .unwrap_or_default()
        .to_owned();
    assert!(dups.ends_with(" 200"), "{dups}");

    // The window is written every second: past that, a kill -9 keeps it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    mesh.kill9();
    mesh.restart();
    let url = mesh.broker_url("default", "default");
    send_twice(&url, &events[..50]).await;
    let fresh = Event::new("after-restart", "/retrying", "test.dedup");
    send_twice(&url, std::slice::from_ref(&fresh)).await;
    sub.wait_for(201, Duration::from_secs(20)).await;
    let got = sub.settle(Duration::from_millis(800)).await;
    assert_eq!(got.len(), 201, "only the new event: {:?}", sub.ids().last());
}

#[test]
fn a_bad_dedup_window_is_refused_naming_the_annotation() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("b.yaml");
    std::fs::write(
        &file,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    cemesh.dev/dedup-window: soon\n    cemesh.dev/dedup-max-keys: \"0\"\n",
    )
    .unwrap();
    let (ok, out, err) = cemesh_cli(&["validate", file.to_str().unwrap()]);
    let all = format!("{out}{err}");
    assert!(!ok, "{all}");
    assert!(
        all.contains(
            "metadata.annotations.cemesh.dev/dedup-max-keys: \"0\" is not a positive whole number"
        ),
        "{all}"
    );
}
