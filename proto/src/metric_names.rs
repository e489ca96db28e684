//! Every metric name cemesh exports, in one place, so the crates that record them
//! (ingress, dispatcher, control plane, sidecar) and the `/metrics` endpoint agree,
//! and every one has its `# HELP` text ([`BROKER_METRICS`], [`SIDECAR_METRICS`]).
//!
//! Conventions (Prometheus's): counters end in `_total`; durations are histograms in
//! seconds named `..._duration_seconds`; every name has a `cemesh_` prefix except the
//! standard `process_*` ones. Knative's broker metrics (`event_count`,
//! `event_dispatch_latencies` in milliseconds) have equivalents here under names of
//! their own ([`INGRESS_EVENTS`], [`INGRESS_REQUEST_DURATION`],
//! [`TRIGGER_DISPATCH_ATTEMPTS`], [`TRIGGER_DISPATCH_DURATION`]) with Knative's label
//! names (`namespace_name`, `broker_name`, `trigger_name`, `response_code`,
//! `response_code_class`); no Knative name is kept as an alias, since a Knative
//! dashboard would not find them under the `cemesh_` prefix anyway. Labels are
//! low-cardinality only (never an event id or source), and every per-trigger series
//! carries `namespace_name`, `broker_name` and `trigger_name`.

