//! Knative's `spec.filters`: the filter dialects of the CloudEvents Subscriptions API
//! (`exact`, `prefix`, `suffix`, `all`, `any`, `not`) plus Knative's `cesql` and
//! cemesh's `data` (tests on the JSON data, see `filter/data.rs`).
//!
//! [`DialectFilter::compile`] takes the typed [`FilterSpec`]s the control plane read
//! from a manifest (the dispatcher never sees YAML) and either returns a compiled
//! tree or a [`FilterError`] naming the bad node
//! (`spec.filters[1].any[0].cesql: parse error at column 12: ...`). Every check of
//! meaning happens there (the shape of the YAML is the control plane's to check,
//! `control-plane/src/manifest/filters.rs`), so a compiled tree is always valid and
//! evaluation is a plain
//! two-valued walk: no re-parsing, no error state, and no allocation except to turn a
//! Binary attribute into base64 (or inside the few CESQL functions that build text).
//!
//! Semantics, and where we chose between Knative and the Subscriptions API spec:
//!
//! * The list is an implicit AND. Only a *non-empty* list replaces
//!   `spec.filter.attributes`: Knative applies `filter` when `filters` is `[]`, and so
//!   do we (the control plane decides; see `control-plane/src/manifest/filters.rs`).
//! * `exact` / `prefix` / `suffix` map attribute names to strings; every entry must
//!   hold (AND), comparisons are case-sensitive, a non-string attribute is compared
//!   through its canonical string (`true`, `42`, base64), and an attribute the event
//!   lacks never matches — also under `prefix` with any value.
//! * `all` is true when every child is, `any` when one is (first match wins), `not`
//!   inverts its one child. They nest freely.
//! * `cesql` is true only when the expression yields Boolean `TRUE` without any
//!   evaluation error (CESQL spec 1.2): a missing attribute, a failed cast or a
//!   non-Boolean result is no match.
//! * Rejected at load time, although Knative's admission accepts them: an empty value
//!   (`prefix: {type: ""}`), an empty map, `all: []`, `any: []` and `not: {}`. Knative
//!   silently turns each of these into "no filter", so a typo would forward every
//!   event to the subscriber; the Subscriptions API forbids them outright (values
//!   must be non-empty, `all`/`any` hold at least one filter, `not` exactly one).
//! * One dialect per filter object (Knative: "multiple dialects found"); an unknown
//!   dialect is an error, as the Subscriptions API requires. The spec's `sql` is
//!   refused with a hint, since Knative triggers spell it `cesql`.
//! * Attribute names follow the CloudEvents naming rules: lower-case ASCII letters
//!   and digits, at least one, never `data` (data is not filterable).
//! * Values must be YAML strings, as in Knative's schema (`map[string]string`): a
//!   bare `7` or `true` is refused with a hint to quote it, so that `1.0` vs `1` or
//!   `yes` vs `true` never surprise anyone.

mod compile;
pub mod spec;

pub use compile::attr_path;
pub use spec::FilterSpec;

use cemesh_proto::Event;

use super::attr::{with_canonical, AttrKey};
use super::cesql::Expression;
use super::data::DataClause;
use super::FilterError;

/// A compiled `spec.filters` list. Always valid; see the module docs for semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct DialectFilter {
    root: Node,
}

impl DialectFilter {
    /// Compiles the `spec.filters` list. `path` is where the list sits in the manifest
    /// (`spec.filters`); errors extend it (`spec.filters[1].any[0].cesql`). The list
    /// must not be empty: an empty list is not a dialect filter (see the module docs).
    pub fn compile(filters: &[FilterSpec], path: &str) -> Result<Self, FilterError> {
        compile::compile_list(filters, path).map(|root| DialectFilter { root })
    }

    /// Whether the event passes every filter of the list.
    pub fn matches(&self, event: &Event) -> bool {
        self.root.matches(event)
    }
}

/// One node of the compiled tree.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Exact(Box<[Clause]>),
    Prefix(Box<[Clause]>),
    Suffix(Box<[Clause]>),
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Not(Box<Node>),
    Cesql(Box<Expression>),
    Data(Box<[DataClause]>),
}

/// One `name: value` entry of `exact`, `prefix` or `suffix`.
#[derive(Debug, Clone, PartialEq)]
struct Clause {
    key: AttrKey,
    /// Never empty.
    value: Box<str>,
}

impl Node {
    fn matches(&self, event: &Event) -> bool {
        match self {
            Node::Exact(clauses) => clauses
                .iter()
                .all(|c| c.key.get(event).is_some_and(|v| v.canonical_eq(&c.value))),
            Node::Prefix(clauses) => clauses.iter().all(|c| {
                c.key
                    .get(event)
                    .is_some_and(|v| with_canonical(v, |s| s.starts_with(&*c.value)))
            }),
            Node::Suffix(clauses) => clauses.iter().all(|c| {
                c.key
                    .get(event)
                    .is_some_and(|v| with_canonical(v, |s| s.ends_with(&*c.value)))
            }),
            Node::All(children) => children.iter().all(|n| n.matches(event)),
            Node::Any(children) => children.iter().any(|n| n.matches(event)),
            Node::Not(child) => !child.matches(event),
            Node::Cesql(expr) => expr.matches(event),
            Node::Data(clauses) => clauses.iter().all(|c| c.matches(event)),
        }
    }
}
