//! The channel contract: an append-only log of CloudEvents per broker, with named,
//! independent subscriptions (one per trigger).
//!
//! Delivery semantics every implementation keeps:
//! - [`Channel::append`] returns only when the events are as durable as the channel
//!   promises (memory: in RAM; sled: fsynced; kafka: acknowledged). All or nothing.
//! - [`Channel::subscribe`] opens a named subscription, or resumes it at its committed
//!   cursor; `start` applies only when the subscription is new.
//! - [`Subscription::ack`] may come out of order; the channel commits the contiguous
//!   prefix (the low watermark). Reopening a subscription, or restarting, re-delivers
//!   everything after the watermark: at-least-once.
//! - Records are removed once every subscription has passed them (retention).
//! - A subscription named with [`REPLAY_PREFIX`] is *passive* ([`is_passive`]): it
//!   reads the archive a replay covers without holding it. It does not keep records
//!   from retention, and counts toward neither the backlog caps nor backpressure; a
//!   record trimmed before it is read is skipped. A replay of old events must never
//!   make the ingress refuse new ones.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cemesh_proto::Event;

pub mod deadletter;
pub mod flow;
pub mod journal;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
mod run;
pub mod sled;
pub mod tap;

pub use deadletter::{Attempt, AttemptTarget, DeadLetter, DeadLetterStore};
pub use memory::{MemoryChannel, MemoryConfig, MemoryDeadLetters};
pub use sled::{Durability, SledChannel, SledConfig, SledDeadLetters, SledStore, SledStoreOptions};
pub use tap::Tapped;

/// Where a record sits in a channel: a partition (0 for single-log channels) and an
/// offset within it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

impl Position {
    pub const fn new(partition: u32, offset: u64) -> Self {
        Position { partition, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// One event read from a subscription.
#[derive(Debug, Clone)]
pub struct Record {
    pub position: Position,
    pub event: Arc<Event>,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest record still retained.
    Earliest,
    /// Only records appended after the subscription was created (Knative's behaviour).
    #[default]
    Latest,
    /// A given offset (clamped to what is retained).
    Offset(u64),
    /// The first record that arrived at or after this time (Unix ms), or up to a
    /// channel's time resolution before it (sled: one second); clamped to what is
    /// retained.
    Time(u64),
}

/// Names of passive subscriptions start with this (see the module doc).
pub const REPLAY_PREFIX: &str = "replay:";

/// Whether a subscription is passive: named by a replay.
pub fn is_passive(name: &str) -> bool {
    name.starts_with(REPLAY_PREFIX)
}

/// Errors a channel reports. The ingress maps them to HTTP answers in one place.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// Backpressure: the backlog passed its cap. Producers should retry later.
    #[error("channel is full ({reason}); retry after {retry_after:?}")]
    Full {
        reason: String,
        retry_after: Duration,
    },
    /// The channel or subscription was closed.
    #[error("channel closed")]
    Closed,
    #[error("no subscription named {0:?}")]
    UnknownSubscription(String),
    /// The storage failed; the events were not stored.
    #[error("storage error: {0}")]
    Storage(String),
    /// The data dir's filesystem is nearly full: writes are refused (nothing was
    /// stored) until space returns.
    #[error("the data dir's disk has {free} bytes free, under the {reserve}-byte reserve; nothing was stored, retry after {retry_after:?} (free space, or lower --min-free-disk)")]
    DiskFull {
        free: u64,
        reserve: u64,
        retry_after: Duration,
    },
    /// The data dir's filesystem is mounted read-only: writes are refused (nothing
    /// was stored) until it is writable again.
    #[error("the data dir's disk is read-only; nothing was stored, retry after {retry_after:?}")]
    ReadOnlyDisk { retry_after: Duration },
}

/// A durable (or not) log of events with named subscriptions.
#[async_trait]
pub trait Channel: Send + Sync + fmt::Debug + 'static {
    /// The kind of channel: `memory`, `sled`, `kafka`.
    fn kind(&self) -> &'static str;

    /// Whether delivery backpressure ([`flow`]) refuses new events now: cheap, no
    /// I/O. Appends are not refused by it: producers ask first.
    fn backpressure(&self) -> Result<(), ChannelError> {
        Ok(())
    }

    /// [`Channel::backpressure`], waiting up to the channel's hold for delivery to
    /// make room before refusing: what the ingress asks before it reads a body.
    async fn room(&self) -> Result<(), ChannelError> {
        self.backpressure()
    }

    /// Appends events atomically; returns once they are as durable as promised.
    async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError>;

    /// Opens (or resumes) a named subscription.
    async fn subscribe(
        &self,
        name: &str,
        start: StartAt,
    ) -> Result<Arc<dyn Subscription>, ChannelError>;

    /// Forgets a subscription and its cursor (the trigger was deleted).
    async fn unsubscribe(&self, name: &str) -> Result<(), ChannelError>;

    /// How many records wait for a subscription (appended but not committed).
    async fn lag(&self, name: &str) -> Result<u64, ChannelError>;

    /// Per partition, the offset the next appended record will take (the log's
    /// end): with a subscription's own positions, how far behind it is, record by
    /// record (a trigger's `cemesh.dev/max-lag`).
    async fn ends(&self) -> Result<Vec<Position>, ChannelError>;

    /// Per partition, where a subscription created now with `at` would start.
    async fn offsets_at(&self, at: StartAt) -> Result<Vec<Position>, ChannelError>;

    /// Moves a subscription's committed cursor to `to` (per partition; partitions not
    /// named keep theirs). The subscription must exist and not be open in this
    /// process (its trigger is stopped); records after the new cursor are delivered
    /// again, records before it are skipped.
    async fn seek(&self, name: &str, to: &[Position]) -> Result<(), ChannelError>;

    /// Per partition, a subscription's committed cursor.
    async fn committed(&self, name: &str) -> Result<Vec<Position>, ChannelError>;
}

/// A subscription's read side. `next` and `ack` may be called concurrently.
#[async_trait]
pub trait Subscription: Send + Sync + 'static {
    /// Waits until at least one record is available and returns up to `max` of them,
    /// in log order. Each record is returned once per opening of the subscription.
    async fn next(&self, max: usize) -> Result<Vec<Record>, ChannelError>;

