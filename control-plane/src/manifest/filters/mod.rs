//! A trigger's `spec.filter` / `spec.filters` compiled to the dispatcher's [`Filter`].
//!
//! As in Knative, a non-empty `filters` list wins and `filter` is then ignored; an
//! empty `filters: []` leaves `filter` in charge (Knative's
//! FilterAttributeWithEmptyFiltersFeature). The YAML's shape is checked here
//! ([`yaml`], into the dispatcher's typed `FilterSpec`), what it means by the
//! dispatcher's compiler, so a trigger whose filter does not compile never starts, and
//! the error names the node:
//! `spec.filters[1].any[0].cesql: parse error at column 12: ...`.

mod yaml;

use cemesh_dispatcher::filter::{AttributesFilter, DialectFilter};
use cemesh_dispatcher::{Filter, FilterError};

use super::TriggerSpec;

/// `spec.filters` YAML, read into typed specs and compiled.
pub fn compile_dialect(
    filters: &[crate::manifest::Value],
    path: &str,
) -> Result<DialectFilter, FilterError> {
    DialectFilter::compile(&yaml::specs(filters, path)?, path)
}

/// Compiles the trigger's filter; the error is `(field path, message)`.
pub(super) fn compile_filter(spec: &TriggerSpec) -> Result<Filter, (String, String)> {
    compile(spec).map_err(|e| (e.path, e.message))
}

fn compile(spec: &TriggerSpec) -> Result<Filter, FilterError> {
    if let Some(filters) = spec.filters.as_deref().filter(|f| !f.is_empty()) {
        return compile_dialect(filters, "spec.filters").map(Filter::Dialect);
    }
    match &spec.filter {
        Some(f) if !f.attributes.is_empty() => {
            AttributesFilter::new(&f.attributes, "spec.filter.attributes").map(Filter::Attributes)
        }
        _ => Ok(Filter::All),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TriggerSpec {
        crate::manifest::parser::typed(yaml, "a test").expect("test spec")
    }

    #[test]
    fn non_empty_filters_win_over_filter() {
        let s = spec("broker: b\nfilter: {attributes: {type: a}}\nfilters: [{exact: {type: b}}]\n");
        assert!(matches!(compile_filter(&s), Ok(Filter::Dialect(_))));
        let s = spec("broker: b\nfilter: {attributes: {type: a}}\nfilters: []\n");
        assert!(matches!(compile_filter(&s), Ok(Filter::Attributes(_))));
        let s = spec("broker: b\nfilters: []\n");
        assert!(matches!(compile_filter(&s), Ok(Filter::All)));
        let s = spec("broker: b\n");
        assert!(matches!(compile_filter(&s), Ok(Filter::All)));
    }

    #[test]
    fn errors_carry_the_path_and_the_column() {
        let s = spec(
            "broker: b\nfilters:\n  - exact: {type: a}\n  - any:\n      - cesql: \"type = 'a' AND (\"\n",
        );
        let (path, message) = compile_filter(&s).expect_err("bad CESQL");
        assert_eq!(path, "spec.filters[1].any[0].cesql");
        assert!(message.starts_with("parse error at column 17"), "{message}");
    }
}

#[cfg(test)]
mod dialect_tests;
