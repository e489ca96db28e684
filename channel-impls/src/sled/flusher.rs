//! The store's writer and flusher: group commit. Appends hand their encoded
//! records to one thread and await the answer; each round that thread takes every
//! append that arrived, writes each broker's share as one sled batch (one value per
//! broker and round, see `layout`), then runs one `flush` for all of them and
//! answers. Producers never block a runtime worker, no insert waits behind a flush
//! on another thread (sled's `flush` holds its write lock throughout), and one fsync
//! covers every append of the round. Other durable writes (dead letters, cursors of
//! new subscriptions) insert their writes themselves, then ask for a ticket that
//! the next flush covers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::config::Durability;
use super::util::lock;
use crate::ChannelError;

/// A channel's side of a round: writes the records of several appends, in order,
/// as one atomic batch (implemented by each broker's log).
pub(super) trait GroupWrite: Send + Sync {
    /// Writes `appends` (each one append's encoded records, and its events as
    /// appended); one answer per append: the durability it must then wait for, or
    /// why it was refused. Events the write let go of (the channel's in-memory tail
    /// keeps the newest) go to `evicted`, for the appenders to drop ([`Leftovers`]).
    fn write_group(
        &self,
        appends: &[&Append],
        evicted: &mut Vec<Arc<cemesh_proto::Event>>,
    ) -> Vec<Result<Durability, ChannelError>>;
    /// Wakes the channel's readers after a write.
    fn written(&self);
}

/// One append waiting for the writer.
pub(super) struct Append {
    pub(super) target: Arc<dyn GroupWrite>,
    pub(super) records: Vec<Bytes>,
    /// The events `records` encode, kept for readers of the log's tail, with
    /// their sizes as the tail counts them.
    pub(super) events: Vec<(Arc<cemesh_proto::Event>, u32)>,
    pub(super) reply: oneshot::Sender<Reply>,
}

/// An append's answer, and what its round lets go of.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) result: Result<(), ChannelError>,
    /// Held to be dropped where the reply is received.
    pub(super) _leftovers: Leftovers,
}

/// What a round no longer needs: an append's own records and events, and its share
/// of the events the channel's tail evicted for it. They go back with the answer
/// and are dropped by the appender, on the runtime worker that allocated most of
/// them, not by the writer thread: there, freeing other threads' allocations was
/// a sixth of the thread's time, in the middle of every round (`bench/README.md`,
/// "The writer frees nothing").
#[derive(Debug, Default)]
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "held only to be dropped by the appender")
)]
pub(super) struct Leftovers {
    records: Vec<Bytes>,
    events: Vec<(Arc<cemesh_proto::Event>, u32)>,
    evicted: Vec<Arc<cemesh_proto::Event>>,
}

impl Append {
    /// Splits the append into its answer's channel and what it leaves over, with
    /// up to as many of `evicted` as it appended.
    fn answer_with(
        self,
        evicted: &mut impl Iterator<Item = Arc<cemesh_proto::Event>>,
    ) -> (oneshot::Sender<Reply>, Leftovers) {
        let evicted = evicted.take(self.events.len()).collect();
        (
            self.reply,
            Leftovers {
                records: self.records,
                events: self.events,
                evicted,
            },
        )
    }
}

