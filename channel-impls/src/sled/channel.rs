//! A broker's durable channel ([`SledChannel`]): `append` writes a batch atomically
//! and waits for the group commit as its [`Durability`] says; `subscribe` and
//! `unsubscribe` change cursors durably.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cemesh_proto::{codec, Event};

use super::config::{Durability, SledConfig};
use super::db::Owner;
use super::flusher::{Append, GroupWrite};
use super::layout::{cursor_key, encode_records, mark_key, record_key};
use super::log::{ChannelShared, Mark, SubState};
use super::subscription::SledSubscription;
use super::util::{lock, now_ms, storage};
use crate::{AckTracker, Channel, ChannelError, Position, StartAt, Subscription};

/// A time mark is written at most this often (milliseconds).
const MARK_EVERY_MS: u64 = 1000;

/// A broker's durable channel. Cheap to clone; every clone is the same channel.
#[derive(Clone)]
pub struct SledChannel {
    pub(super) owner: Arc<Owner>,
    pub(super) shared: Arc<ChannelShared>,
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

    fn backpressure(&self) -> Result<(), ChannelError> {
        let sh = &*self.shared;
        sh.refusing.early(|| sh.lock().backpressure())
    }

    async fn room(&self) -> Result<(), ChannelError> {
        let sh = &*self.shared;
        sh.refusing
            .wait(
                || sh.lock().config.backpressure_hold,
                || sh.lock().backpressure(),
            )
            .await
    }

    async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError> {
        let sh = &*self.shared;
        sh.check_open()?;
        if events.is_empty() {
            return Ok(());
        }
        // Encoded here (spread over the runtime's workers); written, merged with
        // every other append of the round, by the store's writer thread.
        let records: Vec<bytes::Bytes> = events.iter().map(codec::encode).collect();
        sh.flusher
            .space
            .check(records.iter().map(|r| r.len() as u64).sum())?;
        let events = events.into_iter().map(crate::run::sized).collect();
        let (reply, answer) = tokio::sync::oneshot::channel();
        sh.flusher.append(Append {
            target: self.shared.clone(),
            records,
            events,
            reply,
        });
        // The reply's leftovers are dropped here, on this worker.
        answer.await.map_err(|_| ChannelError::Closed)?.result
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
                let _cursors = lock(&sh.cursor_lock);
                let mut st = sh.lock();
                sh.check_open()?;
                if let Some(sub) = st.subs.get_mut(&owned) {
                    sub.tracker.reset();
                    sub.read = sub.tracker.committed();
                    return Ok(false);
                }
                let at = st.start(start);
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
                        last_claim: std::time::Instant::now(),
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
                let _cursors = lock(&sh.cursor_lock);
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
            self.owner.core.maint.wake();
            let ticket = self.shared.flusher.request();
            self.shared.flusher.wait(ticket).await?;
        }
        Ok(())
    }

    async fn lag(&self, name: &str) -> Result<u64, ChannelError> {
        self.shared.check_open()?;
        let st = self.shared.lock();
        Ok(st.next - st.committed(name)?)
    }

    async fn ends(&self) -> Result<Vec<Position>, ChannelError> {
        self.shared.check_open()?;
        Ok(vec![Position::new(0, self.shared.lock().next)])
    }

    async fn offsets_at(&self, at: StartAt) -> Result<Vec<Position>, ChannelError> {
        self.shared.check_open()?;
        Ok(vec![Position::new(0, self.shared.lock().start(at))])
    }

    async fn seek(&self, name: &str, to: &[Position]) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        let Some(to) = to.iter().find(|p| p.partition == 0).map(|p| p.offset) else {
            return Ok(());
        };
        let owned = name.to_owned();
        self.blocking(move |sh| {
            let _cursors = lock(&sh.cursor_lock);
            let mut st = sh.lock();
            let (base, next) = (st.base, st.next);
            let sub = st
                .subs
                .get_mut(&owned)
                .ok_or_else(|| ChannelError::UnknownSubscription(owned.clone()))?;
            let at = to.clamp(base, next);
            sh.tree
                .insert(cursor_key(&owned), &at.to_be_bytes()[..])
                .map_err(|e| {
                    storage(format_args!("moving subscription {owned:?} of broker {}", sh.broker), e)
                })?;
            sub.tracker = AckTracker::new(at);
            sub.read = at;
            sub.persisted = at;
            st.sync_floor();
            st.backfill_sizes(&sh.tree, &sh.broker)?;
            tracing::info!(broker = %sh.broker, subscription = %owned, offset = at, "subscription moved");
            Ok(())
        })
        .await?;
        self.shared.notify.notify_waiters();
        let ticket = self.shared.flusher.request();
        self.shared.flusher.wait(ticket).await
    }

    async fn committed(&self, name: &str) -> Result<Vec<Position>, ChannelError> {
        self.shared.check_open()?;
        let st = self.shared.lock();
        Ok(vec![Position::new(0, st.committed(name)?)])
    }
}

