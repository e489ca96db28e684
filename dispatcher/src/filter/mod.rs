//! Trigger filters, compiled once when a trigger is loaded. A compiled filter cannot be
//! invalid: every check happens in the constructors, so evaluation never fails and a
//! bad manifest is reported when it is loaded, not event after event at run time.
//!
//! * [`AttributesFilter`] (`exact.rs`): Knative's legacy `spec.filter.attributes`.
//! * [`DialectFilter`] (`dialect/`): Knative's `spec.filters`, the Subscriptions API
//!   dialects plus `cesql`; its module docs list the semantics we chose.
//! * [`cesql`]: the CloudEvents SQL v1 engine, independent of our event type.
//! * `data.rs`: cemesh's `data` dialect, tests on fields of JSON data, with paths
//!   in `jsonpath.rs`'s language.
//! * `attr.rs`: how all of them read an [`Event`] without allocating.
//!
//! Evaluation is on the per-event hot path of every trigger, so compiled forms
//! pre-resolve what they can (core attribute names to field accesses, `LIKE`
//! patterns to segments) and borrow from the event instead of copying.

mod attr;
pub mod cesql;
mod data;
mod dialect;
mod exact;
mod jsonpath;

use cemesh_proto::Event;

pub use data::{DataTest, DataValue};
pub use dialect::{attr_path, DialectFilter, FilterSpec};
pub use exact::AttributesFilter;

/// Why a filter was refused at load time; `path` names the bad node
/// (e.g. `spec.filter.attributes.Type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FilterError {
    pub path: String,
    pub message: String,
}

impl FilterError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FilterError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A trigger's compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// No filter: every event matches.
    All,
    /// Knative's `spec.filter.attributes`.
    Attributes(AttributesFilter),
    /// Knative's `spec.filters` (Subscriptions API dialects and CESQL).
    Dialect(DialectFilter),
}

impl Filter {
    /// Whether the event passes.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Filter::All => true,
            Filter::Attributes(f) => f.matches(event),
            Filter::Dialect(f) => f.matches(event),
        }
    }
}
