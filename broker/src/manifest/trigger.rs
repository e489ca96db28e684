//! `eventing.knative.dev/v1` `Trigger`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{DeliveryManifest, Destination, Metadata};

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
    pub filters: Option<Vec<serde_yaml::Value>>,
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