/// Writes `writes` as one atomic change. A round's usual write is one value, and one
/// `insert` is atomic by itself; sled's `apply_batch` also logs a batch manifest in
/// an I/O buffer of its own, which sled hands to its I/O pool and the round's flush
/// then waits for: a thread hand-off and a second `sync_file_range` every round
/// (`bench/README.md`, "A round of one value is one insert").
fn write_atomically(tree: &sled::Tree, mut writes: Vec<([u8; 9], Vec<u8>)>) -> sled::Result<()> {
    if writes.len() == 1 {
        let (key, value) = writes.pop().expect("one write");
        return tree.insert(key, value).map(drop);
    }
    let mut batch = sled::Batch::default();
    for (key, value) in writes {
        batch.insert(&key[..], value);
    }
    tree.apply_batch(batch)
}

/// Above this many bytes, a round's records of one broker are split over several
/// values (still one atomic batch): a reader loads a whole value to read any record
/// of it.
const MAX_VALUE_BYTES: usize = 1 << 20;

impl GroupWrite for ChannelShared {
    /// Admits each append in order against the backlog caps, then writes every
    /// admitted record as one atomic write of values of up to [`MAX_VALUE_BYTES`]
    /// ([`write_atomically`], see [`super::layout`]) and advances the log.
    fn write_group(
        &self,
        appends: &[&Append],
        evicted: &mut Vec<Arc<cemesh_proto::Event>>,
    ) -> Vec<Result<Durability, ChannelError>> {
        let _append = lock(&self.append_lock);
        if let Err(e) = self.check_open() {
            return vec![Err(e); appends.len()];
        }
        let (first, durability, mark, admitted) = {
            let st = self.lock();
            let (mut n, mut bytes) = (0u64, 0u64);
            let admitted: Vec<Result<(), ChannelError>> = appends
                .iter()
                .map(|a| {
                    let more = a.records.len() as u64;
                    let more_bytes: u64 = a.records.iter().map(|r| r.len() as u64).sum();
                    st.admit(n + more, bytes + more_bytes)?;
                    n += more;
                    bytes += more_bytes;
                    Ok(())
                })
                .collect();
            let now = now_ms();
            let last_mark = st.marks.back().map_or(0, |m| m.at);
            let mark = (now >= last_mark + MARK_EVERY_MS).then_some(Mark {
                offset: st.next,
                before: st.last_append_ms,
                at: now,
            });
            (st.next, st.config.durability, mark, admitted)
        };
        let records: Vec<&Bytes> = appends
            .iter()
            .zip(&admitted)
            .filter(|(_, a)| a.is_ok())
            .flat_map(|(a, _)| a.records.iter())
            .collect();
        if records.is_empty() {
            return admitted
                .into_iter()
                .map(|a| a.map(|()| durability))
                .collect();
        }
        let n = records.len() as u64;
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        let mut writes: Vec<([u8; 9], Vec<u8>)> = Vec::with_capacity(1);
        let mut at = first;
        let mut chunk: Vec<Bytes> = Vec::new();
        let mut chunk_bytes = 0;
        for r in &records {
            if !chunk.is_empty() && chunk_bytes + r.len() > MAX_VALUE_BYTES {
                writes.push((record_key(at), encode_records(&chunk)));
                at += chunk.len() as u64;
                chunk.clear();
                chunk_bytes = 0;
            }
            chunk_bytes += r.len();
            chunk.push((*r).clone());
        }
        writes.push((record_key(at), encode_records(&chunk)));
        if let Some(m) = mark {
            writes.push((mark_key(first), m.encode().to_vec()));
        }
        if let Err(e) = write_atomically(&self.tree, writes) {
            let e = match e {
                e if super::space::is_read_only(&e) => super::space::read_only_refusal(),
                e => storage(
                    format_args!("appending {n} events to broker {}", self.broker),
                    e,
                ),
            };
            return admitted
                .into_iter()
                .map(|a| a.and(Err(e.clone())))
                .collect();
        }
        let mut st = self.lock();
        st.tail.extend(
            evicted,
            first,
            appends
                .iter()
                .zip(&admitted)
                .filter(|(_, a)| a.is_ok())
                .flat_map(|(a, _)| a.events.iter().cloned()),
        );
        st.next += n;
        st.mean.add(n, bytes);
        st.last_append_ms = mark.map_or_else(now_ms, |m| m.at);
        if let Some(m) = mark {
            st.marks.push_back(m);
        }
        if let Some(sizes) = &mut st.sizes {
            sizes.extend(
                records
                    .iter()
                    .map(|b| u32::try_from(b.len()).unwrap_or(u32::MAX)),
            );
            st.backlog_bytes += bytes;
        }
        st.sync_floor();
        let _ = self.refusing.note(st.backpressure());
        drop(st);
        admitted
            .into_iter()
            .map(|a| a.map(|()| durability))
            .collect()
    }

    fn written(&self) {
        self.notify.notify_waiters();
    }
}
