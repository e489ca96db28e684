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
