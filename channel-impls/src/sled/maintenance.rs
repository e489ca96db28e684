//! Background upkeep of a store: persisting cursors lazily and enforcing retention.
//! One thread wakes every [`MAINTENANCE_INTERVAL`] (or when asked), writes the
//! cursors that moved and deletes records every subscription has passed and
//! retention no longer keeps. Lazy cursors are safe because delivery is
//! at-least-once: a cursor lost in a crash only means re-delivery.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::layout::{self, cursor_key, mark_key, record_key};
use super::log::{ChannelShared, State};
use super::util::{lock, now_ms, storage};
use crate::ChannelError;

/// How often dirty cursors are written and retention is enforced.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(100);
/// Records deleted per sled batch when trimming.
const TRIM_CHUNK: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Maint {
    state: Mutex<MaintState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct MaintState {
    wake: bool,
    shutdown: bool,
}

impl Maint {
    pub(super) fn wake(&self) {
        lock(&self.state).wake = true;
        self.cv.notify_one();
    }

    pub(super) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }

    /// The thread's loop; `channels` lists the open channels at each round.
    pub(super) fn run(&self, channels: impl Fn() -> Vec<Arc<ChannelShared>>) {
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
            for ch in channels() {
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

impl State {
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
            .take_while(|m| m.at <= cutoff)
            .map(|m| m.offset)
            .last()
            .unwrap_or(self.base);
        by_time.min(floor).max(self.by_size(floor))
    }

    /// Offset below which the kept records (below `floor`) exceed the size cap.
    fn by_size(&self, floor: u64) -> u64 {
        let cap = self.config.retention_bytes;
        if cap == u64::MAX {
            return self.base;
        }
        let keep = cap / self.mean.mean().max(1);
        floor.saturating_sub(keep).max(self.base)
    }
}

impl ChannelShared {
    /// Writes the cursors that moved since they were last written (no fsync).
    pub(super) fn persist_cursors(&self) -> Result<(), ChannelError> {
        // Cursor writes are serialised by `cursor_lock`, so an unsubscribe cannot
        // interleave and leave a deleted subscription's cursor behind; the state lock
        // is held only to read and update the marks, never across sled's write
        // (which waits for any flush in progress: appends, acks and reads would
        // stall behind it).
        let _cursors = lock(&self.cursor_lock);
        let dirty: Vec<(String, u64)> = {
            let st = self.lock();
            if self.closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            st.subs
                .iter()
                .filter(|(_, s)| s.persisted != s.tracker.committed())
                .map(|(n, s)| (n.clone(), s.tracker.committed()))
                .collect()
        };
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
        let mut st = self.lock();
        for (name, c) in dirty {
            if let Some(s) = st.subs.get_mut(&name) {
                s.persisted = c;
            }
        }
        Ok(())
    }

    /// Deletes records every subscription has passed and retention no longer keeps.
    /// Returns how many were deleted.
    pub(super) fn trim(&self) -> Result<u64, ChannelError> {
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
            while st.marks.front().is_some_and(|m| m.offset <= limit) {
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
            // From the first key: a chunk straddling an earlier limit starts below
            // `from`. A chunk straddling this one is kept whole, and ends the pass.
            let mut straddles = false;
            for kv in self
                .tree
                .range(record_key(0)..record_key(limit))
                .take(TRIM_CHUNK)
            {
                let (k, v) = kv.map_err(|e| storage(ctx(), e))?;
                let first = layout::offset_of(layout::RECORD_PREFIX, &k).unwrap_or(0);
                if first + layout::record_count(&v) > limit {
                    straddles = true;
                    break;
                }
                batch.remove(k);
                removed += layout::record_count(&v);
                n += 1;
            }
            // The trim marker goes with the deletions so that the next offset survives
            // a restart even when the log ends up empty.
            batch.insert(layout::TRIMMED_KEY, &limit.to_be_bytes()[..]);
            let done = n == 0 || straddles;
            if done {
                for kv in self.tree.range(mark_key(0)..=mark_key(limit)) {
                    batch.remove(kv.map_err(|e| storage(ctx(), e))?.0);
                }
            }
            self.tree
                .apply_batch(batch)
                .map_err(|e| storage(ctx(), e))?;
            if done {
                break;
            }
        }
        tracing::debug!(broker = %self.broker, from, to = limit, removed, "retention trimmed records");
        Ok(removed)
    }
}
