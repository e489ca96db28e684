//! A subscription is a consumer group. Per process, one consumer per subscription
//! runs a pump task that keeps polling Kafka, so group heartbeats and rebalances are
//! served even while the dispatcher is busy retrying: records go into a bounded
//! buffer, and the partitions are paused (not abandoned) while it is full.
//!
//! Offsets: each owned partition has an [`AckTracker`] starting at the group's
//! committed offset, read when the partition is assigned (or, when that read fails,
//! at the first record read from it). Acks move its watermark; the pump commits
//! moved watermarks every `commit_interval`, and synchronously when a partition is
//! revoked and when the subscription closes. An ack for a partition this replica no
//! longer owns is dropped: its new owner re-delivers from the committed offset
//! (at-least-once).
//!
//! Gaps: a record past the next expected offset means Kafka holds nothing in
//! between (compaction, transaction markers), and the offsets between are done.
//! cemesh's own topics have no gaps (no compaction, no transactions), so there a gap
//! is a fault of the server or the client that would lose records silently. Such a
//! gap is refetched first, from the expected offset (a record published but not yet
//! readable) and then from further back (a server that answers a fetch from the
//! middle of a batch with the next batch, as tansu 0.6 does), dropping what was
//! already taken; only a gap that survives the refetches is believed. Topics cemesh
//! does not own (a KafkaSource's) may have real gaps, which are believed at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::AdminOptions;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, oneshot, Notify};

use super::client::{blocking, kafka_err, StoreInner};
use super::codec;
use super::offsets;
use super::options::ForeignTopic;
use super::orphans::{self, Verdict};
use super::topic::BrokerTopic;
use crate::{AckTracker, ChannelError, Position, Record, StartAt, Subscription};

/// Records buffered per subscription before its partitions are paused.
const BUFFER_HIGH: usize = 2048;
/// Partitions resume once the buffer drained to this.
const BUFFER_LOW: usize = 512;

type KConsumer = StreamConsumer<SubContext>;

struct Part {
    tracker: AckTracker,
    /// The next offset expected from the fetch stream.
    expect: u64,
    /// The offset last committed (or known committed) to Kafka.
    committed_remote: u64,
    /// Refetches made for the gap at `expect` (see the module doc).
    refetches: u8,
}

impl Part {
    fn at(offset: u64) -> Part {
        Part {
            tracker: AckTracker::new(offset),
            expect: offset,
            committed_remote: offset,
            refetches: 0,
        }
    }
}

/// Where each refetch of a gap starts, before the expected offset: the gap itself,
/// then back over the batch that may hold it. After the last, the gap is believed.
const REFETCH_BACK: [u64; 3] = [0, 256, 65_536];

/// What to do about a gap between a partition's expected offset and a record.
#[derive(Debug, PartialEq, Eq)]
enum Gap {
    /// Fetch again from this offset.
    Refetch(u64),
    /// Kafka has no records there: they are done.
    Believe,
}

fn on_gap(part: &mut Part, verify: bool) -> Gap {
    match REFETCH_BACK.get(usize::from(part.refetches)) {
        Some(back) if verify => {
            part.refetches += 1;
            Gap::Refetch(part.expect.saturating_sub(*back))
        }
        _ => Gap::Believe,
    }
}

struct PartsState {
    parts: HashMap<i32, Part>,
    buffer: VecDeque<Record>,
    paused: bool,
    /// A commit failed: send every watermark again.
    recommit: bool,
}

/// State shared by the pump, the handles and the rebalance callbacks.
struct Parts {
    state: Mutex<PartsState>,
    /// Records arrived or the subscription closed.
    notify: Notify,
    /// Set when the topic is a KafkaSource's: how its records become events.
    foreign: Option<ForeignTopic>,
}

