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

/// Annotation: partitions of the broker's topic when cemesh creates it (kafka).
pub const KAFKA_PARTITIONS_ANNOTATION: &str = "cemesh.dev/kafka-partitions";
/// Annotation: replication factor of the broker's topic when cemesh creates it.
pub const KAFKA_REPLICATION_ANNOTATION: &str = "cemesh.dev/kafka-replication";

/// Annotation choosing the broker's channel: `memory`, `sled` or `kafka`.
pub const CHANNEL_ANNOTATION: &str = "cemesh.dev/channel";
/// Annotation setting the broker's ingress body limit, e.g. `256KiB`.
pub const MAX_BODY_ANNOTATION: &str = "cemesh.dev/max-body-size";
/// Annotation: when an append counts as durable on the sled channel:
/// `flush-per-batch` (default), `interval(10ms)` or `none`.
pub const DURABILITY_ANNOTATION: &str = "cemesh.dev/durability";
/// Annotation: how long passed records are kept for replay, e.g. `1h` (default 0).
pub const RETENTION_ANNOTATION: &str = "cemesh.dev/retention";
/// Annotation: a size cap on what retention keeps (sled), e.g. `2GiB`; the oldest
/// records go first past it.
pub const RETENTION_SIZE_ANNOTATION: &str = "cemesh.dev/retention-size";
/// Annotation: backlog cap in records; past it the ingress answers 429.
pub const MAX_BACKLOG_ANNOTATION: &str = "cemesh.dev/max-backlog";
/// Annotation: backlog cap in bytes (memory and sled), e.g. `512MiB`.
pub const MAX_BACKLOG_SIZE_ANNOTATION: &str = "cemesh.dev/max-backlog-size";
/// Annotation: ingress backpressure, the bytes that may wait for a delivering
/// trigger (not yet taken for delivery) before the ingress holds new requests for
/// room, then answers 429 (memory and sled), e.g. `8MiB`, or `none`. Default 1MiB.
pub const BACKPRESSURE_WINDOW_ANNOTATION: &str = "cemesh.dev/backpressure-window";
/// Annotation: how long the ingress holds a request past the backpressure window,
/// waiting for delivery to make room, before it answers 429 (e.g. `250ms`; `0s`
/// answers at once). Default 1s, at most 30s.
pub const BACKPRESSURE_HOLD_ANNOTATION: &str = "cemesh.dev/backpressure-hold";
/// Annotation: an event whose `source` and `id` the broker accepted within this
/// window (e.g. `10m`) is answered as accepted and not appended again.
pub const DEDUP_WINDOW_ANNOTATION: &str = "cemesh.dev/dedup-window";
/// Annotation: pairs a dedup window keeps at most (default 100000); past it the
/// oldest go first.
pub const DEDUP_MAX_KEYS_ANNOTATION: &str = "cemesh.dev/dedup-max-keys";
/// Annotation: `off` keeps the broker's events out of the event journal (`cemesh
/// trace`, the dashboard's journey); default `on`.
pub const JOURNAL_ANNOTATION: &str = "cemesh.dev/journal";
/// Annotation: newest records kept while the broker has no trigger, for a trigger
/// created later with `cemesh.dev/start: earliest`.
pub const RETAIN_WITHOUT_TRIGGERS_ANNOTATION: &str = "cemesh.dev/retain-without-triggers";

/// Knative's annotation choosing which implementation runs a broker.
pub const CLASS_ANNOTATION: &str = "eventing.knative.dev/broker.class";
/// The class cemesh answers to; any other class is run by cemesh all the same, and the
/// broker's status says so.
pub const CEMESH_CLASS: &str = "cemesh";

/// Every `cemesh.dev/` annotation a Broker may carry (the Kafka ones matter only on
/// the kafka channel); any other is refused with a did-you-mean.
pub const BROKER_ANNOTATIONS: &[&str] = &[
    CHANNEL_ANNOTATION,
    MAX_BODY_ANNOTATION,
    DURABILITY_ANNOTATION,
    RETENTION_ANNOTATION,
    RETENTION_SIZE_ANNOTATION,
    MAX_BACKLOG_ANNOTATION,
    MAX_BACKLOG_SIZE_ANNOTATION,
    RETAIN_WITHOUT_TRIGGERS_ANNOTATION,
    BACKPRESSURE_WINDOW_ANNOTATION,
    BACKPRESSURE_HOLD_ANNOTATION,
    DEDUP_WINDOW_ANNOTATION,
    DEDUP_MAX_KEYS_ANNOTATION,
    JOURNAL_ANNOTATION,
    KAFKA_PARTITIONS_ANNOTATION,
    KAFKA_REPLICATION_ANNOTATION,
    super::OWNER_ANNOTATION,
];

/// Something about a valid broker its status should tell: a setting cemesh reads
/// differently from Knative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The condition type, e.g. `BrokerClass`.
    pub kind: &'static str,
    /// Knative's condition severity: `Warning` or `Info` (neither affects Ready).
    pub severity: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl BrokerManifest {
    /// What the status says about the broker class and `spec.config`, which cemesh
    /// does not use: never silently ignored.
    pub fn notes(&self) -> Vec<Note> {
        let mut notes = Vec::new();
        match self.metadata.annotations.get(CLASS_ANNOTATION).map(String::as_str) {
            Some(CEMESH_CLASS) => {}
            Some(other) => notes.push(Note {
                kind: "BrokerClass",
                severity: "Warning",
                reason: "RunByCemesh",
                message: format!(
                    "{CLASS_ANNOTATION} is {other:?}; cemesh runs this broker itself (class {CEMESH_CLASS:?}) on its own channel"
                ),
            }),
            None => notes.push(Note {
                kind: "BrokerClass",
                severity: "Info",
                reason: "RunByCemesh",
                message: format!(
                    "no {CLASS_ANNOTATION}; cemesh runs this broker (class {CEMESH_CLASS:?})"
                ),
            }),
        }
        if let Some(config) = &self.spec.config {
            notes.push(Note {
                kind: "ConfigNotRead",
                severity: "Warning",
                reason: "SpecConfigIgnored",
                message: format!(
                    "spec.config ({} {}) is not read: cemesh takes a broker's settings from its cemesh.dev/ annotations (channel, retention, max-backlog, ...)",
                    config.kind, config.name
                ),
            });
        }
        notes
    }
}
