//! One trigger's delivery loop: read, filter, hand matches to the pipeline with
//! bounded parallelism (and, when asked, per-partition-key order and a rate limit),
//! ack what the pipeline finished. A trigger never waits on another: each has its own
//! loop, subscription and permits.

use std::sync::Arc;

use std::collections::HashMap;
use std::time::Duration;

use cemesh_channels::{Record, Subscription};
use cemesh_proto::Event;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::Ordering;
use crate::pipeline::{Processed, TriggerContext};
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

async fn run(ctx: Arc<TriggerContext>, sub: Arc<dyn Subscription>, cancel: CancellationToken) {
    let trigger = ctx.runtime.clone();
    let parallelism = trigger.parallelism.max(1);
    let permits = Arc::new(Semaphore::new(parallelism));
    let ordered = trigger.delivery.ordering == Ordering::PerPartitionKey;
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut keys = KeyChains::default();
    // Gates first attempts, in the delivery task once it may send (its permit and its
    // key's turn taken): events that waited there do not then fire back to back.
    let limiter = trigger
        .delivery
        .max_rate
        .map(|r| Arc::new(tokio::sync::Mutex::new(RateLimiter::new(r))));
    let batch = parallelism.clamp(16, 512);
    tracing::info!(trigger = %trigger.key, subscriber = %trigger.subscriber, "Trigger started");
    'outer: loop {
        let records = tokio::select! {
            _ = cancel.cancelled() => break,
            r = sub.next(batch) => match r {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(trigger = %trigger.key, error = %e, "Subscription ended");
                    break;
                }
            },
        };
        for record in records {
            if !trigger.filter.matches(&record.event) {
                if let Err(e) = sub.ack(record.position).await {
                    tracing::warn!(trigger = %trigger.key, error = %e, "Ack failed");
                }
                continue;
            }
            let key = if ordered {
                partition_key(&record.event)
            } else {
                None
            };
            let (ctx, sub, cancel2) = (ctx.clone(), sub.clone(), cancel.clone());
            let limiter = limiter.clone();
            match key {
                None => {
                    let permit = tokio::select! {
                        _ = cancel.cancelled() => break 'outer,
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break 'outer,
                        },
                    };
                    tokio::spawn(async move {
                        if pace(limiter.as_deref(), &cancel2).await {
                            finish(&ctx, &*sub, &record, &cancel2).await;
                        }
                        drop(permit);
                    });
                }
                Some(key) => {
                    // Wait here only for room in the queue; the task waits for its key.
                    let slot = tokio::select! {
                        _ = cancel.cancelled() => break 'outer,
                        p = waiting.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break 'outer,
                        },
                    };
                    let (previous, done) = keys.link(key);
                    let permits = permits.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let _done = done.drop_guard();
                        if let Some(previous) = previous {
                            previous.cancelled().await;
                        }
                        // A key behind an interrupted event stops too, keeping order.
                        if cancel2.is_cancelled() {
                            return;
                        }
                        let Ok(_permit) = permits.acquire_owned().await else {
                            return;
                        };
                        if pace(limiter.as_deref(), &cancel2).await {
                            finish(&ctx, &*sub, &record, &cancel2).await;
                        }
                    });
                }
            }
        }
    }
    // Let attempts in flight finish; unfinished records stay unacked and come again.
    let _ = waiting.acquire_many(MAX_WAITING as u32).await;
    let _ = permits.acquire_many(parallelism as u32).await;
    tracing::info!(trigger = %trigger.key, "Trigger stopped");
}

async fn finish(
    ctx: &TriggerContext,
    sub: &dyn Subscription,
    record: &Record,
    cancel: &CancellationToken,
) {
    match ctx.process(&record.event, cancel).await {
        Processed::Delivered | Processed::DeadLettered(_) => {
            if let Err(e) = sub.ack(record.position).await {
                tracing::warn!(trigger = %ctx.runtime.key, error = %e, "Ack failed");
            }
        }
        Processed::Interrupted => {}
    }
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
