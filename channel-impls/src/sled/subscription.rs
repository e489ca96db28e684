//! The read side of a sled channel: a subscription's `next` reads a range from disk
//! and claims it, skipping (and acknowledging) records that do not decode; dropping
//! a [`SledSubscription`] persists its cursor at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cemesh_proto::{codec, Event};

use super::db::Owner;
use super::layout::{self, cursor_key, offset_of, record_key};
use super::log::ChannelShared;
use super::util::{lock, storage};
use crate::{ChannelError, Position, Record, Subscription};

/// Upper bound on records read by one `next`, whatever `max` asks.
const MAX_READ: usize = 4096;

impl ChannelShared {
    /// The subscription's next batch: read from disk without claiming anything (so a
    /// cancelled `next` loses nothing), then claimed if nobody moved the read cursor.
    pub(super) async fn next(&self, name: &str, max: usize) -> Result<Vec<Record>, ChannelError> {
        let max = max.clamp(1, MAX_READ) as u64;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let range = {
                self.check_open()?;
                let mut guard = self.lock();
                let st = &mut *guard;
                let sub = st.subs.get_mut(name).ok_or(ChannelError::Closed)?;
                let range = (sub.read < st.next).then(|| {
                    let from = sub.read.max(st.base);
                    (sub.read, from, st.next.min(from + max))
                });
                // Fresh records come from the tail: claimed at once, no disk read.
                if let Some((_, from, to)) = range {
                    if let Some(records) = st.tail.get(from, to) {
                        sub.read = to;
                        sub.last_claim = std::time::Instant::now();
                        self.refusing.recheck(|| st.backpressure());
                        return Ok(records);
                    }
                }
                range
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
            sub.last_claim = std::time::Instant::now();
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
            self.refusing.recheck(|| st.backpressure());
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
    let ctx = |at: u64| format!("reading broker {broker}'s log at {at}");
    let start = layout::chunk_start(tree, from).map_err(|e| storage(ctx(from), e))?;
    for kv in tree.range(record_key(start)..record_key(to)) {
        let (k, v) = kv.map_err(|e| storage(ctx(expect), e))?;
        let Some(first) = offset_of(layout::RECORD_PREFIX, &k) else {
            continue;
        };
        let value = Bytes::copy_from_slice(&v);
        for (offset, bytes) in layout::split_records(first, &value) {
            if offset < from {
                continue;
            }
            if offset >= to {
                break;
            }
            while expect < offset {
                out.push((expect, Err((None, "record missing".to_owned()))));
                expect += 1;
            }
            let item = match bytes {
                Ok(b) => codec::decode(&b).map_err(|e| (Some(b.len()), e.to_string())),
                Err(e) => Err((None, e.to_owned())),
            };
            out.push((offset, item));
            expect = offset + 1;
        }
    }
    while expect < to {
        out.push((expect, Err((None, "record missing".to_owned()))));
        expect += 1;
    }
    Ok(out)
}

pub(super) struct SledSubscription {
    /// Keeps the store open while the subscription lives.
    pub(super) _owner: Arc<Owner>,
    pub(super) shared: Arc<ChannelShared>,
    pub(super) name: String,
}

#[async_trait]
impl Subscription for SledSubscription {
    async fn next(&self, max: usize) -> Result<Vec<Record>, ChannelError> {
        self.shared.next(&self.name, max).await
    }

    fn ack(&self, position: Position) -> Result<(), ChannelError> {
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
        let _cursors = lock(&self.shared.cursor_lock);
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
