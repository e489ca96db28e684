//! Everything that happens to one event a trigger matched, until it can be acked:
//! attempts with retries and backoff, the reply fed back into the broker, the
//! dead-letter sink, and the built-in dead-letter store when the sink is absent or
//! fails. Nothing is dropped silently: an event leaves here delivered, dead-lettered
//! somewhere durable, or interrupted (not acked, so the channel delivers it again).
//!
//! `TriggerContext` is one type whose methods live by concern: `process` here
//! (the order of things), [`send`] (attempts and retries), [`reply`] (answers that
//! carry events), [`deadletter`] (the error extensions and the built-in store) and
//! [`stats`] (counters and metric handles).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use cemesh_channels::{Attempt, Channel, DeadLetterStore};
use cemesh_proto::{knative, metric_names as names, Event};
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::delivery::{Deliverer, Failure, Success};
use crate::pause::Pause;
use crate::runtime::TriggerRuntime;

mod deadletter;
mod journal;
mod reply;
mod send;
mod stats;

use deadletter::knative_error;
pub use deadletter::BACKLOG_OVERFLOW;
pub(crate) use stats::arrival_ms;
use stats::InFlight;
pub use stats::{LatencyHistogram, TriggerMetrics, TriggerStats, LATENCY_BUCKETS};

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// The subscriber took it (any reply was appended or dead-lettered).
    Delivered,
    /// Retries ran out or the failure was final; the event is in the dead-letter sink
    /// or the built-in store.
    DeadLettered(DeadLettered),
    /// Shutdown interrupted it; it must not be acked.
    Interrupted,
}

/// Where a dead-lettered event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLettered {
    /// The dead-letter sink at this URL took it.
    Sink(String),
    /// The built-in store keeps it under this id.
    Store(u64),
}

/// A trigger's delivery pipeline: its policy and everything it writes to.
#[derive(Debug, Clone)]
pub struct TriggerContext {
    pub runtime: Arc<TriggerRuntime>,
    pub deliverer: Deliverer,
    /// The trigger's broker (or channel): what it reads, where its replies go.
    pub broker: Arc<dyn Channel>,
    /// The channel a [`crate::ReplyTo::Local`] reply is appended to, when it runs.
    pub reply_channel: Option<Arc<dyn Channel>>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub stats: Arc<TriggerStats>,
    pub metrics: Arc<TriggerMetrics>,
    /// The subscriber's circuit breaker, shared by the trigger's deliveries.
    pub breaker: Arc<Breaker>,
    /// Set while the trigger is paused at its max-lag.
    pub pause: Arc<Pause>,
    /// Where attempts and outcomes are journaled (unless the broker turned it off).
    pub journal: Option<Arc<dyn cemesh_channels::journal::Journal>>,
    /// The subscriber's URL as hyper's `Uri`, parsed at the first attempt.
    pub subscriber_uri: std::sync::OnceLock<Option<http::Uri>>,
}

impl TriggerContext {
    /// The subscriber's URL, parsed once.
    fn subscriber_uri(&self) -> Option<&http::Uri> {
        self.subscriber_uri
            .get_or_init(|| crate::client::parse_uri(&self.runtime.subscriber).ok())
            .as_ref()
    }

    /// Pauses the trigger at its max-lag (`max-lag-action: pause`), unless it is
    /// paused or was resumed while still past the limit.
    pub fn pause_at_max_lag(&self) {
        let reason = format!("past its max-lag ({})", self.runtime.max_lag);
        if self.pause.pause(reason) {
            tracing::warn!(trigger = %self.runtime.key, max_lag = %self.runtime.max_lag, "Trigger paused at its max-lag: nothing is delivered and every event is kept until it is resumed (cemesh resume)");
            self.paused_gauge().set(1.0);
        }
    }

    /// Lets a paused trigger deliver again; true if it was paused.
    pub fn resume(&self) -> bool {
        let was = self.pause.resume();
        if was {
            tracing::info!(trigger = %self.runtime.key, "Trigger resumed");
            self.paused_gauge().set(0.0);
        }
        was
    }

