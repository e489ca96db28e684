//! `spec.filters` as a typed value: what the control plane reads from a manifest and
//! the dispatcher compiles. Reading YAML (and its structural errors) is the control
//! plane's; the checks of meaning (non-empty lists and values, attribute names,
//! CESQL syntax) are [`DialectFilter::compile`](super::DialectFilter::compile)'s.

/// One filter object of the Subscriptions API dialect, plus Knative's `cesql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterSpec {
    /// Attribute name to value, in manifest order.
    Exact(Vec<(String, String)>),
    Prefix(Vec<(String, String)>),
    Suffix(Vec<(String, String)>),
    All(Vec<FilterSpec>),
    Any(Vec<FilterSpec>),
    Not(Box<FilterSpec>),
    Cesql(String),
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
        }
    }
}
