//! The process-wide database ([`SledStore`]): opening it and its threads, opening
//! and removing brokers' channels, and the dead-letter tree.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::channel::SledChannel;
use super::config::{SledConfig, SledStoreOptions};
use super::db::{Core, Owner};
use super::deadletters::SledDeadLetters;
use super::flusher::Flusher;
use super::layout;
use super::log::ChannelShared;
use super::maintenance::Maint;
use super::util::{lock, storage};
use crate::ChannelError;

/// How long [`open_sled`] retries while a previous instance in this process still
/// closes.
const LOCK_RETRY: Duration = Duration::from_secs(2);

/// sled's segment size for a new store. sled writes any log message over a quarter
/// of a segment (a round's batch of records, or a leaf holding several) to a blob
/// file of its own, created and synced each time; at sled's default of 512 KiB that
/// was half the writer thread's work. 8 MiB keeps such messages in the log.
const NEW_STORE_SEGMENT_BYTES: usize = 8 << 20;

/// sled's default segment size, which stores created before cemesh chose its own use.
const SLED_DEFAULT_SEGMENT_BYTES: usize = 512 << 10;

/// Opens sled at `config`, waiting up to [`LOCK_RETRY`] for its file lock: the same
/// directory closing elsewhere in this process (a handle dropped on another
/// thread, sled's own threads finishing after it) holds the lock for a moment.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let started = Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_RETRY =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// The process-wide sled database holding every broker's channel.
#[derive(Clone)]
pub struct SledStore {
    owner: Arc<Owner>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.owner.core.path)
            .finish()
    }
}

