//! Kafka channel: where starts fall (`offsets_at`, `StartAt::Time`), moving a
//! stopped subscription's cursor (`seek`), `committed`, and passive (replay)
//! subscriptions outside the backlog cap. Needs a Kafka (`CEMESH_TEST_KAFKA`, or a
//! tansu started for the run); fails without one.
#![cfg(feature = "kafka")]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cemesh_channels::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cemesh_channels::kafka::rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use cemesh_channels::kafka::rdkafka::ClientConfig;
use cemesh_channels::kafka::{testing, KafkaChannel, KafkaChannelConfig, KafkaOptions, KafkaStore};
use cemesh_channels::{Channel, ChannelError, Position, Record, StartAt, Subscription};
use cemesh_proto::{AttributeValue, Event};

const PARTITIONS: i32 = 3;

fn options() -> KafkaOptions {
    KafkaOptions {
        partitions: PARTITIONS,
        commit_interval: Duration::from_millis(50),
        session_timeout: Duration::from_secs(6),
        ..testing::options()
    }
}

async fn replica() -> KafkaStore {
    KafkaStore::connect(options())
        .await
        .expect("connect to the test Kafka")
}

async fn channel(store: &KafkaStore, ns: &str, config: KafkaChannelConfig) -> KafkaChannel {
    store
        .channel(ns, "default", config)
        .await
        .expect("open channel")
}

fn keyed(id: String) -> Event {
    let mut e = Event::new(id.clone(), "/kafka-replay-test", "test.event");
    e.set_extension("partitionkey", AttributeValue::String(id));
    e.data = Some(bytes::Bytes::from_static(b"{}"));
    e
}

fn batch(prefix: &str, n: usize) -> Vec<Event> {
    (0..n).map(|i| keyed(format!("{prefix}{i}"))).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Reads until `n` records came (acking them when asked), failing after 30 s.
async fn read_n(sub: &dyn Subscription, n: usize, ack: bool) -> Vec<Record> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let batch = tokio::time::timeout(left, sub.next(n - got.len()))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records within 30 s", got.len()))
            .unwrap();
        for r in batch {
            if ack {
                sub.ack(r.position).unwrap();
            }
            got.push(r);
        }
    }
    got
}

/// Nothing more arrives within `quiet`.
async fn nothing_more(sub: &dyn Subscription, quiet: Duration) {
    if let Ok(r) = tokio::time::timeout(quiet, sub.next(10)).await {
        let ids: Vec<String> = r.unwrap().iter().map(|r| r.event.id.clone()).collect();
        panic!("unexpected records: {ids:?}");
    }
}

/// The ids `batch(prefix, n)` makes, sorted.
fn names(prefix: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    v.sort();
    v
}

fn ids(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| r.event.id.clone()).collect();
    v.sort();
    v
}

