//! `messaging.knative.dev` `Channel`, `InMemoryChannel`, `KafkaChannel` and
//! `Subscription`, read as Knative writes them.
//!
//! A channel runs as a broker without triggers of its own: its address is
//! `{ingress}/{namespace}/{name}-kn-channel` (the name of the Kubernetes Service
//! Knative gives a channel), it stores events on the channel kind it asks for, and
//! it passes them on unaltered. A subscription runs as a trigger on it that matches
//! every event, with its reply going to `spec.reply`.

use serde::Deserialize;

use super::{DeliveryManifest, Destination, KReference, Metadata, Value};

pub const MESSAGING_V1: &str = "messaging.knative.dev/v1";
pub const MESSAGING_V1BETA1: &str = "messaging.knative.dev/v1beta1";

/// What a channel's name becomes in its address (and its broker key).
pub const CHANNEL_SUFFIX: &str = "-kn-channel";

/// The address name of channel `name`.
pub fn channel_address(name: &str) -> String {
    format!("{name}{CHANNEL_SUFFIX}")
}

/// What a subscription's trigger is keyed by: a dot never appears in a trigger's
/// name (a DNS label), so the two never collide.
pub fn subscription_key(name: &str) -> String {
    format!("subscription.{name}")
}

/// `Channel`, `InMemoryChannel` or `KafkaChannel` (`kind` says which).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ChannelSpec,
}

/// Every channel kind's spec; fields of another kind are refused by `compile`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChannelSpec {
    /// `Channel` only: the kind that backs it.
    pub channel_template: Option<ChannelTemplate>,
    /// Default delivery for subscriptions that set none.
    pub delivery: Option<DeliveryManifest>,
    /// Filled by Knative's controller from the Subscriptions; accepted and ignored.
    pub subscribers: Option<Vec<Value>>,
    /// `KafkaChannel` only.
    pub num_partitions: Option<i64>,
    /// `KafkaChannel` only.
    pub replication_factor: Option<i64>,
    /// `KafkaChannel` only: ISO 8601, e.g. `PT168H`.
    pub retention_duration: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChannelTemplate {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    /// The backing kind's spec (`numPartitions`, `delivery`, ...).
    pub spec: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: SubscriptionSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubscriptionSpec {
    #[serde(default)]
    pub channel: KReference,
    pub subscriber: Option<Destination>,
    pub reply: Option<Destination>,
    pub delivery: Option<DeliveryManifest>,
}