impl SledStore {
    /// Opens (or creates) the database in directory `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, ChannelError> {
        Self::open_with(path, SledStoreOptions::default())
    }

    /// Opens (or creates) the database in directory `path`.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SledStoreOptions,
    ) -> Result<SledStore, ChannelError> {
        let path = path.as_ref().to_path_buf();
        let config = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .segment_size(segment_size(&path))
            .cache_capacity(options.cache_capacity_bytes);
        let db = open_sled(&config)
            .map_err(|e| storage(format_args!("opening sled database {}", path.display()), e))?;
        tracing::info!(path = %path.display(), recovered = db.was_recovered(), "sled store opened");
        let space = super::space::DiskSpace::new(path.clone(), options.min_free_bytes);
        let core = Arc::new(Core {
            db: db.clone(),
            path,
            flusher: Arc::new(Flusher::new(space, options.commit_delay)),
            maint: Arc::new(Maint::default()),
            channels: Mutex::new(HashMap::new()),
        });
        let flusher = core.flusher.clone();
        // sled's file, synced after each of its flushes (see `Flusher::run`).
        let file = std::fs::File::open(core.path.join("db"))
            .map_err(|e| storage("opening sled's data file for fdatasync", e))?;
        let flush_thread = std::thread::Builder::new()
            .name("cemesh-sled-flush".into())
            .spawn(move || flusher.run(db, file))
            .map_err(|e| storage("starting the sled flusher thread", e))?;
        let mut owner = Owner {
            core: core.clone(),
            flush_thread: Some(flush_thread),
            maint_thread: None,
        };
        let maint_thread = std::thread::Builder::new()
            .name("cemesh-sled-maint".into())
            .spawn(move || core.maint.clone().run(|| core.snapshot()))
            .map_err(|e| storage("starting the sled maintenance thread", e))?;
        owner.maint_thread = Some(maint_thread);
        Ok(SledStore {
            owner: Arc::new(owner),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.owner.core.path
    }

    /// Opens a broker's channel (creating it if new, recovering it otherwise). Asking
    /// again for an open broker returns a handle to the same channel, with `config`
    /// replacing the previous settings.
    pub fn channel(
        &self,
        broker_id: &str,
        config: SledConfig,
    ) -> Result<SledChannel, ChannelError> {
        let core = &self.owner.core;
        let mut channels = lock(&core.channels);
        let shared = match channels.get(broker_id) {
            Some(shared) => {
                shared.reconfigure(config)?;
                shared.clone()
            }
            None => {
                let shared = Arc::new(ChannelShared::open(
                    &core.db,
                    core.flusher.clone(),
                    broker_id,
                    config,
                )?);
                channels.insert(broker_id.to_owned(), shared.clone());
                shared
            }
        };
        Ok(SledChannel {
            owner: self.owner.clone(),
            shared,
        })
    }

    /// Deletes a broker's channel: its records and cursors. Open handles to it answer
    /// [`ChannelError::Closed`] from then on. Returns whether anything was stored.
    pub fn remove_channel(&self, broker_id: &str) -> Result<bool, ChannelError> {
        let core = &self.owner.core;
        let removed = lock(&core.channels).remove(broker_id);
        if let Some(shared) = &removed {
            // Wait for an append in flight, then refuse everything.
            let _append = lock(&shared.append_lock);
            let _state = shared.lock();
            shared.closed.store(true, Ordering::SeqCst);
            shared.notify.notify_waiters();
        }
        let existed = core
            .db
            .drop_tree(layout::tree_name(broker_id))
            .map_err(|e| {
                storage(
                    format_args!("removing the channel of broker {broker_id}"),
                    e,
                )
            })?;
        core.flusher.request_within(Duration::ZERO);
        tracing::info!(broker = %broker_id, existed, "sled channel removed");
        Ok(existed)
    }

    /// Broker ids that have a channel on disk (open or not).
    pub fn stored_channels(&self) -> Vec<String> {
        self.owner
            .core
            .db
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok())
            .filter_map(|n| n.strip_prefix(layout::TREE_PREFIX))
            .map(str::to_owned)
            .collect()
    }

    /// Writes every cursor and flushes the database. Blocks (call it from
    /// `spawn_blocking` in async code, or use [`SledStore::close`]).
    pub fn flush(&self) -> Result<(), ChannelError> {
        self.owner.core.flush_all()
    }

    /// Clean shutdown: persists cursors and flushes. The database closes once the
    /// last handle (channels and subscriptions included) is dropped.
    pub async fn close(self) -> Result<(), ChannelError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| storage("flushing the sled store", e))??;
        drop(self);
        Ok(())
    }

    /// The dead-letter store kept in this database (tree `deadletters`), durable like
    /// the channels: `put` returns after the group commit flushed it.
    pub fn dead_letters(&self) -> Result<SledDeadLetters, ChannelError> {
        let tree = self
            .owner
            .core
            .db
            .open_tree("deadletters")
            .map_err(|e| storage("opening the dead-letter tree", e))?;
        Ok(SledDeadLetters::new(
            self.owner.core.db.clone(),
            tree,
            self.owner.core.flusher.clone(),
            self.owner.clone(),
        ))
    }

    /// How many flushes (fsyncs) the group-commit thread made so far.
    pub fn flushes(&self) -> u64 {
        self.owner.core.flusher.flushes.load(Ordering::Relaxed)
    }

    /// The most writers one flush covered so far (1 means no flush was shared).
    pub fn largest_flush_group(&self) -> u64 {
        self.owner
            .core
            .flusher
            .largest_group
            .load(Ordering::Relaxed)
    }
}

/// The segment size to open the store at `path` with: the one it was created with
/// (sled refuses any other), or [`NEW_STORE_SEGMENT_BYTES`] for a new store.
fn segment_size(path: &Path) -> usize {
    match std::fs::read(path.join("conf")) {
        Ok(conf) => persisted_segment_size(&conf).unwrap_or(SLED_DEFAULT_SEGMENT_BYTES),
        Err(_) => NEW_STORE_SEGMENT_BYTES,
    }
}

/// The `segment_size: N` line of sled's `conf` file (text lines, then a checksum).
fn persisted_segment_size(conf: &[u8]) -> Option<usize> {
    conf.split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"segment_size: "))
        .and_then(|n| std::str::from_utf8(n).ok()?.trim().parse().ok())
}
