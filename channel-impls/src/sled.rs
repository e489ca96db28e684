//! The durable channel: one [sled] database per process, one append-only log per
//! broker, committed cursors per subscription.
//!
//! Why it looks like this:
//! - **One database, one tree per broker.** sled keeps a single write-ahead log per
//!   database, so one `flush` makes every broker's writes durable at once. A broker's
//!   tree holds its records under `l` + big-endian offset (so key order is log order and
//!   the next offset is recovered from the last key), its cursors under `c` + name,
//!   coarse time marks under `t` + offset (for time-based retention) and the offset
//!   below which everything was trimmed (so offsets never go back after a restart, even
//!   with an empty log). Records are stored with [`cemesh_proto::codec::encode`] and
//!   nothing else, so the format can change in one place.
//! - **Group commit.** `append` inserts its batch with one atomic `apply_batch`, then
//!   waits for a flush. One background thread flushes: whatever arrived while the
//!   previous flush ran is made durable by the next single `flush`, and every waiter
//!   is woken. Concurrent producers therefore share fsyncs instead of paying one each.
//!   [`Durability`] lets a broker trade that for latency.
//! - **Cursors are persisted lazily** (every [`MAINTENANCE_INTERVAL`], when a
//!   subscription handle is dropped, on `unsubscribe`, [`SledStore::flush`] and when the
//!   store is closed). Delivery is at-least-once, so a cursor lost in a crash only means
//!   re-delivery; a cursor written on every ack would cost a write per event.
//! - **Bounded memory.** `next` reads at most `max` records from disk per call; the only
//!   per-record state kept in RAM is the size of each record in the slowest
//!   subscription's backlog (4 bytes each, only when a byte cap is set), which the
//!   backlog caps bound.
//! - **Retention and backpressure.** A maintenance thread deletes records every
//!   subscription has passed once they are older than [`SledConfig::retention`];
//!   `append` answers [`ChannelError::Full`] when the slowest backlog passes its caps.
//! - **Corruption** never stops a subscription: a record that does not decode is logged
//!   with its offset and length, counted ([`SledChannel::corrupt_records`]) and skipped
//!   (acknowledged on the subscription's behalf).
//!
//! Records become visible to subscriptions as soon as they are inserted, before the
//! flush: if the flush then fails the producer gets an error and may send again, so a
//! subscriber can see such an event twice (at-least-once, never lost).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use cemesh_proto::{codec, Event};
use tokio::sync::{watch, Notify};

use crate::{AckTracker, Channel, ChannelError, Position, Record, StartAt, Subscription};

/// How often dirty cursors are written and retention is enforced.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(100);
/// Records deleted per sled batch when trimming.
const TRIM_CHUNK: usize = 4096;
/// Upper bound on records read by one `next`, whatever `max` asks.
const MAX_READ: usize = 4096;
/// A time mark is written at most this often (milliseconds).
const MARK_EVERY_MS: u64 = 1000;
/// How long `open` retries while a previous instance in this process still closes.
const LOCK_RETRY: Duration = Duration::from_secs(2);

/// The on-disk layout. Public only so that tests can damage a store on purpose.
#[doc(hidden)]
pub mod layout {
    pub const RECORD_PREFIX: u8 = b'l';
    pub const CURSOR_PREFIX: u8 = b'c';
    pub const MARK_PREFIX: u8 = b't';
    pub const TRIMMED_KEY: &[u8] = b"m:trimmed";
    pub const TREE_PREFIX: &str = "broker/";

    /// The sled tree holding one broker's channel.
    pub fn tree_name(broker_id: &str) -> String {
        format!("{TREE_PREFIX}{broker_id}")
    }

    /// The key of the record at `offset`.
    pub fn record_key(offset: u64) -> [u8; 9] {
        prefixed(RECORD_PREFIX, offset)
    }

    pub fn mark_key(offset: u64) -> [u8; 9] {
        prefixed(MARK_PREFIX, offset)
    }

    pub fn cursor_key(name: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + name.len());
        k.push(CURSOR_PREFIX);
        k.extend_from_slice(name.as_bytes());
        k
    }

    fn prefixed(prefix: u8, offset: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = prefix;
        k[1..].copy_from_slice(&offset.to_be_bytes());
        k
    }

    /// The offset in a record or mark key, if the key has the right shape.
    pub fn offset_of(prefix: u8, key: &[u8]) -> Option<u64> {
        match key {
            [p, rest @ ..] if *p == prefix && rest.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(rest);
                Some(u64::from_be_bytes(b))
            }
            _ => None,
        }
    }

    /// A big-endian u64 value.
    pub fn u64_value(v: &[u8]) -> Option<u64> {
        <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
    }
}

