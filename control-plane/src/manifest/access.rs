//! `EventPolicy` resources compiled into the policies each broker's ingress applies
//! ([`cemesh_ingress::auth::Policy`]): which brokers a policy selects (`spec.to`),
//! whom it allows (`spec.from`), and its filters, compiled by the dispatcher's filter
//! compiler as a trigger's are.

use std::collections::BTreeMap;
use std::sync::Arc;

use cemesh_dispatcher::Filter;
use cemesh_ingress::auth::{EventCheck, Policy, SubjectPattern};
use cemesh_ingress::BrokerKey;
use cemesh_proto::Event;

use super::policy::{EventPolicyManifest, PolicyFrom, PolicyTo};
use super::{Located, ManifestError, Resource, EVENTING_V1};

/// An `EventPolicy`'s filters: all must pass.
#[derive(Debug)]
struct Filters(Filter);

impl EventCheck for Filters {
    fn allows(&self, event: &Event) -> bool {
        self.0.matches(event)
    }
}

/// What a policy's `spec.to` can select an address by: the resource that owns it
/// (a Broker, a channel, or the flow whose channel it is) and that resource's
/// labels. Every channel of a flow is its owner's: a policy on a Sequence guards its
/// inner hops too.
#[derive(Debug, Clone)]
pub struct Owner {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A compiled policy and the brokers it selects.
#[derive(Debug, Clone)]
pub struct PolicyDesired {
    pub policy: Arc<Policy>,
    pub brokers: Vec<BrokerKey>,
}

/// Compiles every valid `EventPolicy`; problems are reported per policy and an
/// invalid policy is left out. (A policy left out allows less, never more: a broker
/// it selected falls back to the default mode, which a reload that brings in the
/// invalid policy is refused before reaching.)
pub fn compile_policies(
    resources: &[Located<Resource>],
    brokers: &BTreeMap<BrokerKey, Owner>,
    problems: &mut Vec<ManifestError>,
) -> BTreeMap<String, PolicyDesired> {
    let mut out = BTreeMap::new();
    for located in resources {
        let Resource::EventPolicy(p) = &located.value else {
            continue;
        };
        let name = format!("{}/{}", p.metadata.namespace(), p.metadata.name);
        let label = format!("EventPolicy {name}");
        match compile_one(p, brokers) {
            Ok(d) if out.contains_key(&name) => {
                drop(d);
                problems.push(located.error(label, "metadata.name", "defined more than once"));
            }
            Ok(d) => {
                out.insert(name, d);
            }
            Err(errs) => {
                for (path, msg) in errs {
                    problems.push(located.error(label.clone(), path, msg));
                }
            }
        }
    }
    out
}

type FieldError = (String, String);

fn compile_one(
    p: &EventPolicyManifest,
    brokers: &BTreeMap<BrokerKey, Owner>,
) -> Result<PolicyDesired, Vec<FieldError>> {
    let mut problems = Vec::new();
    let ns = p.metadata.namespace();
    if let Err(e) = p.metadata.check() {
        problems.push(e);
    }
    let mut from = Vec::new();
    for (i, f) in p.spec.from.iter().enumerate() {
        match check_from(f, &format!("spec.from[{i}]")) {
            Ok(s) => from.push(SubjectPattern::new(s)),
            Err(e) => problems.push(e),
        }
    }
    for (i, t) in p.spec.to.iter().enumerate() {
        if let Err(e) = check_to(t, &format!("spec.to[{i}]")) {
            problems.push(e);
        }
    }
    let filters = if p.spec.filters.is_empty() {
        None
    } else {
        match super::filters::compile_dialect(&p.spec.filters, "spec.filters") {
            Ok(f) => Some(Arc::new(Filters(Filter::Dialect(f))) as Arc<dyn EventCheck>),
            Err(e) => {
                problems.push((e.path, e.message));
                None
            }
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let selected = brokers
        .iter()
        .filter(|(key, owner)| key.namespace == ns && selects(&p.spec.to, owner))
        .map(|(key, _)| key.clone())
        .collect();
    Ok(PolicyDesired {
        policy: Arc::new(Policy {
            name: format!("{ns}/{}", p.metadata.name),
            from,
            filters,
        }),
        brokers: selected,
    })
}

/// Whether `to` selects an address of `owner`; an empty `to` selects every address
/// of the namespace.
fn selects(to: &[PolicyTo], owner: &Owner) -> bool {
    to.is_empty()
        || to.iter().any(|t| match (&t.r#ref, &t.selector) {
            (Some(r), _) => r.kind == owner.kind && r.name == owner.name,
            (None, Some(s)) => {
                s.kind.as_deref().unwrap_or("Broker") == owner.kind
                    && s.api_version
                        .as_deref()
                        .is_none_or(|a| a == owner.api_version)
                    && s.matches(&owner.labels)
            }
            (None, None) => false,
        })
}

fn check_from(f: &PolicyFrom, path: &str) -> Result<String, FieldError> {
    match (&f.r#ref, &f.sub) {
        (Some(_), Some(_)) => Err((path.to_owned(), "expected exactly one of ref, sub".into())),
        (None, None) => Err((path.to_owned(), "expected one of ref, sub".into())),
        (None, Some(sub)) if sub.is_empty() => Err((
            format!("{path}.sub"),
            "must not be empty (\"*\" allows every authenticated sender)".into(),
        )),
        (None, Some(sub)) => match sub.find('*') {
            Some(i) if i + 1 < sub.len() => Err((
                format!("{path}.sub"),
                format!("{sub:?}: '*' is only allowed as suffix"),
            )),
            _ => Ok(sub.clone()),
        },
        (Some(r), None) => Err((
            format!("{path}.ref"),
            format!(
                "cemesh identifies senders by subject, not by resource: write sub: with the sender's token name or JWT subject (for a Kubernetes workload, system:serviceaccount:{}:<service account>) instead of ref to {} {}",
                r.namespace.as_deref().unwrap_or("<namespace>"),
                r.kind,
                r.name
            ),
        )),
    }
}

/// What a policy may name in `spec.to`, as `(apiVersion, kind)`.
pub const ADDRESSABLES: &[(&str, &str)] = &[
    (EVENTING_V1, "Broker"),
    (super::channel::MESSAGING_V1, "Channel"),
    (super::channel::MESSAGING_V1, "InMemoryChannel"),
    (super::channel::MESSAGING_V1BETA1, "KafkaChannel"),
    (super::flows::FLOWS_V1, "Sequence"),
    (super::flows::FLOWS_V1, "Parallel"),
];

const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

fn check_to(t: &PolicyTo, path: &str) -> Result<(), FieldError> {
    match (&t.r#ref, &t.selector) {
        (Some(_), Some(_)) => Err((
            path.to_owned(),
            "expected exactly one of ref, selector".into(),
        )),
        (None, None) => Err((path.to_owned(), "expected one of ref, selector".into())),
        (Some(r), None) => {
            for (field, value) in [
                ("apiVersion", &r.api_version),
                ("kind", &r.kind),
                ("name", &r.name),
            ] {
                if value.is_empty() {
                    return Err((format!("{path}.ref.{field}"), "required".into()));
                }
            }
            if !ADDRESSABLES
                .iter()
                .any(|(api, kind)| *kind == r.kind && *api == r.api_version)
            {
                return Err((
                    format!("{path}.ref"),
                    format!(
                        "{} {} cannot be the target of a policy: cemesh's addressables are {}",
                        r.api_version,
                        r.kind,
                        ADDRESSABLES
                            .iter()
                            .map(|(api, kind)| format!("{kind} ({api})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if r.namespace.is_some() {
                return Err((
                    format!("{path}.ref.namespace"),
                    "a policy applies within its own namespace; remove namespace".into(),
                ));
            }
            Ok(())
        }
        (None, Some(s)) => {
            for (i, e) in s.match_expressions.iter().enumerate() {
                let at = format!("{path}.selector.matchExpressions[{i}]");
                if !OPERATORS.contains(&e.operator.as_str()) {
                    return Err((
                        format!("{at}.operator"),
                        format!(
                            "{:?} is not an operator; expected In, NotIn, Exists or DoesNotExist",
                            e.operator
                        ),
                    ));
                }
                let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
                if needs_values == e.values.is_empty() {
                    return Err((
                        format!("{at}.values"),
                        match needs_values {
                            true => format!("{} needs values", e.operator),
                            false => format!("{} takes no values", e.operator),
                        },
                    ));
                }
            }
            Ok(())
        }
    }
}
