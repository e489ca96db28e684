//! OpenTelemetry export of the `tracing` spans (ingress requests, delivery attempts)
//! over OTLP/HTTP, behind the `otel` cargo feature so the default build stays lean.
//! Without the feature, or without an endpoint, this is a no-op layer.

#[cfg(feature = "otel")]
mod imp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    /// Flushes and stops the exporter when dropped.
    pub struct Guard(Option<SdkTracerProvider>);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                if let Err(e) = p.shutdown() {
                    eprintln!("cemesh: flushing OTLP spans failed: {e}");
                }
            }
        }
    }

    pub fn layer<S>(endpoint: Option<&str>) -> (Option<Box<dyn Layer<S> + Send + Sync>>, Guard)
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        let Some(endpoint) = endpoint else {
            return (None, Guard(None));
        };
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url)
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("cemesh: OTLP exporter not started: {e}");
                return (None, Guard(None));
            }
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("cemesh")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("cemesh");
        // Every span (the request and delivery spans are at debug), and events at info
        // and above.
        let spans_and_info = tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() || *meta.level() <= tracing::Level::INFO
        });
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(spans_and_info)
            .boxed();
        cemesh_proto::trace::install(link);
        (Some(layer), Guard(Some(provider)))
    }

    /// Parents `span` on the remote span `traceparent` names (W3C Trace Context).
    fn link(span: &tracing::Span, traceparent: &str) {
        use opentelemetry::propagation::TextMapPropagator as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let carrier =
            std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    use tracing_subscriber::Layer;

    pub struct Guard;

    pub fn layer<S>(endpoint: Option<&str>) -> (Option<Box<dyn Layer<S> + Send + Sync>>, Guard)
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        if endpoint.is_some() {
            eprintln!("cemesh: --otlp-endpoint needs a build with `--features otel`; spans are not exported");
        }
        (None, Guard)
    }
}

pub use imp::{layer, Guard};
