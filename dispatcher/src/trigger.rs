//! One trigger's delivery loop: read, filter, hand matches to the pipeline with
//! bounded parallelism (and, when asked, per-partition-key order and a rate limit),
//! ack what the pipeline finished. A trigger never waits on another: each has its own
//! loop, subscription and permits.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool, AtomicI64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;
use slab::Slab;

use cemesh_channels::{Position, Record, Subscription};
use cemesh_proto::Event;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::Ordering;
use crate::pipeline::{arrival_ms, Processed, TriggerContext};
pub use crate::runtime::{TriggerKey, TriggerRuntime};

/// A running trigger loop.
#[derive(Debug)]
pub struct TriggerHandle {
    context: Arc<TriggerContext>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl TriggerHandle {
    pub fn trigger(&self) -> &TriggerRuntime {
        &self.context.runtime
    }

    /// The pipeline the loop runs (for redriving dead letters through it).
    pub fn context(&self) -> &Arc<TriggerContext> {
        &self.context
    }

    /// Stops reading new events, ends retry waits and waits for attempts in flight.
    /// Events not finished stay unacked and are delivered again later.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Starts a trigger's loop on its subscription.
pub fn spawn_trigger(
    context: Arc<TriggerContext>,
    subscription: Arc<dyn Subscription>,
) -> TriggerHandle {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(context.clone(), subscription, cancel.clone()));
    TriggerHandle {
        context,
        cancel,
        task,
    }
}

/// Most matched events waiting for their partition key's turn (ordered mode).
const MAX_WAITING: usize = 10_000;

/// Delivery slots shared by the process's triggers that leave
/// `cemesh.dev/parallelism` unset: one whose own are all busy borrows from these
/// for as long as the delivery takes. One trigger as fast as possible then keeps
/// up with its ingress (its backlog, and so its events' latency, stays near empty:
/// `bench/README.md`, "Borrowed delivery slots"); a hundred busy triggers add 64
/// deliveries in flight in all, not 64 each.
const SHARED_SLOTS: usize = 64;

static SHARED: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(SHARED_SLOTS)));

/// What a delivery holds while it is in flight (released when dropped).
enum Slot {
    Own {
        _permit: OwnedSemaphorePermit,
    },
    /// A shared slot, and one of the trigger's count of those it borrowed.
    Borrowed {
        _shared: OwnedSemaphorePermit,
        _counted: OwnedSemaphorePermit,
    },
}

impl Slot {
    fn own(permit: OwnedSemaphorePermit) -> Self {
        Slot::Own { _permit: permit }
    }
}

/// A shared slot, if one is free (and the trigger may borrow).
fn borrow(allowed: bool, borrowed: &Arc<Semaphore>) -> Option<Slot> {
    if !allowed {
        return None;
    }
    let shared = SHARED.clone().try_acquire_owned().ok()?;
    let mine = borrowed.clone().try_acquire_owned().ok()?;
    Some(Slot::Borrowed {
        _shared: shared,
        _counted: mine,
    })
}