impl Parts {
    fn new(foreign: Option<ForeignTopic>) -> Self {
        Parts {
            state: Mutex::new(PartsState {
                parts: HashMap::new(),
                buffer: VecDeque::new(),
                paused: false,
                recommit: false,
            }),
            notify: Notify::new(),
            foreign,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PartsState> {
        // Every mutation is a few field updates: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watermarks that moved since the last commit.
    fn to_commit(&self, topic: &str, only: Option<&[i32]>) -> TopicPartitionList {
        let mut st = self.lock();
        let all = std::mem::take(&mut st.recommit);
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &mut st.parts {
            if only.is_some_and(|o| !o.contains(p)) {
                continue;
            }
            let c = part.tracker.committed();
            if c > part.committed_remote || (all && c > 0) {
                part.committed_remote = c;
                if let Ok(c) = i64::try_from(c) {
                    let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(c));
                }
            }
        }
        tpl
    }
}

pub(crate) struct SubContext {
    parts: Arc<Parts>,
    topic: String,
    group: String,
    request_timeout: Duration,
}

impl ClientContext for SubContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(group = %self.group, facility = fac, "Kafka: {log_message}")
            }
            _ => tracing::debug!(group = %self.group, facility = fac, "Kafka: {log_message}"),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for SubContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let revoked = partitions_of(tpl, &self.topic);
                // Hand over exactly what is finished, then forget the partitions and
                // the records of them not yet handed out.
                let commit = self.parts.to_commit(&self.topic, Some(&revoked));
                if commit.count() > 0 {
                    if let Err(e) = base.commit(&commit, CommitMode::Sync) {
                        tracing::warn!(group = %self.group, error = %e, "Committing revoked partitions failed; their new owner re-delivers from the previous commit");
                    }
                }
                let mut st = self.parts.lock();
                for p in &revoked {
                    st.parts.remove(p);
                }
                st.buffer
                    .retain(|r| !revoked.contains(&(r.position.partition as i32)));
                tracing::info!(group = %self.group, partitions = ?revoked, "Kafka partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                let assigned = partitions_of(tpl, &self.topic);
                // Where reading starts: the group's committed offsets, so that a
                // first fetch past them shows as a gap (see the module doc).
                let committed = base
                    .committed_offsets((*tpl).clone(), self.request_timeout)
                    .map_err(|e| {
                        tracing::debug!(group = %self.group, error = %e, "Reading the committed offsets of assigned partitions failed; tracking from the first records");
                    })
                    .ok();
                let mut st = self.parts.lock();
                for p in &assigned {
                    st.parts.remove(p);
                    let at = committed
                        .as_ref()
                        .and_then(|c| c.find_partition(&self.topic, *p))
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => u64::try_from(o).ok(),
                            _ => None,
                        });
                    if let Some(at) = at {
                        st.parts.insert(*p, Part::at(at));
                    }
                }
                st.paused = false;
                tracing::info!(group = %self.group, partitions = ?assigned, "Kafka partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "Kafka rebalance failed")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(group = %self.group, error = %e, "Committing offsets failed; retrying");
            self.parts.lock().recommit = true;
        }
    }
}

enum Command {
    /// Re-deliver everything after the watermark (the subscription was reopened).
    Rewind(oneshot::Sender<Result<(), ChannelError>>),
    /// Leave the group and join again: some partitions are read by no member
    /// ([`orphans`]).
    Rejoin(String),
}

