//! The built-in dead-letter store: where an event goes when its trigger has no
//! dead-letter sink, or when the sink itself finally failed. Nothing is dropped
//! silently; operators list, inspect, redrive and purge what lands here.
//!
//! This module holds what every store shares (the trait and the stored form); each
//! channel keeps its store beside it: `memory::deadletters`, `sled::deadletters`,
//! `kafka::deadletters`.

use async_trait::async_trait;
use cemesh_proto::Event;

use crate::ChannelError;

/// One delivery attempt, for the record. Its serde form is how the durable stores
/// (sled, Kafka) keep it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// RFC 3339 time the attempt started.
    pub at: String,
    /// HTTP status, absent when there was no response.
    pub status: Option<u16>,
    pub error: String,
    pub latency_ms: u64,
    /// Whom it was for; letters stored before this field existed were for the
    /// subscriber.
    #[serde(default)]
    pub to: AttemptTarget,
    /// The URL attempted (empty in letters stored before this field existed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
}

/// Whom a delivery attempt was for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttemptTarget {
    #[default]
    Subscriber,
    DeadLetterSink,
    /// A `Subscription`'s `spec.reply` (a reply sent over HTTP).
    Reply,
}

impl AttemptTarget {
    /// `subscriber`, `deadLetterSink` or `reply`, as the admin API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptTarget::Subscriber => "subscriber",
            AttemptTarget::DeadLetterSink => "deadLetterSink",
            AttemptTarget::Reply => "reply",
        }
    }
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Assigned by the store; increasing per store.
    pub id: u64,
    /// The trigger (`namespace/name`) whose delivery failed.
    pub trigger: String,
    /// The original event with the `knativeerror*` extensions added.
    pub event: Event,
    /// Why it is here (last error, or "TTL exhausted", or "sink failed: ...").
    pub reason: String,
    pub attempts: Vec<Attempt>,
    /// RFC 3339 time it was stored.
    pub dead_at: String,
}

/// Storage for dead letters, keyed by trigger.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a dead letter (its `id` is ignored) and returns the assigned id. Returns
    /// only once it is as durable as the store promises.
    async fn put(&self, letter: DeadLetter) -> Result<u64, ChannelError>;
    /// Up to `limit` dead letters of `trigger` with ids greater than `after`, oldest
    /// first.
    async fn list(
        &self,
        trigger: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ChannelError>;
    async fn get(&self, trigger: &str, id: u64) -> Result<Option<DeadLetter>, ChannelError>;
    /// Removes one; true if it existed.
    async fn remove(&self, trigger: &str, id: u64) -> Result<bool, ChannelError>;
    async fn count(&self, trigger: &str) -> Result<u64, ChannelError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_stored_before_targets_existed_were_for_the_subscriber() {
        let old: Attempt = serde_json::from_str(
            r#"{"at":"2026-01-01T00:00:00Z","status":500,"error":"e","latency_ms":3}"#,
        )
        .expect("an attempt in the old form");
        assert_eq!(old.to, AttemptTarget::Subscriber);
        assert!(old.url.is_empty());
        let new = Attempt {
            to: AttemptTarget::DeadLetterSink,
            url: "http://127.0.0.1:1/".into(),
            ..old
        };
        let text = serde_json::to_string(&new).expect("encode");
        assert!(text.contains(r#""to":"deadLetterSink""#), "{text}");
        assert_eq!(serde_json::from_str::<Attempt>(&text).expect("decode"), new);
    }
}