use layout::{cursor_key, mark_key, offset_of, record_key, u64_value};

/// When `append` returns, relative to the fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the batch is flushed to disk (shared with concurrent appends). Safe.
    #[default]
    FlushPerBatch,
    /// At once; a flush follows within the interval. A crash loses at most that much.
    Interval(Duration),
    /// At once; sled's own background flush (every 500 ms) makes it durable.
    None,
}

/// Per-broker settings of a sled channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledConfig {
    pub durability: Durability,
    /// How long records every subscription has passed are kept (for replay with
    /// `StartAt::Earliest`/`Offset`). Zero: deleted as soon as all have passed.
    pub retention: Duration,
    /// Newest records kept while the broker has no subscription.
    pub retain_without_subscribers: u64,
    /// Cap on the slowest subscription's backlog, in records (with no subscription:
    /// on the records kept for a later one). Past it `append` answers `Full`.
    pub max_backlog_records: u64,
    /// The same cap in stored bytes; `u64::MAX` disables it (and its bookkeeping).
    pub max_backlog_bytes: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            durability: Durability::FlushPerBatch,
            retention: Duration::ZERO,
            retain_without_subscribers: 0,
            max_backlog_records: 1_000_000,
            max_backlog_bytes: 1 << 30,
        }
    }
}

/// Settings of the process-wide database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledStoreOptions {
    /// sled's page cache size (approximate bound on the RAM it uses).
    pub cache_capacity_bytes: u64,
}

impl Default for SledStoreOptions {
    fn default() -> Self {
        SledStoreOptions {
            cache_capacity_bytes: 256 << 20,
        }
    }
}

