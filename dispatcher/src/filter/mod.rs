//! Trigger filters, compiled once when a trigger is loaded. A compiled filter cannot be
//! invalid: every check happens in the constructors, so evaluation never fails.

pub mod cesql;
mod exact;

use cemesh_proto::Event;

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
#[derive(Debug, Clone)]
pub enum Filter {
    /// No filter: every event matches.
    All,
    /// Knative's `spec.filter.attributes`.
    Attributes(AttributesFilter),
}

impl Filter {
    /// Whether the event passes.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Filter::All => true,
            Filter::Attributes(f) => f.matches(event),
        }
    }
}
