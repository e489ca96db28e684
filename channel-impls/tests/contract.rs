//! The channel contract, run against every implementation: one generic test per
//! property, instantiated for the memory channel, the sled channel and (feature
//! `kafka`) the Kafka channel. The Kafka tests need a Kafka: `CEMESH_TEST_KAFKA`, or
//! a tansu started for the run; without one they fail, never skip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cemesh_channels::{
    Channel, ChannelError, MemoryChannel, MemoryConfig, Record, SledChannel, SledConfig, SledStore,
    StartAt, Subscription,
};
use cemesh_proto::Event;

/// Settings every implementation understands.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_records: u64,
    retain_without_subscribers: u64,
    /// Ingress backpressure (memory and sled).
    backpressure_window: Option<u64>,
    backpressure_hold: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records: 1_000_000,
            retain_without_subscribers: 0,
            backpressure_window: None,
            backpressure_hold: Duration::ZERO,
        }
    }
}

/// Makes channels of one implementation.
trait Factory {
    type C: Channel + Clone;
    /// Records are removed once every subscription passed them (sled, memory); a
    /// Kafka topic keeps them for its retention time instead.
    const RETENTION_BY_ACK: bool = true;
    /// `max_records` caps the backlog exactly, checked on each append (sled, memory);
    /// Kafka's cap follows the slowest subscription's lag, measured in the background,
    /// so it holds approximately.
    const BACKLOG_CAP_EXACT: bool = true;
    async fn make(&self, limits: Limits) -> Self::C;
    /// Lets background work (retention) catch up.
    async fn settle(&self, ch: &Self::C);
}

struct Memory;

impl Factory for Memory {
    type C = MemoryChannel;
    async fn make(&self, limits: Limits) -> MemoryChannel {
        MemoryChannel::new(MemoryConfig {
            max_records: limits.max_records as usize,
            retain_without_subscribers: limits.retain_without_subscribers as usize,
            backpressure_window: limits.backpressure_window,
            backpressure_hold: limits.backpressure_hold,
            ..MemoryConfig::default()
        })
    }
    async fn settle(&self, _ch: &MemoryChannel) {}
}

struct Sled {
    _dir: tempfile::TempDir,
    store: SledStore,
    next_id: AtomicU64,
}

impl Sled {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open store");
        Sled {
            _dir: dir,
            store,
            next_id: AtomicU64::new(0),
        }
    }
}

impl Factory for Sled {
    type C = SledChannel;
    async fn make(&self, limits: Limits) -> SledChannel {
        let id = format!("broker-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.store
            .channel(
                &id,
                SledConfig {
                    max_backlog_records: limits.max_records,
                    retain_without_subscribers: limits.retain_without_subscribers,
                    backpressure_window: limits.backpressure_window,
                    backpressure_hold: limits.backpressure_hold,
                    ..SledConfig::default()
                },
            )
            .expect("open channel")
    }
    async fn settle(&self, ch: &SledChannel) {
        ch.enforce_retention().await.expect("retention");
    }
}

fn ev(id: impl Into<String>) -> Event {
    let mut e = Event::new(id, "/contract", "test.event");
    e.data = Some(bytes::Bytes::from_static(b"{\"hello\":\"world\"}"));
    e
}

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.event.id.clone()).collect()
}

const NOTHING_WAIT: Duration = Duration::from_millis(150);

/// Reads until `n` records arrived (several `next` calls if needed).
async fn read_n(sub: &dyn Subscription, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), sub.next(n - out.len()))
            .await
            .expect("records within 10s")
            .expect("next");
        assert!(!batch.is_empty(), "next returned an empty batch");
        out.extend(batch);
    }
    out
}

async fn assert_nothing(sub: &dyn Subscription) {
    if let Ok(r) = tokio::time::timeout(NOTHING_WAIT, sub.next(10)).await {
        panic!("expected no record, got {:?}", r.map(|r| ids(&r)));
    }
}