/// Answers `reply`, handing it `leftovers` to drop.
fn answer(reply: oneshot::Sender<Reply>, result: Result<(), ChannelError>, leftovers: Leftovers) {
    let _ = reply.send(Reply {
        result,
        _leftovers: leftovers,
    });
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append")
            .field("records", &self.records.len())
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
struct FlushStatus {
    /// Every ticket up to this one has been flushed (or failed).
    done: u64,
    /// Every ticket up to this one is durable.
    last_ok: u64,
    error: Option<String>,
    /// The last failure was the filesystem refusing writes (EROFS: ext4's
    /// `errors=remount-ro`, which on recent kernels statvfs does not report).
    read_only: bool,
}

#[derive(Debug)]
struct FlushState {
    /// Ticket handed to writers arriving now; the flusher takes it and moves on.
    epoch: u64,
    /// A writer waits for the next flush.
    waiting: bool,
    /// Writers waiting for the next flush (its group).
    writers: u64,
    /// Flush no later than this (Durability::Interval).
    deadline: Option<Instant>,
    /// Appends for the next round.
    appends: Vec<Append>,
    /// While the writer gathers a round: how many appends it waits for (an append
    /// that brings the round to it wakes the writer; the ones before do not).
    gathering: Option<usize>,
    /// Appends the last round answered after its flush.
    last_group: usize,
    /// How fast appends come and how long a round keeps the writer busy.
    pace: Pace,
    /// The thread waits on the condition variable and nobody has woken it yet.
    /// Only then is it notified: std's `notify_one` is a futex call even when no
    /// thread waits, and appends arriving while it writes made one each (0.6 a
    /// append at 12 000/s; `bench/README.md`, "The writer is woken only when it
    /// sleeps").
    sleeping: bool,
    shutdown: bool,
}

/// The single flusher thread of a store, and the tickets appenders wait on.
#[derive(Debug)]
pub(super) struct Flusher {
    state: Mutex<FlushState>,
    cv: Condvar,
    status: watch::Sender<FlushStatus>,
    pub(super) flushes: AtomicU64,
    /// The most writers one flush covered.
    pub(super) largest_group: AtomicU64,
    /// Every durable write of the store asks it first.
    pub(super) space: super::space::DiskSpace,
    /// How long a round may wait for the producers of the last one (see
    /// [`Flusher::gather`]).
    commit_delay: Duration,
}

impl Flusher {
    pub(super) fn new(space: super::space::DiskSpace, commit_delay: Duration) -> Self {
        Flusher {
            space,
            commit_delay,
            state: Mutex::new(FlushState {
                epoch: 1,
                waiting: false,
                writers: 0,
                deadline: None,
                appends: Vec::new(),
                gathering: None,
                last_group: 0,
                pace: Pace::default(),
                sleeping: false,
                shutdown: false,
            }),
            cv: Condvar::new(),
            status: watch::Sender::new(FlushStatus::default()),
            flushes: AtomicU64::new(0),
            largest_group: AtomicU64::new(0),
        }
    }

    /// Asks for a flush covering every write made before this call; returns the
    /// ticket to wait for.
    pub(super) fn request(&self) -> u64 {
        let (ticket, wake) = {
            let mut st = lock(&self.state);
            st.waiting = true;
            st.writers += 1;
            (st.epoch, st.wake())
        };
        if wake {
            self.cv.notify_one();
        }
        ticket
    }

    /// Queues an append for the writer; its answer comes on `append.reply` once the
    /// records are written and as durable as the channel's `Durability` says.
    pub(super) fn append(&self, append: Append) {
        {
            let mut st = lock(&self.state);
            if st.shutdown {
                answer(
                    append.reply,
                    Err(ChannelError::Closed),
                    Leftovers::default(),
                );
                return;
            }
            st.appends.push(append);
            st.pace.arrived += 1;
            if st.gathering.is_some_and(|want| st.appends.len() < want) || !st.wake() {
                return;
            }
        }
        self.cv.notify_one();
    }

    /// Asks for a flush within `within`, without waiting for it.
    pub(super) fn request_within(&self, within: Duration) {
        let at = Instant::now() + within;
        let wake = {
            let mut st = lock(&self.state);
            st.deadline = Some(st.deadline.map_or(at, |d| d.min(at)));
            st.wake()
        };
        if wake {
            self.cv.notify_one();
        }
    }

    pub(super) async fn wait(&self, ticket: u64) -> Result<(), ChannelError> {
        let mut rx = self.status.subscribe();
        let status = rx
            .wait_for(|s| s.done >= ticket)
            .await
            .map_err(|_| ChannelError::Closed)?;
        if status.last_ok >= ticket {
            Ok(())
        } else {
            flush_answer(&status)
        }
    }

    /// The thread's loop: each round writes every queued append, then, if any of
    /// them or another writer waits for durability (or an interval is due), runs one
    /// `flush`.
    /// sled's `flush` ends with `sync_file_range`, which writes no metadata (a file
    /// that grew loses its tail in a power cut) and flushes no disk cache: an
    /// `fdatasync` of sled's file follows it, and only then are the writers told.
    pub(super) fn run(&self, db: sled::Db, file: std::fs::File) {
        let mut idle = MachineIdle::default();
        loop {
            let idle_cpu = idle.share(Instant::now());
            let appends = {
                let mut st = lock(&self.state);
                loop {
                    if st.waiting
                        || !st.appends.is_empty()
                        || st.deadline.is_some_and(|d| d <= Instant::now())
                    {
                        break;
                    }
                    if st.shutdown {
                        return;
                    }
                    st.sleeping = true;
                    st = match st.deadline {
                        Some(d) => {
                            let wait = d.saturating_duration_since(Instant::now());
                            self.cv
                                .wait_timeout(st, wait)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                    };
                    st.sleeping = false;
                }
                st.pace.round_starts(Instant::now());
                st = self.gather(st, idle_cpu);
                std::mem::take(&mut st.appends)
            };
            let busy_since = Instant::now();
            let (to_answer, interval) = write_round(appends);
            let ticket = {
                let mut st = lock(&self.state);
                if let Some(d) = interval {
                    let at = Instant::now() + d;
                    st.deadline = Some(st.deadline.map_or(at, |x| x.min(at)));
                }
                let due = st.deadline.is_some_and(|d| d <= Instant::now());
                if !st.waiting && !due && to_answer.is_empty() {
                    continue;
                }
                st.waiting = false;
                st.deadline = None;
                let group = std::mem::take(&mut st.writers) + to_answer.len() as u64;
                if group > 0 {
                    self.largest_group.fetch_max(group, Ordering::Relaxed);
                    metrics::histogram!(cemesh_proto::metric_names::CHANNEL_GROUP_COMMIT_BATCH)
                        .record(group as f64);
                }
                st.epoch += 1;
                st.epoch - 1
            };
            let result = db
                .flush()
                .and_then(|_| file.sync_data().map_err(sled::Error::Io));
            self.flushes.fetch_add(1, Ordering::Relaxed);
            let mut outcome = Ok(());
            self.status.send_modify(|s| {
                s.done = ticket;
                match &result {
                    Ok(_) => {
                        s.last_ok = ticket;
                        s.error = None;
                        s.read_only = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "sled flush failed; appends waiting for it fail");
                        s.read_only = super::space::is_read_only(e);
                        s.error = Some(e.to_string());
                    }
                }
                outcome = flush_answer(s);
            });
            {
                let mut st = lock(&self.state);
                st.last_group = to_answer.len();
                st.pace.round_took(busy_since.elapsed());
            }
            for (reply, leftovers) in to_answer {
                answer(reply, outcome.clone(), leftovers);
            }
        }
    }

    /// Lets a round that started with fewer appends than the last one answered wait
    /// up to the commit delay for that many: the producers the last flush answered are
    /// sending their next appends, and one flush for all of them costs a fraction
    /// of one each (commit delay, as PostgreSQL's `commit_delay`). A lone producer
    /// (a last group of one) never waits, and neither does a round when appends come
    /// fast enough to fill rounds by themselves while the machine has CPU to spare
    /// for more rounds ([`Pace`]; `idle_cpu` is the machine's idle share).
    fn gather<'a>(
        &self,
        mut st: std::sync::MutexGuard<'a, FlushState>,
        idle_cpu: f64,
    ) -> std::sync::MutexGuard<'a, FlushState> {
        let want = st.last_group;
        if st.appends.is_empty()
            || st.appends.len() >= want
            || st.shutdown
            || !st.pace.gathering_pays(idle_cpu)
        {
            return st;
        }
        let until = Instant::now() + self.commit_delay;
        st.gathering = Some(want);
        while st.appends.len() < want && !st.shutdown {
            let now = Instant::now();
            if now >= until {
                break;
            }
            st.sleeping = true;
            st = self
                .cv
                .wait_timeout(st, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.sleeping = false;
        }
        st.gathering = None;
        st
    }

    /// Stops the thread once the queued appends are written and flushed.
    pub(super) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }
}

