//! `eventing.knative.dev/v1` `Trigger`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{DeliveryManifest, Destination, Metadata, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: TriggerSpec,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerSpec {
    #[serde(default)]
    pub broker: String,
    pub filter: Option<TriggerFilter>,
    /// Knative's newer filters dialect (Subscriptions API).
    pub filters: Option<Vec<Value>>,
    #[serde(default)]
    pub subscriber: Destination,
    pub delivery: Option<DeliveryManifest>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TriggerFilter {
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Annotation bounding a trigger's deliveries in flight.
pub const PARALLELISM_ANNOTATION: &str = "cemesh.dev/parallelism";
/// Annotation choosing where a new trigger starts: `latest` (default), `earliest`,
/// an offset or an RFC 3339 time.
pub const START_ANNOTATION: &str = "cemesh.dev/start";
/// Annotation turning full jitter off (`"false"`), e.g. for tests measuring waits.
pub const JITTER_ANNOTATION: &str = "cemesh.dev/backoff-jitter";
/// Annotation capping any one backoff wait, e.g. `30s`.
pub const BACKOFF_MAX_ANNOTATION: &str = "cemesh.dev/backoff-max";
/// Annotation: `ordered` delivers events with the same `partitionkey` one at a time,
/// in order; `unordered` (default) does not.
pub const ORDER_ANNOTATION: &str = "cemesh.dev/delivery-order";
/// Annotation: first attempts per second at most, e.g. `50` or `0.5`.
pub const MAX_RATE_ANNOTATION: &str = "cemesh.dev/max-rate";
/// Annotation: while the subscriber scales from zero, connection refused, 502, 503
/// and 504 are retried for this long without counting as attempts, e.g. `2m`.
pub const COLD_START_GRACE_ANNOTATION: &str = "cemesh.dev/cold-start-grace";
/// Annotation: `protobuf` delivers structured protobuf (`application/cloudevents+protobuf`).
pub const DELIVERY_FORMAT_ANNOTATION: &str = "cemesh.dev/delivery-format";

/// Annotation: how far behind the trigger may fall before its oldest waiting events
/// move to its dead letters (`backlog-overflow`): records (`5000`), an age (`10m`),
/// both (`5000,10m`), or `none`. Default: 90 % of the broker's `max-backlog`.
pub const MAX_LAG_ANNOTATION: &str = "cemesh.dev/max-lag";
/// Annotation: what passing max-lag does: `dead-letter` (default) moves the oldest
/// waiting events to the dead letters; `pause` stops delivering, keeps every event
/// and waits for `cemesh resume`.
pub const MAX_LAG_ACTION_ANNOTATION: &str = "cemesh.dev/max-lag-action";
/// Annotation: consecutive failures saying the subscriber is down (no response, a
/// timeout, 5xx) that open the circuit breaker; `off` (or `0`) turns it off.
/// Default 5.
pub const BREAKER_FAILURES_ANNOTATION: &str = "cemesh.dev/breaker-failures";
/// Annotation: the breaker opens only once its consecutive failures have lasted this
/// long, e.g. `10s` (default); `0s` opens it on the count alone.
pub const BREAKER_WINDOW_ANNOTATION: &str = "cemesh.dev/breaker-window";
/// Annotation: the wait before an open breaker's first probe, e.g. `1s` (default);
/// it doubles after each failed probe.
pub const BREAKER_PROBE_DELAY_ANNOTATION: &str = "cemesh.dev/breaker-probe-delay";
/// Annotation: the longest wait between probes, e.g. `10s` (default).
pub const BREAKER_PROBE_MAX_ANNOTATION: &str = "cemesh.dev/breaker-probe-max";

/// Annotation: sign each delivery per Standard Webhooks with the secret in this file
/// (`whsec_` + base64, or raw bytes; 24 bytes at least).
pub const WEBHOOK_SECRET_ANNOTATION: &str = "cemesh.dev/webhook-secret-file";

/// Every `cemesh.dev/` annotation a Trigger may carry; any other is refused with a
/// did-you-mean.
pub const TRIGGER_ANNOTATIONS: &[&str] = &[
    PARALLELISM_ANNOTATION,
    START_ANNOTATION,
    JITTER_ANNOTATION,
    BACKOFF_MAX_ANNOTATION,
    ORDER_ANNOTATION,
    MAX_RATE_ANNOTATION,
    COLD_START_GRACE_ANNOTATION,
    DELIVERY_FORMAT_ANNOTATION,
    MAX_LAG_ANNOTATION,
    MAX_LAG_ACTION_ANNOTATION,
    BREAKER_FAILURES_ANNOTATION,
    BREAKER_WINDOW_ANNOTATION,
    BREAKER_PROBE_DELAY_ANNOTATION,
    BREAKER_PROBE_MAX_ANNOTATION,
    WEBHOOK_SECRET_ANNOTATION,
    super::OWNER_ANNOTATION,
];