async fn append_ids<C: Channel>(ch: &C, ids: &[&str]) {
    ch.append(ids.iter().map(|i| ev(*i)).collect())
        .await
        .expect("append");
}

// ---------------------------------------------------------------------------------
// The contract

async fn append_next_ack_watermark<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    append_ids(&ch, &["e0", "e1", "e2"]).await;
    append_ids(&ch, &["e3", "e4"]).await;
    let recs = read_n(&*sub, 5).await;
    assert_eq!(ids(&recs), ["e0", "e1", "e2", "e3", "e4"]);
    for w in recs.windows(2) {
        assert!(w[0].position < w[1].position);
    }
    assert_eq!(ch.lag("a").await.unwrap(), 5);
    // Out of order: the watermark only moves over a contiguous prefix.
    sub.ack(recs[1].position).unwrap();
    sub.ack(recs[3].position).unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 5);
    sub.ack(recs[0].position).unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 3);
    sub.ack(recs[2].position).unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 1);
    sub.ack(recs[4].position).unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 0);
    // Acking twice is harmless.
    sub.ack(recs[4].position).unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 0);
    assert_nothing(&*sub).await;
}

async fn next_respects_max_and_waits<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let waiter = {
        let sub = sub.clone();
        tokio::spawn(async move { sub.next(2).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    append_ids(&ch, &["e0", "e1", "e2"]).await;
    let first = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by append")
        .unwrap()
        .unwrap();
    assert_eq!(ids(&first), ["e0", "e1"]);
    let rest = sub.next(100).await.unwrap();
    assert_eq!(ids(&rest), ["e2"]);
}

async fn reopen_redelivers_after_watermark<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    append_ids(&ch, &["e0", "e1", "e2", "e3", "e4"]).await;
    let recs = read_n(&*sub, 5).await;
    for i in [0, 1, 3] {
        sub.ack(recs[i].position).unwrap();
    }
    drop(sub);
    // `start` is ignored for an existing subscription.
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let again = read_n(&*sub, 3).await;
    assert_eq!(ids(&again), ["e2", "e3", "e4"]);
    assert_eq!(again[0].position, recs[2].position);
    assert_eq!(ch.lag("a").await.unwrap(), 3);
    assert_nothing(&*sub).await;
}

async fn start_at<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    // Keeps everything retained.
    let _keeper = ch.subscribe("keeper", StartAt::Earliest).await.unwrap();
    append_ids(&ch, &["e0", "e1", "e2"]).await;

    let earliest = ch.subscribe("earliest", StartAt::Earliest).await.unwrap();
    let latest = ch.subscribe("latest", StartAt::Latest).await.unwrap();
    let recs = read_n(&*earliest, 3).await;
    assert_eq!(ids(&recs), ["e0", "e1", "e2"]);
    let second = recs[1].position.offset;
    let at = ch
        .subscribe("offset", StartAt::Offset(second))
        .await
        .unwrap();
    let past = ch
        .subscribe("past-end", StartAt::Offset(u64::MAX))
        .await
        .unwrap();
    let before = ch
        .subscribe("before-start", StartAt::Offset(0))
        .await
        .unwrap();
    assert_eq!(ch.lag("latest").await.unwrap(), 0);
    assert_eq!(ch.lag("offset").await.unwrap(), 2);
    assert_nothing(&*latest).await;

    append_ids(&ch, &["e3"]).await;
    assert_eq!(ids(&read_n(&*latest, 1).await), ["e3"]);
    assert_eq!(ids(&read_n(&*at, 3).await), ["e1", "e2", "e3"]);
    assert_eq!(ids(&read_n(&*past, 1).await), ["e3"]);
    assert_eq!(ids(&read_n(&*before, 4).await), ["e0", "e1", "e2", "e3"]);
}