/// How fast appends arrive and how long the writer is busy with a round. Their
/// product is how many appends a round finds queued without waiting: past
/// [`Pace::FULL_ROUND`] the commit delay has little left to gather, and waiting
/// for the last round's producers keeps them in step with the writer: they turn
/// around while the disk is idle, and the disk flushes while they wait (ingest
/// alone from 64 producers left a third of the machine idle). Not waiting makes
/// more, smaller rounds, which costs CPU: worth it only while the machine has CPU
/// to spare ([`Pace::SPARE_CPU`]); on a busy one (one trigger delivering as fast
/// as possible) the wait still pays. `bench/README.md`, "Rounds that fill
/// themselves".
#[derive(Debug, Default)]
struct Pace {
    /// Appends a second, averaged over about [`Pace::RATE_WINDOW`].
    rate: f64,
    /// Seconds from a round's start (after its gather) to its answers: its writes,
    /// its flush and any wait for a CPU; averaged over rounds.
    busy: f64,
    /// Appends queued since `since`.
    arrived: u64,
    since: Option<Instant>,
}

impl Pace {
    /// A round this large spreads its fixed cost (waking the writer, the flush's
    /// syscalls, waking the runtime's workers: about 100 µs of CPU on the
    /// development machine) to about 12 µs an append. It was 16 until the ingress
    /// got cheaper: a round's busy time fell to about 0.4 ms, ingest alone's
    /// product to 14–20, and a third of its rounds waited, a quarter of the
    /// writer's time; at 12 000 appends a second the product is about 7 and rounds
    /// still wait (`bench/README.md`, "Rounds that wait less").
    const FULL_ROUND: f64 = 8.0;
    /// The rate forgets what came longer ago than this (exponentially): a pause
    /// resets it, a round of a few milliseconds moves it a little.
    const RATE_WINDOW: Duration = Duration::from_millis(10);
    /// The weight of the newest round in the busy time's average.
    const BUSY_WEIGHT: f64 = 0.2;
    /// The machine's idle share of CPU from which more rounds are worth their
    /// CPU: an eighth. On the 2-core development machine ingest alone swings
    /// between 16 % and 30 % idle (measured over [`MachineIdle::EVERY`], which
    /// smooths the swings of shorter samples), so a fifth kept it waiting in
    /// some of its samples; one trigger delivering as fast as possible is
    /// 10–19 % idle and delivers as much whether its rounds wait or not.
    const SPARE_CPU: f64 = 0.12;