    /// Marks a record done (delivered, dead-lettered or filtered out).
    /// Never waits: a channel persists its cursors on its own schedule, so an ack
    /// is bookkeeping (and a call without a boxed future on every delivery).
    fn ack(&self, position: Position) -> Result<(), ChannelError>;
}

/// Tracks out-of-order acks and yields the contiguous prefix: the low watermark.
/// Shared by every channel that keeps its own cursors.
#[derive(Debug, Clone, Default)]
pub struct AckTracker {
    /// Every offset below this is done.
    committed: u64,
    /// Done offsets at or above `committed`, as a bitmap from `committed`.
    done: std::collections::VecDeque<bool>,
}

impl AckTracker {
    pub fn new(committed: u64) -> Self {
        AckTracker {
            committed,
            done: Default::default(),
        }
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Records an ack; returns true when the watermark moved.
    pub fn ack(&mut self, offset: u64) -> bool {
        if offset < self.committed {
            return false;
        }
        let idx = (offset - self.committed) as usize;
        if self.done.len() <= idx {
            self.done.resize(idx + 1, false);
        }
        self.done[idx] = true;
        let before = self.committed;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.committed += 1;
        }
        self.committed != before
    }

    /// Forgets in-flight state and restarts from the watermark (a reopened
    /// subscription re-delivers everything after it).
    pub fn reset(&mut self) {
        self.done.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_moves_only_over_a_contiguous_prefix() {
        let mut t = AckTracker::new(10);
        assert!(!t.ack(12));
        assert!(!t.ack(11) || t.committed() == 10);
        assert_eq!(t.committed(), 10);
        assert!(t.ack(10));
        assert_eq!(t.committed(), 13);
        assert!(!t.ack(5));
        assert_eq!(t.committed(), 13);
    }
}
