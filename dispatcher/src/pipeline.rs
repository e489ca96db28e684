//! Everything that happens to one event a trigger matched, until it can be acked:
//! attempts with retries and backoff, the reply fed back into the broker, the
//! dead-letter sink, and the built-in dead-letter store when the sink is absent or
//! fails. Nothing is dropped silently: an event leaves here delivered, dead-lettered
//! somewhere durable, or interrupted (not acked, so the channel delivers it again).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use cemesh_channels::{Attempt, Channel, ChannelError, DeadLetter, DeadLetterStore};
use cemesh_proto::{knative, metric_names as names, AttributeValue, Event};
use http::HeaderMap;
use metrics::{Counter, Gauge, Histogram};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::delivery::{Deliverer, Failure, Format, Success};
use crate::retry::{RetryAction, RetryState};
use crate::runtime::TriggerRuntime;

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// The subscriber took it (any reply was appended or dead-lettered).
    Delivered,
    /// Retries ran out or the failure was final; the event is in the dead-letter sink
    /// or the built-in store.
    DeadLettered,
    /// Shutdown interrupted it; it must not be acked.
    Interrupted,
}

/// A trigger's delivery pipeline: its policy and everything it writes to.
#[derive(Debug, Clone)]
pub struct TriggerContext {
    pub runtime: Arc<TriggerRuntime>,
    pub deliverer: Deliverer,
    /// The trigger's broker, where replies go.
    pub broker: Arc<dyn Channel>,
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub stats: Arc<TriggerStats>,
    pub metrics: Arc<TriggerMetrics>,
}

/// The trigger's metric handles, each registered on first use and kept, so the hot
/// path records without building label sets (and without exporting series that
/// never happened).
#[derive(Debug, Default)]
pub struct TriggerMetrics {
    in_flight: OnceLock<Gauge>,
    retries: OnceLock<Counter>,
    replies: OnceLock<Counter>,
    dead_letters: OnceLock<Counter>,
    /// Attempts and their latency, per status class (`names::STATUS_CLASSES` order).
    attempts: [OnceLock<(Counter, Histogram)>; 6],
}

impl TriggerContext {
    fn in_flight_gauge(&self) -> &Gauge {
        let key = &self.runtime.key;
        self.metrics.in_flight.get_or_init(|| {
            metrics::gauge!(names::TRIGGER_IN_FLIGHT, "namespace_name" => key.namespace.clone(), "trigger_name" => key.name.clone())
        })
    }

    fn per_trigger_counter<'a>(
        &self,
        cell: &'a OnceLock<Counter>,
        name: &'static str,
    ) -> &'a Counter {
        let key = &self.runtime.key;
        cell.get_or_init(|| {
            metrics::counter!(name, "namespace_name" => key.namespace.clone(), "trigger_name" => key.name.clone())
        })
    }
}

/// Counters of one trigger since it started, for `cemesh describe` (the same events
/// are also counted in the process's metrics), and the scaling signals built on them.
#[derive(Debug)]
pub struct TriggerStats {
    /// Events the subscriber took.
    pub delivered: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Events sent to the dead-letter sink or the built-in store.
    pub dead_lettered: AtomicU64,
    /// Replies appended to the broker.
    pub replies: AtomicU64,
    /// Events being processed now.
    pub in_flight: AtomicI64,
    /// Arrival times (Unix ms) of the events being processed, with their count: the
    /// oldest is the oldest event not finished (the trigger reads in log order).
    arrivals: Mutex<BTreeMap<i64, u32>>,
    /// `(when, delivered)` samples, at least a second apart, for the delivery rate.
    rate_samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Default for TriggerStats {
    fn default() -> Self {
        TriggerStats {
            delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            replies: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            arrivals: Mutex::default(),
            rate_samples: Mutex::new(VecDeque::from([(Instant::now(), 0)])),
        }
    }
}

impl TriggerStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "delivered": self.delivered.load(Relaxed),
            "retries": self.retries.load(Relaxed),
            "deadLettered": self.dead_lettered.load(Relaxed),
            "replies": self.replies.load(Relaxed),
            "inFlight": self.in_flight.load(Relaxed).max(0),
        })
    }

    /// When the oldest event being processed arrived (`knativearrivaltime`, Unix ms).
    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        lock(&self.arrivals).keys().next().copied()
    }

    /// Events delivered per second over about the last minute (a reader calling at
    /// least once a minute sees a window of one to two minutes at most).
    pub fn delivery_rate(&self) -> f64 {
        let now = Instant::now();
        let count = self.delivered.load(Relaxed);
        let mut samples = lock(&self.rate_samples);
        if samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            samples.push_back((now, count));
        }
        while samples.len() > 2 && now.duration_since(samples[1].0) >= Duration::from_secs(60) {
            samples.pop_front();
        }
        let Some(&(t0, c0)) = samples.front() else {
            return 0.0;
        };
        let dt = now.duration_since(t0).as_secs_f64();
        if dt < 0.001 {
            return 0.0;
        }
        count.saturating_sub(c0) as f64 / dt
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `knativearrivaltime` in Unix ms; now when absent or unreadable.
fn arrival_ms(event: &Event) -> i64 {
    match event.extension(knative::ARRIVAL_TIME) {
        Some(AttributeValue::String(s) | AttributeValue::Timestamp(s)) => {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis())
        }
        _ => chrono::Utc::now().timestamp_millis(),
    }
}

