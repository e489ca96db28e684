//! A trigger's live counters (delivered, retries, dead letters, in flight, the
//! arrival times behind lag and oldest-waiting age) and its metric handles,
//! registered once so the hot path records without building label sets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cemesh_proto::{knative, metric_names as names, Event};
use metrics::{Counter, Gauge, Histogram};

use super::TriggerContext;

/// The trigger's metric handles, each registered on first use and kept, so the hot
/// path records without building label sets (and without exporting series that
/// never happened).
#[derive(Debug, Default)]
pub struct TriggerMetrics {
    pub(super) in_flight: OnceLock<Gauge>,
    pub(super) delivered: OnceLock<Counter>,
    pub(super) retries: OnceLock<Counter>,
    pub(super) replies: OnceLock<Counter>,
    pub(super) replies_dropped: OnceLock<Counter>,
    pub(super) breaker_open: OnceLock<Gauge>,
    pub(super) breaker_opened: OnceLock<Counter>,
    pub(super) paused: OnceLock<Gauge>,
    pub(super) overflowed: OnceLock<Counter>,
    /// Dead letters taken by the sink, and by the built-in store.
    pub(super) dead_letters_sink: OnceLock<Counter>,
    pub(super) dead_letters_store: OnceLock<Counter>,
    /// Attempts and their latency, per status class (`names::STATUS_CLASSES` order).
    pub(super) attempts: [OnceLock<(Counter, Histogram)>; 6],
}

/// Where a dead letter went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Destination {
    /// The trigger's dead-letter sink took it.
    Sink,
    /// The built-in dead-letter store.
    Store,
}

impl TriggerContext {
    /// The labels every per-trigger series carries.
    pub(super) fn trigger_labels(&self) -> [(&'static str, String); 3] {
        let key = &self.runtime.key;
        [
            ("namespace_name", key.namespace.clone()),
            ("broker_name", self.runtime.broker.clone()),
            ("trigger_name", key.name.clone()),
        ]
    }

    pub(super) fn in_flight_gauge(&self) -> &Gauge {
        self.metrics
            .in_flight
            .get_or_init(|| metrics::gauge!(names::TRIGGER_IN_FLIGHT, &self.trigger_labels()))
    }

    pub(super) fn breaker_gauge(&self) -> &Gauge {
        self.metrics
            .breaker_open
            .get_or_init(|| metrics::gauge!(names::TRIGGER_BREAKER_OPEN, &self.trigger_labels()))
    }

    pub(super) fn paused_gauge(&self) -> &Gauge {
        self.metrics
            .paused
            .get_or_init(|| metrics::gauge!(names::TRIGGER_PAUSED, &self.trigger_labels()))
    }

    pub(super) fn per_trigger_counter<'a>(
        &self,
        cell: &'a OnceLock<Counter>,
        name: &'static str,
    ) -> &'a Counter {
        cell.get_or_init(|| metrics::counter!(name, &self.trigger_labels()))
    }

    /// Counts an event that went to the dead letters (the live counter and the
    /// metric, by destination).
    pub(super) fn count_dead_letter(&self, destination: Destination) {
        self.stats.dead_lettered.fetch_add(1, Relaxed);
        let (cell, label) = match destination {
            Destination::Sink => (&self.metrics.dead_letters_sink, "sink"),
            Destination::Store => (&self.metrics.dead_letters_store, "store"),
        };
        cell.get_or_init(|| {
            let [ns, broker, trigger] = self.trigger_labels();
            let labels = [ns, broker, trigger, ("destination", label.to_owned())];
            metrics::counter!(names::TRIGGER_DEAD_LETTERS, &labels)
        })
        .increment(1);
    }
}