    /// At a round's start: the appends queued since the last start, over the time
    /// between them, join the rate.
    fn round_starts(&mut self, now: Instant) {
        if let Some(since) = self.since {
            let secs = now.duration_since(since).as_secs_f64();
            if secs > 0.0 {
                let weight = 1.0 - (-secs / Self::RATE_WINDOW.as_secs_f64()).exp();
                self.rate += weight * (self.arrived as f64 / secs - self.rate);
            }
        }
        self.since = Some(now);
        self.arrived = 0;
    }

    fn round_took(&mut self, busy: Duration) {
        self.busy += Self::BUSY_WEIGHT * (busy.as_secs_f64() - self.busy);
    }

    /// Whether appends come fast enough that a round finds a full one queued.
    fn rounds_fill_themselves(&self) -> bool {
        self.rate * self.busy >= Self::FULL_ROUND
    }

    /// Whether a round should wait for the last round's producers, the machine
    /// being `idle_cpu` idle.
    fn gathering_pays(&self, idle_cpu: f64) -> bool {
        !(self.rounds_fill_themselves() && idle_cpu >= Self::SPARE_CPU)
    }
}

/// The machine's idle share of CPU time (idle and I/O wait, over all CPUs) since
/// the last sample, from `/proc/stat`, sampled at most every
/// [`MachineIdle::EVERY`]. Where there is no `/proc/stat` it reads 0: the commit
/// delay always gathers, as before [`Pace`].
#[derive(Debug, Default)]
struct MachineIdle {
    /// When sampled, and the idle and total CPU ticks then.
    last: Option<(Instant, u64, u64)>,
    share: f64,
}

impl MachineIdle {
    const EVERY: Duration = Duration::from_millis(200);

