//! Receiving on the service's behalf (`--deliver-listen`): triggers deliver to the
//! sidecar, which relays each event to the service (`--app-url`) and adds what the
//! service would otherwise have to write.
//!
//! - **Health gating.** Until the service answers 2xx on `--app-health-path`, the
//!   mesh is answered 503 with `Retry-After`: the broker's retry policy backs off (and
//!   honours the header) instead of spending its attempts on a service that is still
//!   starting. A refused connection during a relay flips the gate too.
//! - **Concurrency limit.** At most `--app-max-concurrency` requests reach the
//!   service at once; the rest wait in the sidecar (the mesh's own timeout bounds the
//!   wait).
//! - **Protocol.** `cloudevents` relays the event as the mesh sent it (binary or
//!   structured); `plain` sends only the data with its content type, the attributes as
//!   `ce-` headers a plain service simply ignores.
//! - **Replies.** A CloudEvent in the service's 2xx answer is returned to the mesh as
//!   the reply; any other non-empty body becomes a reply event of `--reply-type` (when
//!   set). The broker's dispatcher then appends it like any reply, TTL guard included.
//! - **Paths.** A delivery to `/` goes to `--app-url`; a delivery to another path (a
//!   trigger registered with a relative `subscriber.uri`) goes to that path on the
//!   service's origin, so one sidecar serves several endpoints of one service.
//!   `GET /healthz` and `GET /metrics` on this port are the sidecar's own (probes and
//!   scraping reach this port; the local one is bound to localhost).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cemesh_dispatcher::delivery::root_cause;
use cemesh_proto::{knative, validate::validate, AttributeValue, Event, EventError};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::args::AppProtocol;
use crate::error::{retry_after_secs, SidecarError};
use crate::publish::{read_body, webhook_handshake};
use crate::stats::{inc, Stats};

/// Bytes of a failing answer passed back to the mesh (it keeps 1 KiB as
/// `knativeerrordata`).
const ERROR_BODY_MAX: usize = 4096;

/// How the relay reaches the service.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub app_url: reqwest::Url,
    pub protocol: AppProtocol,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub max_body_bytes: u64,
    /// Full URL of the health path, if gating is on.
    pub health_url: Option<reqwest::Url>,
    pub health_interval: Duration,
    pub reply_type: Option<String>,
    pub source: String,
}

/// The relay's shared state.
#[derive(Clone)]
pub struct Relay {
    config: Arc<RelayConfig>,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
    /// Wakes the health monitor early (a relay could not connect).
    recheck: Arc<Notify>,
}

impl Relay {
    pub fn new(config: RelayConfig, stats: Arc<Stats>, client: reqwest::Client) -> Relay {
        // Without a health path the service counts as healthy until proven otherwise.
        stats
            .app_healthy
            .store(config.health_url.is_none(), Relaxed);
        Relay {
            permits: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            config: Arc::new(config),
            client,
            stats,
            recheck: Arc::new(Notify::new()),
        }
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .with_state(self.clone())
    }

    fn healthy(&self) -> bool {
        self.stats.app_healthy.load(Relaxed)
    }

