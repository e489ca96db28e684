//! Kafka channel behaviour beyond the shared contract: replicas sharing a trigger
//! through consumer-group rebalancing, per-key order across a rebalance, a replica
//! dying with records in flight, lag seen from another replica, the topic's
//! binary-mode records, and the dead-letter topics. Needs a Kafka
//! (`CEMESH_TEST_KAFKA`, or a tansu started for the run); fails without one.
#![cfg(feature = "kafka")]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cemesh_channels::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cemesh_channels::kafka::rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use cemesh_channels::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use cemesh_channels::kafka::rdkafka::ClientConfig;
use cemesh_channels::kafka::{testing, KafkaChannel, KafkaChannelConfig, KafkaOptions, KafkaStore};
use cemesh_channels::{
    Attempt, Channel, DeadLetter, DeadLetterStore, Record, StartAt, Subscription,
};
use cemesh_proto::{AttributeValue, Event};

fn options() -> KafkaOptions {
    KafkaOptions {
        partitions: 4,
        commit_interval: Duration::from_millis(50),
        session_timeout: Duration::from_secs(6),
        ..testing::options()
    }
}

/// A "replica": its own connection to Kafka, as a separate `cemesh serve` has.
async fn replica() -> KafkaStore {
    KafkaStore::connect(options())
        .await
        .expect("connect to the test Kafka")
}

async fn channel(store: &KafkaStore, ns: &str) -> KafkaChannel {
    store
        .channel(ns, "default", KafkaChannelConfig::default())
        .await
        .expect("open channel")
}

fn keyed(id: String, key: &str) -> Event {
    let mut e = Event::new(id, "/kafka-test", "test.event");
    e.set_extension("partitionkey", AttributeValue::String(key.into()));
    e.data = Some(bytes::Bytes::from_static(b"{}"));
    e
}

