//! `eventing.knative.dev/v1beta2` `EventType`: a hand-written entry of the event
//! type registry. The entries every broker and channel records from traffic
//! (`cemesh_ingress::seen`) are listed next to these by the admin API.

use serde::Deserialize;

use super::{KReference, Metadata};

pub const EVENTING_V1BETA2: &str = "eventing.knative.dev/v1beta2";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: EventTypeSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventTypeSpec {
    #[serde(rename = "type", default)]
    pub ty: String,
    pub source: Option<String>,
    pub schema: Option<String>,
    pub schema_data: Option<String>,
    /// Deprecated in Knative for `reference`; accepted.
    pub broker: Option<String>,
    pub reference: Option<KReference>,
    pub description: Option<String>,
}

/// Checks every EventType: `spec.type` is required.
pub(super) fn check_event_types(
    resources: &[super::Located<super::Resource>],
    problems: &mut Vec<super::ManifestError>,
) {
    for l in resources {
        let super::Resource::EventType(e) = &l.value else {
            continue;
        };
        let label = format!("EventType {}/{}", e.metadata.namespace(), e.metadata.name);
        if let Err((path, msg)) = e.metadata.check() {
            problems.push(l.error(label.clone(), path, msg));
        }
        if e.spec.ty.trim().is_empty() {
            problems.push(l.error(label, "spec.type", "required: the CloudEvents type"));
        }
    }
}

/// The name of the EventType recorded for (`ty`, `source`) at `address`: stable, a
/// DNS label, like Knative's auto-created `et-...` names.
pub fn discovered_name(address: &str, ty: &str, source: &str) -> String {
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in address
        .bytes()
        .chain([0])
        .chain(ty.bytes())
        .chain([0])
        .chain(source.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("et-{h:016x}")
}