pub(crate) async fn run(
    ctx: Arc<TriggerContext>,
    sub: Arc<dyn Subscription>,
    cancel: CancellationToken,
) {
    let trigger = ctx.runtime.clone();
    let parallelism = trigger.parallelism.max(1);
    let permits = Arc::new(Semaphore::new(parallelism));
    let ordered = trigger.delivery.ordering == Ordering::PerPartitionKey;
    // Ordered deliveries keep to their own slots (a key's turn waits for them).
    let borrows = trigger.borrows && !ordered;
    let borrowed = Arc::new(Semaphore::new(SHARED_SLOTS));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut keys = KeyChains::default();
    // Gates first attempts, in the delivery task once it may send (its permit and its
    // key's turn taken): events that waited there do not then fire back to back.
    let limiter = trigger
        .delivery
        .max_rate
        .map(|r| tokio::sync::Mutex::new(RateLimiter::new(r)));
    let overflow = trigger.max_lag.is_set().then(|| {
        Arc::new(Overflow::new(
            trigger.max_lag.age.is_some(),
            trigger.max_lag.pause,
        ))
    });
    let watcher = overflow
        .clone()
        .map(|o| tokio::spawn(watch_lag(ctx.clone(), o, cancel.clone())));
    let tasks = Arc::new(Tasks {
        ctx: ctx.clone(),
        sub: sub.clone(),
        cancel: cancel.clone(),
        limiter,
        overflow: overflow.clone(),
        permits: permits.clone(),
    });
    let batch = parallelism.clamp(16, 512);
    tracing::info!(trigger = %trigger.key, subscriber = %trigger.subscriber, "Trigger started");
    'outer: loop {
        let records = tokio::select! {
            _ = cancel.cancelled() => break,
            r = sub.next(batch) => match r {
                Ok(records) => records,
                // A replay's range is read (or the channel closed).
                Err(cemesh_channels::ChannelError::Closed) => break,
                Err(e) => {
                    tracing::warn!(trigger = %trigger.key, error = %e, "Subscription ended");
                    break;
                }
            },
        };
        for record in records {
            if !trigger.filter.matches(&record.event) {
                if let Err(e) = sub.ack(record.position) {
                    tracing::warn!(trigger = %trigger.key, error = %e, "Ack failed");
                }
                continue;
            }
            let key = if ordered {
                partition_key(&record.event)
            } else {
                None
            };
            // Past the max-lag already, or while waiting for room: straight to the
            // dead letters, without taking a delivery slot.
            let room = match key {
                None => &permits,
                Some(_) => &waiting,
            };
            // At once when a slot is free and the record is not past the limit: no
            // waiter is registered on the shutdown token, the limit or the slots.
            if cancel.is_cancelled() {
                break 'outer;
            }
            if let Some(o) = overflow.as_ref().filter(|o| !o.pause) {
                if o.is_record_past(&record) {
                    o.dead_letter(ctx.clone(), sub.clone(), record, cancel.clone())
                        .await;
                    continue;
                }
            }
            let taken = match room.clone().try_acquire_owned() {
                Ok(p) => Some(Slot::own(p)),
                Err(TryAcquireError::Closed) => None,
                Err(TryAcquireError::NoPermits) => match borrow(borrows, &borrowed) {
                    Some(slot) => Some(slot),
                    None => match &overflow {
                        Some(o) if !o.pause => tokio::select! {
                            biased;
                            _ = cancel.cancelled() => break 'outer,
                            () = o.until_past(&record) => {
                                o.dead_letter(ctx.clone(), sub.clone(), record, cancel.clone()).await;
                                continue;
                            },
                            p = room.clone().acquire_owned() => p.ok().map(Slot::own),
                        },
                        // Paused at the limit (or no limit): the record waits for room.
                        _ => tokio::select! {
                            _ = cancel.cancelled() => break 'outer,
                            p = room.clone().acquire_owned() => p.ok().map(Slot::own),
                        },
                    },
                },
            };
            let Some(slot) = taken else { break 'outer };
            let hold = overflow.as_ref().map(|o| o.hold(&record));
            let tasks = tasks.clone();
            match key {
                // Boxed before it is spawned: the delivery's future is a few KiB,
                // and spawn moved it four times on its way into the task
                // (`bench/README.md`, "A delivery's future boxed once").
                None => tokio::spawn(Box::pin(async move {
                    let held = tasks.held(hold);
                    let work = tasks.deliver(&record);
                    tokio::pin!(work);
                    tasks.finish(&record, held, work).await;
                    drop(slot);
                })),
                Some(key) => {
                    // Waited here only for room in the queue; the task waits for its key.
                    let (previous, done) = keys.link(key);
                    tokio::spawn(Box::pin(async move {
                        let _slot = slot;
                        let _done = done.drop_guard();
                        let held = tasks.held(hold);
                        let work = async {
                            if let Some(previous) = previous {
                                previous.cancelled().await;
                            }
                            // A key behind an interrupted event stops too, keeping order.
                            if tasks.cancel.is_cancelled() {
                                return Processed::Interrupted;
                            }
                            let Ok(_permit) = tasks.permits.acquire().await else {
                                return Processed::Interrupted;
                            };
                            tasks.deliver(&record).await
                        };
                        tokio::pin!(work);
                        tasks.finish(&record, held, work).await;
                    }))
                }
            };
        }
    }
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    // Let attempts in flight finish; unfinished records stay unacked and come again.
    let _ = waiting.acquire_many(MAX_WAITING as u32).await;
    let _ = permits.acquire_many(parallelism as u32).await;
    let _ = borrowed.acquire_many(SHARED_SLOTS as u32).await;
    if let Some(o) = &overflow {
        let _ = o.moving.acquire_many(OVERFLOW_WRITERS as u32).await;
    }
    tracing::info!(trigger = %trigger.key, "Trigger stopped");
}

