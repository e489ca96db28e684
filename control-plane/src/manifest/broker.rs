//! `eventing.knative.dev/v1` `Broker`.

use serde::Deserialize;

use super::{DeliveryManifest, KReference, Metadata};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: BrokerSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Knative's broker config reference; accepted, not used (cemesh's choices ride in
    /// annotations).
    pub config: Option<KReference>,
    /// Default delivery for the broker's triggers.
    pub delivery: Option<DeliveryManifest>,
}

/// Annotation choosing the broker's channel: `memory`, `sled` or `kafka`.
pub const CHANNEL_ANNOTATION: &str = "cemesh.dev/channel";
/// Annotation setting the broker's ingress body limit, e.g. `256KiB`.
pub const MAX_BODY_ANNOTATION: &str = "cemesh.dev/max-body-size";
/// Annotation: when an append counts as durable on the sled channel:
/// `flush-per-batch` (default), `interval(10ms)` or `none`.
pub const DURABILITY_ANNOTATION: &str = "cemesh.dev/durability";
/// Annotation: how long passed records are kept for replay, e.g. `1h` (default 0).
pub const RETENTION_ANNOTATION: &str = "cemesh.dev/retention";
/// Annotation: backlog cap in records; past it the ingress answers 429.
pub const MAX_BACKLOG_ANNOTATION: &str = "cemesh.dev/max-backlog";
/// Annotation: backlog cap in bytes (sled), e.g. `512MiB`.
pub const MAX_BACKLOG_SIZE_ANNOTATION: &str = "cemesh.dev/max-backlog-size";
/// Annotation: newest records kept while the broker has no trigger, for a trigger
/// created later with `cemesh.dev/start: earliest`.
pub const RETAIN_WITHOUT_TRIGGERS_ANNOTATION: &str = "cemesh.dev/retain-without-triggers";
