//! Every way events come in: the HTTP ingress (`POST /{namespace}/{broker}` in
//! binary, structured or batched mode, JSON or protobuf) and the gRPC `Publisher`
//! ([`grpc`]), both thin adapters over one accept path ([`accept`]); the sidecar's
//! publish endpoint reuses it too. An event is answered 202 (or `accepted`) only
//! after its broker's channel stored it, so an acceptance means durable. Every
//! refusal names the problem, rendered in one place per protocol ([`ErrorAnswer`]
//! for HTTP, [`grpc::status`] for gRPC). Every HTTP listener of cemesh runs on
//! [`server::serve`], which holds clients to its timeouts and connection limit.

pub mod accept;
pub mod auth;
pub mod dedup;
mod error;
pub mod grpc;
mod routes;
pub mod seen;
pub mod server;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use cemesh_proto::{knative, metric_names as names};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use tracing::Instrument;

pub use error::{retry_after_secs, ErrorAnswer, IngressError};
pub use routes::{
    AnyBinary, BinaryDelivery, BrokerEndpoint, BrokerKey, EndpointMetrics, Routes,
    DEFAULT_MAX_PENDING_BYTES,
};

/// The extension the ingress stamps on every event it accepts.
pub const ARRIVAL_TIME: &str = knative::ARRIVAL_TIME;

/// The ingress over a live broker table, as [`server::serve`] runs it.
pub fn service(routes: Routes) -> Ingress {
    Ingress(routes)
}

/// The ingress as a service: every request goes to one handler, so no router stands
/// between hyper and it (axum's catch-all route cost about 4 % of the broker's
/// instructions per event: a URL-parameter map, a boxed handler and a response
/// mapping for every request; `bench/README.md`, "The ingress without a router").
#[derive(Clone)]
pub struct Ingress(Routes);

impl tower::Service<Request> for Ingress {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(handle(self.0.clone(), req))
    }
}