/// What a trigger's delivery tasks share: one reference count taken per record
/// rather than one per handle (each a contended atomic, the shutdown token's a lock).
struct Tasks {
    ctx: Arc<TriggerContext>,
    sub: Arc<dyn Subscription>,
    cancel: CancellationToken,
    limiter: Option<tokio::sync::Mutex<RateLimiter>>,
    overflow: Option<Arc<Overflow>>,
    /// The trigger's own slots (an ordered delivery takes one when its key's turn
    /// comes).
    permits: Arc<Semaphore>,
}

impl Tasks {
    /// A delivery task's first step: the record the loop held becomes the task's
    /// to release, however the task ends. (A task dropped before it first ran, at
    /// shutdown, leaves its slot behind in a trigger that is stopping.)
    fn held(&self, hold: Option<Hold>) -> Option<HeldGuard<'_>> {
        Some(HeldGuard {
            overflow: self.overflow.as_deref()?,
            hold: hold?,
        })
    }

    /// The record through the pipeline, once the rate limit lets it start
    /// (interrupted if shutdown comes first).
    async fn deliver(&self, record: &Record) -> Processed {
        if pace(self.limiter.as_ref(), &self.cancel).await {
            self.ctx.process(&record.event, &self.cancel).await
        } else {
            Processed::Interrupted
        }
    }

    /// Runs `work` (pinned where it was made) unless max-lag moves the record
    /// first, then acks the record if it finished.
    async fn finish(
        &self,
        record: &Record,
        held: Option<HeldGuard<'_>>,
        work: Pin<&mut impl Future<Output = Processed>>,
    ) {
        let processed = until_overflow(&self.ctx, record, &self.cancel, held, work).await;
        ack_finished(&self.ctx, &*self.sub, record, processed);
    }
}

/// Runs a record's delivery unless the trigger's max-lag moves it to the dead
/// letters first (then the delivery, wherever it was, is abandoned).
///
/// `work` is pinned where it was made: taken by value, it would sit twice in the
/// delivery's task (`bench/README.md`, "A delivery's task").
async fn until_overflow(
    ctx: &TriggerContext,
    record: &Record,
    cancel: &CancellationToken,
    held: Option<HeldGuard<'_>>,
    mut work: Pin<&mut impl Future<Output = Processed>>,
) -> Processed {
    let Some(held) = held else {
        return work.await;
    };
    // The cell first, as the watcher may have moved the record while it waited.
    let finished = std::future::poll_fn(|cx| {
        if held.hold.cell.is_moved() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(processed) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(processed));
        }
        held.hold.cell.waker.register(cx.waker());
        match held.hold.cell.is_moved() {
            true => Poll::Ready(None),
            false => Poll::Pending,
        }
    })
    .await;
    match finished {
        Some(processed) => processed,
        // Boxed: a rare path, kept out of every delivery's task.
        None => Box::pin(ctx.overflow(&record.event, cancel)).await,
    }
}

fn ack_finished(
    ctx: &TriggerContext,
    sub: &dyn Subscription,
    record: &Record,
    processed: Processed,
) {
    match processed {
        Processed::Delivered | Processed::DeadLettered(_) => {
            if let Err(e) = sub.ack(record.position) {
                tracing::warn!(trigger = %ctx.runtime.key, error = %e, "Ack failed");
            }
        }
        Processed::Interrupted => {}
    }
}

/// The records a trigger holds (read and not finished), each with the cell through
/// which the watcher moves it to the dead letters. A slab: a hold and its release are
/// an index each, without a search or an allocation in the steady state.
type HeldMap = Slab<Arc<HeldCell>>;

/// One held record: where it is, and whether the watcher has moved it (then its
/// delivery's task is woken to give it up). Polled without a lock: a flag and the
/// task's waker.
struct HeldCell {
    arrival: i64,
    position: Position,
    moved: AtomicBool,
    waker: AtomicWaker,
}

impl HeldCell {
    fn is_moved(&self) -> bool {
        self.moved.load(Acquire)
    }

