//! A 2xx answer that carries a CloudEvent is a reply, with the TTL loop guard. A
//! trigger's reply is appended to its broker; a subscription's goes to its
//! `spec.reply` ([`ReplyTo`]): appended to a channel of this mesh, or sent over HTTP,
//! or dropped and counted. Appends and sends are retried, never the subscriber.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use cemesh_channels::ChannelError;
use cemesh_proto::{knative, metric_names as names, Event};
use http::HeaderMap;
use tokio_util::sync::CancellationToken;

use super::{Sent, Target, TriggerContext};
use crate::delivery::Success;
use crate::ReplyTo;

impl TriggerContext {
    /// Feeds a reply carried by a 2xx answer back into the broker. A reply that
    /// cannot be taken makes the event it answered (as it was delivered) a dead
    /// letter.
    pub(super) async fn reply(
        &self,
        original: &Event,
        ttl: i32,
        success: Success,
        cancel: &CancellationToken,
    ) {
        let drop = self.runtime.reply == ReplyTo::Drop;
        let mut replies = match decode_reply(
            &success.headers,
            success.body,
            success.body_over_limit,
        ) {
            Reply::None => return,
            Reply::Events(events) if drop => {
                self.stats
                    .replies_dropped
                    .fetch_add(events.len() as u64, Relaxed);
                self.per_trigger_counter(
                    &self.metrics.replies_dropped,
                    names::TRIGGER_REPLIES_DROPPED,
                )
                .increment(events.len() as u64);
                return;
            }
            Reply::Invalid(_) | Reply::TooLong if drop => return,
            Reply::Events(events) => events,
            Reply::Invalid(error) => {
                let reason = format!("the subscriber's reply is not a valid CloudEvent: {error}");
                return self.refuse_reply(original, reason, cancel).await;
            }
            Reply::TooLong => {
                let reason = format!(
                    "the subscriber's reply is longer than the {}-byte body limit of {} (cemesh.dev/max-body-size); it was not read",
                    self.runtime.delivery.max_answer_bytes,
                    self.broker_key()
                );
                return self.refuse_reply(original, reason, cancel).await;
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
        let channel = match &self.runtime.reply {
            ReplyTo::Drop => return,
            ReplyTo::Url { url, .. } => {
                for reply in replies {
                    self.send_reply(url, reply, cancel).await;
                }
                return;
            }
            ReplyTo::Broker => Some(&self.broker),
            ReplyTo::Local { .. } => self.reply_channel.as_ref(),
        };
        // Retry the append, never the subscriber.
        let spec = &self.runtime.delivery;
        let mut k = 0u32;
        loop {
            let result = match channel {
                Some(c) => c.append(replies.clone()).await,
                None => Err(ChannelError::Closed),
            };
            let error = match result {
                Ok(()) => {
                    self.count_replies(replies.len());
                    let to = match &self.runtime.reply {
                        ReplyTo::Local { namespace, name } => format!("{namespace}/{name}"),
                        _ => self.broker_key(),
                    };
                    self.journal_replies(original, &replies, &to);
                    return;
                }
                Err(ChannelError::Closed) => "the channel is closed or not running".to_owned(),
                Err(e) => e.to_string(),
            };
            k += 1;
            if k > spec.retry || cancel.is_cancelled() {
                for reply in replies {
                    let reason = format!(
                        "appending the reply to {} failed: {error}",
                        self.reply_target()
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

impl TriggerContext {
    fn count_replies(&self, n: usize) {
        self.stats.replies.fetch_add(n as u64, Relaxed);
        self.per_trigger_counter(&self.metrics.replies, names::TRIGGER_REPLIES)
            .increment(n as u64);
    }

    /// `broker default/orders`, as failure reasons name where a reply was going.
    fn reply_target(&self) -> String {
        let ns = &self.runtime.key.namespace;
        match &self.runtime.reply {
            ReplyTo::Local { namespace, name } => format!("{namespace}/{name}"),
            ReplyTo::Url { url, .. } => url.to_string(),
            ReplyTo::Broker | ReplyTo::Drop => format!("broker {ns}/{}", self.runtime.broker),
        }
    }

    /// A reply that cannot be taken: the event it answered, as it was delivered,
    /// becomes a dead letter saying why.
    async fn refuse_reply(&self, original: &Event, reason: String, cancel: &CancellationToken) {
        let delivered = crate::delivery::without_broker_ttl(original);
        let _ = self
            .store(delivered, reason, Vec::new(), None, cancel)
            .await;
    }

    /// Sends one reply to the subscription's `spec.reply` with the trigger's retries;
    /// one that cannot be sent is dead-lettered with every attempt.
    async fn send_reply(&self, url: &reqwest::Url, reply: Event, cancel: &CancellationToken) {
        let format = self.runtime.delivery.format;
        match self.send(url, Target::Reply, &reply, format, cancel).await {
            Sent::Ok(_) => self.count_replies(1),
            // Shutting down: the original event is redelivered after a restart.
            Sent::Interrupted => {}
            Sent::Failed(attempts, failure, latency) => {
                let reason = format!("sending the reply to {url} failed: {}", failure.error);
                let _ = self
                    .store(reply, reason, attempts, Some(latency), cancel)
                    .await;
            }
        }
    }
}

enum Reply {
    None,
    Events(Vec<Event>),
    Invalid(String),
    /// A CloudEvent whose body was longer than the trigger takes (not read).
    TooLong,
}

/// Whether an answer is a CloudEvent (binary or structured) at all: most are not,
/// and their delivery skips the reply's work.
pub(super) fn may_carry_reply(headers: &HeaderMap) -> bool {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    cemesh_proto::http::is_cloudevent(ct, headers.contains_key("ce-specversion"))
}

/// A 2xx answer carries a reply when it is a CloudEvent in binary or structured
/// mode; any other answer (empty, plain JSON, text, however long) is plain success.
/// `over_limit`: the body was too long to be kept.
fn decode_reply(headers: &HeaderMap, body: Bytes, over_limit: bool) -> Reply {
    if !may_carry_reply(headers) {
        return Reply::None;
    }
    if over_limit {
        return Reply::TooLong;
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
        assert!(matches!(decode_reply(&h, Bytes::new(), false), Reply::None));
        h.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        assert!(matches!(
            decode_reply(&h, Bytes::from_static(b"{}"), false),
            Reply::None
        ));
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-id", "r1".parse().unwrap());
        h.insert("ce-source", "/reply".parse().unwrap());
        h.insert("ce-type", "reply.t".parse().unwrap());
        assert!(
            matches!(decode_reply(&h, Bytes::from_static(b"{}"), false), Reply::Events(v) if v.len() == 1)
        );
        assert!(matches!(
            decode_reply(&h, Bytes::new(), true),
            Reply::TooLong
        ));
        h.remove("ce-id");
        assert!(matches!(
            decode_reply(&h, Bytes::new(), false),
            Reply::Invalid(_)
        ));
        // An answer that is no CloudEvent is plain success, however long.
        h.remove("ce-specversion");
        assert!(matches!(decode_reply(&h, Bytes::new(), true), Reply::None));
    }

    #[test]
    fn a_structured_reply_is_known_by_its_media_type_in_any_case() {
        let mut h = HeaderMap::new();
        for (ct, carries) in [
            ("application/cloudevents+json", true),
            ("Application/CloudEvents-Batch+JSON", true),
            ("application/cloudevents", true),
            ("application/cloudevent", false),
            ("application/json", false),
            ("text/plain", false),
        ] {
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(may_carry_reply(&h), carries, "{ct}");
        }
        h.remove(http::header::CONTENT_TYPE);
        assert!(!may_carry_reply(&h));
        h.insert("ce-specversion", "1.0".parse().unwrap());
        assert!(may_carry_reply(&h), "binary mode");
    }
}