/// One subscription's consumer in this process.
pub(crate) struct SubInner {
    group: String,
    parts: Arc<Parts>,
    /// Taken on close, so the last reference drops (and leaves the group) off the
    /// async threads.
    consumer: Mutex<Option<Arc<KConsumer>>>,
    closed: AtomicBool,
    /// Live [`Handle`]s: while there are none, nothing reads the subscription.
    handles: AtomicUsize,
    commands: mpsc::Sender<Command>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SubInner {
    pub(crate) async fn open(
        chan: &BrokerTopic,
        name: &str,
        start: StartAt,
    ) -> Result<Arc<SubInner>, ChannelError> {
        let store = &chan.store;
        let group = chan.group_name(name);
        let topic = chan.topic.clone();
        let opts = &store.options;
        let session = opts.session_timeout.as_millis().max(1000);
        let parts = Arc::new(Parts::new(chan.foreign.clone()));
        let context = SubContext {
            parts: parts.clone(),
            topic: topic.clone(),
            group: group.clone(),
            request_timeout: opts.request_timeout,
        };
        let consumer: KConsumer = store
            .client_config(&[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                // A committed offset that retention removed: start at the oldest
                // record kept, never skip.
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", &session.to_string()),
                ("heartbeat.interval.ms", &(session / 4).max(100).to_string()),
                ("fetch.wait.max.ms", "100"),
            ])
            .create_with_context(context)
            .map_err(|e| kafka_err(format!("creating the consumer of group {group}"), e))?;
        let consumer = Arc::new(consumer);
        init_group(store, &consumer, &topic, chan.partitions, &group, start).await?;
        consumer
            .subscribe(&[&topic])
            .map_err(|e| kafka_err(format!("subscribing group {group} to topic {topic}"), e))?;

        let (commands, commands_rx) = mpsc::channel(4);
        let (stop, stop_rx) = oneshot::channel();
        let inner = Arc::new(SubInner {
            group: group.clone(),
            parts: parts.clone(),
            consumer: Mutex::new(Some(consumer.clone())),
            closed: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
            commands,
            stop: Mutex::new(Some(stop)),
            pump: Mutex::new(None),
        });
        let watchdog = tokio::spawn(watch_group(
            consumer.clone(),
            topic.clone(),
            chan.partitions,
            group.clone(),
            orphans::check_interval(opts.session_timeout),
            opts.request_timeout,
            inner.commands.clone(),
        ));
        let pump = tokio::spawn(pump(
            consumer,
            parts,
            topic,
            group,
            opts.commit_interval,
            commands_rx,
            stop_rx,
            watchdog,
        ));
        *inner.pump.lock().unwrap_or_else(|p| p.into_inner()) = Some(pump);
        Ok(inner)
    }

    /// Re-delivers everything after the watermark, as a reopened subscription does.
    pub(crate) async fn reopen(&self) -> Result<(), ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Rewind(tx))
            .await
            .map_err(|_| ChannelError::Closed)?;
        rx.await.map_err(|_| ChannelError::Closed)?
    }

    /// Stops the pump, commits what is finished and leaves the group.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.parts.notify.notify_waiters();
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let pump = self.pump.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pump) = pump {
            let _ = pump.await;
        }
        // The pump committed. Closing leaves the group, so a following delete of the
        // group finds it empty; librdkafka's close blocks, hence not on this thread.
        let consumer = self.consumer().ok();
        *self.consumer.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(consumer) = consumer {
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        }
    }

    fn consumer(&self) -> Result<Arc<KConsumer>, ChannelError> {
        self.consumer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ChannelError::Closed)
    }

    /// Whether a handle on the subscription is held (its trigger runs).
    pub(crate) fn in_use(&self) -> bool {
        self.handles.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn close_in_background(self: Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { self.close().await });
        }
    }

    async fn next(&self, max: usize) -> Result<Vec<Record>, ChannelError> {
        let max = max.max(1);
        loop {
            let notified = self.parts.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return Err(ChannelError::Closed);
            }
            {
                let mut st = self.parts.lock();
                if !st.buffer.is_empty() {
                    let n = max.min(st.buffer.len());
                    let out: Vec<Record> = st.buffer.drain(..n).collect();
                    if st.paused && st.buffer.len() <= BUFFER_LOW {
                        st.paused = false;
                        if let Some(assigned) = self
                            .consumer()
                            .ok()
                            .and_then(|c| Some((c.assignment().ok()?, c)))
                        {
                            if let Err(e) = assigned.1.resume(&assigned.0) {
                                tracing::warn!(group = %self.group, error = %e, "Resuming Kafka partitions failed");
                            }
                        }
                    }
                    return Ok(out);
                }
            }
            notified.await;
            // Records of one fetch arrive one by one: let the pump queue the rest
            // before taking a batch.
            tokio::task::yield_now().await;
        }
    }

    fn ack(&self, position: Position) -> Result<(), ChannelError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ChannelError::Closed);
        }
        let mut st = self.parts.lock();
        if let Some(part) = i32::try_from(position.partition)
            .ok()
            .and_then(|p| st.parts.get_mut(&p))
        {
            part.tracker.ack(position.offset);
        }
        Ok(())
    }

    /// This replica's exact watermarks of the partitions it reads.
    fn watermarks(&self) -> HashMap<i32, u64> {
        self.parts
            .lock()
            .parts
            .iter()
            .map(|(p, part)| (*p, part.tracker.committed()))
            .collect()
    }
}