    /// Runs the event through the pipeline. `cancel` stops waiting between retries
    /// (the attempt in flight finishes).
    pub async fn process(&self, event: &Event, cancel: &CancellationToken) -> Processed {
        let _in_flight = InFlight::enter(self, event);
        let processed = journal::with_success_slot(async {
            let processed = self.process_inner(event, cancel).await;
            self.journal_outcome(event, &processed);
            processed
        })
        .await;
        if processed == Processed::Delivered {
            self.stats.delivered.fetch_add(1, Relaxed);
            self.per_trigger_counter(&self.metrics.delivered, names::TRIGGER_DELIVERED)
                .increment(1);
        }
        processed
    }

    /// The subscriber's attempts, then what their outcome asks for. The rare paths (a
    /// reply, a dead letter) are boxed: every delivery's task would otherwise carry
    /// room for their state and move it at each step (`bench/README.md`, "A
    /// delivery's task").
    async fn process_inner(&self, event: &Event, cancel: &CancellationToken) -> Processed {
        let spec = &self.runtime.delivery;
        let url = &self.runtime.subscriber;
        // The subscriber's attempts leave the broker's TTL out themselves.
        match self
            .send(url, Target::Subscriber, event, spec.format, cancel)
            .await
        {
            Sent::Ok(success) => {
                if reply::may_carry_reply(&success.headers) {
                    let ttl = knative::ttl(event).unwrap_or(knative::DEFAULT_TTL);
                    Box::pin(self.reply(event, ttl, success, cancel)).await;
                }
                Processed::Delivered
            }
            Sent::Interrupted => Processed::Interrupted,
            Sent::Failed(attempts, failure, latency) => {
                Box::pin(self.dead_letter(event, attempts, failure, latency, cancel)).await
            }
        }
    }

    /// The subscriber failed for good: the dead-letter sink, else (or when it fails
    /// too) the built-in store.
    async fn dead_letter(
        &self,
        event: &Event,
        mut attempts: Vec<Attempt>,
        failure: Failure,
        latency: std::time::Duration,
        cancel: &CancellationToken,
    ) -> Processed {
        let spec = &self.runtime.delivery;
        let url = &self.runtime.subscriber;
        let mut letter = crate::delivery::without_broker_ttl(event);
        knative_error(&mut letter, url.as_str(), &failure);
        if let Some(sink) = &spec.dead_letter_sink {
            match self
                .send(sink, Target::DeadLetterSink, &letter, spec.format, cancel)
                .await
            {
                Sent::Ok(..) => {
                    // The one line for an event that finally failed (attempts log at
                    // debug).
                    tracing::warn!(
                        broker = %self.runtime.broker,
                        trigger = %self.runtime.key,
                        event.id = %event.id,
                        attempts = attempts.len(),
                        status = failure.status,
                        latency_ms = stats::rounded_ms(latency),
                        error = %failure.error,
                        sink = %sink,
                        "Delivery failed; the event went to the dead-letter sink"
                    );
                    self.count_dead_letter(stats::Destination::Sink);
                    return Processed::DeadLettered(DeadLettered::Sink(sink.to_string()));
                }
                Sent::Interrupted => return Processed::Interrupted,
                Sent::Failed(sink_attempts, sink_failure, sink_latency) => {
                    attempts.extend(sink_attempts);
                    let reason = format!(
                        "dead-letter sink failed ({}) after the subscriber failed ({})",
                        sink_failure.error, failure.error
                    );
                    return self
                        .store(letter, reason, attempts, Some(sink_latency), cancel)
                        .await;
                }
            }
        }
        let reason = format!("delivery failed: {}", failure.error);
        self.store(letter, reason, attempts, Some(latency), cancel)
            .await
    }
}

/// Whom an attempt is for (kept in each dead letter's attempts): only the
/// subscriber's attempts are counted in the trigger's dispatch metrics.
pub(super) use cemesh_channels::AttemptTarget as Target;

pub(super) enum Sent {
    Ok(Success),
    /// Every attempt, the last failure and the last attempt's duration.
    Failed(Vec<Attempt>, Failure, std::time::Duration),
    Interrupted,
}
