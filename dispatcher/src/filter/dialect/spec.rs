//! `spec.filters` as a typed value: what the control plane reads from a manifest and
//! the dispatcher compiles. Reading YAML (and its structural errors) is the control
//! plane's; the checks of meaning (non-empty lists and values, attribute names,
//! CESQL syntax) are [`DialectFilter::compile`](super::DialectFilter::compile)'s.

use crate::filter::data::DataTest;

/// One filter object of the Subscriptions API dialect, plus Knative's `cesql` and
/// cemesh's `data`.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterSpec {
    /// Attribute name to value, in manifest order.
    Exact(Vec<(String, String)>),
    Prefix(Vec<(String, String)>),
    Suffix(Vec<(String, String)>),
    All(Vec<FilterSpec>),
    Any(Vec<FilterSpec>),
    Not(Box<FilterSpec>),
    Cesql(String),
    /// cemesh's `data`: JSON paths of the event's data to the tests each must pass.
    Data(Vec<(String, Vec<DataTest>)>),
}

impl FilterSpec {
    /// The dialect's name, as written in a manifest (and in error paths).
    pub fn dialect(&self) -> &'static str {
        match self {
            FilterSpec::Exact(_) => "exact",
            FilterSpec::Prefix(_) => "prefix",
            FilterSpec::Suffix(_) => "suffix",
            FilterSpec::All(_) => "all",
            FilterSpec::Any(_) => "any",
            FilterSpec::Not(_) => "not",
            FilterSpec::Cesql(_) => "cesql",
            FilterSpec::Data(_) => "data",
        }
    }
}