/// Events offered to a broker's ingress. Labels: `namespace_name`, `broker_name`,
/// `result` (`accepted` with a 2xx code, `refused` with a 4xx/5xx one),
/// `response_code`, `response_code_class`. (Knative: `event_count`.)
pub const INGRESS_EVENTS: &str = "cemesh_broker_ingress_events_total";
/// Ingress request duration (seconds), for requests that carried events. Labels:
/// `namespace_name`, `broker_name`. (Knative: `event_dispatch_latencies`, in ms.)
pub const INGRESS_REQUEST_DURATION: &str = "cemesh_broker_ingress_request_duration_seconds";
/// Events a broker with `cemesh.dev/dedup-window` answered as accepted without
/// appending them again (their `source` and `id` were accepted within the window).
/// Labels: `namespace_name`, `broker_name`.
pub const INGRESS_DUPLICATES: &str = "cemesh_broker_ingress_duplicates_total";
/// How long requests past a broker's backpressure window were held for room
/// (`cemesh.dev/backpressure-hold`), in seconds; only requests that were held.
/// Labels: `namespace_name`, `broker_name`, `result` (`let_in`: delivery made room;
/// `refused`: answered 429 at the hold's end).
pub const INGRESS_BACKPRESSURE_HELD: &str = "cemesh_broker_ingress_backpressure_held_seconds";
/// Pairs a dedup window forgot before their time, to stay within
/// `cemesh.dev/dedup-max-keys`.
pub const INGRESS_DEDUP_EVICTED: &str = "cemesh_broker_ingress_dedup_evicted_total";
/// Delivery attempts to a trigger's subscriber (not to its dead-letter sink).
/// Labels: `namespace_name`, `broker_name`, `trigger_name`, `response_code_class`
/// (`2xx`.. or `none` without a response). (Knative: `event_count`.)
pub const TRIGGER_DISPATCH_ATTEMPTS: &str = "cemesh_trigger_dispatch_attempts_total";
/// Delivery attempt duration (seconds). Labels as [`TRIGGER_DISPATCH_ATTEMPTS`].
/// (Knative: `event_dispatch_latencies`, in ms.)
pub const TRIGGER_DISPATCH_DURATION: &str = "cemesh_trigger_dispatch_duration_seconds";
/// Events the subscriber took (2xx), once each however many attempts it took.
/// Labels: `namespace_name`, `broker_name`, `trigger_name`.
pub const TRIGGER_DELIVERED: &str = "cemesh_trigger_delivered_events_total";
/// Retries: attempts to the subscriber after the first. Labels: `namespace_name`,
/// `broker_name`, `trigger_name`.
pub const TRIGGER_RETRIES: &str = "cemesh_trigger_retries_total";
/// Events dead-lettered. Labels: `namespace_name`, `broker_name`, `trigger_name`,
/// `destination` (`sink`: the trigger's dead-letter sink took it; `store`: the
/// built-in dead-letter store).
pub const TRIGGER_DEAD_LETTERS: &str = "cemesh_trigger_dead_letters_total";
/// Replies appended to the broker. Labels: `namespace_name`, `broker_name`,
/// `trigger_name`.
pub const TRIGGER_REPLIES: &str = "cemesh_trigger_replies_total";
/// Replies dropped because the subscription has no `spec.reply`. Labels:
/// `namespace_name`, `broker_name`, `trigger_name`.
pub const TRIGGER_REPLIES_DROPPED: &str = "cemesh_trigger_replies_dropped_total";
/// Deliveries in flight now. Labels: `namespace_name`, `broker_name`,
/// `trigger_name`.
pub const TRIGGER_IN_FLIGHT: &str = "cemesh_trigger_in_flight";
/// Records waiting for the trigger (channel lag). Labels: `namespace_name`,
/// `broker_name`, `trigger_name`.
pub const TRIGGER_LAG: &str = "cemesh_trigger_lag";
/// Deliveries the subscriber took per second, over the last minute or less. Labels:
/// `namespace_name`, `broker_name`, `trigger_name`.
pub const TRIGGER_DELIVERY_RATE: &str = "cemesh_trigger_delivery_rate";
/// Age (seconds since `knativearrivaltime`) of the oldest event the trigger has not
/// finished; 0 when none waits. Labels: `namespace_name`, `broker_name`,
/// `trigger_name`.
pub const TRIGGER_OLDEST_WAITING_AGE: &str = "cemesh_trigger_oldest_waiting_age_seconds";
/// 1 while the trigger's circuit breaker is open (its subscriber looks down and
/// events are held), else 0. Labels: `namespace_name`, `broker_name`, `trigger_name`.
pub const TRIGGER_BREAKER_OPEN: &str = "cemesh_trigger_breaker_open";
/// Times the trigger's circuit breaker opened. Labels: `namespace_name`,
/// `broker_name`, `trigger_name`.
pub const TRIGGER_BREAKER_OPENED: &str = "cemesh_trigger_breaker_opened_total";
/// 1 while the trigger is paused at its max-lag (`cemesh.dev/max-lag-action: pause`:
/// nothing delivered until `cemesh resume`), else 0. Labels: `namespace_name`,
/// `broker_name`, `trigger_name`.
pub const TRIGGER_PAUSED: &str = "cemesh_trigger_paused";
/// Share of a replay's range read and finished, 0 to 1. Labels: `namespace_name`,
/// `trigger_name`, `replay`.
pub const REPLAY_PROGRESS: &str = "cemesh_replay_progress_ratio";
/// Replayed events the subscriber took. Labels: `namespace_name`, `trigger_name`,
/// `replay`.
pub const REPLAY_DELIVERED: &str = "cemesh_replay_delivered";
/// Replays running now.
pub const REPLAYS_RUNNING: &str = "cemesh_replays_running";
/// Journal entries dropped because its writer was behind (the events themselves are
/// never affected).
pub const JOURNAL_DROPPED: &str = "cemesh_journal_dropped_entries";
/// Events moved to the dead letters because the trigger fell more than its
/// `cemesh.dev/max-lag` behind (reason `backlog-overflow`). Labels: `namespace_name`,
/// `broker_name`, `trigger_name`.
pub const TRIGGER_BACKLOG_OVERFLOW: &str = "cemesh_trigger_backlog_overflow_events_total";
/// Instances of an on-demand service (starting, ready or stopping). Labels: `service`.
pub const ONDEMAND_INSTANCES: &str = "cemesh_ondemand_instances";
/// Instances started. Labels: `service`, `reason` (`cold`: the service had none;
/// `scale_up`).
pub const ONDEMAND_INSTANCE_STARTS: &str = "cemesh_ondemand_instance_starts_total";
/// Instances ended. Labels: `service`, `reason` (`stopped`: idle; `shutdown`;
/// `crash`; `failed_start`).
pub const ONDEMAND_INSTANCE_EXITS: &str = "cemesh_ondemand_instance_exits_total";
/// Starts from zero instances. Labels: `service`.
pub const ONDEMAND_COLD_STARTS: &str = "cemesh_ondemand_cold_starts_total";
/// Cold start duration (seconds), from spawn to ready. Labels: `service`.
pub const ONDEMAND_COLD_START_DURATION: &str = "cemesh_ondemand_cold_start_duration_seconds";
/// Channel append duration (seconds), until the events are durable. Labels:
/// `channel` (kind).
pub const CHANNEL_APPEND_DURATION: &str = "cemesh_channel_append_duration_seconds";
/// Appends made durable by one sled flush (group commit). Not recorded yet; its
/// buckets are set so it renders as a histogram when it is.
pub const CHANNEL_GROUP_COMMIT_BATCH: &str = "cemesh_channel_group_commit_batch_size";
/// Process resident memory (bytes).
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// Process CPU time, user and system (seconds).
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// Open file descriptors.
pub const PROCESS_FDS: &str = "process_open_fds";

