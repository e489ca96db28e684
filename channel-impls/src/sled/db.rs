//! The open database: what the background threads share with the handles
//! ([`Core`]) and who closes it ([`Owner`], held by every handle; the last one
//! dropped stops the threads after a final flush).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::flusher::Flusher;
use super::log::ChannelShared;
use super::maintenance::Maint;
use super::util::{lock, storage};
use crate::ChannelError;

/// What the background threads share with the handles.
pub(super) struct Core {
    pub(super) db: sled::Db,
    pub(super) path: PathBuf,
    pub(super) flusher: Arc<Flusher>,
    pub(super) maint: Arc<Maint>,
    pub(super) channels: Mutex<HashMap<String, Arc<ChannelShared>>>,
}

impl Core {
    pub(super) fn snapshot(&self) -> Vec<Arc<ChannelShared>> {
        lock(&self.channels).values().cloned().collect()
    }

    pub(super) fn flush_all(&self) -> Result<(), ChannelError> {
        let mut first_err = None;
        for ch in self.snapshot() {
            if let Err(e) = ch.persist_cursors() {
                first_err.get_or_insert(e);
            }
        }
        self.db
            .flush()
            .map_err(|e| storage(format_args!("flushing {}", self.path.display()), e))?;
        first_err.map_or(Ok(()), Err)
    }
}

/// Held by every user-facing handle (store, channel, subscription); its drop (the
/// last handle gone) persists cursors, flushes, and stops and joins the threads, so
/// the database is closed when it returns and can be opened again at once.
pub(super) struct Owner {
    pub(super) core: Arc<Core>,
    pub(super) flush_thread: Option<JoinHandle<()>>,
    pub(super) maint_thread: Option<JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.core.maint.shutdown();
        if let Some(t) = self.maint_thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.core.flush_all() {
            tracing::error!(error = %e, "closing the sled store: final flush failed");
        }
        self.core.flusher.shutdown();
        if let Some(t) = self.flush_thread.take() {
            let _ = t.join();
        }
        tracing::info!(path = %self.core.path.display(), "sled store closed");
    }
}
