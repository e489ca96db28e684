//! Replays: a range of a broker's archive re-delivered to one trigger, through the
//! trigger's own loop and pipeline (filter, parallelism, ordering, rate, retries,
//! dead letters), without touching its live cursor or any other trigger.
//!
//! A replay reads a passive subscription of its own ([`cemesh_channels::REPLAY_PREFIX`]):
//! the channel keeps its cursor durably, so a replay interrupted by a crash resumes
//! where its acknowledgements stopped, and it never holds the broker's retention or
//! its ingress. [`Bounded`] wraps that subscription: it ends the range at fixed
//! per-partition offsets, keeps only events whose arrival time lies in the asked
//! window (the offsets found by time are a little wide), applies the replay's extra
//! filter, and marks each event it hands out with [`REPLAY_EXTENSION`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cemesh_channels::{AckTracker, Channel, ChannelError, Position, Record, StartAt, Subscription};
use cemesh_proto::{knative, AttributeValue};

use crate::filter::DialectFilter;

/// The extension every replayed delivery carries: the replay's id.
pub const REPLAY_EXTENSION: &str = "cemeshreplay";

/// How long `next` waits for records before it checks whether the rest of the range
/// is gone (trimmed by retention), so a replay never waits forever on it.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// An event that arrived this long after a replay's window closed ends its
/// partition's range: events are appended in about the order they arrived, and the
/// ingress takes at most this long to store one.
pub const LATE_MS: i64 = 30_000;

/// Where a replay stands, shared with whoever shows its progress.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    /// Offsets of the range read and finished (delivered, dead-lettered or not
    /// matched), including the ones below.
    pub done: AtomicU64,
    /// Skipped: arrived outside the asked time window.
    pub outside: AtomicU64,
    /// Skipped: the replay's extra filter did not match.
    pub unmatched: AtomicU64,
    /// Gone before the replay read them (retention trimmed them, or missing).
    pub expired: AtomicU64,
}

/// One partition's range.
#[derive(Debug)]
struct Part {
    tracker: AckTracker,
    /// The next offset expected from the subscription.
    read: u64,
    end: u64,
}

impl Part {
    fn read_all(&self) -> bool {
        self.read >= self.end
    }
}

/// The range a replay covers: per partition, its first offset (the subscription's
/// cursor now) and the offset it ends before; and the arrival-time window (Unix ms,
/// from inclusive, to exclusive), if it was asked by time.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub from: Vec<Position>,
    pub to: Vec<Position>,
    pub window: (Option<i64>, Option<i64>),
}

impl Range {
    /// Where the range ends in `from`'s partition (empty when `to` lacks it).
    fn end_of(&self, from: &Position) -> u64 {
        self.to
            .iter()
            .find(|e| e.partition == from.partition)
            .map_or(from.offset, |e| e.offset)
    }

