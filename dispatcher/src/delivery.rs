//! The delivery seam: how one event reaches one subscriber, and what happens when it
//! does not. The trigger loop calls [`Deliverer::deliver`] and acks afterwards,
//! whatever the outcome, so everything about retries, backoff, dead letters and
//! replies lives behind this one function.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cemesh_proto::Event;
use http::{HeaderMap, HeaderName, HeaderValue};
use tracing::Instrument;

use crate::trigger::TriggerRuntime;

/// Knative's `spec.delivery`, resolved (the broker's defaults merged in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySpec {
    /// Time allowed for one attempt.
    pub timeout: Duration,
}

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec {
            timeout: Duration::from_secs(60),
        }
    }
}

/// What became of one event.
#[derive(Debug)]
pub enum Outcome {
    /// The subscriber answered 2xx.
    Delivered { status: u16 },
    /// The subscriber failed; `status` is absent when there was no response.
    Failed(Failure),
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub status: Option<u16>,
    pub error: String,
    pub body: Bytes,
}

/// Delivers events over a shared pool of keep-alive connections.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
}

impl Default for Deliverer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deliverer {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Deliverer { client }
    }

    /// Delivers one event to the trigger's subscriber.
    pub async fn deliver(&self, trigger: &TriggerRuntime, event: &Event) -> Outcome {
        let span = tracing::info_span!(
            "deliver",
            trigger = %trigger.key,
            event.id = %event.id,
            attempt = 1u32,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let outcome = self.attempt(trigger, event).await;
            let span = tracing::Span::current();
            span.record("latency_ms", started.elapsed().as_secs_f64() * 1e3);
            match &outcome {
                Outcome::Delivered { status } => {
                    span.record("status", status);
                }
                Outcome::Failed(f) => {
                    if let Some(s) = f.status {
                        span.record("status", s);
                    }
                    tracing::warn!(
                        trigger = %trigger.key,
                        event.id = %event.id,
                        status = ?f.status,
                        error = %f.error,
                        "Delivery failed"
                    );
                }
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, trigger: &TriggerRuntime, event: &Event) -> Outcome {
        let mut headers = HeaderMap::with_capacity(12);
        let body = cemesh_proto::http::encode_binary(event, &mut headers).unwrap_or_default();
        headers.insert(
            HeaderName::from_static("prefer"),
            HeaderValue::from_static("reply"),
        );
        if let Ok(ns) = HeaderValue::from_str(&trigger.key.namespace) {
            headers.insert(HeaderName::from_static("kn-namespace"), ns);
        }
        if let Some(tp) = event.attribute("traceparent").and_then(|v| v.as_str()) {
            if let Ok(v) = HeaderValue::from_str(tp) {
                headers.insert(HeaderName::from_static("traceparent"), v);
            }
        }
        let request = self
            .client
            .post(trigger.subscriber.clone())
            .headers(headers)
            .body(body)
            .timeout(trigger.delivery.timeout);
        match request.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the whole body so the connection goes back to the pool.
                let body = resp.bytes().await.unwrap_or_default();
                if (200..300).contains(&status) {
                    Outcome::Delivered { status }
                } else {
                    Outcome::Failed(Failure {
                        status: Some(status),
                        error: format!("subscriber answered {status}"),
                        body,
                    })
                }
            }
            Err(e) => Outcome::Failed(Failure {
                status: None,
                error: if e.is_timeout() {
                    format!("timed out after {:?}", trigger.delivery.timeout)
                } else {
                    format!("request failed: {e}")
                },
                body: Bytes::new(),
            }),
        }
    }
}