/// Decrements the in-flight count (and forgets the event's arrival) however
/// processing ends.
struct InFlight<'a>(&'a TriggerContext, i64);

impl<'a> InFlight<'a> {
    fn enter(ctx: &'a TriggerContext, event: &Event) -> Self {
        let arrival = arrival_ms(event);
        *lock(&ctx.stats.arrivals).entry(arrival).or_insert(0) += 1;
        ctx.stats.in_flight.fetch_add(1, Relaxed);
        ctx.in_flight_gauge().increment(1.0);
        InFlight(ctx, arrival)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let ctx = self.0;
        {
            let mut arrivals = lock(&ctx.stats.arrivals);
            if let Some(n) = arrivals.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    arrivals.remove(&self.1);
                }
            }
        }
        ctx.stats.in_flight.fetch_sub(1, Relaxed);
        ctx.in_flight_gauge().decrement(1.0);
    }
}

impl TriggerContext {
    /// Runs the event through the pipeline. `cancel` stops waiting between retries
    /// (the attempt in flight finishes).
    pub async fn process(&self, event: &Event, cancel: &CancellationToken) -> Processed {
        let _in_flight = InFlight::enter(self, event);
        let processed = self.process_inner(event, cancel).await;
        let key = &self.runtime.key;
        match processed {
            Processed::Delivered => {
                self.stats.delivered.fetch_add(1, Relaxed);
            }
            Processed::DeadLettered => {
                self.stats.dead_lettered.fetch_add(1, Relaxed);
                let destination = if self.runtime.delivery.dead_letter_sink.is_some() {
                    "sink"
                } else {
                    "store"
                };
                self.metrics
                    .dead_letters
                    .get_or_init(|| {
                        metrics::counter!(names::TRIGGER_DEAD_LETTERS, "namespace_name" => key.namespace.clone(), "trigger_name" => key.name.clone(), "destination" => destination)
                    })
                    .increment(1);
            }
            Processed::Interrupted => {}
        }
        processed
    }

    async fn process_inner(&self, event: &Event, cancel: &CancellationToken) -> Processed {
        let ttl = knative::ttl(event).unwrap_or(knative::DEFAULT_TTL);
        let mut outgoing = event.clone();
        outgoing.remove_extension(knative::BROKER_TTL);
        let spec = &self.runtime.delivery;
        let url = &self.runtime.subscriber;

        let (mut attempts, failure) = match self.send(url, &outgoing, spec.format, cancel).await {
            Sent::Ok(success) => {
                self.reply(event, &outgoing, ttl, success, cancel).await;
                return Processed::Delivered;
            }
            Sent::Interrupted => return Processed::Interrupted,
            Sent::Failed(attempts, failure) => (attempts, failure),
        };

        let mut letter = outgoing;
        knative_error(&mut letter, url.as_str(), &failure);
        if let Some(sink) = &spec.dead_letter_sink {
            match self.send(sink, &letter, spec.format, cancel).await {
                Sent::Ok(..) => {
                    tracing::info!(trigger = %self.runtime.key, event.id = %event.id, sink = %sink, "Dead-lettered to the sink");
                    return Processed::DeadLettered;
                }
                Sent::Interrupted => return Processed::Interrupted,
                Sent::Failed(sink_attempts, sink_failure) => {
                    attempts.extend(sink_attempts);
                    let reason = format!(
                        "dead-letter sink failed ({}) after the subscriber failed ({})",
                        sink_failure.error, failure.error
                    );
                    return self.store(letter, reason, attempts, cancel).await;
                }
            }
        }
        let reason = format!("delivery failed: {}", failure.error);
        self.store(letter, reason, attempts, cancel).await
    }