    /// How many offsets the range covers.
    pub fn len(&self) -> u64 {
        self.from
            .iter()
            .map(|p| self.end_of(p).saturating_sub(p.offset))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A replay's view of its passive subscription: the range `[cursor, end)` per
/// partition, the time window and the extra filter.
pub struct Bounded {
    inner: Arc<dyn Subscription>,
    channel: Arc<dyn Channel>,
    id: String,
    window: (Option<i64>, Option<i64>),
    filter: Option<DialectFilter>,
    parts: Mutex<HashMap<u32, Part>>,
    progress: Arc<ReplayProgress>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded").field("id", &self.id).finish()
    }
}

impl Bounded {
    /// Wraps a replay's subscription, whose cursors are where `range` starts now
    /// (a resumed replay's range starts at its cursors, not where it first began).
    pub fn new(
        inner: Arc<dyn Subscription>,
        channel: Arc<dyn Channel>,
        id: String,
        range: &Range,
        filter: Option<DialectFilter>,
        progress: Arc<ReplayProgress>,
    ) -> Self {
        let parts = range
            .from
            .iter()
            .map(|p| {
                let part = Part {
                    tracker: AckTracker::new(p.offset),
                    read: p.offset,
                    end: range.end_of(p),
                };
                (p.partition, part)
            })
            .collect();
        Bounded {
            inner,
            channel,
            id,
            window: range.window,
            filter,
            parts: Mutex::new(parts),
            progress,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Part>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every offset of the range is finished.
    pub fn complete(&self) -> bool {
        self.lock().values().all(|p| p.tracker.committed() >= p.end)
    }

    /// Marks `from..to` of a partition finished without reading it (gone).
    fn skip(&self, part: &mut Part, to: u64) {
        let to = to.min(part.end);
        while part.read < to {
            part.tracker.ack(part.read);
            part.read += 1;
            self.progress.expired.fetch_add(1, Relaxed);
            self.progress.done.fetch_add(1, Relaxed);
        }
    }

    /// After a quiet wait: the records the range still expects may be gone.
    async fn skip_trimmed(&self) -> Result<(), ChannelError> {
        let starts = self.channel.offsets_at(StartAt::Earliest).await?;
        let mut parts = self.lock();
        for s in starts {
            if let Some(part) = parts.get_mut(&s.partition) {
                if part.read < s.offset {
                    self.skip(part, s.offset);
                }
            }
        }
        Ok(())
    }

    fn in_window(&self, record: &Record) -> bool {
        let (from, to) = self.window;
        if from.is_none() && to.is_none() {
            return true;
        }
        match knative::arrival_ms(&record.event) {
            Some(t) => from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e),
            // Without an arrival time the offsets decide.
            None => true,
        }
    }

    /// Whether the event arrived so long after the window that the range is over.
    fn is_after(&self, record: &Record) -> bool {
        self.window.1.is_some_and(|to| {
            knative::arrival_ms(&record.event).is_some_and(|t| t >= to.saturating_add(LATE_MS))
        })
    }

    /// Sorts a batch: what to hand out, what to finish at once.
    fn take(&self, records: Vec<Record>) -> (Vec<Record>, Vec<Position>) {
        let mut out = Vec::new();
        let mut finish = Vec::new();
        let mut parts = self.lock();
        for record in records {
            let at = record.position;
            let Some(part) = parts.get_mut(&at.partition) else {
                continue;
            };
            if at.offset < part.read || part.read_all() {
                continue; // finished before a restart, or past the range
            }
            if at.offset > part.read {
                self.skip(part, at.offset);
                if part.read_all() {
                    continue;
                }
            }
            if self.is_after(&record) {
                part.end = at.offset;
                continue;
            }
            part.read = at.offset + 1;
            let skip = if !self.in_window(&record) {
                Some(&self.progress.outside)
            } else if self
                .filter
                .as_ref()
                .is_some_and(|f| !f.matches(&record.event))
            {
                Some(&self.progress.unmatched)
            } else {
                None
            };
            if let Some(counter) = skip {
                counter.fetch_add(1, Relaxed);
                part.tracker.ack(at.offset);
                self.progress.done.fetch_add(1, Relaxed);
                finish.push(at);
                continue;
            }
            let mut event = (*record.event).clone();
            event.set_extension(REPLAY_EXTENSION, AttributeValue::String(self.id.clone()));
            out.push(Record {
                position: at,
                event: Arc::new(event),
            });
        }
        (out, finish)
    }
}

#[async_trait]
impl Subscription for Bounded {
    async fn next(&self, max: usize) -> Result<Vec<Record>, ChannelError> {
        loop {
            if self.lock().values().all(Part::read_all) {
                return Err(ChannelError::Closed);
            }
            let records = match tokio::time::timeout(STALL_CHECK, self.inner.next(max)).await {
                Ok(r) => r?,
                Err(_) => {
                    self.skip_trimmed().await?;
                    continue;
                }
            };
            let (out, finish) = self.take(records);
            for at in finish {
                self.inner.ack(at)?;
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn ack(&self, position: Position) -> Result<(), ChannelError> {
        {
            let mut parts = self.lock();
            if let Some(part) = parts.get_mut(&position.partition) {
                part.tracker.ack(position.offset);
                self.progress.done.fetch_add(1, Relaxed);
            }
        }
        self.inner.ack(position)
    }
}

/// Runs a replay to its end through the trigger's loop (`context` is the trigger's
/// pipeline with the replay's own stats); true when the whole range was finished,
/// false when `cancel` stopped it first (what was in flight finished).
pub async fn run(
    context: Arc<crate::TriggerContext>,
    bounded: Arc<Bounded>,
    cancel: tokio_util::sync::CancellationToken,
) -> bool {
    crate::trigger::run(context, bounded.clone(), cancel).await;
    bounded.complete()
}

#[cfg(test)]
mod tests {
    use cemesh_channels::{MemoryChannel, MemoryConfig};
    use cemesh_proto::Event;

    use super::*;

    fn event(id: &str, arrival_ms: i64) -> Event {
        let mut e = Event::new(id, "/t", "t");
        let t = chrono::DateTime::from_timestamp_millis(arrival_ms).unwrap();
        knative::stamp_arrival(&mut e, &t.to_rfc3339());
        e
    }

    async fn bounded(
        ch: &Arc<MemoryChannel>,
        to: u64,
        window: (Option<i64>, Option<i64>),
    ) -> (Bounded, Arc<ReplayProgress>) {
        let sub = ch.subscribe("replay:x", StartAt::Earliest).await.unwrap();
        let range = Range {
            from: ch.committed("replay:x").await.unwrap(),
            to: vec![Position::new(0, to)],
            window,
        };
        let progress = Arc::new(ReplayProgress::default());
        let channel: Arc<dyn Channel> = ch.clone();
        let b = Bounded::new(sub, channel, "x".into(), &range, None, progress.clone());
        (b, progress)
    }

    #[tokio::test]
    async fn a_range_hands_out_its_window_marked_and_ends_at_a_late_arrival() {
        let ch = Arc::new(MemoryChannel::new(MemoryConfig::default()));
        let _hold = ch.subscribe("ns/hold", StartAt::Earliest).await.unwrap();
        let events = vec![
            event("early", 1_000),
            event("in-1", 2_000),
            event("in-2", 2_500),
            event("just-after", 3_000),
            event("long-after", 3_000 + LATE_MS),
            event("never-read", 2_000),
        ];
        ch.append(events).await.unwrap();
        let (b, progress) = bounded(&ch, 6, (Some(2_000), Some(3_000))).await;
        let got = b.next(10).await.unwrap();
        let ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
        assert_eq!(ids, ["in-1", "in-2"]);
        assert!(got.iter().all(|r| matches!(
            r.event.extension(REPLAY_EXTENSION),
            Some(AttributeValue::String(id)) if id == "x"
        )));
        assert_eq!(progress.outside.load(Relaxed), 2);
        // The late arrival ended the range: nothing more is read.
        assert!(matches!(b.next(10).await, Err(ChannelError::Closed)));
        assert!(!b.complete());
        for r in got {
            b.ack(r.position).unwrap();
        }
        assert!(b.complete());
    }

    #[tokio::test]
    async fn a_range_trimmed_before_it_is_read_ends_counted_as_expired() {
        let ch = Arc::new(MemoryChannel::new(MemoryConfig::default()));
        let a = ch.subscribe("ns/a", StartAt::Earliest).await.unwrap();
        let (b, progress) = {
            ch.append((0..4).map(|i| event(&format!("e{i}"), 1_000)).collect())
                .await
                .unwrap();
            bounded(&ch, 4, (None, None)).await
        };
        for r in a.next(10).await.unwrap() {
            a.ack(r.position).unwrap();
        }
        assert!(matches!(b.next(10).await, Err(ChannelError::Closed)));
        assert_eq!(progress.expired.load(Relaxed), 4);
        assert!(b.complete());
    }
}
