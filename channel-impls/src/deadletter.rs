//! The built-in dead-letter store: where an event goes when its trigger has no
//! dead-letter sink, or when the sink itself finally failed. Nothing is dropped
//! silently; operators list, inspect, redrive and purge what lands here.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

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

/// Dead letters in RAM (for the memory channel: lost on restart, like its events).
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    inner: Mutex<Letters>,
}

#[derive(Debug, Default)]
struct Letters {
    last_id: u64,
    by_trigger: BTreeMap<(String, u64), DeadLetter>,
}

impl MemoryDeadLetters {
    fn lock(&self) -> MutexGuard<'_, Letters> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetters {
    async fn put(&self, mut letter: DeadLetter) -> Result<u64, ChannelError> {
        let mut g = self.lock();
        g.last_id += 1;
        letter.id = g.last_id;
        g.by_trigger
            .insert((letter.trigger.clone(), letter.id), letter);
        Ok(g.last_id)
    }

    async fn list(
        &self,
        trigger: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ChannelError> {
        let g = self.lock();
        let from = (trigger.to_owned(), after.map_or(0, |a| a + 1));
        let to = (trigger.to_owned(), u64::MAX);
        Ok(g.by_trigger
            .range(from..=to)
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn get(&self, trigger: &str, id: u64) -> Result<Option<DeadLetter>, ChannelError> {
        Ok(self
            .lock()
            .by_trigger
            .get(&(trigger.to_owned(), id))
            .cloned())
    }

    async fn remove(&self, trigger: &str, id: u64) -> Result<bool, ChannelError> {
        Ok(self
            .lock()
            .by_trigger
            .remove(&(trigger.to_owned(), id))
            .is_some())
    }

    async fn count(&self, trigger: &str) -> Result<u64, ChannelError> {
        let g = self.lock();
        let from = (trigger.to_owned(), 0);
        let to = (trigger.to_owned(), u64::MAX);
        Ok(g.by_trigger.range(from..=to).count() as u64)
    }
}