    /// Probes the health path every interval (and at once when a relay failed to
    /// connect) until `stop`. Returns at once without a health path.
    pub async fn monitor_health(self, stop: CancellationToken) {
        let Some(url) = self.config.health_url.clone() else {
            return;
        };
        let timeout = self.config.health_interval.max(Duration::from_millis(500));
        loop {
            let ok = match self.client.get(url.clone()).timeout(timeout).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            let was = self.stats.app_healthy.swap(ok, Relaxed);
            if ok != was {
                if ok {
                    tracing::info!(url = %url, "Service healthy; delivering");
                } else {
                    tracing::warn!(url = %url, "Service unhealthy; the mesh is answered 503 until it recovers");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.health_interval) => {}
                () = self.recheck.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn retry_after(&self) -> HeaderValue {
        retry_after_secs(self.config.health_interval)
    }
}

async fn handle(State(relay): State<Relay>, req: Request) -> Response {
    match *req.method() {
        Method::POST => {}
        Method::OPTIONS => return webhook_handshake(req.headers()),
        Method::GET if req.uri().path() == "/healthz" => return "ok".into_response(),
        _ => return SidecarError::MethodNotAllowed(req.method().clone()).into_response(),
    }
    match relay_one(&relay, req).await {
        Ok(resp) => resp,
        Err(e) => {
            let status = e.status();
            let mut resp = e.into_response();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, relay.retry_after());
            }
            resp
        }
    }
}

async fn relay_one(relay: &Relay, req: Request) -> Result<Response, SidecarError> {
    if !relay.healthy() {
        inc(&relay.stats.gated);
        return Err(SidecarError::AppUnavailable(
            "its health path does not answer 2xx yet".into(),
        ));
    }
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, relay.config.max_body_bytes).await?;
    let mut events = cemesh_proto::http::decode(&parts.headers, body.clone())?;
    let event = match (events.pop(), events.is_empty()) {
        (Some(e), true) => e,
        _ => {
            return Err(SidecarError::BadRequest(
                "a delivery must carry exactly one event".into(),
            ))
        }
    };
    let target = target_url(&relay.config.app_url, parts.uri.path_and_query());
    let (headers, body) = match relay.config.protocol {
        AppProtocol::Cloudevents => (passthrough_headers(&parts.headers), body),
        AppProtocol::Plain => {
            let mut h = HeaderMap::new();
            let data = cemesh_proto::http::encode_binary(&event, &mut h).unwrap_or_default();
            for name in ["traceparent", "tracestate"] {
                if let Some(v) = parts.headers.get(name) {
                    h.insert(HeaderName::from_static(name), v.clone());
                }
            }
            (h, data)
        }
    };
    let _permit = relay
        .permits
        .acquire()
        .await
        .map_err(|_| SidecarError::Stopping)?;
    relay.stats.app_in_flight.fetch_add(1, Relaxed);
    let sent = relay
        .client
        .post(target.clone())
        .headers(headers)
        .body(body)
        .timeout(relay.config.timeout)
        .send()
        .await;
    let answer = match sent {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            resp.bytes().await.map(|b| (status, headers, b))
        }
        Err(e) => Err(e),
    };
    relay.stats.app_in_flight.fetch_sub(1, Relaxed);
    let (status, headers, body) = match answer {
        Ok(a) => a,
        Err(e) => {
            inc(&relay.stats.relay_failures);
            if e.is_timeout() {
                return Err(SidecarError::AppTimeout(relay.config.timeout));
            }
            if e.is_connect() && relay.config.health_url.is_some() {
                relay.stats.app_healthy.store(false, Relaxed);
                relay.recheck.notify_one();
            }
            return Err(SidecarError::AppUnavailable(format!(
                "{target}: {}",
                root_cause(&e)
            )));
        }
    };
    if !status.is_success() {
        inc(&relay.stats.relay_failures);
        tracing::debug!(event.id = %event.id, %status, "The service refused an event");
        let mut out = HeaderMap::new();
        for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
            if let Some(v) = headers.get(&name) {
                out.insert(name, v.clone());
            }
        }
        let kept = body.slice(..body.len().min(ERROR_BODY_MAX));
        return Ok((status, out, kept).into_response());
    }
    inc(&relay.stats.relayed);
    if is_cloudevent(&headers) {
        // The service answered a CloudEvent: the mesh's dispatcher validates it.
        inc(&relay.stats.replies);
        let mut out = HeaderMap::new();
        for (name, value) in &headers {
            if name == header::CONTENT_TYPE || name.as_str().starts_with("ce-") {
                out.append(name.clone(), value.clone());
            }
        }
        return Ok((status, out, body).into_response());
    }
    match (&relay.config.reply_type, body.is_empty()) {
        (Some(ty), false) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match wrap_reply(ty, &relay.config.source, &event, ct, body) {
                Ok(reply) => {
                    inc(&relay.stats.replies);
                    let mut out = HeaderMap::new();
                    let data =
                        cemesh_proto::http::encode_binary(&reply, &mut out).unwrap_or_default();
                    Ok((StatusCode::OK, out, data).into_response())
                }
                Err(e) => {
                    // The event was delivered; only the reply is lost, so say so and
                    // answer success (retrying would deliver the event twice).
                    tracing::warn!(event.id = %event.id, error = %e, "The service's answer cannot be wrapped into a reply");
                    Ok(status.into_response())
                }
            }
        }
        _ => Ok(status.into_response()),
    }
}