async fn lag_and_unknown<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    assert!(matches!(
        ch.lag("nobody").await,
        Err(ChannelError::UnknownSubscription(_))
    ));
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 0);
    append_ids(&ch, &["e0", "e1"]).await;
    assert_eq!(ch.lag("a").await.unwrap(), 2);
    // Reading does not commit.
    let recs = read_n(&*sub, 2).await;
    assert_eq!(ch.lag("a").await.unwrap(), 2);
    sub.ack(recs[0].position).unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 1);
    // The ends are where the next record of each partition goes: one past the last
    // record read there.
    let ends = ch.ends().await.unwrap();
    for r in &recs {
        let end = ends
            .iter()
            .find(|e| e.partition == r.position.partition)
            .unwrap_or_else(|| panic!("no end for partition {} in {ends:?}", r.position.partition));
        assert!(end.offset > r.position.offset, "{ends:?} {:?}", r.position);
    }
    let last = recs.iter().map(|r| r.position).max().unwrap();
    let end = ends.iter().find(|e| e.partition == last.partition).unwrap();
    assert_eq!(end.offset, last.offset + 1, "{ends:?}");
}

async fn unsubscribe_closes_and_forgets<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let waiter = {
        let sub = sub.clone();
        tokio::spawn(async move { sub.next(10).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    ch.unsubscribe("a").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("waiter woken")
        .unwrap();
    assert!(matches!(r, Err(ChannelError::Closed)), "{r:?}");
    assert!(matches!(
        ch.lag("a").await,
        Err(ChannelError::UnknownSubscription(_))
    ));
    assert!(matches!(
        sub.ack(cemesh_channels::Position::new(0, 0)),
        Err(ChannelError::Closed)
    ));
    // Unsubscribing an unknown name is fine.
    ch.unsubscribe("a").await.unwrap();
    // A new subscription of the same name starts afresh.
    append_ids(&ch, &["e0"]).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    assert_eq!(ch.lag("a").await.unwrap(), 0);
    assert_nothing(&*sub).await;
}

async fn retention_after_all_acked<F: Factory>(f: &F) {
    if !F::RETENTION_BY_ACK {
        return retention_is_the_logs(f).await;
    }
    let ch = f.make(Limits::default()).await;
    let a = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let b = ch.subscribe("b", StartAt::Latest).await.unwrap();
    append_ids(&ch, &["e0", "e1", "e2"]).await;
    for r in read_n(&*a, 3).await {
        a.ack(r.position).unwrap();
    }
    f.settle(&ch).await;
    // "b" has not passed them: still there for a newcomer.
    let c = ch.subscribe("c", StartAt::Earliest).await.unwrap();
    assert_eq!(ids(&read_n(&*c, 3).await), ["e0", "e1", "e2"]);
    ch.unsubscribe("c").await.unwrap();
    let recs = read_n(&*b, 3).await;
    b.ack(recs[0].position).unwrap();
    b.ack(recs[1].position).unwrap();
    f.settle(&ch).await;
    let d = ch.subscribe("d", StartAt::Earliest).await.unwrap();
    assert_eq!(ids(&read_n(&*d, 1).await), ["e2"]);
    ch.unsubscribe("d").await.unwrap();
    b.ack(recs[2].position).unwrap();
    f.settle(&ch).await;
    let e = ch.subscribe("e", StartAt::Earliest).await.unwrap();
    assert_eq!(ch.lag("e").await.unwrap(), 0);
    assert_nothing(&*e).await;
}

async fn retention_without_subscribers<F: Factory>(f: &F) {
    if !F::RETENTION_BY_ACK {
        return kept_without_subscribers_by_the_log(f).await;
    }
    // None kept by default.
    let ch = f.make(Limits::default()).await;
    append_ids(&ch, &["e0", "e1"]).await;
    f.settle(&ch).await;
    let sub = ch.subscribe("a", StartAt::Earliest).await.unwrap();
    assert_nothing(&*sub).await;

    // The newest N kept when configured.
    let ch = f
        .make(Limits {
            retain_without_subscribers: 2,
            ..Limits::default()
        })
        .await;
    append_ids(&ch, &["e0", "e1", "e2"]).await;
    append_ids(&ch, &["e3", "e4"]).await;
    f.settle(&ch).await;
    let sub = ch.subscribe("a", StartAt::Earliest).await.unwrap();
    assert_eq!(ids(&read_n(&*sub, 2).await), ["e3", "e4"]);
    assert_nothing(&*sub).await;
}

/// For a log with time-based retention (Kafka): acked records stay readable from
/// `Earliest` by a newcomer, and acking never loses anything for the others.
async fn retention_is_the_logs<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    append_ids(&ch, &["e0", "e1"]).await;
    let a = ch.subscribe("a", StartAt::Earliest).await.unwrap();
    let b = ch.subscribe("b", StartAt::Earliest).await.unwrap();
    for r in read_n(&*a, 2).await {
        a.ack(r.position).unwrap();
    }
    f.settle(&ch).await;
    assert_eq!(ids(&read_n(&*b, 2).await), ["e0", "e1"]);
    let c = ch.subscribe("c", StartAt::Earliest).await.unwrap();
    assert_eq!(ids(&read_n(&*c, 2).await), ["e0", "e1"]);
    assert_eq!(ch.lag("a").await.unwrap(), 0);
    assert_eq!(ch.lag("c").await.unwrap(), 2);
}

/// For a log with time-based retention (Kafka): what is appended while nobody
/// subscribes is all there for a later `Earliest` subscription.
async fn kept_without_subscribers_by_the_log<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    append_ids(&ch, &["e0", "e1", "e2"]).await;
    append_ids(&ch, &["e3", "e4"]).await;
    f.settle(&ch).await;
    let sub = ch.subscribe("a", StartAt::Earliest).await.unwrap();
    assert_eq!(ids(&read_n(&*sub, 5).await), ["e0", "e1", "e2", "e3", "e4"]);
    assert_nothing(&*sub).await;
}

