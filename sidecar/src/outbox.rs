//! The local durable outbox: what makes a 202 from the sidecar mean "will reach the
//! broker", whatever happens to the broker or to the sidecar.
//!
//! It is a [`SledStore`] channel, not a bespoke log, because the channel already
//! gives exactly what an outbox needs: `append` returns after a group-commit fsync
//! (concurrent publishes share one flush), one subscription (the forwarder) with a
//! persisted cursor and out-of-order acks that commit the contiguous prefix, records
//! trimmed once acked, and a backlog cap that answers `Full` — the outbox's size cap.
//! After a crash everything past the committed cursor is forwarded again:
//! at-least-once, never lost. Dead letters live in the same database.

use std::path::Path;
use std::sync::Arc;

use cemesh_channels::{
    Channel, ChannelError, DeadLetterStore, SledChannel, SledConfig, SledDeadLetters, SledStore,
    SledStoreOptions, StartAt, Subscription,
};
use cemesh_proto::Event;

/// The outbox's channel name inside the sled database.
const OUTBOX: &str = "sidecar-outbox";
/// The forwarder's subscription.
const FORWARDER: &str = "forwarder";
/// The dead-letter store's "trigger" key for letters of the outbox.
pub const DEAD_LETTER_KEY: &str = "outbox";
/// sled's page cache: small, so that an idle sidecar stays a few MiB.
const CACHE_BYTES: u64 = 4 << 20;

/// The outbox: durable appends, the forwarder's subscription, dead letters.
#[derive(Clone)]
pub struct Outbox {
    store: SledStore,
    channel: Arc<SledChannel>,
    subscription: Arc<dyn Subscription>,
    dead_letters: Arc<SledDeadLetters>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.store.path())
            .finish()
    }
}

impl Outbox {
    /// Opens (or recovers) the outbox in `dir`. The forwarder's subscription is
    /// opened here, before any append, so that nothing is trimmed as "unread".
    pub async fn open(dir: &Path, max_events: u64, max_bytes: u64) -> anyhow::Result<Outbox> {
        let store = SledStore::open_with(
            dir,
            SledStoreOptions {
                cache_capacity_bytes: CACHE_BYTES,
                // A sidecar's volume is small: keep enough for sled to finish writing.
                min_free_bytes: 32 << 20,
                ..SledStoreOptions::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("opening the outbox in {}: {e}", dir.display()))?;
        let config = SledConfig {
            max_backlog_records: max_events,
            max_backlog_bytes: max_bytes,
            ..SledConfig::default()
        };
        let channel = Arc::new(
            store
                .channel(OUTBOX, config)
                .map_err(|e| anyhow::anyhow!("opening the outbox channel: {e}"))?,
        );
        let subscription = channel
            .subscribe(FORWARDER, StartAt::Earliest)
            .await
            .map_err(|e| anyhow::anyhow!("opening the outbox's forwarder cursor: {e}"))?;
        let dead_letters = Arc::new(
            store
                .dead_letters()
                .map_err(|e| anyhow::anyhow!("opening the sidecar's dead letters: {e}"))?,
        );
        Ok(Outbox {
            store,
            channel,
            subscription,
            dead_letters,
        })
    }

    /// Stores events durably (fsynced) or not at all.
    pub async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError> {
        self.channel.append(events).await
    }

    /// The forwarder's read side.
    pub fn subscription(&self) -> Arc<dyn Subscription> {
        self.subscription.clone()
    }

    /// Events stored and not yet acknowledged by the broker (or dead-lettered).
    pub async fn pending(&self) -> Result<u64, ChannelError> {
        self.channel.lag(FORWARDER).await
    }

    pub fn dead_letters(&self) -> Arc<SledDeadLetters> {
        self.dead_letters.clone()
    }

    pub async fn dead_letter_count(&self) -> Result<u64, ChannelError> {
        self.dead_letters.count(DEAD_LETTER_KEY).await
    }

    /// Persists cursors and flushes (clean shutdown).
    pub async fn close(self) -> Result<(), ChannelError> {
        let Outbox {
            store,
            channel,
            subscription,
            dead_letters,
        } = self;
        drop((channel, subscription, dead_letters));
        store.close().await
    }
}
