//! A trigger's scaling signals, read the same way for every consumer: the admin JSON
//! endpoint (KEDA's `metrics-api` scaler), the KEDA external scaler over gRPC, and the
//! Prometheus gauges refreshed at scrape time.

use std::sync::atomic::Ordering::Relaxed;

use cemesh_dispatcher::TriggerContext;
use cemesh_proto::metric_names as names;

use crate::mesh::Registry;

/// What an autoscaler needs to know about one trigger now.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signals {
    /// Events appended and not yet finished (delivered, dead-lettered or filtered out).
    pub lag: u64,
    /// Deliveries in progress (including their retries).
    pub in_flight: u64,
    /// Events the subscriber took per second, over about the last minute.
    pub delivery_rate: f64,
    /// Seconds since the oldest unfinished event arrived; 0 when none is in progress.
    pub oldest_waiting_age_seconds: f64,
    /// Anything to do: a scaled-to-zero subscriber should run.
    pub active: bool,
    /// The trigger's circuit breaker is open: its subscriber looks down and events
    /// wait (the lag still says how many).
    pub breaker_open: bool,
    /// The trigger is paused at its max-lag until an operator resumes it.
    pub paused: bool,
}

/// Reads a running trigger's signals.
/// The channel could not say how far behind a trigger is.
#[derive(Debug, thiserror::Error)]
#[error("reading the lag of trigger {trigger}: {source}")]
pub struct LagError {
    trigger: String,
    #[source]
    source: cemesh_channels::ChannelError,
}

pub async fn read(ctx: &TriggerContext) -> Result<Signals, LagError> {
    let key = &ctx.runtime.key;
    let lag = ctx
        .broker
        .lag(&key.subscription_name())
        .await
        .map_err(|source| LagError {
            trigger: key.to_string(),
            source,
        })?;
    let in_flight = u64::try_from(ctx.stats.in_flight.load(Relaxed)).unwrap_or(0);
    let oldest_waiting_age_seconds = match ctx.stats.oldest_arrival_ms() {
        Some(ms) => (cemesh_proto::knative::now_ms() - ms).max(0) as f64 / 1e3,
        None => 0.0,
    };
    Ok(Signals {
        lag,
        in_flight,
        delivery_rate: ctx.stats.delivery_rate(),
        oldest_waiting_age_seconds,
        active: lag > 0 || in_flight > 0,
        breaker_open: ctx.breaker.is_open(),
        paused: ctx.pause.is_paused(),
    })
}

/// Sets the per-trigger gauges (lag, delivery rate, oldest-waiting age) for a scrape.
/// In-flight is a gauge the dispatcher keeps itself.
pub async fn export(registry: &Registry) {
    let contexts: Vec<_> = registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for ctx in contexts {
        let Ok(s) = read(&ctx).await else { continue };
        let key = &ctx.runtime.key;
        let labels = [
            ("namespace_name", key.namespace.clone()),
            ("broker_name", ctx.runtime.broker.clone()),
            ("trigger_name", key.name.clone()),
        ];
        metrics::gauge!(names::TRIGGER_LAG, &labels).set(s.lag as f64);
        metrics::gauge!(names::TRIGGER_DELIVERY_RATE, &labels).set(s.delivery_rate);
        metrics::gauge!(names::TRIGGER_OLDEST_WAITING_AGE, &labels)
            .set(s.oldest_waiting_age_seconds);
    }
}