    fn move_out(&self) {
        self.moved.store(true, Release);
        self.waker.wake();
    }
}

/// Dead-letter writes of overflowing records at once, per trigger.
const OVERFLOW_WRITERS: usize = 32;

/// A trigger's max-lag state, shared by its loop and its watcher: where the limit
/// falls now, and the records it holds (read and not finished).
struct Overflow {
    /// Per partition: records below this offset are more than max-lag behind.
    boundary: RwLock<HashMap<u32, u64>>,
    /// Events that arrived before this (Unix ms) are older than the max-lag age.
    cutoff: AtomicI64,
    /// Whether arrival times matter (an age limit is set).
    by_age: bool,
    /// Past the limit the trigger pauses: nothing is moved.
    pause: bool,
    /// Fired when the limit moves.
    moved: Notify,
    held: std::sync::Mutex<HeldMap>,
    /// Bounds the dead-letter writes of records moved before delivery.
    moving: Arc<Semaphore>,
}

/// A record the loop held: its slot, and its cell.
struct Hold {
    index: usize,
    cell: Arc<HeldCell>,
}

/// Forgets a held record when its task ends, however it ends.
struct HeldGuard<'a> {
    overflow: &'a Overflow,
    hold: Hold,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.overflow.lock_held().try_remove(self.hold.index);
    }
}