/// A duration in milliseconds rounded to a tenth, for logs (`latency_ms=2.1`).
pub(super) fn rounded_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Counters of one trigger since it started, for `cemesh describe` (the same events
/// are also counted in the process's metrics), and the scaling signals built on them.
#[derive(Debug)]
pub struct TriggerStats {
    /// Events the subscriber took.
    pub delivered: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Events sent to the dead-letter sink or the built-in store (including replies
    /// that could not be appended).
    pub dead_lettered: AtomicU64,
    /// Replies appended to the broker (or sent to the subscription's reply).
    pub replies: AtomicU64,
    /// Replies dropped: the subscription has no `spec.reply`.
    pub replies_dropped: AtomicU64,
    /// Events moved to the dead letters by `cemesh.dev/max-lag`.
    pub overflowed: AtomicU64,
    /// Events being processed now.
    pub in_flight: AtomicI64,
    /// Attempts to the subscriber that failed (no answer or not 2xx).
    pub failed_attempts: AtomicU64,
    /// Attempt latencies to the subscriber, for percentiles over an interval.
    pub latency: LatencyHistogram,
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
            replies_dropped: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            failed_attempts: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
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
            "repliesDropped": self.replies_dropped.load(Relaxed),
            "backlogOverflow": self.overflowed.load(Relaxed),
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

/// Buckets of [`LatencyHistogram`]: bucket `i` counts latencies up to
/// `100 µs × 2^(i/2)` (about 41% wide), the last one everything longer.
pub const LATENCY_BUCKETS: usize = 40;

/// Attempt latencies in fixed log-spaced buckets: one relaxed atomic add per
/// attempt, percentiles of any interval from two snapshots' difference.
#[derive(Debug)]
pub struct LatencyHistogram([AtomicU64; LATENCY_BUCKETS]);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl LatencyHistogram {
    /// The upper bound of bucket `i`, in milliseconds.
    fn bound_ms(i: usize) -> f64 {
        0.1 * 2f64.powf(i as f64 / 2.0)
    }

    pub fn record(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1e3;
        let i = if ms <= 0.1 {
            0
        } else {
            ((2.0 * (ms / 0.1).log2()).ceil() as usize).min(LATENCY_BUCKETS - 1)
        };
        self.0[i].fetch_add(1, Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }

    /// The `q` quantile (0 to 1) in ms of the attempts between two snapshots (the
    /// bucket's upper bound); `None` without attempts.
    pub fn quantile(
        before: &[u64; LATENCY_BUCKETS],
        after: &[u64; LATENCY_BUCKETS],
        q: f64,
    ) -> Option<f64> {
        let counts: Vec<u64> = after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::bound_ms(i));
            }
        }
        Some(Self::bound_ms(LATENCY_BUCKETS - 1))
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `knativearrivaltime` in Unix ms; now when absent or unreadable.
pub(crate) fn arrival_ms(event: &Event) -> i64 {
    knative::arrival_ms(event).unwrap_or_else(knative::now_ms)
}

/// Decrements the in-flight count (and forgets the event's arrival) however
/// processing ends.
pub(super) struct InFlight<'a>(&'a TriggerContext, i64);

impl<'a> InFlight<'a> {
    pub(super) fn enter(ctx: &'a TriggerContext, event: &Event) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_latencies_are_rounded_to_a_tenth_of_a_millisecond() {
        assert_eq!(rounded_ms(Duration::from_nanos(2_123_456)), 2.1);
        assert_eq!(rounded_ms(Duration::from_nanos(49_999)), 0.0);
        assert_eq!(rounded_ms(Duration::from_millis(1500)), 1500.0);
        assert_eq!(
            format!("{}", rounded_ms(Duration::from_nanos(300_001))),
            "0.3"
        );
    }

    #[test]
    fn latency_quantiles_come_from_the_interval_between_snapshots() {
        let h = LatencyHistogram::default();
        for _ in 0..90 {
            h.record(Duration::from_millis(1));
        }
        let before = h.snapshot();
        for _ in 0..99 {
            h.record(Duration::from_millis(2));
        }
        h.record(Duration::from_millis(100));
        let after = h.snapshot();
        let p50 = LatencyHistogram::quantile(&before, &after, 0.5).unwrap();
        let p99 = LatencyHistogram::quantile(&before, &after, 0.99).unwrap();
        let p100 = LatencyHistogram::quantile(&before, &after, 1.0).unwrap();
        assert!((2.0..2.9).contains(&p50), "{p50}");
        assert!((2.0..2.9).contains(&p99), "{p99}");
        assert!((100.0..142.0).contains(&p100), "{p100}");
        assert_eq!(LatencyHistogram::quantile(&after, &after, 0.5), None);
    }
}
