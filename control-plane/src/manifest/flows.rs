//! `flows.knative.dev/v1` `Sequence` and `Parallel`, read as Knative writes them.
//!
//! Like Knative's controllers, `compile` expands a flow into the channels and
//! subscriptions it is made of, with Knative's names: a Sequence's step `i` reads
//! channel `{name}-kn-sequence-{i}` and replies into the next one; a Parallel's
//! events enter channel `{name}-kn-parallel`, each branch's filter replies into
//! `{name}-kn-parallel-{i}`, which the branch's subscriber reads. The flow's address
//! is its first channel's.

use serde::Deserialize;

use super::channel::ChannelTemplate;
use super::{DeliveryManifest, Destination, KReference, Metadata};

pub const FLOWS_V1: &str = "flows.knative.dev/v1";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequenceManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: SequenceSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SequenceSpec {
    #[serde(default)]
    pub steps: Vec<SequenceStep>,
    pub channel_template: Option<ChannelTemplate>,
    pub reply: Option<Destination>,
}

/// A Destination with the step's own delivery. Knative inlines the Destination; its
/// fields are repeated here because serde's `flatten` does not combine with
/// `deny_unknown_fields`, and [`SequenceStep::destination`] gives it back.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SequenceStep {
    #[serde(rename = "ref")]
    pub reference: Option<KReference>,
    pub uri: Option<String>,
    #[serde(rename = "CACerts")]
    pub ca_certs: Option<String>,
    pub audience: Option<String>,
    pub delivery: Option<DeliveryManifest>,
}

impl SequenceStep {
    pub fn destination(&self) -> Destination {
        Destination {
            reference: self.reference.clone(),
            uri: self.uri.clone(),
            ca_certs: self.ca_certs.clone(),
            audience: self.audience.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParallelManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ParallelSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParallelSpec {
    #[serde(default)]
    pub branches: Vec<ParallelBranch>,
    pub channel_template: Option<ChannelTemplate>,
    /// Where a branch's subscriber replies go when the branch sets no `reply`.
    pub reply: Option<Destination>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParallelBranch {
    /// Lets an event through when it answers 2xx with an event (that event goes on).
    pub filter: Option<Destination>,
    #[serde(default)]
    pub subscriber: Destination,
    pub reply: Option<Destination>,
    pub delivery: Option<DeliveryManifest>,
}

/// The channel step `i` of sequence `name` reads.
pub fn sequence_channel(name: &str, i: usize) -> String {
    format!("{name}-kn-sequence-{i}")
}

/// The channel every event sent to parallel `name` enters.
pub fn parallel_ingress(name: &str) -> String {
    format!("{name}-kn-parallel")
}

/// The channel branch `i`'s filter replies into.
pub fn parallel_branch(name: &str, i: usize) -> String {
    format!("{name}-kn-parallel-{i}")
}