/// A new group (no committed offset on any partition) gets its start offsets
/// committed before it joins, so `start` holds whichever replica joins first and
/// however long the first rebalance takes.
async fn init_group(
    store: &StoreInner,
    consumer: &Arc<KConsumer>,
    topic: &str,
    partitions: i32,
    group: &str,
    start: StartAt,
) -> Result<(), ChannelError> {
    let consumer = consumer.clone();
    let timeout = store.options.request_timeout;
    let reader = offsets::reader_config(store);
    let (topic, group) = (topic.to_owned(), group.to_owned());
    blocking(move || {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| kafka_err(format!("reading the offsets of group {group}"), e))?;
        if committed
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), Offset::Offset(_)))
        {
            return Ok(());
        }
        let starts = offsets::starts(&*consumer, &reader, &topic, partitions, start, timeout)?;
        let mut init = TopicPartitionList::new();
        for (p, at) in (0..).zip(starts) {
            init.add_partition_offset(&topic, p, Offset::Offset(at))
                .map_err(|e| kafka_err("building an offset list", e))?;
        }
        consumer
            .commit(&init, CommitMode::Sync)
            .map_err(|e| kafka_err(format!("setting the start offsets of group {group}"), e))?;
        tracing::debug!(group = %group, start = ?start, "Kafka consumer group created");
        Ok(())
    })
    .await
}

fn commit(consumer: &KConsumer, parts: &Parts, topic: &str, group: &str, mode: CommitMode) {
    let tpl = parts.to_commit(topic, None);
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        // Not owning the partitions any more is normal around a rebalance.
        tracing::debug!(group = %group, error = %e, "Committing offsets failed");
        parts.lock().recommit = true;
    }
}

/// Checks the group every `every` and asks the pump to rejoin when partitions were
/// orphaned on two checks in a row with the same own assignment ([`orphans`]).
async fn watch_group(
    consumer: Arc<KConsumer>,
    topic: String,
    partitions: i32,
    group: String,
    every: Duration,
    timeout: Duration,
    commands: mpsc::Sender<Command>,
) {
    let mut suspect: Option<Vec<i32>> = None;
    loop {
        tokio::time::sleep(every).await;
        let (c, t, g) = (consumer.clone(), topic.clone(), group.clone());
        let verdict =
            tokio::task::spawn_blocking(move || orphans::check(&*c, &t, partitions, &g, timeout))
                .await;
        match verdict {
            Ok(Ok(Verdict::Orphans { mine, why })) => {
                if suspect.as_ref() == Some(&mine) {
                    suspect = None;
                    if commands.send(Command::Rejoin(why)).await.is_err() {
                        return;
                    }
                } else {
                    tracing::debug!(group = %group, reason = %why, "Kafka group may have orphaned partitions; checking again");
                    suspect = Some(mine);
                }
            }
            Ok(Ok(Verdict::Fine)) => suspect = None,
            Ok(Err(e)) => {
                tracing::debug!(group = %group, error = %e, "Describing the Kafka group failed")
            }
            Err(_) => return,
        }
    }
}