/// Where a delivery goes: `/` to the app URL, other paths to that path on its origin.
pub fn target_url(app: &reqwest::Url, path: Option<&http::uri::PathAndQuery>) -> reqwest::Url {
    match path {
        Some(p) if p.path() != "/" && !p.path().is_empty() => {
            app.join(p.as_str()).unwrap_or_else(|_| app.clone())
        }
        _ => app.clone(),
    }
}

/// The headers of a CloudEvents delivery worth relaying as they are.
fn passthrough_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        let n = name.as_str();
        if name == header::CONTENT_TYPE
            || n.starts_with("ce-")
            || matches!(n, "traceparent" | "tracestate" | "kn-namespace" | "prefer")
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Whether an answer is a CloudEvent (binary or structured/batch mode).
fn is_cloudevent(headers: &HeaderMap) -> bool {
    cemesh_proto::http::has_binary_event(headers)
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/cloudevents")
            })
}

/// The reply event made of a plain answer body: configured type and source, a new
/// UUID v7 id, the answer's content type, and the delivered event's partition key (so
/// replies keep the order of their cause).
pub fn wrap_reply(
    ty: &str,
    source: &str,
    cause: &Event,
    content_type: Option<String>,
    body: Bytes,
) -> Result<Event, EventError> {
    let mut reply = Event::new(uuid::Uuid::now_v7().to_string(), source, ty);
    reply.time = Some(knative::now_rfc3339());
    reply.datacontenttype = content_type.filter(|c| !c.trim().is_empty());
    if let Some(key) = cause.extension("partitionkey") {
        reply.set_extension("partitionkey", key.clone());
    }
    reply.set_extension("cemeshcause", AttributeValue::String(cause.id.clone()));
    reply.data = Some(body);
    validate(&reply)?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn root_goes_to_the_app_url_other_paths_to_the_origin() {
        let app = url("http://127.0.0.1:8000/events");
        let pq = |s: &str| http::uri::PathAndQuery::try_from(s).unwrap();
        assert_eq!(target_url(&app, Some(&pq("/"))).as_str(), app.as_str());
        assert_eq!(target_url(&app, None).as_str(), app.as_str());
        assert_eq!(
            target_url(&app, Some(&pq("/orders?x=1"))).as_str(),
            "http://127.0.0.1:8000/orders?x=1"
        );
    }

    #[test]
    fn replies_carry_the_configured_type_and_the_cause() {
        let mut cause = Event::new("c-1", "/mesh", "order.created");
        cause.set_extension("partitionkey", AttributeValue::String("k".into()));
        let r = wrap_reply(
            "order.checked",
            "/svc",
            &cause,
            Some("application/json".into()),
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        assert_eq!(r.ty, "order.checked");
        assert_eq!(r.source, "/svc");
        assert_eq!(r.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            r.extension("partitionkey"),
            Some(&AttributeValue::String("k".into()))
        );
        assert_eq!(
            r.extension("cemeshcause"),
            Some(&AttributeValue::String("c-1".into()))
        );
        assert_ne!(r.id, cause.id);
    }

    #[test]
    fn cloudevent_answers_are_recognised() {
        let mut h = HeaderMap::new();
        assert!(!is_cloudevent(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_cloudevent(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/CloudEvents+JSON"),
        );
        assert!(is_cloudevent(&h));
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        assert!(is_cloudevent(&h));
    }
}
