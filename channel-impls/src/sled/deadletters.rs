//! Dead letters in the sled database, so events that exhausted their retries survive
//! restarts like the channel they came from. They share the channels' group commit. Keys are `trigger \0 id` (big-endian id
//! from sled's monotonic id generator), so a trigger's letters list in order; values
//! are JSON with the event in structured mode, readable with any sled tool.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cemesh_proto::json;
use serde::{Deserialize, Serialize};

use super::db::Owner;
use super::flusher::Flusher;
use super::util::storage;
use crate::deadletter::{Attempt, DeadLetter, DeadLetterStore};
use crate::ChannelError;

/// Keeps the database open while a dead-letter store uses it.
struct DeadLetterGuard(#[allow(dead_code)] Arc<Owner>);

impl fmt::Debug for DeadLetterGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterGuard")
    }
}

/// The durable dead-letter store of a [`crate::SledStore`].
#[derive(Debug)]
pub struct SledDeadLetters {
    db: sled::Db,
    tree: sled::Tree,
    flusher: Arc<Flusher>,
    _guard: DeadLetterGuard,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    trigger: String,
    reason: String,
    dead_at: String,
    attempts: Vec<Attempt>,
    event: Box<serde_json::value::RawValue>,
}

fn key(trigger: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(trigger.len() + 9);
    k.extend_from_slice(trigger.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn prefix(trigger: &str) -> Vec<u8> {
    let mut k = trigger.as_bytes().to_vec();
    k.push(0);
    k
}

impl SledDeadLetters {
    pub(super) fn new(
        db: sled::Db,
        tree: sled::Tree,
        flusher: Arc<Flusher>,
        owner: Arc<Owner>,
    ) -> Self {
        SledDeadLetters {
            db,
            tree,
            flusher,
            _guard: DeadLetterGuard(owner),
        }
    }

    fn decode(id: u64, value: &[u8]) -> Result<DeadLetter, ChannelError> {
        let s: Stored = serde_json::from_slice(value)
            .map_err(|e| storage(format!("dead letter {id} is unreadable"), e))?;
        let event = json::decode_event(s.event.get().as_bytes())
            .map_err(|e| storage(format!("dead letter {id} holds an invalid event"), e))?;
        Ok(DeadLetter {
            id,
            trigger: s.trigger,
            event,
            reason: s.reason,
            attempts: s.attempts,
            dead_at: s.dead_at,
        })
    }

    fn id_of(k: &[u8]) -> Option<u64> {
        let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
        Some(u64::from_be_bytes(tail))
    }

    async fn durable(&self) -> Result<(), ChannelError> {
        let ticket = self.flusher.request();
        self.flusher.wait(ticket).await
    }
}

#[async_trait]
impl DeadLetterStore for SledDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<u64, ChannelError> {
        self.flusher
            .space
            .check(letter.event.approx_size() as u64)?;
        // Ids start at 1, so `after: 0` and "no cursor" mean the same.
        let id = self
            .db
            .generate_id()
            .map_err(|e| storage("allocating a dead-letter id", e))?
            + 1;
        let event = serde_json::value::RawValue::from_string(
            String::from_utf8(json::encode_event(&letter.event))
                .map_err(|e| storage("encoding a dead letter", e))?,
        )
        .map_err(|e| storage("encoding a dead letter", e))?;
        let stored = Stored {
            trigger: letter.trigger.clone(),
            reason: letter.reason,
            dead_at: letter.dead_at,
            attempts: letter.attempts,
            event,
        };
        let value =
            serde_json::to_vec(&stored).map_err(|e| storage("encoding a dead letter", e))?;
        self.tree
            .insert(key(&letter.trigger, id), value)
            .map_err(|e| storage("storing a dead letter", e))?;
        self.durable().await?;
        Ok(id)
    }

    async fn list(
        &self,
        trigger: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ChannelError> {
        let start = key(trigger, after.map_or(0, |a| a.saturating_add(1)));
        let end = key(trigger, u64::MAX);
        let mut out = Vec::new();
        for item in self.tree.range(start..=end).take(limit) {
            let (k, v) = item.map_err(|e| storage("reading dead letters", e))?;
            let id = Self::id_of(&k).unwrap_or(0);
            out.push(Self::decode(id, &v)?);
        }
        Ok(out)
    }

    async fn get(&self, trigger: &str, id: u64) -> Result<Option<DeadLetter>, ChannelError> {
        match self
            .tree
            .get(key(trigger, id))
            .map_err(|e| storage("reading a dead letter", e))?
        {
            Some(v) => Ok(Some(Self::decode(id, &v)?)),
            None => Ok(None),
        }
    }

    async fn remove(&self, trigger: &str, id: u64) -> Result<bool, ChannelError> {
        let existed = self
            .tree
            .remove(key(trigger, id))
            .map_err(|e| storage("removing a dead letter", e))?
            .is_some();
        if existed {
            self.durable().await?;
        }
        Ok(existed)
    }

    async fn count(&self, trigger: &str) -> Result<u64, ChannelError> {
        Ok(self.tree.scan_prefix(prefix(trigger)).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cemesh_proto::Event;

    fn letter(trigger: &str, id: &str) -> DeadLetter {
        DeadLetter {
            id: 0,
            trigger: trigger.into(),
            event: Event::new(id, "/s", "t"),
            reason: "delivery failed: 500".into(),
            attempts: vec![Attempt {
                at: "2026-11-24T10:00:00Z".into(),
                status: Some(500),
                error: "answered 500".into(),
                latency_ms: 3,
                to: crate::AttemptTarget::DeadLetterSink,
                url: "http://127.0.0.1:1/".into(),
            }],
            dead_at: "2026-11-24T10:00:01Z".into(),
        }
    }

    #[tokio::test]
    async fn letters_survive_reopening_and_list_per_trigger() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::SledStore::open(dir.path()).unwrap();
            let dl = store.dead_letters().unwrap();
            let a = dl.put(letter("ns/a", "e1")).await.unwrap();
            let b = dl.put(letter("ns/a", "e2")).await.unwrap();
            dl.put(letter("ns/ab", "other")).await.unwrap();
            assert!(b > a);
            drop(dl);
            store.close().await.unwrap();
        }
        let store = crate::SledStore::open(dir.path()).unwrap();
        let dl = store.dead_letters().unwrap();
        let all = dl.list("ns/a", None, 10).await.unwrap();
        let ids: Vec<&str> = all.iter().map(|l| l.event.id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2"]);
        assert_eq!(all[0].attempts[0].status, Some(500));
        assert_eq!(dl.count("ns/a").await.unwrap(), 2);
        let after = dl.list("ns/a", Some(all[0].id), 10).await.unwrap();
        assert_eq!(after.len(), 1);
        assert!(dl.remove("ns/a", all[0].id).await.unwrap());
        assert!(dl.get("ns/a", all[0].id).await.unwrap().is_none());
        assert_eq!(dl.count("ns/a").await.unwrap(), 1);
        // A new id never reuses an old one.
        let c = dl.put(letter("ns/a", "e3")).await.unwrap();
        assert!(c > all[1].id);
    }
}