async fn handle(routes: Routes, req: Request) -> Result<Response, Infallible> {
    // At debug: at the default log level it costs a disabled-callsite check (the
    // OTLP exporter, when configured, enables it for itself).
    let span = tracing::debug_span!(
        "ingress",
        method = %req.method(),
        path = %req.uri().path(),
        status = tracing::field::Empty,
        events = tracing::field::Empty,
    );
    cemesh_proto::trace::continue_from(&span, || {
        req.headers()
            .get(cemesh_proto::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
    });
    let started = std::time::Instant::now();
    // Parsed and looked up once: the request is answered from this table entry,
    // and metrics are labelled with known brokers only (paths are the client's to
    // choose).
    // Looked up by the path's pieces: the key is made only for the 404.
    let target = parse_path(req.uri().path()).map(|(ns, n)| {
        routes
            .get_by(ns, n)
            .ok_or_else(|| accept::unknown(&BrokerKey::new(ns, n)))
    });
    let endpoint = target.as_ref().ok().and_then(|b| b.as_ref().ok()).cloned();
    async move {
        let result = dispatch(&routes, target, req).await;
        let (resp, events) = match result {
            Ok((resp, n)) => (resp, n),
            Err(e) => {
                tracing::debug!(error = %e, "Refused");
                (e.into_response(), 1)
            }
        };
        let status = resp.status().as_u16();
        tracing::Span::current().record("status", status);
        // A request that carried no event (the webhook handshake, an empty batch)
        // counts nothing.
        if let Some(ep) = endpoint.filter(|_| events > 0) {
            if status == 202 {
                ep.metrics.accepted(&ep.key).increment(events as u64);
            } else {
                metrics::counter!(
                    names::INGRESS_EVENTS,
                    &routes::ingress_labels(&ep.key, status)
                )
                .increment(events as u64);
            }
            ep.metrics
                .duration(&ep.key)
                .record(started.elapsed().as_secs_f64());
        }
        Ok(resp)
    }
    .instrument(span)
    .await
}

/// Handles one request to its `target`: a malformed path's error, else the broker
/// its path names or the 404; answers with how many events it carried.
async fn dispatch(
    routes: &Routes,
    target: Result<Result<std::sync::Arc<BrokerEndpoint>, IngressError>, IngressError>,
    req: Request,
) -> Result<(Response, usize), IngressError> {
    let attributes = accept::check_headers(req.headers())?;
    let broker = target?;
    match *req.method() {
        Method::POST if routes.is_draining() => return Err(IngressError::Draining),
        Method::POST => {}
        Method::OPTIONS => return Ok((webhook_handshake(req.headers()), 0)),
        _ => return Err(IngressError::MethodNotAllowed(req.method().clone())),
    }
    let broker = broker?;
    let admitted = accept::admit(
        routes,
        &broker,
        req.headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )?;
    let (parts, body) = req.into_parts();
    // Delivery is behind: held (then refused) before the body is read and decoded,
    // so holding producers back costs little.
    if let Err(e) = accept::room(&broker).await {
        discard(body, broker.max_body_bytes).await;
        return Err(e);
    }
    // Held until the events are stored: reading, decoding and storing are what
    // the request costs in memory.
    let expected = content_length(&parts.headers)
        .map_or(broker.max_body_bytes, |len| len.min(broker.max_body_bytes));
    let Some(_pending) = routes.reserve_pending_within(expected, PENDING_WAIT).await else {
        // Read (and drop) the body first: a client still sending it would see a
        // broken pipe instead of the 503.
        discard(body, broker.max_body_bytes).await;
        return Err(IngressError::Busy(PENDING_WAIT));
    };
    let body =
        accept::read_event_body(&parts.headers, body, attributes, broker.max_body_bytes).await?;
    let events = if body.len() > DECODE_INLINE_MAX {
        // A large batch takes milliseconds of CPU to decode: not on the runtime.
        let headers = parts.headers.clone();
        let (routes, broker) = (routes.clone(), broker.clone());
        tokio::task::spawn_blocking(move || {
            decode_checked(&routes, &broker, &admitted, &headers, body)
        })
        .await
        .map_err(|e| IngressError::BodyRead(format!("decoding the body: {e}")))??
    } else {
        decode_checked(routes, &broker, &admitted, &parts.headers, body)?
    };
    tracing::Span::current().record("events", events.len());
    let via = match cemesh_proto::http::detect_mode(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    ) {
        cemesh_proto::http::Mode::Binary => "http-binary",
        cemesh_proto::http::Mode::Structured => "http-structured",
        cemesh_proto::http::Mode::Batch => "http-batch",
    };
    let count = accept::store(&broker, events, via).await?;
    Ok((StatusCode::ACCEPTED.into_response(), count))
}

/// How long a request waits for its share of `--max-pending-bytes` before a 503.
const PENDING_WAIT: Duration = Duration::from_secs(10);

/// Bodies up to this size are decoded on the runtime (microseconds); larger ones
/// on the blocking pool.
const DECODE_INLINE_MAX: usize = 64 * 1024;

/// Decodes and stamps a request's events, and refuses them if the sender's policies
/// do not allow one or one could not be delivered.
fn decode_checked(
    routes: &Routes,
    broker: &BrokerEndpoint,
    admitted: &auth::Admitted,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Result<Vec<cemesh_proto::Event>, IngressError> {
    let (mode, mut events) = cemesh_proto::http::decode_with_mode(headers, body)?;
    let batch = mode == cemesh_proto::http::Mode::Batch;
    accept::check_policies(routes, broker, admitted, &mut events, batch)?;
    accept::stamp(
        broker,
        &mut events,
        &knative::now_rfc3339(),
        Some(headers),
        batch,
    )?;
    accept::check_deliverable(broker, routes.header_budget(), &events, batch)?;
    Ok(events)
}

/// Reads up to `limit` bytes of a body without keeping them.
async fn discard(body: axum::body::Body, limit: usize) {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > limit {
            break;
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `/{namespace}/{broker}`, with one trailing slash tolerated.
fn parse_path(path: &str) -> Result<(&str, &str), IngressError> {
    let trimmed = path.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(IngressError::UnknownBroker("/".to_owned()));
    }
    let mut parts = trimmed.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), None) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
        _ => Err(IngressError::BadPath(path.to_owned())),
    }
}

/// The CloudEvents webhook abuse-protection handshake (http-webhook.md §4).
pub fn webhook_handshake(headers: &HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    (
        StatusCode::OK,
        [
            (
                header::HeaderName::from_static("webhook-allowed-origin"),
                origin,
            ),
            (
                header::HeaderName::from_static("webhook-allowed-rate"),
                HeaderValue::from_static("*"),
            ),
            (header::ALLOW, HeaderValue::from_static("POST, OPTIONS")),
        ],
    )
        .into_response()
}

/// Serves the ingress on `listener` within `limits` until `shutdown` resolves,
/// then lets the requests in progress finish (see [`server::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    limits: server::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve("ingress", listener, service(routes), limits, shutdown).await
}

/// How long a producer should wait after a 429/503 when the channel did not say.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/ns/b").unwrap(), ("ns", "b"));
        assert_eq!(parse_path("/ns/b/").unwrap(), ("ns", "b"));
        assert!(matches!(
            parse_path("/"),
            Err(IngressError::UnknownBroker(_))
        ));
        assert!(matches!(parse_path("/ns"), Err(IngressError::BadPath(_))));
        assert!(matches!(
            parse_path("/a/b/c"),
            Err(IngressError::BadPath(_))
        ));
        assert!(matches!(parse_path("//b"), Err(IngressError::BadPath(_))));
    }
}
