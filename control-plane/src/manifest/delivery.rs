//! Knative's `Destination` and `DeliverySpec` (duck types shared by Broker and
//! Trigger).

use serde::Deserialize;

/// Where events go: a `uri`, a `ref` to an addressable, or a ref plus a relative uri.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    #[serde(rename = "ref")]
    pub reference: Option<KReference>,
    pub uri: Option<String>,
    /// PEM CA certificates the destination's server certificate may chain to,
    /// besides the system's roots.
    #[serde(rename = "CACerts")]
    pub ca_certs: Option<String>,
    /// The OIDC audience: each delivery carries a JWT for it, signed by cemesh
    /// (keys at the admin port's `/.well-known/jwks.json`).
    pub audience: Option<String>,
}

/// A reference to a Kubernetes object (a Service, a Broker, ...).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KReference {
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    pub namespace: Option<String>,
    pub group: Option<String>,
    pub address: Option<String>,
}

/// Knative's `spec.delivery`. Durations are ISO 8601 (`PT0.2S`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeliveryManifest {
    pub dead_letter_sink: Option<Destination>,
    pub retry: Option<i32>,
    pub backoff_policy: Option<String>,
    pub backoff_delay: Option<String>,
    pub timeout: Option<String>,
    pub retry_after_max: Option<String>,
    pub format: Option<String>,
}
