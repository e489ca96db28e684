//! Settings: per-broker channel settings and the process-wide database options.

use std::time::Duration;

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
    /// Cap on those kept records in bytes (estimated from the mean record size);
    /// `u64::MAX`: none.
    pub retention_bytes: u64,
    /// Newest records kept while the broker has no subscription.
    pub retain_without_subscribers: u64,
    /// Cap on the slowest subscription's backlog, in records (with no subscription:
    /// on the records kept for a later one). Past it `append` answers `Full`.
    pub max_backlog_records: u64,
    /// The same cap in stored bytes; `u64::MAX` disables it (and its bookkeeping).
    pub max_backlog_bytes: u64,
    /// Ingress backpressure: bytes the delivering subscriptions may be behind (see
    /// [`crate::flow`]); `None`: none.
    pub backpressure_window: Option<u64>,
    /// How long [`crate::Channel::room`] waits for room past the window.
    pub backpressure_hold: Duration,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            durability: Durability::FlushPerBatch,
            retention: Duration::ZERO,
            retention_bytes: u64::MAX,
            retain_without_subscribers: 0,
            max_backlog_records: 1_000_000,
            max_backlog_bytes: 1 << 30,
            backpressure_window: None,
            backpressure_hold: Duration::ZERO,
        }
    }
}

/// The default disk reserve: 128 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 << 20;

/// The default commit delay: 1.5 ms. At a moderate rate (12 000 events/s over 64
/// connections) it costs 0.87 of the broker's CPU of 500 µs (one fsync for about
/// twice as many appends) for 0.8 ms more median latency; as fast as possible with
/// a trigger it measures the same as 500 µs, and a lone producer never waits. No
/// delay at all lets ingest alone, as fast as possible, go about 15 % faster (64
/// producers then split into rounds that overlap the disk and the cores), at 5 %
/// less with a trigger and 25 % more CPU at 12 000/s; the writer skips the delay
/// by itself where it only costs, appends filling rounds on a machine with CPU to
/// spare (`flusher::Pace`; `bench/README.md`, "The commit delay", "Rounds that
/// fill themselves").
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_micros(1500);

/// Settings of the process-wide database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledStoreOptions {
    /// sled's page cache size (approximate bound on the RAM it uses).
    pub cache_capacity_bytes: u64,
    /// Durable writes are refused while the filesystem has less free than this
    /// (0: never), so sled never meets a full disk.
    pub min_free_bytes: u64,
    /// The longest a group commit waits for as many appends as the last one
    /// answered (see `Flusher::gather`); zero: a round takes what has arrived.
    pub commit_delay: Duration,
}

impl Default for SledStoreOptions {
    fn default() -> Self {
        SledStoreOptions {
            cache_capacity_bytes: 256 << 20,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }
}
