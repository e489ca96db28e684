//! A 2xx answer that carries a CloudEvent is a reply: appended to the trigger's
//! broker with the TTL loop guard, retrying the append, never the subscriber.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use cemesh_channels::ChannelError;
use cemesh_proto::{knative, metric_names as names, Event};
use http::HeaderMap;
use tokio_util::sync::CancellationToken;

use super::TriggerContext;
use crate::delivery::Success;

impl TriggerContext {
    /// Feeds a reply carried by a 2xx answer back into the broker.
    pub(super) async fn reply(
        &self,
        original: &Event,
        delivered: &Event,
        ttl: i32,
        success: Success,
        cancel: &CancellationToken,
    ) {
        let mut replies = match decode_reply(&success.headers, success.body) {
            Reply::None => return,
            Reply::Events(events) => events,
            Reply::Invalid(error) => {
                let reason = format!("the subscriber's reply is not a valid CloudEvent: {error}");
                let _ = self
                    .store(delivered.clone(), reason, Vec::new(), None, cancel)
                    .await;
                return;
            }
        };
        let next_ttl = ttl - 1;
        let now = knative::now_rfc3339();
        for reply in &mut replies {
            knative::stamp_arrival(reply, &now);
            for name in ["traceparent", "tracestate"] {
                if reply.extension(name).is_none() {
                    if let Some(v) = original.extension(name) {
                        reply.set_extension(name, v.clone());
                    }
                }
            }
            if next_ttl <= 0 {
                continue;
            }
            knative::set_ttl(reply, next_ttl);
        }
        if next_ttl <= 0 {
            for reply in replies {
                let reason = format!(
                    "{} exhausted: the reply was not sent to the broker (a reply loop stopped after {} hops)",
                    knative::BROKER_TTL,
                    knative::DEFAULT_TTL
                );
                // The store logs the one WARN line, with the reason.
                let _ = self.store(reply, reason, Vec::new(), None, cancel).await;
            }
            return;
        }
        // Retry the append, never the subscriber.
        let spec = &self.runtime.delivery;
        let mut k = 0u32;
        loop {
            let error = match self.broker.append(replies.clone()).await {
                Ok(()) => {
                    self.stats.replies.fetch_add(replies.len() as u64, Relaxed);
                    self.per_trigger_counter(&self.metrics.replies, names::TRIGGER_REPLIES)
                        .increment(replies.len() as u64);
                    return;
                }
                Err(ChannelError::Closed) => "the broker's channel is closed".to_owned(),
                Err(e) => e.to_string(),
            };
            k += 1;
            if k > spec.retry || cancel.is_cancelled() {
                for reply in replies {
                    let reason = format!(
                        "appending the reply to broker {} failed: {error}",
                        self.runtime.broker
                    );
                    let _ = self.store(reply, reason, Vec::new(), None, cancel).await;
                }
                return;
            }
            let wait = spec.backoff(k);
            tracing::debug!(trigger = %self.runtime.key, error = %error, retry_in = ?wait, "Appending a reply failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

enum Reply {
    None,
    Events(Vec<Event>),
    Invalid(String),
}

/// A 2xx answer carries a reply when it is a CloudEvent in binary or structured
/// mode; any other answer (empty, plain JSON, text) is plain success.
fn decode_reply(headers: &HeaderMap, body: Bytes) -> Reply {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let binary = headers.contains_key("ce-specversion");
    let structured = ct.starts_with("application/cloudevents");
    if !binary && !structured {
        return Reply::None;
    }
    match cemesh_proto::http::decode(headers, body) {
        Ok(events) if events.is_empty() => Reply::None,
        Ok(events) => Reply::Events(events),
        Err(e) => Reply::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cloudevents_are_replies() {
        let mut h = HeaderMap::new();
        assert!(matches!(decode_reply(&h, Bytes::new()), Reply::None));
        h.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        assert!(matches!(
            decode_reply(&h, Bytes::from_static(b"{}")),
            Reply::None
        ));
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-id", "r1".parse().unwrap());
        h.insert("ce-source", "/reply".parse().unwrap());
        h.insert("ce-type", "reply.t".parse().unwrap());
        assert!(
            matches!(decode_reply(&h, Bytes::from_static(b"{}")), Reply::Events(v) if v.len() == 1)
        );
        h.remove("ce-id");
        assert!(matches!(decode_reply(&h, Bytes::new()), Reply::Invalid(_)));
    }
}