    /// Attempts with retries; returns the 2xx answer, or every attempt and the last
    /// failure.
    async fn send(
        &self,
        url: &reqwest::Url,
        event: &Event,
        format: Format,
        cancel: &CancellationToken,
    ) -> Sent {
        let spec = &self.runtime.delivery;
        let ns = &self.runtime.key.namespace;
        let pool = match &self.runtime.endpoints {
            Some(p) if url == &self.runtime.subscriber => Some(p),
            _ => None,
        };
        let mut attempts: Vec<(Attempt, Failure)> = Vec::new();
        let mut retry = RetryState::default();
        let mut wait: Option<Duration> = None;
        loop {
            if let Some(wait) = wait.take() {
                tokio::select! {
                    _ = cancel.cancelled() => return Sent::Interrupted,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let span = tracing::info_span!(
                "deliver",
                broker = %self.runtime.broker,
                trigger = %self.runtime.key,
                event.id = %event.id,
                to = %url,
                attempt = attempts.len() + 1,
                status = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            );
            let at = knative::now_rfc3339();
            let started = Instant::now();
            let result = match pool {
                None => {
                    self.deliverer
                        .attempt(url, event, ns, format, spec.timeout)
                        .instrument(span.clone())
                        .await
                }
                Some(pool) => match pool.acquire().instrument(span.clone()).await {
                    Ok(lease) => {
                        let target = lease.target(url);
                        let r = self
                            .deliverer
                            .attempt(&target, event, ns, format, spec.timeout)
                            .instrument(span.clone())
                            .await;
                        drop(lease);
                        r
                    }
                    Err(e) => Err(Failure {
                        status: None,
                        error: format!("no instance of {url}: {e}"),
                        body: Bytes::new(),
                        retry_after: None,
                        connect_failed: true,
                    }),
                },
            };
            let latency = started.elapsed();
            span.record("latency_ms", latency.as_secs_f64() * 1e3);
            self.record_attempt(attempts.len() as u32, &result, latency);
            match result {
                Ok(success) => {
                    span.record("status", success.status);
                    return Sent::Ok(success);
                }
                Err(failure) => {
                    if let Some(s) = failure.status {
                        span.record("status", s);
                    }
                    let action = retry.after_failure(spec, &failure, Instant::now());
                    let (in_grace, last) = match action {
                        RetryAction::Retry { wait: w, counted } => {
                            wait = Some(w);
                            (!counted, false)
                        }
                        RetryAction::DontRetry(_) => (false, true),
                    };
                    span.in_scope(|| {
                        tracing::warn!(
                            status = ?failure.status,
                            error = %failure.error,
                            cold_start_grace = in_grace,
                            final_attempt = last,
                            "Delivery attempt failed"
                        );
                    });
                    attempts.push((
                        Attempt {
                            at,
                            status: failure.status,
                            error: failure.error.clone(),
                            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                        },
                        failure,
                    ));
                    if last {
                        break;
                    }
                }
            }
        }
        let failure = attempts
            .last()
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| Failure {
                status: None,
                error: "no attempt was made".into(),
                body: Bytes::new(),
                retry_after: None,
                connect_failed: false,
            });
        Sent::Failed(attempts.into_iter().map(|(a, _)| a).collect(), failure)
    }

    fn record_attempt(&self, k: u32, result: &Result<Success, Failure>, latency: Duration) {
        let key = &self.runtime.key;
        let status = match result {
            Ok(s) => Some(s.status),
            Err(f) => f.status,
        };
        let class = names::status_class(status);
        let slot = names::STATUS_CLASSES
            .iter()
            .position(|c| *c == class)
            .unwrap_or(names::STATUS_CLASSES.len() - 1);
        let (count, latencies) = self.metrics.attempts[slot].get_or_init(|| {
            let labels = [
                ("namespace_name", key.namespace.clone()),
                ("broker_name", self.runtime.broker.clone()),
                ("trigger_name", key.name.clone()),
                ("response_code_class", class.to_owned()),
            ];
            (
                metrics::counter!(names::TRIGGER_EVENT_COUNT, &labels),
                metrics::histogram!(names::TRIGGER_DISPATCH_LATENCIES, &labels),
            )
        });
        count.increment(1);
        latencies.record(latency.as_secs_f64());
        if k > 0 {
            self.stats.retries.fetch_add(1, Relaxed);
            self.per_trigger_counter(&self.metrics.retries, names::TRIGGER_RETRIES)
                .increment(1);
        }
    }

    /// Feeds a reply carried by a 2xx answer back into the broker.
    async fn reply(
        &self,
        original: &Event,
        delivered: &Event,
        ttl: i32,
        success: Success,
        cancel: &CancellationToken,
    ) {
        let mut replies = match decode_reply(&success.headers, success.body) {
            Reply::None => return,
            Reply::Events(events) => events,
            Reply::Invalid(error) => {
                let reason = format!("the subscriber's reply is not a valid CloudEvent: {error}");
                let _ = self
                    .store(delivered.clone(), reason, Vec::new(), cancel)
                    .await;
                return;
            }
        };
        let next_ttl = ttl - 1;
        let now = knative::now_rfc3339();
        for reply in &mut replies {
            knative::stamp_arrival(reply, &now);
            for name in ["traceparent", "tracestate"] {
                if reply.extension(name).is_none() {
                    if let Some(v) = original.extension(name) {
                        reply.set_extension(name, v.clone());
                    }
                }
            }
            if next_ttl <= 0 {
                continue;
            }
            knative::set_ttl(reply, next_ttl);
        }
        if next_ttl <= 0 {
            for reply in replies {
                let reason = format!(
                    "{} exhausted: the reply was not sent to the broker (a reply loop stopped after {} hops)",
                    knative::BROKER_TTL,
                    knative::DEFAULT_TTL
                );
                tracing::warn!(trigger = %self.runtime.key, event.id = %reply.id, "Reply dropped to the dead letters: TTL exhausted");
                let _ = self.store(reply, reason, Vec::new(), cancel).await;
            }
            return;
        }
        // Retry the append, never the subscriber.
        let spec = &self.runtime.delivery;
        let mut k = 0u32;
        loop {
            let error = match self.broker.append(replies.clone()).await {
                Ok(()) => {
                    self.stats.replies.fetch_add(replies.len() as u64, Relaxed);
                    self.per_trigger_counter(&self.metrics.replies, names::TRIGGER_REPLIES)
                        .increment(replies.len() as u64);
                    return;
                }
                Err(ChannelError::Closed) => "the broker's channel is closed".to_owned(),
                Err(e) => e.to_string(),
            };
            k += 1;
            if k > spec.retry || cancel.is_cancelled() {
                for reply in replies {
                    let reason = format!(
                        "appending the reply to broker {} failed: {error}",
                        self.runtime.broker
                    );
                    let _ = self.store(reply, reason, Vec::new(), cancel).await;
                }
                return;
            }
            let wait = spec.backoff(k);
            tracing::warn!(trigger = %self.runtime.key, error = %error, retry_in = ?wait, "Appending a reply failed");
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Puts a dead letter in the built-in store, retrying a failing store until it
    /// works or shutdown interrupts.
    async fn store(
        &self,
        event: Event,
        reason: String,
        attempts: Vec<Attempt>,
        cancel: &CancellationToken,
    ) -> Processed {
        let letter = DeadLetter {
            id: 0,
            trigger: self.runtime.key.to_string(),
            event,
            reason,
            attempts,
            dead_at: knative::now_rfc3339(),
        };
        let mut wait = Duration::from_millis(100);
        loop {
            match self.dead_letters.put(letter.clone()).await {
                Ok(id) => {
                    tracing::warn!(
                        trigger = %self.runtime.key,
                        event.id = %letter.event.id,
                        dead_letter = id,
                        reason = %letter.reason,
                        "Event stored in the dead letters"
                    );
                    return Processed::DeadLettered;
                }
                Err(e) => {
                    tracing::error!(trigger = %self.runtime.key, error = %e, "Storing a dead letter failed; retrying");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Processed::Interrupted,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
}

enum Sent {
    Ok(Success),
    Failed(Vec<Attempt>, Failure),
    Interrupted,
}

/// Adds Knative's `knativeerror*` extensions describing `failure` at `dest`.
fn knative_error(event: &mut Event, dest: &str, failure: &Failure) {
    event.set_extension(knative::ERROR_DEST, AttributeValue::String(dest.to_owned()));
    match failure.status {
        Some(code) => event.set_extension(
            knative::ERROR_CODE,
            AttributeValue::String(code.to_string()),
        ),
        None => {
            event.remove_extension(knative::ERROR_CODE);
        }
    }
    if failure.body.is_empty() {
        event.remove_extension(knative::ERROR_DATA);
    } else {
        let kept = &failure.body[..failure.body.len().min(knative::ERROR_DATA_MAX)];
        event.set_extension(
            knative::ERROR_DATA,
            AttributeValue::String(base64::engine::general_purpose::STANDARD.encode(kept)),
        );
    }
}

enum Reply {
    None,
    Events(Vec<Event>),
    Invalid(String),
}

/// A 2xx answer carries a reply when it is a CloudEvent in binary or structured
/// mode; any other answer (empty, plain JSON, text) is plain success.
fn decode_reply(headers: &HeaderMap, body: Bytes) -> Reply {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let binary = headers.contains_key("ce-specversion");
    let structured = ct.starts_with("application/cloudevents");
    if !binary && !structured {
        return Reply::None;
    }
    match cemesh_proto::http::decode(headers, body) {
        Ok(events) if events.is_empty() => Reply::None,
        Ok(events) => Reply::Events(events),
        Err(e) => Reply::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_extensions_keep_at_most_1_kib_of_body() {
        let mut e = Event::new("1", "/s", "t");
        let failure = Failure {
            status: Some(500),
            error: "boom".into(),
            body: Bytes::from(vec![b'x'; 2048]),
            retry_after: None,
            connect_failed: false,
        };
        knative_error(&mut e, "http://127.0.0.1:1/", &failure);
        let data = e.extension(knative::ERROR_DATA).expect("data");
        let AttributeValue::String(b64) = data else {
            panic!("not a string")
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(raw.len(), 1024);
        assert!(
            matches!(e.extension(knative::ERROR_CODE), Some(AttributeValue::String(s)) if s == "500")
        );

        let no_response = Failure {
            status: None,
            error: "refused".into(),
            body: Bytes::new(),
            retry_after: None,
            connect_failed: true,
        };
        knative_error(&mut e, "http://127.0.0.1:1/", &no_response);
        assert!(e.extension(knative::ERROR_CODE).is_none());
        assert!(e.extension(knative::ERROR_DATA).is_none());
    }

    #[test]
    fn only_cloudevents_are_replies() {
        let mut h = HeaderMap::new();
        assert!(matches!(decode_reply(&h, Bytes::new()), Reply::None));
        h.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        assert!(matches!(
            decode_reply(&h, Bytes::from_static(b"{}")),
            Reply::None
        ));
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-id", "r1".parse().unwrap());
        h.insert("ce-source", "/reply".parse().unwrap());
        h.insert("ce-type", "reply.t".parse().unwrap());
        assert!(
            matches!(decode_reply(&h, Bytes::from_static(b"{}")), Reply::Events(v) if v.len() == 1)
        );
        h.remove("ce-id");
        assert!(matches!(decode_reply(&h, Bytes::new()), Reply::Invalid(_)));
    }
}