/// Suffix of every duration histogram (seconds); the recorder gives them the same
/// buckets.
pub const DURATION_SUFFIX: &str = "_duration_seconds";

/// The broker's metrics (`cemesh serve`'s admin `/metrics`), each with its type and
/// help text. The `process_*` ones are read and rendered at scrape time.
pub const BROKER_METRICS: [(&str, Kind, &str); 31] = [
    (
        INGRESS_EVENTS,
        Kind::Counter,
        "Events offered to a broker's ingress, by result and response code.",
    ),
    (
        INGRESS_REQUEST_DURATION,
        Kind::Histogram,
        "Time the ingress took to answer a request that carried events, in seconds.",
    ),
    (
        INGRESS_BACKPRESSURE_HELD,
        Kind::Histogram,
        "Time requests past a broker's backpressure window were held waiting for delivery to make room, by result (let_in or refused), in seconds.",
    ),
    (
        TRIGGER_DISPATCH_ATTEMPTS,
        Kind::Counter,
        "Delivery attempts to a trigger's subscriber, by response code class (none: no response).",
    ),
    (
        TRIGGER_DISPATCH_DURATION,
        Kind::Histogram,
        "Duration of delivery attempts to a trigger's subscriber, in seconds.",
    ),
    (
        TRIGGER_DELIVERED,
        Kind::Counter,
        "Events a trigger's subscriber took (answered 2xx), once per event.",
    ),
    (
        TRIGGER_RETRIES,
        Kind::Counter,
        "Delivery attempts to a trigger's subscriber after the first.",
    ),
    (
        TRIGGER_DEAD_LETTERS,
        Kind::Counter,
        "Events that failed delivery, by where they went: the trigger's dead-letter sink or the built-in store.",
    ),
    (
        TRIGGER_REPLIES,
        Kind::Counter,
        "Reply events a trigger's subscriber returned, appended to the broker.",
    ),
    (
        TRIGGER_REPLIES_DROPPED,
        Kind::Counter,
        "Reply events a subscription's subscriber returned and that were dropped (no spec.reply).",
    ),
    (
        TRIGGER_IN_FLIGHT,
        Kind::Gauge,
        "Events a trigger is delivering now (including waits between retries).",
    ),
    (
        TRIGGER_LAG,
        Kind::Gauge,
        "Events appended to the broker and not yet finished by the trigger.",
    ),
    (
        TRIGGER_DELIVERY_RATE,
        Kind::Gauge,
        "Events per second the trigger's subscriber took, over about the last minute.",
    ),
    (
        TRIGGER_OLDEST_WAITING_AGE,
        Kind::Gauge,
        "Seconds since the oldest event the trigger has not finished arrived; 0 when none.",
    ),
    (
        TRIGGER_BREAKER_OPEN,
        Kind::Gauge,
        "1 while the trigger's circuit breaker is open (events held, the subscriber probed), else 0.",
    ),
    (
        TRIGGER_BREAKER_OPENED,
        Kind::Counter,
        "Times the trigger's circuit breaker opened.",
    ),
    (
        TRIGGER_PAUSED,
        Kind::Gauge,
        "1 while the trigger is paused at its max-lag (nothing delivered until resumed), else 0.",
    ),
    (
        REPLAY_PROGRESS,
        Kind::Gauge,
        "Share of the replay's range read and finished (delivered, dead-lettered or skipped), 0 to 1.",
    ),
    (
        REPLAY_DELIVERED,
        Kind::Gauge,
        "Replayed events the trigger's subscriber took.",
    ),
    (REPLAYS_RUNNING, Kind::Gauge, "Replays running now."),
    (
        JOURNAL_DROPPED,
        Kind::Gauge,
        "Event journal entries dropped since start because its writer was behind (events are never affected).",
    ),
    (
        TRIGGER_BACKLOG_OVERFLOW,
        Kind::Counter,
        "Events moved to the trigger's dead letters because it fell more than its max-lag behind.",
    ),
    (
        ONDEMAND_INSTANCES,
        Kind::Gauge,
        "Instances of an on-demand service (starting, ready or stopping).",
    ),
    (
        ONDEMAND_INSTANCE_STARTS,
        Kind::Counter,
        "Instances of an on-demand service started, by reason.",
    ),
    (
        ONDEMAND_INSTANCE_EXITS,
        Kind::Counter,
        "Instances of an on-demand service that ended, by reason.",
    ),
    (
        ONDEMAND_COLD_STARTS,
        Kind::Counter,
        "Starts of an on-demand service from zero instances.",
    ),
    (
        ONDEMAND_COLD_START_DURATION,
        Kind::Histogram,
        "Time from spawning an on-demand instance to it being ready, in seconds.",
    ),
    (
        CHANNEL_APPEND_DURATION,
        Kind::Histogram,
        "Time to append events to a channel until they are durable, in seconds.",
    ),
    (
        PROCESS_RSS,
        Kind::Gauge,
        "Resident memory size in bytes.",
    ),
    (
        PROCESS_CPU,
        Kind::Counter,
        "User and system CPU time spent, in seconds.",
    ),
    (PROCESS_FDS, Kind::Gauge, "Open file descriptors."),
];

