//! Dead letters in RAM, for the memory channel: lost on restart, like its events.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::deadletter::{DeadLetter, DeadLetterStore};
use crate::ChannelError;

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
