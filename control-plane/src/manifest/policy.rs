//! `eventing.knative.dev/v1alpha1` `EventPolicy`: who may send to which brokers, and
//! which events. Read as Knative writes it; compiled into the ingress's
//! [`cemesh_ingress::auth::Access`] by `validate`.
//!
//! Senders are matched by subject (`from.sub`: a static token's name or a JWT's
//! `sub`, with a `*` suffix wildcard). `from.ref` names a Kubernetes source whose
//! service account Knative would resolve; cemesh has no such accounts, so it is
//! refused with the subject to write instead.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Metadata, Value};

pub const EVENTING_V1ALPHA1: &str = "eventing.knative.dev/v1alpha1";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicyManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: EventPolicySpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventPolicySpec {
    /// The brokers the policy applies to; empty: every broker of its namespace.
    #[serde(default)]
    pub to: Vec<PolicyTo>,
    /// Who may send; empty: no one.
    #[serde(default)]
    pub from: Vec<PolicyFrom>,
    /// Subscriptions API filters every event must pass.
    #[serde(default)]
    pub filters: Vec<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTo {
    pub r#ref: Option<PolicyRef>,
    pub selector: Option<PolicySelector>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyRef {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    /// `from.ref` only.
    pub namespace: Option<String>,
}

/// A Kubernetes label selector, optionally limited to one kind.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySelector {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelExpression {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl PolicySelector {
    /// Whether a resource with `labels` is selected (Kubernetes semantics: every
    /// label and every expression must hold). Operators were checked by `validate`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyFrom {
    pub r#ref: Option<PolicyRef>,
    pub sub: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_kubernetes() {
        let s: PolicySelector = crate::manifest::parser::typed(
            "matchLabels: {team: shop}\nmatchExpressions:\n  - {key: tier, operator: In, values: [gold, silver]}\n  - {key: legacy, operator: DoesNotExist}\n",
            "a test",
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(s.matches(&labels(&[("team", "shop"), ("tier", "gold")])));
        assert!(!s.matches(&labels(&[("team", "shop"), ("tier", "bronze")])));
        assert!(!s.matches(&labels(&[("team", "shop")])));
        assert!(!s.matches(&labels(&[
            ("team", "shop"),
            ("tier", "gold"),
            ("legacy", "y")
        ])));
    }
}