/// The sidecar's counters and gauges (`cemesh sidecar`'s `/metrics`), each with
/// its help text.
pub const SIDECAR_METRICS: [(&str, Kind, &str); 12] = [
    (
        SIDECAR_PUBLISHED,
        Kind::Counter,
        "Events accepted into the outbox.",
    ),
    (
        SIDECAR_OUTBOX_FULL,
        Kind::Counter,
        "Publishes refused because the outbox was full.",
    ),
    (
        SIDECAR_FORWARDED,
        Kind::Counter,
        "Events the broker accepted.",
    ),
    (
        SIDECAR_FORWARD_FAILURES,
        Kind::Counter,
        "Failed attempts to forward an event to the broker.",
    ),
    (
        SIDECAR_DEAD_LETTERED,
        Kind::Counter,
        "Events the broker refused as invalid.",
    ),
    (
        SIDECAR_OUTBOX_EVENTS,
        Kind::Gauge,
        "Events waiting in the outbox.",
    ),
    (
        SIDECAR_DEAD_LETTERS,
        Kind::Gauge,
        "Events in the sidecar's dead letters.",
    ),
    (
        SIDECAR_RELAYED,
        Kind::Counter,
        "Events the service took (2xx).",
    ),
    (
        SIDECAR_RELAY_FAILURES,
        Kind::Counter,
        "Events the service refused or did not answer.",
    ),
    (
        SIDECAR_GATED,
        Kind::Counter,
        "Deliveries answered 503 while the service was unhealthy.",
    ),
    (
        SIDECAR_REPLIES,
        Kind::Counter,
        "Reply events returned to the mesh.",
    ),
    (
        SIDECAR_APP_HEALTHY,
        Kind::Gauge,
        "1 when the service's health path answers 2xx.",
    ),
];
pub const SIDECAR_PUBLISHED: &str = "cemesh_sidecar_published_events_total";
pub const SIDECAR_OUTBOX_FULL: &str = "cemesh_sidecar_outbox_full_total";
pub const SIDECAR_FORWARDED: &str = "cemesh_sidecar_forwarded_events_total";
pub const SIDECAR_FORWARD_FAILURES: &str = "cemesh_sidecar_forward_failures_total";
pub const SIDECAR_DEAD_LETTERED: &str = "cemesh_sidecar_dead_lettered_events_total";
pub const SIDECAR_OUTBOX_EVENTS: &str = "cemesh_sidecar_outbox_events";
pub const SIDECAR_DEAD_LETTERS: &str = "cemesh_sidecar_dead_letters";
pub const SIDECAR_RELAYED: &str = "cemesh_sidecar_relayed_events_total";
pub const SIDECAR_RELAY_FAILURES: &str = "cemesh_sidecar_relay_failures_total";
pub const SIDECAR_GATED: &str = "cemesh_sidecar_gated_deliveries_total";
pub const SIDECAR_REPLIES: &str = "cemesh_sidecar_replies_total";
pub const SIDECAR_APP_HEALTHY: &str = "cemesh_sidecar_app_healthy";

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The type as Prometheus's `# TYPE` line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Every value of the `response_code_class` label, `none` last.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// `2xx`, `4xx`, ... or `none`.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        for (name, kind, help) in BROKER_METRICS.iter().chain(SIDECAR_METRICS.iter()) {
            assert!(!help.is_empty(), "{name} has no help");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "counter {name}"),
                _ => assert!(!name.ends_with("_total"), "{name} is not a counter"),
            }
            if name.contains("duration") || name.ends_with("_seconds") {
                assert!(
                    *kind == Kind::Histogram || name.ends_with("_age_seconds"),
                    "{name}"
                );
            }
            assert!(
                !name.contains("latencies"),
                "{name}: durations are in seconds"
            );
        }
        let mut names: Vec<_> = BROKER_METRICS.iter().map(|(n, ..)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BROKER_METRICS.len(), "a name is listed twice");
    }
}