/// Reads and acks until `want` distinct ids were seen by all consumers together.
async fn drain(subs: Vec<Arc<dyn Subscription>>, want: usize, limit: Duration) -> Vec<Vec<Record>> {
    let seen = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|sub| {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let deadline = tokio::time::Instant::now() + limit;
                while seen.lock().unwrap().len() < want && tokio::time::Instant::now() < deadline {
                    if let Ok(Ok(batch)) =
                        tokio::time::timeout(Duration::from_millis(200), sub.next(100)).await
                    {
                        for r in batch {
                            seen.lock().unwrap().insert(r.event.id.clone());
                            sub.ack(r.position).unwrap();
                            got.push(r);
                        }
                    }
                }
                got
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_a_trigger_and_deliver_each_event_once() {
    let ns = testing::unique("share");
    let (a, b) = (replica().await, replica().await);
    let (ca, cb) = (channel(&a, &ns).await, channel(&b, &ns).await);
    let sa = ca.subscribe("t", StartAt::Latest).await.unwrap();
    let sb = cb.subscribe("t", StartAt::Latest).await.unwrap();
    // The group's first rebalance: both members join.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Appends through both "ingresses".
    const N: usize = 2000;
    for chunk in 0..(N / 100) {
        let ch = if chunk % 2 == 0 { &ca } else { &cb };
        ch.append(
            (0..100)
                .map(|i| keyed(format!("e{}", chunk * 100 + i), &format!("k{}", i % 16)))
                .collect(),
        )
        .await
        .unwrap();
    }
    let got = drain(vec![sa, sb], N, Duration::from_secs(60)).await;
    let all: Vec<&str> = got.iter().flatten().map(|r| r.event.id.as_str()).collect();
    let distinct: HashSet<&str> = all.iter().copied().collect();
    assert_eq!(distinct.len(), N, "every event delivered");
    let dups = all.len() - distinct.len();
    // Around the first rebalance a partition may be read by both: at-least-once.
    assert!(dups <= N / 10, "{dups} duplicates");
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both replicas took a share: {} / {}",
        got[0].len(),
        got[1].len()
    );
    // Lag seen from a third replica that never subscribed: from committed offsets.
    let c = replica().await;
    let cc = channel(&c, &ns).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lag = cc.lag("t").await.unwrap();
        if lag == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lag stays {lag}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_across_a_rebalance_and_a_dead_replica_loses_nothing() {
    let ns = testing::unique("order");
    let a = replica().await;
    let ca = channel(&a, &ns).await;
    let sa = ca.subscribe("t", StartAt::Latest).await.unwrap();
    const N: usize = 1200;
    let events: Vec<Event> = (0..N)
        .map(|i| keyed(format!("{}-{}", i % 8, i / 8), &format!("k{}", i % 8)))
        .collect();
    ca.append(events[..N / 2].to_vec()).await.unwrap();
    // Replica A reads some, acks only part: it "dies" with records in flight.
    let mut first = Vec::new();
    while first.len() < 200 {
        first.extend(
            tokio::time::timeout(Duration::from_secs(15), sa.next(50))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for r in &first[..100] {
        sa.ack(r.position).unwrap();
    }
    drop(sa);
    drop(ca);
    drop(a);
    // Replica B takes over and a second one, C, joins mid-stream.
    let b = replica().await;
    let cb = channel(&b, &ns).await;
    let sb = cb.subscribe("t", StartAt::Latest).await.unwrap();
    let feeder = {
        let cb = cb.clone();
        let rest = events[N / 2..].to_vec();
        tokio::spawn(async move {
            for chunk in rest.chunks(50) {
                cb.append(chunk.to_vec()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let c = replica().await;
    let cc = channel(&c, &ns).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sc = cc.subscribe("t", StartAt::Latest).await.unwrap();
    let got = drain(vec![sb, sc], N, Duration::from_secs(90)).await;
    feeder.await.unwrap();
    let mut seen: HashSet<String> = first[..100].iter().map(|r| r.event.id.clone()).collect();
    for r in got.iter().flatten() {
        seen.insert(r.event.id.clone());
    }
    assert_eq!(seen.len(), N, "nothing lost after a replica died");
    // One key lives in one partition, so its records' offsets follow append order.
    let mut by_key: HashMap<String, Vec<(u64, i64)>> = HashMap::new();
    for r in got.iter().flatten() {
        let (key, seq) = r.event.id.split_once('-').unwrap();
        by_key
            .entry(key.to_owned())
            .or_default()
            .push((r.position.offset, seq.parse().unwrap()));
    }
    for (key, mut v) in by_key {
        v.sort();
        v.dedup();
        assert!(
            v.windows(2).all(|w| w[0].1 < w[1].1),
            "key {key}: offsets out of append order"
        );
    }
}

/// Set for the child process of
/// `a_killed_member_s_partitions_go_to_the_survivor`: the namespace to join.
const VICTIM_ENV: &str = "CEMESH_KAFKA_TEST_VICTIM_NS";

/// Not a test by itself: the member that the next test kills with SIGKILL. It joins
/// the group, reads without ever acking, and waits to die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_killed_member_s_partitions_go_to_the_survivor"]
async fn victim_member() {
    let Ok(ns) = std::env::var(VICTIM_ENV) else {
        return;
    };
    let store = replica().await;
    let ch = channel(&store, &ns).await;
    let sub = ch.subscribe("t", StartAt::Latest).await.unwrap();
    println!("victim subscribed");
    loop {
        let _ = sub.next(100).await;
    }
}

/// A member killed with SIGKILL (no LeaveGroup, records read but not acked): after
/// the session timeout the survivor reads its partitions, from the last commit.
/// On tansu 0.6 this takes the orphan watchdog: its coordinator keeps the dead
/// member's assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_member_s_partitions_go_to_the_survivor() {
    use std::io::BufRead as _;
    let ns = testing::unique("killed");
    let a = replica().await;
    let ca = channel(&a, &ns).await;
    let sa = ca.subscribe("t", StartAt::Latest).await.unwrap();
    let mut victim = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "victim_member", "--ignored", "--nocapture"])
        .env(VICTIM_ENV, &ns)
        .env(testing::ENV, testing::bootstrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the victim member");
    let out = victim.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("victim subscribed") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the victim member subscribed");
    // Until the group is stable with both members.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testing::bootstrap())
        .create()
        .unwrap();
    let group = ca.group_name("t");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stable_with_two = probe
            .fetch_group_list(Some(&group), Duration::from_secs(5))
            .ok()
            .and_then(|l| {
                let g = l.groups().iter().find(|g| g.name() == group)?;
                Some(g.state().eq_ignore_ascii_case("stable") && g.members().len() == 2)
            })
            .unwrap_or(false);
        if stable_with_two {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group never stable with two members"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    const N: usize = 400;
    let events: Vec<Event> = (0..N)
        .map(|i| keyed(format!("v{i}"), &format!("k{i}")))
        .collect();
    // Half while the victim owns some partitions (it reads them, never acks)...
    ca.append(events[..N / 2].to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.kill().unwrap();
    victim.wait().unwrap();
    // ...half after it died, to all partitions.
    ca.append(events[N / 2..].to_vec()).await.unwrap();
    let got = drain(vec![sa], N, Duration::from_secs(90)).await;
    let seen: HashSet<&str> = got[0].iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(
        seen.len(),
        N,
        "every event, the dead member's partitions too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_refused_while_the_slowest_trigger_lags_past_max_backlog() {
    let ns = testing::unique("cap");
    let store = replica().await;
    let ch = store
        .channel(
            &ns,
            "default",
            KafkaChannelConfig {
                max_backlog: Some(50),
                ..KafkaChannelConfig::default()
            },
        )
        .await
        .unwrap();
    let sub = ch.subscribe("t", StartAt::Latest).await.unwrap();
    let batch = |from: usize| -> Vec<Event> {
        (from..from + 20)
            .map(|i| keyed(format!("c{i}"), &format!("k{i}")))
            .collect()
    };
    // Nobody reads: appends go through until the measured lag passes the cap.
    let mut appended = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match ch.append(batch(appended)).await {
            Ok(()) => appended += 20,
            Err(cemesh_channels::ChannelError::Full { reason, .. }) => break reason,
            Err(e) => panic!("append failed: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused ({appended} appended)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(appended > 50, "refused after only {appended}: {refused}");
    assert!(refused.contains("max-backlog"), "{refused}");
    // Once the trigger caught up, appends are accepted again.
    drain(vec![sub], appended, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = ch.append(batch(10_000)).await {
        assert!(tokio::time::Instant::now() < deadline, "still refused: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn records_are_cloudevents_binary_mode_with_the_partition_key() {
    let ns = testing::unique("binary");
    let store = replica().await;
    let ch = channel(&store, &ns).await;
    let mut e = keyed("b1".into(), "key-1");
    e.datacontenttype = Some("application/json".into());
    e.subject = Some("ünï".into());
    ch.append(vec![e]).await.unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testing::bootstrap())
        .set("group.id", testing::unique("raw"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[ch.topic()]).unwrap();
    let m = tokio::task::spawn_blocking(move || loop {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            return m.unwrap().detach();
        }
    })
    .await
    .unwrap();
    let headers: HashMap<String, String> = m
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(headers["ce_specversion"], "1.0");
    assert_eq!(headers["ce_id"], "b1");
    assert_eq!(headers["ce_source"], "/kafka-test");
    assert_eq!(headers["ce_type"], "test.event");
    assert_eq!(headers["ce_subject"], "ünï");
    assert_eq!(headers["ce_partitionkey"], "key-1");
    assert_eq!(headers["content-type"], "application/json");
    assert!(!headers.contains_key("ce_datacontenttype"));
    assert_eq!(m.key(), Some(&b"key-1"[..]));
    assert_eq!(m.payload(), Some(&b"{}"[..]));

    // A record written by another producer (Knative's Kafka broker) is read back.
    let sub = ch.subscribe("reader", StartAt::Latest).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", testing::bootstrap())
        .create()
        .unwrap();
    let h = [
        ("ce_specversion", "1.0"),
        ("ce_id", "foreign-1"),
        ("ce_source", "/knative"),
        ("ce_type", "dev.knative.test"),
        ("ce_count", "3"),
        ("content-type", "text/plain"),
    ]
    .iter()
    .fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(*v),
        })
    });
    producer
        .send(
            FutureRecord::<str, str>::to(ch.topic())
                .headers(h)
                .payload("hello"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    // And one that is not a CloudEvent at all: skipped, and counted as finished.
    producer
        .send(
            FutureRecord::<str, str>::to(ch.topic()).payload("not an event"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    ch.append(vec![keyed("after".into(), "key-1")])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(
            tokio::time::timeout(Duration::from_secs(15), sub.next(10))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let foreign = got
        .iter()
        .find(|r| r.event.id == "foreign-1")
        .expect("foreign event");
    assert_eq!(foreign.event.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(foreign.event.data.as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        foreign.event.extension("count"),
        Some(&AttributeValue::String("3".into()))
    );
    for r in &got {
        sub.ack(r.position).unwrap();
    }
    assert_eq!(
        ch.lag("reader").await.unwrap(),
        0,
        "the foreign record counts as done"
    );
}

#[tokio::test]
async fn dead_letters_live_in_a_topic_per_trigger() {
    let ns = testing::unique("dlq");
    let trigger = format!("{ns}/orders");
    let a = replica().await;
    let dl = a.dead_letters();
    assert_eq!(dl.count(&trigger).await.unwrap(), 0);
    let letter = |id: &str| DeadLetter {
        id: 0,
        trigger: trigger.clone(),
        event: keyed(id.into(), "k"),
        reason: "subscriber answered 500".into(),
        attempts: vec![Attempt {
            at: "2024-01-01T00:00:00Z".into(),
            status: Some(500),
            error: "boom".into(),
            latency_ms: 12,
            to: cemesh_channels::AttemptTarget::DeadLetterSink,
            url: "http://127.0.0.1:1/sink".into(),
        }],
        dead_at: "2024-01-01T00:00:01Z".into(),
    };
    let id1 = dl.put(letter("d1")).await.unwrap();
    let id2 = dl.put(letter("d2")).await.unwrap();
    let id3 = dl.put(letter("d3")).await.unwrap();
    assert!(id1 < id2 && id2 < id3);
    let listed = dl.list(&trigger, None, 10).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|l| l.event.id.as_str())
            .collect::<Vec<_>>(),
        ["d1", "d2", "d3"]
    );
    assert_eq!(listed[0].attempts[0].status, Some(500));
    assert_eq!(listed[0].id, id1);
    assert!(dl.remove(&trigger, id2).await.unwrap());
    assert!(!dl.remove(&trigger, id2).await.unwrap());
    // Another replica sees the same letters.
    let b = replica().await;
    let dlb = b.dead_letters();
    assert_eq!(dlb.count(&trigger).await.unwrap(), 2);
    let after = dlb.list(&trigger, Some(id1), 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].event.id, "d3");
    assert_eq!(
        dlb.get(&trigger, id3).await.unwrap().unwrap().reason,
        "subscriber answered 500"
    );
    assert!(dlb.get(&trigger, id2).await.unwrap().is_none());
    assert_eq!(dl.count(&format!("{ns}/other")).await.unwrap(), 0);
}

/// The Kafka channel's append against a bare rdkafka producer with `acks=all` on the
/// same server (issue 20): 64 concurrent producers of single 1 KiB events each way.
/// A measurement, not a check (no timing assertion); run with
/// `cargo test -p cemesh-channels --release --features kafka --test kafka --
/// --ignored --nocapture append_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand (see the doc comment)"]
async fn append_throughput_against_a_bare_producer() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const PRODUCERS: u64 = 64;
    const EVENTS: u64 = 10_000;
    let ns = testing::unique("perf");
    // The store as deployed: without the tests' one-record batches (the tansu
    // workaround, `testing::TANSU_WORKAROUND`), which the bare producer has not
    // either. Only appends here, so tansu's high watermarks do not matter.
    let store = KafkaStore::connect(KafkaOptions {
        bootstrap: testing::bootstrap(),
        ..KafkaOptions::default()
    })
    .await
    .expect("connect to the test Kafka");
    let ch = channel(&store, &ns).await;
    let payload = bytes::Bytes::from(vec![b'x'; 1024]);

    let run = |label: &'static str, send: Arc<dyn Fn(u64) -> futures_send::Boxed + Send + Sync>| async move {
        let next = Arc::new(AtomicU64::new(0));
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let (next, send) = (next.clone(), send.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= EVENTS {
                            return;
                        }
                        send(i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
        println!("{label}: {EVENTS} events from {PRODUCERS} producers: {rate:.0} events/s");
        rate
    };

    // Each side sends one record before it is timed: producer ids, metadata and
    // connections are set up outside the measured 10 000.
    let mut warm = Event::new("warm-up", "/perf", "perf");
    warm.data = Some(payload.clone());
    ch.append(vec![warm]).await.expect("warm-up append");
    let channel_rate = {
        let ch = ch.clone();
        let payload = payload.clone();
        run(
            "cemesh Kafka channel append",
            Arc::new(move |i| {
                let (ch, payload) = (ch.clone(), payload.clone());
                Box::pin(async move {
                    let mut e = Event::new(format!("c{i}"), "/perf", "perf");
                    e.data = Some(payload);
                    ch.append(vec![e]).await.expect("append");
                })
            }),
        )
        .await
    };
    // The bare producer as librdkafka ships it with acks=all, then with the
    // idempotence the channel's producer has (no duplicates or reordering from its
    // own retries).
    let mut rates = Vec::new();
    for (label, idempotence) in [
        ("bare rdkafka producer, acks=all", "false"),
        (
            "bare rdkafka producer, acks=all, enable.idempotence",
            "true",
        ),
    ] {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", testing::bootstrap())
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("enable.idempotence", idempotence)
            .create()
            .unwrap();
        let topic = ch.topic().to_owned();
        produce_unkeyed(&producer, &topic, &payload).await;
        let payload = payload.clone();
        let rate = run(
            label,
            Arc::new(move |_| {
                let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
                Box::pin(async move {
                    produce_unkeyed(&producer, &topic, &payload).await;
                })
            }),
        )
        .await;
        rates.push(rate);
    }
    println!(
        "ratio of the channel to the bare producer: {:.2}; to the idempotent one: {:.2}",
        channel_rate / rates[0],
        channel_rate / rates[1]
    );
}

/// One record with no key, as the channel's events here (no `partitionkey`).
async fn produce_unkeyed(producer: &FutureProducer, topic: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::<(), _>::to(topic).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .expect("produce");
}

mod futures_send {
    pub type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}
