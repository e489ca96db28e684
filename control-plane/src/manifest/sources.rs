//! `sources.knative.dev/v1` `PingSource` and `ContainerSource`, read as Knative
//! writes them.
//!
//! A PingSource compiles into an internal channel (`{name}-kn-pingsource`, not
//! routed: only the ticker appends to it), a delivery loop from it to the sink
//! (trigger `pingsource.{name}`: the default delivery's retries, then the dead
//! letters), and the ticker itself. A ContainerSource compiles into a process cemesh
//! keeps running, with `K_SINK` set to the sink's URL. A KafkaSource
//! (`sources.knative.dev/v1beta1`) compiles, per topic, into an internal channel
//! reading that existing topic with the source's consumer group
//! (`{name}-kn-kafkasource-{i}`) and a delivery loop to the sink
//! (`kafkasource.{name}.{i}`): offsets are committed once the sink (or the dead
//! letters) took an event.

use std::collections::BTreeMap;

use cemesh_sources::{PingSpec, ProcessSpec};
use serde::Deserialize;

use super::{Destination, Metadata, Value};

pub const SOURCES_V1: &str = "sources.knative.dev/v1";
/// KafkaSource's version.
pub const SOURCES_V1BETA1: &str = "sources.knative.dev/v1beta1";

/// Knative's `spec.ceOverrides`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CeOverrides {
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PingSourceManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PingSourceSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PingSourceSpec {
    /// Five cron fields, a nickname, or `@every 1m` (default `* * * * *`).
    #[serde(default)]
    pub schedule: String,
    pub timezone: Option<String>,
    pub content_type: Option<String>,
    pub data: Option<String>,
    pub data_base64: Option<String>,
    pub sink: Option<Destination>,
    pub ce_overrides: Option<CeOverrides>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSourceManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ContainerSourceSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerSourceSpec {
    /// A Kubernetes PodTemplateSpec: its first container's `command`, `args`, `env`
    /// and `workingDir` are what cemesh runs.
    #[serde(default)]
    pub template: Value,
    pub sink: Option<Destination>,
    pub ce_overrides: Option<CeOverrides>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkBindingManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: SinkBindingSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkBindingSpec {
    /// The workload to bind: a `services:` command entry of the server config, by
    /// `name` (its `kind`, a Deployment or a Knative Service, is not checked).
    #[serde(default)]
    pub subject: Value,
    pub sink: Option<Destination>,
    pub ce_overrides: Option<CeOverrides>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSourceManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: KafkaSourceSpec,
}

/// Knative's `KafkaSourceSpec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaSourceSpec {
    #[serde(default)]
    pub bootstrap_servers: Vec<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    /// Knative generates one when empty; cemesh names it after the source.
    pub consumer_group: Option<String>,
    /// `earliest` or `latest` (the default): where a new consumer group starts.
    pub initial_offset: Option<String>,
    /// Consumers per replica in Knative; one consumer group member here.
    pub consumers: Option<i32>,
    /// `ordered` (Knative's default) or `unordered`.
    pub ordering: Option<String>,
    /// SASL and TLS to Kafka: from the server config's Kafka properties here.
    pub net: Option<Value>,
    pub delivery: Option<super::DeliveryManifest>,
    pub sink: Option<Destination>,
    pub ce_overrides: Option<CeOverrides>,
}

/// The type of the events a KafkaSource makes of records that are not CloudEvents.
pub const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";

/// The internal channel reading a KafkaSource's `i`th topic.
pub fn kafka_channel(name: &str, i: usize) -> String {
    format!("{name}-kn-kafkasource-{i}")
}

/// The delivery loop from a KafkaSource's `i`th topic to its sink.
pub fn kafka_trigger(name: &str, i: usize) -> String {
    format!("kafkasource.{name}.{i}")
}

/// A KafkaSource's topic, as its internal channel reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTopic {
    /// `bootstrap.servers`, comma-separated.
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    /// The `source` of records that are not CloudEvents, before `#{topic}`.
    pub source: String,
    /// How record keys are read: `string`, `int`, `float` or `byte-array`.
    pub key_type: String,
    /// `spec.ceOverrides.extensions`, set on every event.
    pub overrides: Vec<(String, String)>,
}

/// The internal channel a PingSource's ticker appends to.
pub fn ping_channel(name: &str) -> String {
    format!("{name}-kn-pingsource")
}

/// The delivery loop from a PingSource's channel to its sink.
pub fn ping_trigger(name: &str) -> String {
    format!("pingsource.{name}")
}

/// What a source runs besides channels and delivery loops.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceDesired {
    /// A PingSource's ticker (its `state_file` is the mesh's to set).
    Ping(PingSpec),
    /// A ContainerSource's process.
    Process(ProcessSpec),
    /// A SinkBinding's environment for the processes of a `services:` command.
    Binding(Binding),
}

/// The environment a SinkBinding gives a service's processes.
#[derive(Debug, Clone)]
pub struct Binding {
    pub service: String,
    pub env: Vec<(String, String)>,
    pub target: std::sync::Arc<dyn crate::ondemand::Bindable>,
}

/// Equal when the service and environment are: the target is the service's.
impl PartialEq for Binding {
    fn eq(&self, other: &Self) -> bool {
        self.service == other.service && self.env == other.env
    }
}