fn storage(what: impl fmt::Display, e: impl fmt::Display) -> ChannelError {
    ChannelError::Storage(format!("{what}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its state consistent at each step that can
    // panic (disk errors are returned, not raised), so a poisoned lock is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// Group commit

#[derive(Debug, Clone, Default)]
struct FlushStatus {
    /// Every ticket up to this one has been flushed (or failed).
    done: u64,
    /// Every ticket up to this one is durable.
    last_ok: u64,
    error: Option<String>,
}

#[derive(Debug)]
struct FlushState {
    /// Ticket handed to writers arriving now; the flusher takes it and moves on.
    epoch: u64,
    /// A writer waits for the next flush.
    waiting: bool,
    /// Flush no later than this (Durability::Interval).
    deadline: Option<Instant>,
    shutdown: bool,
}

/// The single flusher thread of a store, and the tickets appenders wait on.
#[derive(Debug)]
pub(crate) struct Flusher {
    state: Mutex<FlushState>,
    cv: Condvar,
    status: watch::Sender<FlushStatus>,
    flushes: AtomicU64,
}

impl Flusher {
    fn new() -> Self {
        Flusher {
            state: Mutex::new(FlushState {
                epoch: 1,
                waiting: false,
                deadline: None,
                shutdown: false,
            }),
            cv: Condvar::new(),
            status: watch::Sender::new(FlushStatus::default()),
            flushes: AtomicU64::new(0),
        }
    }

    /// Asks for a flush covering every write made before this call; returns the
    /// ticket to wait for.
    pub(crate) fn request(&self) -> u64 {
        let ticket = {
            let mut st = lock(&self.state);
            st.waiting = true;
            st.epoch
        };
        self.cv.notify_one();
        ticket
    }

    /// Asks for a flush within `within`, without waiting for it.
    fn request_within(&self, within: Duration) {
        let at = Instant::now() + within;
        {
            let mut st = lock(&self.state);
            st.deadline = Some(st.deadline.map_or(at, |d| d.min(at)));
        }
        self.cv.notify_one();
    }

    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), ChannelError> {
        let mut rx = self.status.subscribe();
        let status = rx
            .wait_for(|s| s.done >= ticket)
            .await
            .map_err(|_| ChannelError::Closed)?
            .clone();
        if status.last_ok >= ticket {
            Ok(())
        } else {
            Err(ChannelError::Storage(format!(
                "flushing to disk failed: {}",
                status.error.as_deref().unwrap_or("unknown error")
            )))
        }
    }

    /// The flusher thread's loop: one `flush` per round covers every writer that
    /// arrived while the previous one ran.
    fn run(&self, db: sled::Db) {
        loop {
            let ticket = {
                let mut st = lock(&self.state);
                loop {
                    if st.waiting || st.deadline.is_some_and(|d| d <= Instant::now()) {
                        break;
                    }
                    if st.shutdown {
                        return;
                    }
                    st = match st.deadline {
                        Some(d) => {
                            let wait = d.saturating_duration_since(Instant::now());
                            self.cv
                                .wait_timeout(st, wait)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                    };
                }
                st.waiting = false;
                st.deadline = None;
                st.epoch += 1;
                st.epoch - 1
            };
            let result = db.flush();
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.status.send_modify(|s| {
                s.done = ticket;
                match result {
                    Ok(_) => {
                        s.last_ok = ticket;
                        s.error = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "sled flush failed; appends waiting for it fail");
                        s.error = Some(e.to_string());
                    }
                }
            });
        }
    }

    fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }
}

// ---------------------------------------------------------------------------------
// Maintenance thread (cursor persistence and retention)

#[derive(Debug, Default)]
struct Maint {
    state: Mutex<MaintState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct MaintState {
    wake: bool,
    shutdown: bool,
}

impl Maint {
    fn wake(&self) {
        lock(&self.state).wake = true;
        self.cv.notify_one();
    }

    fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }

    fn run(&self, core: &Core) {
        loop {
            {
                let mut st = lock(&self.state);
                if !st.wake && !st.shutdown {
                    st = self
                        .cv
                        .wait_timeout(st, MAINTENANCE_INTERVAL)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if st.shutdown {
                    return;
                }
                st.wake = false;
            }
            for ch in core.snapshot() {
                if let Err(e) = ch.persist_cursors() {
                    tracing::warn!(broker = %ch.broker, error = %e, "persisting cursors failed");
                }
                if let Err(e) = ch.trim() {
                    tracing::warn!(broker = %ch.broker, error = %e, "enforcing retention failed");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The store

/// What the background threads share with the handles.
struct Core {
    db: sled::Db,
    path: PathBuf,
    flusher: Arc<Flusher>,
    maint: Arc<Maint>,
    channels: Mutex<HashMap<String, Arc<ChannelShared>>>,
}

impl Core {
    fn snapshot(&self) -> Vec<Arc<ChannelShared>> {
        lock(&self.channels).values().cloned().collect()
    }

    fn flush_all(&self) -> Result<(), ChannelError> {
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
struct Owner {
    core: Arc<Core>,
    flush_thread: Option<JoinHandle<()>>,
    maint_thread: Option<JoinHandle<()>>,
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

/// Keeps the database open while a dead-letter store uses it.
pub(crate) struct DeadLetterGuard(#[allow(dead_code)] Arc<Owner>);

impl fmt::Debug for DeadLetterGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterGuard")
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
            .cache_capacity(options.cache_capacity_bytes);
        let started = Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // The same directory closing elsewhere in this process (a handle
                // dropped on another thread): wait a little for its lock.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < LOCK_RETRY =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(storage(
                        format_args!("opening sled database {}", path.display()),
                        e,
                    ))
                }
            }
        };
        tracing::info!(path = %path.display(), recovered = db.was_recovered(), "sled store opened");
        let core = Arc::new(Core {
            db: db.clone(),
            path,
            flusher: Arc::new(Flusher::new()),
            maint: Arc::new(Maint::default()),
            channels: Mutex::new(HashMap::new()),
        });
        let flusher = core.flusher.clone();
        let flush_thread = std::thread::Builder::new()
            .name("cemesh-sled-flush".into())
            .spawn(move || flusher.run(db))
            .map_err(|e| storage("starting the sled flusher thread", e))?;
        let mut owner = Owner {
            core: core.clone(),
            flush_thread: Some(flush_thread),
            maint_thread: None,
        };
        let maint_thread = std::thread::Builder::new()
            .name("cemesh-sled-maint".into())
            .spawn(move || core.maint.clone().run(&core))
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
                let shared = Arc::new(ChannelShared::open(core, broker_id, config)?);
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
    pub fn dead_letters(&self) -> Result<crate::sled_deadletters::SledDeadLetters, ChannelError> {
        let tree = self
            .owner
            .core
            .db
            .open_tree("deadletters")
            .map_err(|e| storage("opening the dead-letter tree", e))?;
        Ok(crate::sled_deadletters::SledDeadLetters::new(
            self.owner.core.db.clone(),
            tree,
            self.owner.core.flusher.clone(),
            DeadLetterGuard(self.owner.clone()),
        ))
    }

    /// How many flushes (fsyncs) the group-commit thread made so far.
    pub fn flushes(&self) -> u64 {
        self.owner.core.flusher.flushes.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------
// One broker's channel

#[derive(Debug)]
struct SubState {
    tracker: AckTracker,
    /// Next offset to hand out in this opening.
    read: u64,
    /// Cursor value last written to the tree.
    persisted: u64,
}

#[derive(Debug)]
struct State {
    config: SledConfig,
    /// Offset the next appended record gets.
    next: u64,
    /// Oldest retained offset (records below it are deleted or being deleted).
    base: u64,
    /// Start of the backlog: the slowest committed cursor, or with no subscription
    /// the start of the records kept for a later one.
    floor: u64,
    subs: HashMap<String, SubState>,
    /// Stored size of each record from `sizes_base` to `next`, when a byte cap is set.
    sizes: Option<VecDeque<u32>>,
    sizes_base: u64,
    backlog_bytes: u64,
    /// (offset, unix ms): every record below offset was appended at or before ms.
    marks: VecDeque<(u64, u64)>,
    last_append_ms: u64,
    /// Offsets found corrupt (logged once each), and their count since open.
    corrupt: BTreeSet<u64>,
    corrupt_total: u64,
}

impl State {
    /// Where the backlog starts, from the subscriptions.
    fn target_floor(&self) -> u64 {
        match self.subs.values().map(|s| s.tracker.committed()).min() {
            Some(min) => min,
            None => self
                .next
                .saturating_sub(self.config.retain_without_subscribers),
        }
        .max(self.base)
    }

    /// Moves the floor to the target, dropping sizes it passed. A floor moving back
    /// (a new subscription, an unsubscribe) needs [`State::backfill_sizes`] too.
    fn sync_floor(&mut self) {
        self.floor = self.target_floor();
        if let Some(sizes) = &mut self.sizes {
            while self.sizes_base < self.floor {
                match sizes.pop_front() {
                    Some(s) => self.backlog_bytes -= u64::from(s),
                    None => break,
                }
                self.sizes_base += 1;
            }
            if sizes.is_empty() {
                self.sizes_base = self.sizes_base.max(self.floor);
            }
        }
    }

    /// Reads the sizes of records between the floor and the tracked range from disk.
    fn backfill_sizes(&mut self, tree: &sled::Tree, broker: &str) -> Result<(), ChannelError> {
        let Some(sizes) = &mut self.sizes else {
            return Ok(());
        };
        if self.floor >= self.sizes_base {
            return Ok(());
        }
        let mut found = Vec::new();
        let mut expect = self.floor;
        for item in tree.range(record_key(self.floor)..record_key(self.sizes_base)) {
            let (k, v) =
                item.map_err(|e| storage(format_args!("reading broker {broker}'s log"), e))?;
            let Some(offset) = offset_of(layout::RECORD_PREFIX, &k) else {
                continue;
            };
            // Missing records (there should be none) count as empty.
            while expect < offset {
                found.push(0);
                expect += 1;
            }
            found.push(u32::try_from(v.len()).unwrap_or(u32::MAX));
            expect += 1;
        }
        while expect < self.sizes_base {
            found.push(0);
            expect += 1;
        }
        for s in found.into_iter().rev() {
            self.backlog_bytes += u64::from(s);
            sizes.push_front(s);
        }
        self.sizes_base = self.floor;
        Ok(())
    }

    fn backlog(&self) -> u64 {
        self.next - self.floor
    }

    /// Refuses a batch that would take the backlog past a cap.
    fn admit(&self, records: u64, bytes: u64) -> Result<(), ChannelError> {
        let backlog = self.backlog();
        let max = self.config.max_backlog_records;
        if backlog.saturating_add(records) > max {
            return Err(ChannelError::Full {
                reason: format!(
                    "the slowest subscription's backlog holds {backlog} of at most {max} events"
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        let max = self.config.max_backlog_bytes;
        if self.sizes.is_some() && backlog > 0 && self.backlog_bytes.saturating_add(bytes) > max {
            return Err(ChannelError::Full {
                reason: format!(
                    "the slowest subscription's backlog holds {} of at most {max} bytes",
                    self.backlog_bytes
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(())
    }

    /// Offset below which records may be deleted now.
    fn trim_limit(&self, now_ms: u64) -> u64 {
        let floor = self.target_floor();
        let retention = self.config.retention.as_millis() as u64;
        if retention == 0 {
            return floor;
        }
        let cutoff = now_ms.saturating_sub(retention);
        if self.last_append_ms <= cutoff {
            return floor;
        }
        let by_time = self
            .marks
            .iter()
            .take_while(|(_, ms)| *ms <= cutoff)
            .map(|(o, _)| *o)
            .last()
            .unwrap_or(self.base);
        by_time.min(floor)
    }
}

struct ChannelShared {
    broker: String,
    tree: sled::Tree,
    state: Mutex<State>,
    /// Serialises appends (offsets are assigned in order); readers and ackers only
    /// take `state`, briefly.
    append_lock: Mutex<()>,
    notify: Notify,
    flusher: Arc<Flusher>,
    maint: Arc<Maint>,
    closed: AtomicBool,
}

impl ChannelShared {
    /// Loads a broker's channel from its tree.
    fn open(core: &Core, broker: &str, config: SledConfig) -> Result<Self, ChannelError> {
        let ctx = || format!("opening broker {broker}'s channel");
        let tree = core
            .db
            .open_tree(layout::tree_name(broker))
            .map_err(|e| storage(ctx(), e))?;
        let records = record_key(0)..=record_key(u64::MAX);
        let first = match tree.range(records.clone()).next() {
            Some(kv) => offset_of(layout::RECORD_PREFIX, &kv.map_err(|e| storage(ctx(), e))?.0),
            None => None,
        };
        let last = match tree.range(records).next_back() {
            Some(kv) => offset_of(layout::RECORD_PREFIX, &kv.map_err(|e| storage(ctx(), e))?.0),
            None => None,
        };
        let trimmed = match tree
            .get(layout::TRIMMED_KEY)
            .map_err(|e| storage(ctx(), e))?
        {
            Some(v) => u64_value(&v).unwrap_or_else(|| {
                tracing::error!(broker, "malformed trim marker ignored");
                0
            }),
            None => 0,
        };
        let mut cursors = Vec::new();
        for kv in tree.scan_prefix([layout::CURSOR_PREFIX]) {
            let (k, v) = kv.map_err(|e| storage(ctx(), e))?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            match u64_value(&v) {
                Some(c) => cursors.push((name, c)),
                None => {
                    tracing::error!(broker, subscription = %name, "malformed cursor; re-delivering from the oldest record");
                    cursors.push((name, 0));
                }
            }
        }
        let mut marks = VecDeque::new();
        for kv in tree.scan_prefix([layout::MARK_PREFIX]) {
            let (k, v) = kv.map_err(|e| storage(ctx(), e))?;
            if let (Some(o), Some(ms)) = (offset_of(layout::MARK_PREFIX, &k), u64_value(&v)) {
                marks.push_back((o, ms));
            }
        }
        let next = last
            .map_or(0, |l| l + 1)
            .max(trimmed)
            .max(cursors.iter().map(|(_, c)| *c).max().unwrap_or(0));
        let base = first.unwrap_or(next);
        let subs = cursors
            .into_iter()
            .map(|(name, c)| {
                let c = c.clamp(base, next);
                let sub = SubState {
                    tracker: AckTracker::new(c),
                    read: c,
                    persisted: c,
                };
                (name, sub)
            })
            .collect::<HashMap<_, _>>();
        let mut state = State {
            sizes: (config.max_backlog_bytes != u64::MAX).then(VecDeque::new),
            config,
            next,
            base,
            floor: next,
            subs,
            sizes_base: next,
            backlog_bytes: 0,
            marks,
            last_append_ms: now_ms(),
            corrupt: BTreeSet::new(),
            corrupt_total: 0,
        };
        state.sync_floor();
        state.backfill_sizes(&tree, broker)?;
        tracing::info!(
            broker,
            base,
            next,
            subscriptions = state.subs.len(),
            "sled channel opened"
        );
        Ok(ChannelShared {
            broker: broker.to_owned(),
            tree,
            state: Mutex::new(state),
            append_lock: Mutex::new(()),
            notify: Notify::new(),
            flusher: core.flusher.clone(),
            maint: core.maint.clone(),
            closed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn check_open(&self) -> Result<(), ChannelError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(ChannelError::Closed)
        } else {
            Ok(())
        }
    }

    fn reconfigure(&self, config: SledConfig) -> Result<(), ChannelError> {
        let mut st = self.lock();
        if st.config == config {
            return Ok(());
        }
        let track = config.max_backlog_bytes != u64::MAX;
        st.config = config;
        if track && st.sizes.is_none() {
            st.sizes = Some(VecDeque::new());
            st.sizes_base = st.next;
            st.backlog_bytes = 0;
        } else if !track {
            st.sizes = None;
            st.backlog_bytes = 0;
        }
        st.sync_floor();
        st.backfill_sizes(&self.tree, &self.broker)
    }

    /// Writes the cursors that moved since they were last written (no fsync).
    fn persist_cursors(&self) -> Result<(), ChannelError> {
        // Under the state lock so that an unsubscribe or a removal cannot interleave
        // and leave a deleted subscription's cursor behind.
        let mut st = self.lock();
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let dirty: Vec<(String, u64)> = st
            .subs
            .iter()
            .filter(|(_, s)| s.persisted != s.tracker.committed())
            .map(|(n, s)| (n.clone(), s.tracker.committed()))
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (name, c) in &dirty {
            batch.insert(cursor_key(name), &c.to_be_bytes()[..]);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| storage(format_args!("writing broker {}'s cursors", self.broker), e))?;
        for (name, c) in dirty {
            if let Some(s) = st.subs.get_mut(&name) {
                s.persisted = c;
            }
        }
        Ok(())
    }

    /// Deletes records every subscription has passed and retention no longer keeps.
    /// Returns how many were deleted.
    fn trim(&self) -> Result<u64, ChannelError> {
        let (from, limit) = {
            let mut st = self.lock();
            if self.closed.load(Ordering::SeqCst) {
                return Ok(0);
            }
            let limit = st.trim_limit(now_ms());
            if limit <= st.base {
                return Ok(0);
            }
            // Readers see the new base at once; the deletion below is then private.
            let from = st.base;
            st.base = limit;
            while st.marks.front().is_some_and(|(o, _)| *o <= limit) {
                st.marks.pop_front();
            }
            st.corrupt = st.corrupt.split_off(&limit);
            (from, limit)
        };
        let ctx = || format!("trimming broker {}'s log", self.broker);
        let mut removed = 0u64;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for kv in self
                .tree
                .range(record_key(from)..record_key(limit))
                .take(TRIM_CHUNK)
            {
                batch.remove(kv.map_err(|e| storage(ctx(), e))?.0);
                n += 1;
            }
            // The trim marker goes with the deletions so that the next offset survives
            // a restart even when the log ends up empty.
            batch.insert(layout::TRIMMED_KEY, &limit.to_be_bytes()[..]);
            if n == 0 {
                for kv in self.tree.range(mark_key(0)..=mark_key(limit)) {
                    batch.remove(kv.map_err(|e| storage(ctx(), e))?.0);
                }
            }
            self.tree
                .apply_batch(batch)
                .map_err(|e| storage(ctx(), e))?;
            removed += n as u64;
            if n == 0 {
                break;
            }
        }
        tracing::debug!(broker = %self.broker, from, to = limit, removed, "retention trimmed records");
        Ok(removed)
    }

    /// The subscription's next batch: read from disk without claiming anything (so a
    /// cancelled `next` loses nothing), then claimed if nobody moved the read cursor.
    async fn next(&self, name: &str, max: usize) -> Result<Vec<Record>, ChannelError> {
        let max = max.clamp(1, MAX_READ) as u64;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let range = {
                self.check_open()?;
                let st = self.lock();
                let sub = st.subs.get(name).ok_or(ChannelError::Closed)?;
                (sub.read < st.next).then(|| {
                    let from = sub.read.max(st.base);
                    (sub.read, from, st.next.min(from + max))
                })
            };
            let Some((read, from, to)) = range else {
                notified.await;
                continue;
            };
            let tree = self.tree.clone();
            let broker = self.broker.clone();
            let items = tokio::task::spawn_blocking(move || read_range(&tree, &broker, from, to))
                .await
                .map_err(|e| storage("reading the log", e))??;
            let mut st = self.lock();
            let sub = st.subs.get_mut(name).ok_or(ChannelError::Closed)?;
            if sub.read != read {
                continue; // another reader claimed it, or the subscription reopened
            }
            sub.read = to;
            let mut records = Vec::with_capacity(items.len());
            let mut corrupt = Vec::new();
            for (offset, item) in items {
                match item {
                    Ok(event) => records.push(Record {
                        position: Position::new(0, offset),
                        event: Arc::new(event),
                    }),
                    Err(bad) => {
                        sub.tracker.ack(offset);
                        corrupt.push((offset, bad));
                    }
                }
            }
            if !corrupt.is_empty() {
                for (offset, (len, error)) in corrupt {
                    if st.corrupt.insert(offset) {
                        st.corrupt_total += 1;
                        tracing::error!(
                            broker = %self.broker,
                            subscription = name,
                            offset,
                            stored_len = len,
                            %error,
                            "skipping a stored event that cannot be decoded"
                        );
                    } else {
                        tracing::debug!(broker = %self.broker, subscription = name, offset, "skipping a corrupt stored event");
                    }
                }
                st.sync_floor();
            }
            if !records.is_empty() {
                return Ok(records);
            }
        }
    }
}

/// A record that could not be read: its stored length (if any) and why.
type Corrupt = (Option<usize>, String);
/// One offset of a read range: its event, or why it could not be read.
type ReadItem = (u64, Result<Event, Corrupt>);

/// Reads and decodes records `from..to`; missing or undecodable ones are reported.
fn read_range(
    tree: &sled::Tree,
    broker: &str,
    from: u64,
    to: u64,
) -> Result<Vec<ReadItem>, ChannelError> {
    let mut out = Vec::with_capacity((to - from) as usize);
    let mut expect = from;
    for kv in tree.range(record_key(from)..record_key(to)) {
        let (k, v) =
            kv.map_err(|e| storage(format_args!("reading broker {broker}'s log at {expect}"), e))?;
        let Some(offset) = offset_of(layout::RECORD_PREFIX, &k) else {
            continue;
        };
        while expect < offset {
            out.push((expect, Err((None, "record missing".to_owned()))));
            expect += 1;
        }
        let bytes = Bytes::copy_from_slice(&v);
        let item = codec::decode(&bytes).map_err(|e| (Some(bytes.len()), e.to_string()));
        out.push((offset, item));
        expect = offset + 1;
    }
    while expect < to {
        out.push((expect, Err((None, "record missing".to_owned()))));
        expect += 1;
    }
    Ok(out)
}

/// A broker's durable channel. Cheap to clone; every clone is the same channel.
#[derive(Clone)]
pub struct SledChannel {
    owner: Arc<Owner>,
    shared: Arc<ChannelShared>,
}

impl fmt::Debug for SledChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledChannel")
            .field("broker", &self.shared.broker)
            .field("path", &self.owner.core.path)
            .finish()
    }
}

impl SledChannel {
    pub fn broker_id(&self) -> &str {
        &self.shared.broker
    }

    /// The settings in force.
    pub fn config(&self) -> SledConfig {
        self.shared.lock().config.clone()
    }

    /// How many distinct stored records were found undecodable (or missing) and
    /// skipped since the channel was opened.
    pub fn corrupt_records(&self) -> u64 {
        self.shared.lock().corrupt_total
    }

    /// Enforces retention now instead of waiting for the maintenance thread; returns
    /// how many records were deleted.
    pub async fn enforce_retention(&self) -> Result<u64, ChannelError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.trim())
            .await
            .map_err(|e| storage("enforcing retention", e))?
    }

    /// Reads one raw key of this broker's tree (tests inspect the layout with it).
    #[doc(hidden)]
    pub fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        self.shared
            .tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| storage("reading a raw key", e))
    }

    async fn durable(&self, durability: Durability) -> Result<(), ChannelError> {
        match durability {
            Durability::FlushPerBatch => {
                let ticket = self.shared.flusher.request();
                self.shared.flusher.wait(ticket).await
            }
            Durability::Interval(d) => {
                self.shared.flusher.request_within(d);
                Ok(())
            }
            Durability::None => Ok(()),
        }
    }

    /// Runs blocking work that changes subscriptions.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChannelShared) -> Result<T, ChannelError> + Send + 'static,
    ) -> Result<T, ChannelError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| storage("updating subscriptions", e))?
    }
}

#[async_trait]
impl Channel for SledChannel {
    fn kind(&self) -> &'static str {
        "sled"
    }

    async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError> {
        let sh = &*self.shared;
        sh.check_open()?;
        if events.is_empty() {
            return Ok(());
        }
        let encoded: Vec<Bytes> = events.iter().map(codec::encode).collect();
        let n = encoded.len() as u64;
        let bytes: u64 = encoded.iter().map(|b| b.len() as u64).sum();
        let durability = {
            let _append = lock(&sh.append_lock);
            sh.check_open()?;
            let (first, durability, mark) = {
                let st = sh.lock();
                st.admit(n, bytes)?;
                let now = now_ms();
                let last_mark = st.marks.back().map_or(0, |(_, ms)| *ms);
                let mark = (now >= last_mark + MARK_EVERY_MS).then_some(now);
                (st.next, st.config.durability, mark)
            };
            let mut batch = sled::Batch::default();
            for (i, b) in encoded.iter().enumerate() {
                batch.insert(&record_key(first + i as u64)[..], b.as_ref());
            }
            if let Some(ms) = mark {
                batch.insert(&mark_key(first)[..], &ms.to_be_bytes()[..]);
            }
            sh.tree.apply_batch(batch).map_err(|e| {
                storage(
                    format_args!("appending {n} events to broker {}", sh.broker),
                    e,
                )
            })?;
            let mut st = sh.lock();
            st.next += n;
            st.last_append_ms = mark.unwrap_or_else(now_ms);
            if let Some(ms) = mark {
                st.marks.push_back((first, ms));
            }
            if let Some(sizes) = &mut st.sizes {
                sizes.extend(
                    encoded
                        .iter()
                        .map(|b| u32::try_from(b.len()).unwrap_or(u32::MAX)),
                );
                st.backlog_bytes += bytes;
            }
            st.sync_floor();
            durability
        };
        sh.notify.notify_waiters();
        self.durable(durability).await
    }

    async fn subscribe(
        &self,
        name: &str,
        start: StartAt,
    ) -> Result<Arc<dyn Subscription>, ChannelError> {
        self.shared.check_open()?;
        let owned = name.to_owned();
        let created = self
            .blocking(move |sh| {
                let mut st = sh.lock();
                sh.check_open()?;
                if let Some(sub) = st.subs.get_mut(&owned) {
                    sub.tracker.reset();
                    sub.read = sub.tracker.committed();
                    return Ok(false);
                }
                let at = match start {
                    StartAt::Earliest => st.base,
                    StartAt::Latest => st.next,
                    StartAt::Offset(o) => o.clamp(st.base, st.next),
                };
                sh.tree
                    .insert(cursor_key(&owned), &at.to_be_bytes()[..])
                    .map_err(|e| {
                        storage(format_args!("creating subscription {owned:?} of broker {}", sh.broker), e)
                    })?;
                st.subs.insert(
                    owned.clone(),
                    SubState {
                        tracker: AckTracker::new(at),
                        read: at,
                        persisted: at,
                    },
                );
                st.sync_floor();
                st.backfill_sizes(&sh.tree, &sh.broker)?;
                tracing::info!(broker = %sh.broker, subscription = %owned, offset = at, "subscription created");
                Ok(true)
            })
            .await?;
        if created {
            // A subscription forgotten in a crash would restart at `Latest` and miss
            // events: make its cursor durable before answering.
            let ticket = self.shared.flusher.request();
            self.shared.flusher.wait(ticket).await?;
        }
        Ok(Arc::new(SledSubscription {
            _owner: self.owner.clone(),
            shared: self.shared.clone(),
            name: name.to_owned(),
        }))
    }

    async fn unsubscribe(&self, name: &str) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        let owned = name.to_owned();
        let existed = self
            .blocking(move |sh| {
                let mut st = sh.lock();
                if st.subs.remove(&owned).is_none() {
                    return Ok(false);
                }
                sh.tree.remove(cursor_key(&owned)).map_err(|e| {
                    storage(
                        format_args!("removing subscription {owned:?} of broker {}", sh.broker),
                        e,
                    )
                })?;
                st.sync_floor();
                st.backfill_sizes(&sh.tree, &sh.broker)?;
                tracing::info!(broker = %sh.broker, subscription = %owned, "subscription removed");
                Ok(true)
            })
            .await?;
        self.shared.notify.notify_waiters();
        if existed {
            self.shared.maint.wake();
            let ticket = self.shared.flusher.request();
            self.shared.flusher.wait(ticket).await?;
        }
        Ok(())
    }

    async fn lag(&self, name: &str) -> Result<u64, ChannelError> {
        self.shared.check_open()?;
        let st = self.shared.lock();
        let sub = st
            .subs
            .get(name)
            .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))?;
        Ok(st.next - sub.tracker.committed())
    }
}

struct SledSubscription {
    /// Keeps the store open while the subscription lives.
    _owner: Arc<Owner>,
    shared: Arc<ChannelShared>,
    name: String,
}

#[async_trait]
impl Subscription for SledSubscription {
    async fn next(&self, max: usize) -> Result<Vec<Record>, ChannelError> {
        self.shared.next(&self.name, max).await
    }

    async fn ack(&self, position: Position) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        let mut st = self.shared.lock();
        let sub = st.subs.get_mut(&self.name).ok_or(ChannelError::Closed)?;
        if sub.tracker.ack(position.offset) {
            st.sync_floor();
        }
        Ok(())
    }
}

impl Drop for SledSubscription {
    fn drop(&mut self) {
        // Persist this subscription's watermark now rather than at the next tick.
        let mut st = self.shared.lock();
        if self.shared.closed.load(Ordering::SeqCst) {
            return;
        }
        if let Some(sub) = st.subs.get_mut(&self.name) {
            let c = sub.tracker.committed();
            if sub.persisted != c {
                match self
                    .shared
                    .tree
                    .insert(cursor_key(&self.name), &c.to_be_bytes()[..])
                {
                    Ok(_) => sub.persisted = c,
                    Err(e) => tracing::warn!(
                        broker = %self.shared.broker,
                        subscription = %self.name,
                        error = %e,
                        "persisting the cursor of a closed subscription failed"
                    ),
                }
            }
        }
    }
}