    fn share(&mut self, now: Instant) -> f64 {
        if self
            .last
            .is_some_and(|(at, ..)| now.duration_since(at) < Self::EVERY)
        {
            return self.share;
        }
        let Some((idle, total)) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| cpu_ticks(&stat))
        else {
            return 0.0;
        };
        if let Some((_, idle0, total0)) = self.last {
            let spent = total.saturating_sub(total0);
            if spent > 0 {
                self.share = idle.saturating_sub(idle0) as f64 / spent as f64;
            }
        }
        self.last = Some((now, idle, total));
        self.share
    }
}

/// The idle (idle + iowait) and total ticks of `/proc/stat`'s `cpu` line.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal (guest is in user)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    (ticks.len() == 8).then(|| (ticks[3] + ticks[4], ticks.iter().sum()))
}

impl FlushState {
    /// Whether the caller, which just gave the thread work under the lock, must
    /// notify it: only when it sleeps and no one has yet (the first notifier takes
    /// that on).
    fn wake(&mut self) -> bool {
        std::mem::take(&mut self.sleeping)
    }
}

/// What the writers of a flush are told, from the status it left.
fn flush_answer(status: &FlushStatus) -> Result<(), ChannelError> {
    if status.error.is_none() {
        Ok(())
    } else if status.read_only {
        Err(super::space::read_only_refusal())
    } else {
        Err(ChannelError::Storage(format!(
            "flushing to disk failed: {}",
            status.error.as_deref().unwrap_or("unknown error")
        )))
    }
}

