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
/// Annotation choosing where a new trigger starts: `latest` (default) or `earliest`.
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
    super::OWNER_ANNOTATION,
];