async fn ordering<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let mut expected = Vec::new();
    for batch in 0..100 {
        let evs: Vec<Event> = (0..3).map(|i| ev(format!("b{batch}-{i}"))).collect();
        expected.extend(evs.iter().map(|e| e.id.clone()));
        ch.append(evs).await.unwrap();
    }
    let recs = read_n(&*sub, 300).await;
    assert_eq!(ids(&recs), expected);
    for w in recs.windows(2) {
        assert!(w[0].position < w[1].position);
    }
}

async fn concurrent_producers<F: Factory>(f: &F) {
    const PRODUCERS: usize = 8;
    const EACH: usize = 500;
    let ch = f.make(Limits::default()).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let consumer = {
        let sub = sub.clone();
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(PRODUCERS * EACH);
            while seen.len() < PRODUCERS * EACH {
                let batch = tokio::time::timeout(Duration::from_secs(20), sub.next(64))
                    .await
                    .expect("no stall")
                    .expect("next");
                for r in batch {
                    sub.ack(r.position).unwrap();
                    seen.push(r.event.id.clone());
                }
            }
            seen
        })
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ch = ch.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while i < EACH {
                    // Mix single events and small batches.
                    let n = if i % 7 == 0 { 3.min(EACH - i) } else { 1 };
                    let evs = (i..i + n).map(|k| ev(format!("p{p}-{k}"))).collect();
                    ch.append(evs).await.expect("append");
                    i += n;
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let seen = consumer.await.unwrap();
    assert_eq!(seen.len(), PRODUCERS * EACH);
    // Exactly once each, and each producer's events in its append order.
    let mut last: HashMap<usize, i64> = HashMap::new();
    let mut unique = std::collections::HashSet::new();
    for id in &seen {
        assert!(unique.insert(id.clone()), "{id} seen twice");
        let (p, k) = id[1..].split_once('-').unwrap();
        let (p, k): (usize, i64) = (p.parse().unwrap(), k.parse().unwrap());
        let prev = last.insert(p, k).unwrap_or(-1);
        assert!(k > prev, "producer {p}: {k} after {prev}");
    }
    assert_eq!(ch.lag("a").await.unwrap(), 0);
    assert_nothing(&*sub).await;
}