/// Two batches with a pause between; returns a time in the pause.
async fn two_batches(ch: &KafkaChannel, a: usize, b: usize) -> u64 {
    ch.append(batch("a", a)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mid = now_ms();
    tokio::time::sleep(Duration::from_millis(800)).await;
    ch.append(batch("b", b)).await.unwrap();
    mid
}

/// Per partition, the first offset of a record whose id starts with `b`, else the
/// partition's end.
fn first_b(all: &[Record], ends: &[Position]) -> Vec<Position> {
    let mut at: BTreeMap<u32, u64> = ends.iter().map(|p| (p.partition, p.offset)).collect();
    for r in all.iter().filter(|r| r.event.id.starts_with('b')) {
        let o = at.get_mut(&r.position.partition).unwrap();
        *o = (*o).min(r.position.offset);
    }
    at.into_iter().map(|(p, o)| Position::new(p, o)).collect()
}

async fn wait_committed(ch: &KafkaChannel, name: &str, want: &[Position]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = ch.committed(name).await.unwrap();
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the server itself answers to `ListOffsets` by timestamp (offsets for
/// times), before cemesh checks it. Kafka answers "none" (`End`) for a time after
/// the last record; tansu 0.6 answers offset 0 (printed, not asserted).
#[tokio::test]
async fn the_server_answers_offsets_for_times() {
    let ns = testing::unique("ofttraw");
    let store = replica().await;
    let ch = channel(&store, &ns, KafkaChannelConfig::default()).await;
    let before = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = two_batches(&ch, 4, 4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = now_ms();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", testing::bootstrap())
        .set("group.id", "cemesh-test-raw")
        .create()
        .unwrap();
    let ask = |ts: u64| {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(ch.topic(), p, Offset::Offset(ts as i64))
                .unwrap();
        }
        let answer = consumer
            .offsets_for_times(tpl, Duration::from_secs(10))
            .unwrap();
        (0..PARTITIONS)
            .map(|p| answer.find_partition(ch.topic(), p).unwrap().offset())
            .collect::<Vec<_>>()
    };
    let (at_before, at_mid, at_after) = (ask(before), ask(mid), ask(after));
    eprintln!("offsets for times: before {at_before:?}, mid {at_mid:?}, after {at_after:?}");
    let ends = ch.ends().await.unwrap();
    let checked_mid = ch.offsets_at(StartAt::Time(mid)).await.unwrap();
    eprintln!("ends {ends:?}; checked by cemesh: mid {checked_mid:?}");
    for (p, end) in ends.iter().enumerate() {
        if end.offset > 0 {
            assert_eq!(at_before[p], Offset::Offset(0), "partition {p}");
        }
    }
    assert_eq!(at_mid.len(), ends.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_at_each_start_and_subscribe_at_a_time() {
    let ns = testing::unique("offat");
    let store = replica().await;
    let ch = channel(&store, &ns, KafkaChannelConfig::default()).await;
    let zeros: Vec<Position> = (0..PARTITIONS as u32)
        .map(|p| Position::new(p, 0))
        .collect();
    // An empty topic: every start is its (empty) beginning.
    for at in [
        StartAt::Earliest,
        StartAt::Latest,
        StartAt::Offset(5),
        StartAt::Time(now_ms()),
    ] {
        assert_eq!(ch.offsets_at(at).await.unwrap(), zeros, "{at:?}");
    }
    let before = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = two_batches(&ch, 12, 12).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = now_ms();
    let ends = ch.ends().await.unwrap();
    assert_eq!(ends.iter().map(|p| p.offset).sum::<u64>(), 24);

    // Where each record went, read from the beginning.
    let reader = ch.subscribe("reader", StartAt::Earliest).await.unwrap();
    let all = read_n(&*reader, 24, true).await;

    assert_eq!(ch.offsets_at(StartAt::Earliest).await.unwrap(), zeros);
    assert_eq!(ch.offsets_at(StartAt::Latest).await.unwrap(), ends);
    let two: Vec<Position> = ends
        .iter()
        .map(|p| Position::new(p.partition, p.offset.min(2)))
        .collect();
    assert_eq!(ch.offsets_at(StartAt::Offset(2)).await.unwrap(), two);
    assert_eq!(ch.offsets_at(StartAt::Offset(1_000)).await.unwrap(), ends);
    assert_eq!(ch.offsets_at(StartAt::Time(0)).await.unwrap(), zeros);
    assert_eq!(ch.offsets_at(StartAt::Time(before)).await.unwrap(), zeros);
    let at_mid = first_b(&all, &ends);
    assert_eq!(ch.offsets_at(StartAt::Time(mid)).await.unwrap(), at_mid);
    // Nothing that new: the end (tansu 0.6 itself answers 0 here).
    assert_eq!(ch.offsets_at(StartAt::Time(after)).await.unwrap(), ends);
    assert_eq!(
        ch.offsets_at(StartAt::Time(after + 3_600_000))
            .await
            .unwrap(),
        ends
    );

    // A new subscription at the time reads the second batch only.
    let sub = ch.subscribe("from-mid", StartAt::Time(mid)).await.unwrap();
    assert_eq!(ch.committed("from-mid").await.unwrap(), at_mid);
    let got = read_n(&*sub, 12, true).await;
    assert_eq!(ids(&got), names("b", 12));
    nothing_more(&*sub, Duration::from_millis(500)).await;
    let late = ch
        .subscribe("from-after", StartAt::Time(after))
        .await
        .unwrap();
    assert_eq!(ch.committed("from-after").await.unwrap(), ends);
    ch.append(vec![keyed("c0".into())]).await.unwrap();
    assert_eq!(ids(&read_n(&*late, 1, true).await), ["c0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_moves_a_stopped_subscription_and_reopening_reads_from_there() {
    let ns = testing::unique("seek");
    let store = replica().await;
    let ch = channel(&store, &ns, KafkaChannelConfig::default()).await;
    let sub = ch.subscribe("t", StartAt::Latest).await.unwrap();
    let mid = two_batches(&ch, 9, 9).await;
    read_n(&*sub, 18, true).await;
    let ends = ch.ends().await.unwrap();
    wait_committed(&ch, "t", &ends).await;
    // The trigger stops: its handle goes, the channel still holds the consumer.
    drop(sub);
    let back = ch.offsets_at(StartAt::Time(mid)).await.unwrap();
    assert_ne!(back, ends);
    ch.seek("t", &back).await.unwrap();
    assert_eq!(ch.committed("t").await.unwrap(), back);
    // From another replica too: the offsets are Kafka's.
    let other = replica().await;
    let och = channel(&other, &ns, KafkaChannelConfig::default()).await;
    assert_eq!(och.committed("t").await.unwrap(), back);

    let sub = ch.subscribe("t", StartAt::Latest).await.unwrap();
    let again = read_n(&*sub, 9, true).await;
    assert_eq!(ids(&again), names("b", 9));
    nothing_more(&*sub, Duration::from_millis(500)).await;
    wait_committed(&ch, "t", &ends).await;
    drop(sub);

    // Only the partitions named move; past the end is clamped to it.
    let zero = Position::new(0, 0);
    ch.seek("t", &[zero]).await.unwrap();
    let mut want = ends.clone();
    want[0] = zero;
    assert_eq!(ch.committed("t").await.unwrap(), want);
    ch.seek("t", &[Position::new(0, 1_000)]).await.unwrap();
    assert_eq!(ch.committed("t").await.unwrap(), ends);

    assert!(matches!(
        ch.seek("nobody", &back).await,
        Err(ChannelError::UnknownSubscription(_))
    ));
    assert!(matches!(
        ch.seek("t", &[Position::new(PARTITIONS as u32, 0)]).await,
        Err(ChannelError::Storage(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_is_refused_while_the_subscription_is_read_here_or_elsewhere() {
    let ns = testing::unique("seekbusy");
    let (a, b) = (replica().await, replica().await);
    let (ca, cb) = (
        channel(&a, &ns, KafkaChannelConfig::default()).await,
        channel(&b, &ns, KafkaChannelConfig::default()).await,
    );
    let sub = ca.subscribe("t", StartAt::Latest).await.unwrap();
    ca.append(batch("a", 3)).await.unwrap();
    read_n(&*sub, 3, true).await;
    let to = ca.offsets_at(StartAt::Earliest).await.unwrap();
    // Open here.
    match ca.seek("t", &to).await {
        Err(ChannelError::Storage(m)) => assert!(m.contains("stop its trigger"), "{m}"),
        other => panic!("seek of an open subscription: {other:?}"),
    }
    // Open on another replica: the group has a member.
    match cb.seek("t", &to).await {
        Err(ChannelError::Storage(m)) => assert!(m.contains("other replicas"), "{m}"),
        other => panic!("seek of a group with members: {other:?}"),
    }
    // Nothing moved: nothing is delivered again.
    nothing_more(&*sub, Duration::from_millis(500)).await;
    let ends = ca.ends().await.unwrap();
    wait_committed(&ca, "t", &ends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_follows_acks() {
    let ns = testing::unique("committed");
    let store = replica().await;
    let ch = channel(&store, &ns, KafkaChannelConfig::default()).await;
    assert!(matches!(
        ch.committed("t").await,
        Err(ChannelError::UnknownSubscription(_))
    ));
    let sub = ch.subscribe("t", StartAt::Latest).await.unwrap();
    let zeros: Vec<Position> = (0..PARTITIONS as u32)
        .map(|p| Position::new(p, 0))
        .collect();
    assert_eq!(ch.committed("t").await.unwrap(), zeros);
    ch.append(batch("a", 12)).await.unwrap();
    let got = read_n(&*sub, 12, false).await;
    assert_eq!(ch.committed("t").await.unwrap(), zeros);
    // Per partition, ack all but the last record: the cursor stops before it.
    let mut last: BTreeMap<u32, Position> = BTreeMap::new();
    for r in &got {
        let l = last.entry(r.position.partition).or_insert(r.position);
        *l = (*l).max(r.position);
    }
    for r in got
        .iter()
        .filter(|r| !last.values().any(|l| *l == r.position))
    {
        sub.ack(r.position).unwrap();
    }
    let mut want = zeros.clone();
    for l in last.values() {
        want[l.partition as usize].offset = l.offset;
    }
    wait_committed(&ch, "t", &want).await;
    // Another replica reads Kafka's commits.
    let other = replica().await;
    let och = channel(&other, &ns, KafkaChannelConfig::default()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while och.committed("t").await.unwrap() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not committed to Kafka"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in last.values() {
        sub.ack(*l).unwrap();
    }
    wait_committed(&ch, "t", &ch.ends().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_subscription_far_behind_does_not_fill_the_channel() {
    let ns = testing::unique("passive");
    let store = replica().await;
    let ch = channel(
        &store,
        &ns,
        KafkaChannelConfig {
            max_backlog: Some(20),
            ..KafkaChannelConfig::default()
        },
    )
    .await;
    // A replay that never reads.
    let _replay = ch.subscribe("replay:r1", StartAt::Earliest).await.unwrap();
    let mut appended = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        ch.append(batch(&format!("p{appended}-"), 20))
            .await
            .unwrap_or_else(|e| panic!("append refused after {appended}: {e}"));
        appended += 20;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ch.lag("replay:r1").await.unwrap() > 20 * 5);
    // An active trigger as far behind does count.
    let _slow = ch.subscribe("slow", StartAt::Earliest).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ch.append(batch("q", 1)).await {
            Err(ChannelError::Full { reason, .. }) => {
                assert!(reason.contains("max-backlog"), "{reason}");
                break;
            }
            Ok(()) => {
                assert!(tokio::time::Instant::now() < deadline, "never refused");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("append failed: {e}"),
        }
    }
}