impl Overflow {
    fn new(by_age: bool, pause: bool) -> Self {
        Overflow {
            boundary: RwLock::default(),
            cutoff: AtomicI64::new(i64::MIN),
            by_age,
            pause,
            moved: Notify::new(),
            held: std::sync::Mutex::default(),
            moving: Arc::new(Semaphore::new(OVERFLOW_WRITERS)),
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HeldMap> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arrival(&self, record: &Record) -> i64 {
        if self.by_age {
            arrival_ms(&record.event)
        } else {
            0
        }
    }

    fn is_past(&self, position: Position, arrival: i64) -> bool {
        let boundary = self.boundary.read().unwrap_or_else(|p| p.into_inner());
        boundary
            .get(&position.partition)
            .is_some_and(|b| position.offset < *b)
            || (self.by_age && arrival < self.cutoff.load(Relaxed))
    }

    fn is_record_past(&self, record: &Record) -> bool {
        self.is_past(record.position, self.arrival(record))
    }

    /// Returns once `record` is past the limit (never while it is not).
    async fn until_past(&self, record: &Record) {
        let arrival = self.arrival(record);
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.is_past(record.position, arrival) {
                return;
            }
            moved.await;
        }
    }

    fn hold(&self, record: &Record) -> Hold {
        let cell = Arc::new(HeldCell {
            arrival: self.arrival(record),
            position: record.position,
            moved: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let index = self.lock_held().insert(cell.clone());
        Hold { index, cell }
    }

    /// Moves a record that was never attempted to the dead letters (at most
    /// [`OVERFLOW_WRITERS`] at once), then acks it.
    async fn dead_letter(
        &self,
        ctx: Arc<TriggerContext>,
        sub: Arc<dyn Subscription>,
        record: Record,
        cancel: CancellationToken,
    ) {
        let Ok(permit) = self.moving.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let processed = ctx.overflow(&record.event, &cancel).await;
            ack_finished(&ctx, &*sub, &record, processed);
            drop(permit);
        });
    }

    /// Publishes where the limit falls and moves out the held records past it
    /// (leaves them when the trigger pauses instead); returns how many are past.
    fn publish(&self, boundary: Option<HashMap<u32, u64>>, cutoff: Option<i64>) -> usize {
        if let Some(b) = boundary {
            *self.boundary.write().unwrap_or_else(|p| p.into_inner()) = b;
        }
        if let Some(c) = cutoff {
            self.cutoff.store(c, Relaxed);
        }
        self.moved.notify_waiters();
        let held = self.lock_held();
        let mut moved = 0;
        for (_, cell) in held.iter() {
            if !cell.is_moved() && self.is_past(cell.position, cell.arrival) {
                if !self.pause {
                    cell.move_out();
                }
                moved += 1;
            }
        }
        moved
    }
}

/// How often a trigger with a max-lag reads where its channel ends (a Kafka topic's
/// ends cost a request per partition, so less often there).
fn lag_check_every(kind: &str) -> Duration {
    match kind {
        "kafka" => Duration::from_secs(1),
        _ => Duration::from_millis(50),
    }
}

/// Keeps the trigger within its max-lag: from the channel's ends, the offset below
/// which records are more than max-lag behind (the limit is shared evenly by the
/// partitions), and the age cutoff. Held records past it go to the dead letters
/// (their deliveries abandoned), and the loop moves records past it without
/// attempting them, so the trigger's cursor never stays further behind than the
/// limit and the broker can trim: other triggers and the ingress go on.
async fn watch_lag(ctx: Arc<TriggerContext>, overflow: Arc<Overflow>, cancel: CancellationToken) {
    let max = ctx.runtime.max_lag;
    let mut tick = tokio::time::interval(lag_check_every(ctx.broker.kind()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let boundary = match max.records {
            Some(limit) => match ctx.broker.ends().await {
                Ok(ends) => {
                    let share = (limit / ends.len().max(1) as u64).max(1);
                    Some(
                        ends.iter()
                            .map(|e| (e.partition, e.offset.saturating_sub(share)))
                            .collect(),
                    )
                }
                Err(e) => {
                    tracing::debug!(trigger = %ctx.runtime.key, error = %e, "Reading the channel's ends failed");
                    None
                }
            },
            None => None,
        };
        let cutoff = max.age.map(|age| {
            cemesh_proto::knative::now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
        });
        let moved = overflow.publish(boundary, cutoff);
        if overflow.pause {
            if moved > 0 {
                ctx.pause_at_max_lag();
            } else if !ctx.pause.is_armed() && within_max_lag(&ctx, &overflow).await {
                ctx.pause.rearm();
            }
        } else if moved > 0 {
            tracing::warn!(trigger = %ctx.runtime.key, moved, max_lag = %max, "Trigger is past its max-lag; its oldest waiting events go to the dead letters (backlog-overflow)");
        }
    }
}

/// Whether a resumed trigger is back under its max-lag (so it may pause again): its
/// lag in records, and no held record past the age limit. With nothing held, only
/// an empty backlog tells the age is within the limit (between two reads, the held
/// set is empty however far behind the trigger is).
async fn within_max_lag(ctx: &TriggerContext, overflow: &Overflow) -> bool {
    let max = ctx.runtime.max_lag;
    let Ok(lag) = ctx.broker.lag(&ctx.runtime.key.subscription_name()).await else {
        return false;
    };
    let records_ok = max.records.is_none_or(|limit| lag <= limit);
    let age_ok = max.age.is_none() || lag == 0 || !overflow.lock_held().is_empty();
    records_ok && age_ok
}

/// The CloudEvents `partitionkey` extension, as a string.
fn partition_key(event: &Event) -> Option<String> {
    event.attribute("partitionkey").map(|v| v.to_canonical())
}

/// For ordered mode: per partition key, the completion signal of the last event
/// queued, so the next one starts only after it.
#[derive(Default)]
struct KeyChains {
    last: HashMap<String, CancellationToken>,
    linked: usize,
}

impl KeyChains {
    /// Returns the signal to wait for (the key's previous event) and the one to fire
    /// when this event is done.
    fn link(&mut self, key: String) -> (Option<CancellationToken>, CancellationToken) {
        self.linked += 1;
        if self.linked >= 1024 {
            self.linked = 0;
            self.last.retain(|_, done| !done.is_cancelled());
        }
        let done = CancellationToken::new();
        let previous = self.last.insert(key, done.clone());
        (previous.filter(|p| !p.is_cancelled()), done)
    }
}

/// Spaces first attempts at most `rate` per second (no bursts beyond one).
/// Waits for the rate limiter's next slot, if there is a limit; false when shutdown
/// came first (the record stays unacked and comes again).
async fn pace(
    limiter: Option<&tokio::sync::Mutex<RateLimiter>>,
    cancel: &CancellationToken,
) -> bool {
    let Some(limiter) = limiter else {
        return true;
    };
    tokio::select! {
        _ = cancel.cancelled() => false,
        () = async { limiter.lock().await.wait().await } => true,
    }
}

struct RateLimiter {
    interval: Duration,
    next: tokio::time::Instant,
}

impl RateLimiter {
    fn new(rate: f64) -> Self {
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / rate.max(1e-3)),
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let now = tokio::time::Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + self.interval;
    }
}