async fn backpressure<F: Factory>(f: &F) {
    if !F::BACKLOG_CAP_EXACT {
        return backpressure_approximate(f).await;
    }
    let ch = f
        .make(Limits {
            max_records: 10,
            ..Limits::default()
        })
        .await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let ten: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    ch.append(ten.iter().map(ev).collect()).await.unwrap();
    match ch.append(vec![ev("over")]).await {
        Err(ChannelError::Full { retry_after, .. }) => assert!(retry_after > Duration::ZERO),
        other => panic!("expected Full, got {other:?}"),
    }
    // A refused batch left nothing behind.
    let recs = read_n(&*sub, 10).await;
    assert_eq!(ids(&recs), ten);
    assert_nothing(&*sub).await;
    // Acking makes room again.
    for r in &recs[..5] {
        sub.ack(r.position).unwrap();
    }
    f.settle(&ch).await;
    ch.append((0..5).map(|i| ev(format!("f{i}"))).collect())
        .await
        .unwrap();
    assert!(matches!(
        ch.append(vec![ev("over")]).await,
        Err(ChannelError::Full { .. })
    ));
    assert_eq!(ids(&read_n(&*sub, 5).await), ["f0", "f1", "f2", "f3", "f4"]);
}

/// A cap measured in the background (Kafka): past it appends are refused within a
/// few seconds, with a wait to retry after; refused appends store nothing; once the
/// subscription catches up, appends are taken again.
async fn backpressure_approximate<F: Factory>(f: &F) {
    let ch = f
        .make(Limits {
            max_records: 10,
            ..Limits::default()
        })
        .await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let twenty: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    ch.append(twenty.iter().map(ev).collect()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut taken = 0;
    loop {
        match ch.append(vec![ev(format!("x{taken}"))]).await {
            Ok(_) => taken += 1,
            Err(ChannelError::Full { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO);
                break;
            }
            Err(e) => panic!("expected Full, got {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "20 events behind a cap of 10 and still taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Exactly what was accepted is there, refusals left nothing behind.
    let recs = read_n(&*sub, 20 + taken).await;
    assert_eq!(recs.len(), 20 + taken);
    assert_nothing(&*sub).await;
    for r in &recs {
        sub.ack(r.position).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ch.append(vec![ev("again")]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "appends still refused after the subscription caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn event_round_trips<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    let sub = ch.subscribe("a", StartAt::Latest).await.unwrap();
    let mut e = ev("full");
    e.subject = Some("subj".into());
    e.time = Some("2024-01-02T03:04:05.678+02:00".into());
    e.datacontenttype = Some("application/json".into());
    e.set_extension(
        "partitionkey",
        cemesh_proto::AttributeValue::String("k1".into()),
    );
    ch.append(vec![e.clone()]).await.unwrap();
    let got = read_n(&*sub, 1).await;
    assert_eq!(*got[0].event, e);
}

/// Backpressure that follows delivery (memory and sled): past the window of bytes a
/// delivering subscription has yet to take for delivery, the door refuses `Full`
/// naming the window: `backpressure` at once, `room` after holding up to the
/// channel's hold. Appends are not refused by the window (a request let in is
/// stored). A read that makes room opens the door, and lets a held `room` in before
/// its hold ends; what is in flight (read, not yet acked) does not count; a
/// subscription that stopped reading for longer than `flow::ACTIVE_WITHIN` no longer
/// holds it.
async fn delivery_backpressure<F: Factory>(f: &F) {
    // Small events (~50 bytes stored by sled, ~250 as the memory channel counts
    // them): a 2 KiB window holds between 8 and 41 behind.
    let hold = Duration::from_millis(300);
    let (ch, sub) = windowed(f, hold).await;
    let (sent, refused) = fill_window(&ch).await;
    assert!((4..=64).contains(&sent), "refused after {sent}");
    assert!(
        matches!(&refused, ChannelError::Full { reason, .. } if reason.contains("backpressure window")),
        "{refused}"
    );
    // Past the window, an append is still stored: the window is the door's.
    ch.append(vec![ev("let-in")]).await.unwrap();
    // Held for the hold, then refused, saying so.
    let started = std::time::Instant::now();
    let held = ch.room().await.unwrap_err();
    assert!(started.elapsed() >= hold, "held {:?}", started.elapsed());
    assert!(
        matches!(&held, ChannelError::Full { reason, .. }
            if reason.contains("backpressure window") && reason.contains("held 300 ms")),
        "{held}"
    );
    // The subscriber takes them all for delivery: the door opens, though none is
    // acked yet (in flight, or retrying, is not waiting).
    let got = read_n(sub.as_ref(), sent + 1).await;
    assert!(ch.backpressure().is_ok(), "the early check still refuses");
    ch.room().await.unwrap();
    for r in &got {
        sub.ack(r.position).unwrap();
    }
    // Far behind but no longer reading: it does not hold the door.
    fill_window(&ch).await;
    tokio::time::sleep(cemesh_channels::flow::ACTIVE_WITHIN + Duration::from_millis(300)).await;
    assert!(
        ch.backpressure().is_ok(),
        "a stopped reader holds the early check"
    );

    // A long hold: the read that makes room lets a held producer in, long before
    // its hold ends.
    let hold = Duration::from_secs(30);
    let (ch, sub) = windowed(f, hold).await;
    let (sent, _) = fill_window(&ch).await;
    let waiting = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.room().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "let in while the window is passed");
    let started = std::time::Instant::now();
    let _in_flight = read_n(sub.as_ref(), sent).await;
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the read let the held producer in")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < hold);
}

/// A channel with a 2 KiB backpressure window and `hold`, and its subscription
/// `slow`.
async fn windowed<F: Factory>(f: &F, hold: Duration) -> (F::C, Arc<dyn Subscription>) {
    let ch = f
        .make(Limits {
            backpressure_window: Some(2048),
            backpressure_hold: hold,
            ..Limits::default()
        })
        .await;
    let sub = ch.subscribe("slow", StartAt::Latest).await.unwrap();
    (ch, sub)
}

/// Appends single events while the door is open; returns how many, and the
/// refusal that closed it.
async fn fill_window(ch: &impl Channel) -> (usize, ChannelError) {
    let mut sent = 0;
    loop {
        if let Err(e) = ch.backpressure() {
            return (sent, e);
        }
        ch.append(vec![ev(format!("e{sent}"))]).await.unwrap();
        sent += 1;
        assert!(sent < 100, "never refused");
    }
}

mod delivery_backpressure {
    use super::*;

    #[tokio::test]
    async fn memory() {
        super::delivery_backpressure(&Memory).await
    }
    #[tokio::test]
    async fn sled() {
        super::delivery_backpressure(&Sled::new()).await
    }
}

/// `committed` follows acks; `seek` moves a closed subscription's cursor back (or
/// on), and a reopening reads from there; `offsets_at` answers where starts fall.
async fn seek_and_committed<F: Factory>(f: &F) {
    let ch = f.make(Limits::default()).await;
    let a = ch.subscribe("ns/a", StartAt::Latest).await.unwrap();
    // Holds the records where retention follows acks.
    let _hold = ch.subscribe("ns/hold", StartAt::Latest).await.unwrap();
    append_ids(&ch, &["e0", "e1", "e2", "e3", "e4"]).await;
    for r in read_n(&*a, 5).await {
        a.ack(r.position).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ch.committed("ns/a").await.unwrap()[0].offset < 5 {
        assert!(std::time::Instant::now() < deadline, "acks not committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ends = ch.ends().await.unwrap();
    assert_eq!(ch.offsets_at(StartAt::Latest).await.unwrap(), ends);
    drop(a);
    let mut back = ends.clone();
    back[0].offset -= 3;
    ch.seek("ns/a", &back).await.unwrap();
    assert_eq!(ch.committed("ns/a").await.unwrap(), back);
    let a = ch.subscribe("ns/a", StartAt::Latest).await.unwrap();
    assert_eq!(ids(&read_n(&*a, 3).await), ["e2", "e3", "e4"]);
    assert!(matches!(
        ch.committed("ns/none").await,
        Err(ChannelError::UnknownSubscription(_))
    ));
}

macro_rules! contract {
    ($module:ident, $factory:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn append_next_ack_watermark() {
                super::append_next_ack_watermark(&$factory).await
            }
            #[tokio::test]
            async fn next_respects_max_and_waits() {
                super::next_respects_max_and_waits(&$factory).await
            }
            #[tokio::test]
            async fn reopen_redelivers_after_watermark() {
                super::reopen_redelivers_after_watermark(&$factory).await
            }
            #[tokio::test]
            async fn start_at() {
                super::start_at(&$factory).await
            }
            #[tokio::test]
            async fn lag_and_unknown() {
                super::lag_and_unknown(&$factory).await
            }
            #[tokio::test]
            async fn unsubscribe_closes_and_forgets() {
                super::unsubscribe_closes_and_forgets(&$factory).await
            }
            #[tokio::test]
            async fn retention_after_all_acked() {
                super::retention_after_all_acked(&$factory).await
            }
            #[tokio::test]
            async fn retention_without_subscribers() {
                super::retention_without_subscribers(&$factory).await
            }
            #[tokio::test]
            async fn ordering() {
                super::ordering(&$factory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_producers() {
                super::concurrent_producers(&$factory).await
            }
            #[tokio::test]
            async fn backpressure() {
                super::backpressure(&$factory).await
            }
            #[tokio::test]
            async fn seek_and_committed() {
                super::seek_and_committed(&$factory).await
            }
            #[tokio::test]
            async fn event_round_trips() {
                super::event_round_trips(&$factory).await
            }
        }
    };
}

contract!(memory, Memory);
contract!(sled, Sled::new());
#[cfg(feature = "kafka")]
contract!(kafka, kafka_factory::Kafka::new().await);

#[cfg(feature = "kafka")]
mod kafka_factory {
    use super::*;
    use cemesh_channels::kafka::{
        testing, KafkaChannel, KafkaChannelConfig, KafkaOptions, KafkaStore,
    };

    /// One topic per channel (one partition: the contract's total order), in a
    /// namespace of its own so group names never collide between tests or runs.
    pub struct Kafka {
        store: KafkaStore,
    }

    impl Kafka {
        pub async fn new() -> Self {
            let options = KafkaOptions {
                partitions: 1,
                commit_interval: Duration::from_millis(50),
                ..testing::options()
            };
            let store = KafkaStore::connect(options)
                .await
                .expect("connect to the test Kafka");
            Kafka { store }
        }
    }

    impl Factory for Kafka {
        type C = KafkaChannel;
        const RETENTION_BY_ACK: bool = false;
        const BACKLOG_CAP_EXACT: bool = false;
        async fn make(&self, limits: Limits) -> KafkaChannel {
            self.store
                .channel(
                    &testing::unique("contract"),
                    "broker",
                    KafkaChannelConfig {
                        max_backlog: Some(limits.max_records),
                        ..KafkaChannelConfig::default()
                    },
                )
                .await
                .expect("open channel")
        }
        async fn settle(&self, _ch: &KafkaChannel) {}
    }
}
