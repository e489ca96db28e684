//! A trigger's `spec.filter` / `spec.filters` compiled to the dispatcher's [`Filter`].
//! As in Knative, `filters` (when present) wins and `filter` is ignored.

use cemesh_dispatcher::filter::AttributesFilter;
use cemesh_dispatcher::Filter;

use super::TriggerSpec;

/// Compiles the trigger's filter; the error is `(field path, message)`.
pub(super) fn compile_filter(spec: &TriggerSpec) -> Result<Filter, (String, String)> {
    if let Some(filters) = &spec.filters {
        if !filters.is_empty() {
            return Err((
                "spec.filters".into(),
                "the filters dialect is not supported yet; use spec.filter.attributes".into(),
            ));
        }
        return Ok(Filter::All);
    }
    match &spec.filter {
        Some(f) if !f.attributes.is_empty() => {
            AttributesFilter::new(&f.attributes, "spec.filter.attributes")
                .map(Filter::Attributes)
                .map_err(|e| (e.path, e.message))
        }
        _ => Ok(Filter::All),
    }
}
