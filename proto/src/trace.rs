//! A producer's W3C trace context (`traceparent`) as the parent of cemesh's own
//! spans (the ingress request, each delivery attempt), so an exported trace runs from
//! the producer through the broker to the subscriber.
//!
//! The libraries create the spans, but only the binary knows whether spans are
//! exported (its `otel` feature); so it installs the one function that links a span
//! to a `traceparent`, and without it linking costs one atomic load.

use std::sync::OnceLock;

/// Makes `span` a child of the remote span a `traceparent` value names.
pub type Linker = fn(&tracing::Span, &str);

static LINKER: OnceLock<Linker> = OnceLock::new();

/// Installs the linker (once per process; later calls are ignored).
pub fn install(linker: Linker) {
    let _ = LINKER.set(linker);
}

/// The `traceparent` and `tracestate` headers, parsed once (a lookup by `&str`
/// parses the name every time).
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Parents `span` (not entered yet) on the trace `traceparent` names, when spans are
/// exported; a malformed value is ignored. `traceparent` is only called then: where
/// spans are not exported, finding the value is work for nothing.
pub fn continue_from<'a>(span: &tracing::Span, traceparent: impl FnOnce() -> Option<&'a str>) {
    if let Some(link) = LINKER.get() {
        if let Some(tp) = traceparent() {
            link(span, tp);
        }
    }
}
