//! Every metric name cemesh exports, in one place, so the crates that record them
//! (ingress, dispatcher, channels) and the `/metrics` endpoint agree. Names follow
//! Knative's (`event_count`, `event_dispatch_latencies`) where they overlap, with a
//! `cemesh_` prefix; labels are low-cardinality only (namespace, broker, trigger,
//! status class, result; never an event id or source).

/// Events offered to a broker's ingress. Labels: `namespace_name`, `broker_name`,
/// `result` (`accepted`/`refused`), `response_code`, `response_code_class`.
pub const INGRESS_EVENT_COUNT: &str = "cemesh_broker_ingress_event_count";
/// Ingress request latency (seconds). Labels: `namespace_name`, `broker_name`.
pub const INGRESS_REQUEST_LATENCIES: &str = "cemesh_broker_ingress_event_dispatch_latencies";
/// Delivery attempts to subscribers. Labels: `namespace_name`, `broker_name`,
/// `trigger_name`, `response_code_class` (`2xx`.. or `none` without a response).
pub const TRIGGER_EVENT_COUNT: &str = "cemesh_trigger_event_count";
/// Delivery attempt latency (seconds). Labels as [`TRIGGER_EVENT_COUNT`].
pub const TRIGGER_DISPATCH_LATENCIES: &str = "cemesh_trigger_event_dispatch_latencies";
/// Retries (attempts after the first). Labels: `namespace_name`, `trigger_name`.
pub const TRIGGER_RETRIES: &str = "cemesh_trigger_retries_total";
/// Events dead-lettered. Labels: `namespace_name`, `trigger_name`, `destination`
/// (`sink`/`store`).
pub const TRIGGER_DEAD_LETTERS: &str = "cemesh_trigger_dead_letters_total";
/// Replies appended to the broker. Labels: `namespace_name`, `trigger_name`.
pub const TRIGGER_REPLIES: &str = "cemesh_trigger_replies_total";
/// Deliveries in flight now. Labels: `namespace_name`, `trigger_name`.
pub const TRIGGER_IN_FLIGHT: &str = "cemesh_trigger_in_flight";
/// Records waiting for the trigger (channel lag). Labels: `namespace_name`,
/// `trigger_name`.
pub const TRIGGER_LAG: &str = "cemesh_trigger_lag";
/// Deliveries the subscriber took per second, over the last minute or less. Labels:
/// `namespace_name`, `trigger_name`.
pub const TRIGGER_DELIVERY_RATE: &str = "cemesh_trigger_delivery_rate";
/// Age (seconds since `knativearrivaltime`) of the oldest event the trigger has not
/// finished; 0 when none waits. Labels: `namespace_name`, `trigger_name`.
pub const TRIGGER_OLDEST_WAITING_AGE: &str = "cemesh_trigger_oldest_waiting_age_seconds";
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
/// Cold start latency (seconds), from spawn to ready. Labels: `service`.
pub const ONDEMAND_COLD_START_LATENCIES: &str = "cemesh_ondemand_cold_start_latencies";
/// Channel append latency (seconds). Labels: `channel` (kind).
pub const CHANNEL_APPEND_LATENCIES: &str = "cemesh_channel_append_latencies";
/// Appends made durable by one sled flush (group commit).
pub const CHANNEL_GROUP_COMMIT_BATCH: &str = "cemesh_channel_group_commit_batch_size";
/// Process resident memory (bytes).
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// Process CPU time (seconds).
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// Open file descriptors.
pub const PROCESS_FDS: &str = "process_open_fds";

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