/// Polls the consumer into the buffer, commits, and serves rewinds, until stopped.
#[allow(clippy::too_many_arguments)]
async fn pump(
    consumer: Arc<KConsumer>,
    parts: Arc<Parts>,
    topic: String,
    group: String,
    commit_interval: Duration,
    mut commands: mpsc::Receiver<Command>,
    mut stop: oneshot::Receiver<()>,
    watchdog: tokio::task::JoinHandle<()>,
) {
    let mut tick = tokio::time::interval(commit_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => commit(&consumer, &parts, &topic, &group, CommitMode::Async),
            Some(cmd) = commands.recv() => match cmd {
                Command::Rewind(reply) => {
                    let _ = reply.send(rewind(&consumer, &parts, &topic, &group));
                }
                Command::Rejoin(why) => rejoin(&consumer, &topic, &group, &why),
            },
            m = consumer.recv() => match m {
                Ok(m) => take(&consumer, &parts, &topic, &group, &m),
                Err(e) => {
                    tracing::warn!(group = %group, error = %e, "Reading from Kafka failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
    // The watchdog holds the consumer too: gone before the consumer is closed.
    watchdog.abort();
    let _ = watchdog.await;
    // The last commit; `SubInner::close` then closes the consumer.
    let _ = tokio::task::spawn_blocking(move || {
        commit(&consumer, &parts, &topic, &group, CommitMode::Sync);
    })
    .await;
}

/// Puts one fetched record into the buffer, keeping the partition's bookkeeping.
fn take(
    consumer: &KConsumer,
    parts: &Parts,
    topic: &str,
    group: &str,
    m: &rdkafka::message::BorrowedMessage<'_>,
) {
    let (Ok(partition), Ok(offset)) = (u32::try_from(m.partition()), u64::try_from(m.offset()))
    else {
        return;
    };
    let decoded = match &parts.foreign {
        None => codec::decode(m.headers(), m.payload()),
        Some(foreign) => {
            let at = codec::RecordAt {
                topic,
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
            };
            Ok(Some(codec::from_source(
                foreign,
                &at,
                m.headers(),
                m.payload(),
            )))
        }
    };
    let verify = parts.foreign.is_none();
    let mut st = parts.lock();
    let part = st
        .parts
        .entry(m.partition())
        .or_insert_with(|| Part::at(offset));
    if offset < part.expect {
        // Already taken: a refetch, or a server repeating records.
        return;
    }
    if offset > part.expect {
        let from = part.expect;
        match on_gap(part, verify) {
            Gap::Refetch(at) => {
                drop(st);
                tracing::debug!(group = %group, partition, from, to = offset, refetch = at, "Kafka skipped offsets; fetching again");
                // Asynchronous (no timeout): what was fetched before it is dropped.
                let at = Offset::Offset(i64::try_from(at).unwrap_or(i64::MAX));
                if let Err(e) = consumer.seek(topic, m.partition(), at, Duration::ZERO) {
                    tracing::warn!(group = %group, partition, error = %e, "Fetching skipped offsets again failed");
                }
                return;
            }
            Gap::Believe => {
                if part.refetches > 0 {
                    tracing::warn!(group = %group, partition, from, to = offset, "Kafka returned no records at these offsets, also when fetched again; taking them as absent");
                } else {
                    tracing::debug!(group = %group, partition, from, to = offset, "Kafka has no records at these offsets (compaction or transaction markers)");
                }
                for gap in from..offset {
                    part.tracker.ack(gap);
                }
            }
        }
    } else if part.refetches > 0 {
        tracing::warn!(group = %group, partition, offset, "Kafka skipped records and returned them when fetched again");
    }
    part.refetches = 0;
    part.expect = offset + 1;
    match decoded {
        Ok(Some(event)) => {
            st.buffer.push_back(Record {
                position: Position::new(partition, offset),
                event: Arc::new(event),
            });
            if st.buffer.len() >= BUFFER_HIGH && !st.paused {
                st.paused = true;
                if let Ok(assigned) = consumer.assignment() {
                    if let Err(e) = consumer.pause(&assigned) {
                        tracing::warn!(group = %group, error = %e, "Pausing Kafka partitions failed");
                    }
                }
            }
            drop(st);
            parts.notify.notify_waiters();
        }
        Ok(None) => {
            tracing::debug!(group = %group, partition, offset, "Skipping a record that is not a CloudEvent");
            part.tracker.ack(offset);
        }
        Err(e) => {
            tracing::warn!(group = %group, partition, offset, error = %e, "Skipping an invalid CloudEvent record");
            part.tracker.ack(offset);
        }
    }
}

/// Leaves the group and joins it again with a new member id. The revocation
/// commits what is finished; librdkafka sends the join once the leave is done.
fn rejoin(consumer: &KConsumer, topic: &str, group: &str, why: &str) {
    tracing::warn!(group = %group, reason = %why, "Kafka partitions are read by no member of the group; leaving and joining it again");
    consumer.unsubscribe();
    if let Err(e) = consumer.subscribe(&[topic]) {
        tracing::warn!(group = %group, error = %e, "Joining the Kafka group again failed");
    }
}

fn rewind(
    consumer: &KConsumer,
    parts: &Parts,
    topic: &str,
    group: &str,
) -> Result<(), ChannelError> {
    // Kafka learns the watermark first, so a rebalance during the rewind resumes
    // at the same place.
    commit(consumer, parts, topic, group, CommitMode::Sync);
    let seeks: Vec<(i32, u64)> = {
        let mut st = parts.lock();
        st.buffer.clear();
        st.paused = false;
        st.parts
            .iter_mut()
            .map(|(p, part)| {
                part.tracker.reset();
                part.expect = part.tracker.committed();
                part.refetches = 0;
                (*p, part.expect)
            })
            .collect()
    };
    if let Ok(assigned) = consumer.assignment() {
        let _ = consumer.resume(&assigned);
    }
    for (p, at) in seeks {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        if let Err(e) = consumer.seek(topic, p, Offset::Offset(at), Duration::from_secs(5)) {
            tracing::warn!(group = %group, partition = p, error = %e, "Rewinding failed; forgetting the partition's position");
            parts.lock().parts.remove(&p);
        }
    }
    Ok(())
}

/// A handle on a subscription, as the dispatcher holds it.
pub(crate) struct Handle {
    inner: Arc<SubInner>,
}

impl Handle {
    pub(crate) fn new(inner: Arc<SubInner>) -> Self {
        inner.handles.fetch_add(1, Ordering::SeqCst);
        Handle { inner }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.handles.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Subscription for Handle {
    async fn next(&self, max: usize) -> Result<Vec<Record>, ChannelError> {
        self.inner.next(max).await
    }

    fn ack(&self, position: Position) -> Result<(), ChannelError> {
        self.inner.ack(position)
    }
}

/// Forgets a consumer group (its committed offsets). A group that still has
/// members (other replicas not yet told) stays; the last replica deletes it.
pub(crate) async fn delete_group(chan: &BrokerTopic, group: &str) -> Result<(), ChannelError> {
    let opts = AdminOptions::new().operation_timeout(Some(chan.store.options.request_timeout));
    let results = chan
        .store
        .admin
        .delete_groups(&[group], &opts)
        .await
        .map_err(|e| kafka_err(format!("deleting consumer group {group}"), e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((g, RDKafkaErrorCode::NonEmptyGroup)) => {
                tracing::info!(group = %g, "Consumer group still has members; they delete it when they unsubscribe")
            }
            Err((g, code)) => return Err(kafka_err(format!("deleting consumer group {g}"), code)),
        }
    }
    Ok(())
}

/// Records waiting for a subscription: high watermark minus committed offset, per
/// partition; this replica's own watermark for the partitions it reads.
pub(crate) async fn lag(
    chan: &BrokerTopic,
    name: &str,
    local: Option<Arc<SubInner>>,
) -> Result<u64, ChannelError> {
    Ok(cursors(chan, name, local)
        .await?
        .iter()
        .map(|c| u64::try_from(c.high.saturating_sub(c.at)).unwrap_or(0))
        .sum())
}

/// A subscription's cursor per partition, as `lag` counts from it.
pub(crate) async fn committed(
    chan: &BrokerTopic,
    name: &str,
    local: Option<Arc<SubInner>>,
) -> Result<Vec<Position>, ChannelError> {
    Ok(cursors(chan, name, local)
        .await?
        .iter()
        .map(|c| Position::new(c.partition, u64::try_from(c.at).unwrap_or(0)))
        .collect())
}

/// Where a subscription is in one partition.
struct Cursor {
    partition: u32,
    high: i64,
    /// This replica's watermark, else the group's committed offset, else the low
    /// watermark; never below the low watermark (what retention removed is skipped).
    at: i64,
}

/// The cursors of a subscription; `UnknownSubscription` when its group committed
/// nothing and it is not open here.
async fn cursors(
    chan: &BrokerTopic,
    name: &str,
    local: Option<Arc<SubInner>>,
) -> Result<Vec<Cursor>, ChannelError> {
    let group = chan.group_name(name);
    let topic = chan.topic.clone();
    let partitions = chan.partitions;
    let timeout = chan.store.options.request_timeout;
    let mine = local.as_ref().map(|s| s.watermarks()).unwrap_or_default();
    let known_locally = local.is_some();
    let probe: Arc<dyn Fn() -> Result<Box<dyn Probe>, ChannelError> + Send + Sync> = match local {
        Some(s) => {
            let c = s.consumer()?;
            Arc::new(move || Ok(Box::new(c.clone()) as Box<dyn Probe>))
        }
        None => {
            let config = chan.store.client_config(&[
                ("group.id", group.as_str()),
                ("enable.auto.commit", "false"),
            ]);
            let group = group.clone();
            Arc::new(move || {
                let c: BaseConsumer = config
                    .create()
                    .map_err(|e| kafka_err(format!("creating a client for group {group}"), e))?;
                Ok(Box::new(Box::new(c)) as Box<dyn Probe>)
            })
        }
    };
    let name = name.to_owned();
    blocking(move || {
        let c = probe()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = c
            .committed_offsets(tpl, timeout)
            .map_err(|e| kafka_err(format!("reading the offsets of group {group}"), e))?;
        let mut any = false;
        let mut cursors = Vec::with_capacity(usize::try_from(partitions).unwrap_or(0));
        for p in 0..partitions {
            let (low, high) = c
                .fetch_watermarks(&topic, p, timeout)
                .map_err(|e| kafka_err(format!("reading the offsets of topic {topic}"), e))?;
            let from_kafka = committed
                .find_partition(&topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            any |= from_kafka.is_some();
            let at = match mine.get(&p) {
                Some(&w) => i64::try_from(w).unwrap_or(i64::MAX),
                None => from_kafka.unwrap_or(low),
            };
            cursors.push(Cursor {
                partition: u32::try_from(p).unwrap_or(0),
                high,
                at: at.max(low),
            });
        }
        if !any && !known_locally {
            return Err(ChannelError::UnknownSubscription(name));
        }
        Ok(cursors)
    })
    .await
}

/// Commits `to` (clamped to what is retained) for a subscription's group from a
/// client outside the group, as `init_group` does. Kafka takes such a commit only
/// while the group has no members, so members are refused here first.
pub(crate) async fn seek(
    chan: &BrokerTopic,
    name: &str,
    to: &[Position],
) -> Result<(), ChannelError> {
    let group = chan.group_name(name);
    let config = chan.store.client_config(&[
        ("group.id", group.as_str()),
        ("enable.auto.commit", "false"),
    ]);
    let (topic, partitions) = (chan.topic.clone(), chan.partitions);
    let timeout = chan.store.options.request_timeout;
    let (name, to) = (name.to_owned(), to.to_vec());
    blocking(move || {
        if let Some(p) = to
            .iter()
            .find(|p| i32::try_from(p.partition).map_or(true, |p| p >= partitions))
        {
            return Err(ChannelError::Storage(format!(
                "topic {topic} has no partition {} ({partitions} partitions)",
                p.partition
            )));
        }
        let c: BaseConsumer = config
            .create()
            .map_err(|e| kafka_err(format!("creating a client for group {group}"), e))?;
        let mut all = TopicPartitionList::new();
        for p in 0..partitions {
            all.add_partition(&topic, p);
        }
        let committed = c
            .committed_offsets(all, timeout)
            .map_err(|e| kafka_err(format!("reading the offsets of group {group}"), e))?;
        if !committed
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), Offset::Offset(_)))
        {
            return Err(ChannelError::UnknownSubscription(name));
        }
        // A member this process just closed may take a moment to leave.
        let deadline = std::time::Instant::now() + LEAVE_WAIT;
        let members = loop {
            let members = c
                .fetch_group_list(Some(&group), timeout)
                .map_err(|e| kafka_err(format!("describing consumer group {group}"), e))?
                .groups()
                .iter()
                .find(|g| g.name() == group)
                .map_or(0, |g| g.members().len());
            if members == 0 || std::time::Instant::now() >= deadline {
                break members;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if members > 0 {
            return Err(group_busy(
                &group,
                &name,
                &format!("it has {members} member(s)"),
            ));
        }
        let mut tpl = TopicPartitionList::new();
        for pos in &to {
            let p = i32::try_from(pos.partition).unwrap_or(0);
            let marks = c
                .fetch_watermarks(&topic, p, timeout)
                .map_err(|e| kafka_err(format!("reading the offsets of topic {topic}"), e))?;
            let at = offsets::clamp(i64::try_from(pos.offset).unwrap_or(i64::MAX), marks);
            tpl.add_partition_offset(&topic, p, Offset::Offset(at))
                .map_err(|e| kafka_err("building an offset list", e))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        c.commit(&tpl, CommitMode::Sync)
            .map_err(|e| match e.rdkafka_error_code() {
                Some(
                    RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::FencedInstanceId
                    | RDKafkaErrorCode::StaleMemberEpoch,
                ) => group_busy(&group, &name, &format!("Kafka refused the commit: {e}")),
                _ => kafka_err(format!("moving the offsets of group {group}"), e),
            })?;
        tracing::debug!(group = %group, offsets = ?to, "Kafka consumer group's offsets moved");
        Ok(())
    })
    .await
}

/// How long `seek` waits for a group's members to leave before it refuses.
const LEAVE_WAIT: Duration = Duration::from_secs(15);

fn group_busy(group: &str, name: &str, why: &str) -> ChannelError {
    ChannelError::Storage(format!(
        "cannot move the cursor of subscription {name}: its consumer group {group} is in use \
         ({why}), so its trigger still runs on other replicas; stop the trigger on the other \
         replicas first"
    ))
}

/// Each partition's high watermark: where the next record goes.
pub(crate) async fn ends(
    chan: &BrokerTopic,
    local: Option<Arc<SubInner>>,
) -> Result<Vec<Position>, ChannelError> {
    let topic = chan.topic.clone();
    let partitions = chan.partitions;
    let timeout = chan.store.options.request_timeout;
    let probe: Box<dyn Probe> = match local {
        Some(s) => Box::new(s.consumer()?),
        None => {
            let c: BaseConsumer = chan
                .store
                .client_config(&[("group.id", "cemesh-ends"), ("enable.auto.commit", "false")])
                .create()
                .map_err(|e| kafka_err("creating a client to read offsets", e))?;
            Box::new(Box::new(c))
        }
    };
    blocking(move || {
        (0..partitions)
            .map(|p| {
                let (_, high) = probe
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| kafka_err(format!("reading the offsets of topic {topic}"), e))?;
                Ok(Position::new(
                    u32::try_from(p).unwrap_or(0),
                    u64::try_from(high).unwrap_or(0),
                ))
            })
            .collect()
    })
    .await
}

/// The two calls `lag` needs, from the subscription's own consumer or a probe.
trait Probe: Send {
    fn committed_offsets(
        &self,
        tpl: TopicPartitionList,
        timeout: Duration,
    ) -> KafkaResult<TopicPartitionList>;
    fn fetch_watermarks(&self, topic: &str, p: i32, timeout: Duration) -> KafkaResult<(i64, i64)>;
}

macro_rules! probe {
    ($t:ty) => {
        impl Probe for $t {
            fn committed_offsets(
                &self,
                tpl: TopicPartitionList,
                timeout: Duration,
            ) -> KafkaResult<TopicPartitionList> {
                Consumer::committed_offsets(&**self, tpl, timeout)
            }
            fn fetch_watermarks(
                &self,
                topic: &str,
                p: i32,
                timeout: Duration,
            ) -> KafkaResult<(i64, i64)> {
                Consumer::fetch_watermarks(&**self, topic, p, timeout)
            }
        }
    };
}
probe!(Arc<KConsumer>);
probe!(Box<BaseConsumer>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_in_a_topic_of_cemesh_is_refetched_from_further_back_each_time() {
        let mut part = Part::at(100_000);
        assert_eq!(on_gap(&mut part, true), Gap::Refetch(100_000));
        assert_eq!(on_gap(&mut part, true), Gap::Refetch(100_000 - 256));
        assert_eq!(on_gap(&mut part, true), Gap::Refetch(100_000 - 65_536));
        assert_eq!(on_gap(&mut part, true), Gap::Believe);
        let mut near_start = Part::at(10);
        on_gap(&mut near_start, true);
        assert_eq!(on_gap(&mut near_start, true), Gap::Refetch(0));
    }

    #[test]
    fn a_gap_in_a_topic_cemesh_does_not_own_is_believed_at_once() {
        let mut part = Part::at(10);
        assert_eq!(on_gap(&mut part, false), Gap::Believe);
    }
}