/// Writes one round of appends, each broker's share as one call in arrival order;
/// answers the appends that need no flush (and the refused ones) at once. Returns
/// the replies that wait for the flush, and the shortest flush interval asked.
fn write_round(
    appends: Vec<Append>,
) -> (Vec<(oneshot::Sender<Reply>, Leftovers)>, Option<Duration>) {
    let mut by_target: Vec<(Arc<dyn GroupWrite>, Vec<Append>)> = Vec::new();
    for a in appends {
        let same =
            |t: &Arc<dyn GroupWrite>| std::ptr::addr_eq(Arc::as_ptr(t), Arc::as_ptr(&a.target));
        match by_target.iter_mut().find(|(t, _)| same(t)) {
            Some((_, group)) => group.push(a),
            None => by_target.push((a.target.clone(), vec![a])),
        }
    }
    let mut after_flush = Vec::new();
    let mut interval: Option<Duration> = None;
    let mut evicted = Vec::new();
    for (target, group) in by_target {
        let appends: Vec<&Append> = group.iter().collect();
        let results = target.write_group(&appends, &mut evicted);
        target.written();
        let mut evicted = evicted.drain(..);
        let last = group.len().saturating_sub(1);
        for (i, (a, result)) in group.into_iter().zip(results).enumerate() {
            let (reply, mut leftovers) = a.answer_with(&mut evicted);
            if i == last {
                leftovers.evicted.extend(evicted.by_ref());
            }
            match result {
                Ok(Durability::FlushPerBatch) => after_flush.push((reply, leftovers)),
                Ok(Durability::Interval(d)) => {
                    interval = Some(interval.map_or(d, |i| i.min(d)));
                    answer(reply, Ok(()), leftovers);
                }
                Ok(Durability::None) => answer(reply, Ok(()), leftovers),
                Err(e) => answer(reply, Err(e), leftovers),
            }
        }
    }
    (after_flush, interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;

    impl GroupWrite for Nowhere {
        fn write_group(
            &self,
            appends: &[&Append],
            _evicted: &mut Vec<Arc<cemesh_proto::Event>>,
        ) -> Vec<Result<Durability, ChannelError>> {
            appends.iter().map(|_| Ok(Durability::None)).collect()
        }
        fn written(&self) {}
    }

    /// Lets go of its events at the next write, as a tail evicts them.
    struct Evicting(Mutex<Vec<Arc<cemesh_proto::Event>>>);

    impl GroupWrite for Evicting {
        fn write_group(
            &self,
            appends: &[&Append],
            evicted: &mut Vec<Arc<cemesh_proto::Event>>,
        ) -> Vec<Result<Durability, ChannelError>> {
            evicted.append(&mut lock(&self.0));
            appends.iter().map(|_| Ok(Durability::None)).collect()
        }
        fn written(&self) {}
    }

    #[test]
    fn the_answers_carry_what_the_round_let_go_of_and_the_writer_keeps_none() {
        let event = |id: &str| Arc::new(cemesh_proto::Event::new(id, "/t", "t"));
        let old: Vec<_> = (0..5).map(|i| event(&format!("old{i}"))).collect();
        let target: Arc<dyn GroupWrite> = Arc::new(Evicting(Mutex::new(old.clone())));
        let mut answers = Vec::new();
        let appends = (0..3)
            .map(|i| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Append {
                    target: target.clone(),
                    records: vec![Bytes::from_static(b"r")],
                    events: vec![(event(&format!("new{i}")), 1)],
                    reply,
                }
            })
            .collect();
        let (to_answer, _) = write_round(appends);
        assert!(to_answer.is_empty(), "no durability to wait for");
        let replies: Vec<Reply> = answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("answered"))
            .collect();
        assert!(replies.iter().all(|r| r.result.is_ok()));
        // As many as each append added; the last takes the rest.
        let shares: Vec<usize> = replies.iter().map(|r| r._leftovers.evicted.len()).collect();
        assert_eq!(shares, [1, 1, 3]);
        assert!(replies
            .iter()
            .all(|r| r._leftovers.records.len() == 1 && r._leftovers.events.len() == 1));
        assert!(old.iter().all(|e| Arc::strong_count(e) == 2));
        // Dropped where the answers are received.
        drop(replies);
        assert!(old.iter().all(|e| Arc::strong_count(e) == 1));
    }

    fn append() -> Append {
        Append {
            target: Arc::new(Nowhere),
            records: Vec::new(),
            events: Vec::new(),
            reply: oneshot::channel().0,
        }
    }

    /// A flusher whose last round answered three appends, with one queued now.
    fn after_a_round_of_three(commit_delay: Duration) -> Arc<Flusher> {
        let space = super::super::space::DiskSpace::new(std::env::temp_dir(), 0);
        let f = Arc::new(Flusher::new(space, commit_delay));
        {
            let mut st = lock(&f.state);
            st.last_group = 3;
            st.appends.push(append());
        }
        f
    }

    /// How long `gather` kept the round open, and how many appends it then had.
    fn gather_timed(f: &Flusher) -> (Duration, usize) {
        gather_timed_idle(f, 0.5)
    }

    fn gather_timed_idle(f: &Flusher, idle_cpu: f64) -> (Duration, usize) {
        let started = Instant::now();
        let st = f.gather(lock(&f.state), idle_cpu);
        assert!(st.gathering.is_none(), "the round no longer gathers");
        (started.elapsed(), st.appends.len())
    }

    #[test]
    fn a_round_waits_the_commit_delay_for_the_last_round_s_producers() {
        let (waited, appends) = gather_timed(&after_a_round_of_three(Duration::from_millis(60)));
        assert!(waited >= Duration::from_millis(60), "waited {waited:?}");
        assert_eq!(appends, 1, "nobody else came");
    }

    /// Gathers with `idle_cpu` while two producers come back after 20 ms.
    fn gather_with_producers_back_later(f: &Arc<Flusher>, idle_cpu: f64) -> (Duration, usize) {
        let producer = {
            let f = f.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                f.append(append());
                f.append(append());
            })
        };
        let gathered = gather_timed_idle(f, idle_cpu);
        producer.join().unwrap();
        gathered
    }

    #[test]
    fn a_round_ends_when_the_last_round_s_producers_are_back() {
        let f = after_a_round_of_three(Duration::from_secs(30));
        let (waited, appends) = gather_with_producers_back_later(&f, 0.5);
        assert_eq!(appends, 3);
        assert!(waited < Duration::from_secs(20), "waited {waited:?}");
    }

    #[test]
    fn a_round_does_not_wait_when_appends_fill_it_and_the_machine_has_cpu_to_spare() {
        let fast = |f: &Flusher| {
            let mut st = lock(&f.state);
            // 40 000 appends a second, a round busy for 0.5 ms: 20 queue meanwhile.
            st.pace.rate = 40_000.0;
            st.pace.busy = 0.000_5;
        };
        let f = after_a_round_of_three(Duration::from_secs(30));
        fast(&f);
        let (waited, appends) = gather_timed_idle(&f, 0.3);
        assert_eq!(appends, 1, "the round took what had come");
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");

        // The same pace on a machine 10 % idle: the round waits.
        let f = after_a_round_of_three(Duration::from_secs(30));
        fast(&f);
        let (waited, appends) = gather_with_producers_back_later(&f, 0.1);
        assert_eq!(
            appends, 3,
            "the round waited for the last round's producers"
        );
        assert!(waited >= Duration::from_millis(20), "waited {waited:?}");

        // Half that rate on a machine 15 % idle: 10 queue a round, enough.
        let f = after_a_round_of_three(Duration::from_secs(30));
        fast(&f);
        lock(&f.state).pace.rate = 20_000.0;
        let (waited, appends) = gather_timed_idle(&f, 0.15);
        assert_eq!(appends, 1, "the round took what had come");
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");

        // A quarter of that rate (5 queue a round) on an idle machine: it waits.
        let f = after_a_round_of_three(Duration::from_secs(30));
        fast(&f);
        lock(&f.state).pace.rate = 10_000.0;
        let (waited, appends) = gather_with_producers_back_later(&f, 0.9);
        assert_eq!(
            appends, 3,
            "the round waited for the last round's producers"
        );
        assert!(waited >= Duration::from_millis(20), "waited {waited:?}");
    }

    #[test]
    fn the_machine_s_idle_share_comes_from_proc_stat_s_cpu_line() {
        let stat = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 3 0\nintr 1\n";
        assert_eq!(cpu_ticks(stat), Some((840, 1000)));
        assert_eq!(cpu_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(cpu_ticks("intr 1\n"), None);
        if std::path::Path::new("/proc/stat").exists() {
            let mut idle = MachineIdle::default();
            let start = Instant::now();
            idle.share(start);
            assert_eq!(
                idle.share(start + MachineIdle::EVERY / 2),
                0.0,
                "not sampled again yet"
            );
            std::thread::sleep(Duration::from_millis(50));
            let share = idle.share(start + MachineIdle::EVERY);
            assert!((0.0..=1.0).contains(&share), "share {share}");
            assert!(
                idle.last.is_some_and(|(at, ..)| at > start),
                "sampled again"
            );
        }
    }

    #[test]
    fn the_pace_follows_the_arrival_rate_and_forgets_a_pause() {
        let mut pace = Pace::default();
        let mut now = Instant::now();
        pace.round_starts(now);
        // Rounds every millisecond, 30 appends each, each busy for 0.6 ms.
        for _ in 0..200 {
            pace.arrived += 30;
            now += Duration::from_millis(1);
            pace.round_starts(now);
            pace.round_took(Duration::from_micros(600));
        }
        assert!((pace.rate - 30_000.0).abs() < 300.0, "rate {}", pace.rate);
        assert!((pace.busy - 0.000_6).abs() < 0.000_01, "busy {}", pace.busy);
        assert!(pace.rounds_fill_themselves(), "18 appends queue per round");
        // Then 10 at a time: 6 a round.
        for _ in 0..200 {
            pace.arrived += 10;
            now += Duration::from_millis(1);
            pace.round_starts(now);
        }
        assert!(!pace.rounds_fill_themselves(), "rate {}", pace.rate);
        // Back to 30, then a second's pause and one append: the rate is its own.
        for _ in 0..200 {
            pace.arrived += 30;
            now += Duration::from_millis(1);
            pace.round_starts(now);
        }
        assert!(pace.rounds_fill_themselves());
        pace.arrived += 1;
        now += Duration::from_secs(1);
        pace.round_starts(now);
        assert!(pace.rate < 10.0, "rate {}", pace.rate);
        assert!(!pace.rounds_fill_themselves());
    }

    #[test]
    fn without_a_commit_delay_a_round_takes_what_has_come() {
        let (waited, appends) = gather_timed(&after_a_round_of_three(Duration::ZERO));
        assert_eq!(appends, 1);
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }
}
