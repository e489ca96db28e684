//! One broker's log as the handles see it: offsets, subscription cursors and
//! backlog accounting in RAM, loaded from the broker's tree on open. The channel,
//! its subscriptions and the maintenance thread all work on this state.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::config::SledConfig;
use super::flusher::Flusher;
use super::layout::{self, offset_of, record_key, u64_value};
use super::util::{lock, now_ms, storage};
use crate::{AckTracker, ChannelError};

#[derive(Debug)]
pub(super) struct SubState {
    pub(super) tracker: AckTracker,
    /// Next offset to hand out in this opening.
    pub(super) read: u64,
    /// Cursor value last written to the tree.
    pub(super) persisted: u64,
    /// When it last claimed records (backpressure counts delivering ones only).
    pub(super) last_claim: std::time::Instant,
}

/// A time mark, written with the first append of a second (and so with the first
/// append after any pause): records below `offset` were appended at or before
/// `before` (the previous append), records from `offset` on at or after `at`.
/// Stored as `at` then `before`, big-endian (a mark of 8 bytes has only `at`, which
/// then stands for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) offset: u64,
    pub(super) before: u64,
    pub(super) at: u64,
}

impl Mark {
    pub(super) fn encode(&self) -> [u8; 16] {
        let mut v = [0; 16];
        v[..8].copy_from_slice(&self.at.to_be_bytes());
        v[8..].copy_from_slice(&self.before.to_be_bytes());
        v
    }

    fn decode(offset: u64, v: &[u8]) -> Option<Mark> {
        let at = u64_value(v.get(..8)?)?;
        let before = v.get(8..16).and_then(u64_value).unwrap_or(at);
        Some(Mark { offset, before, at })
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) config: SledConfig,
    /// Offset the next appended record gets.
    pub(super) next: u64,
    /// Oldest retained offset (records below it are deleted or being deleted).
    pub(super) base: u64,
    /// Start of the backlog: the slowest committed cursor, or with no subscription
    /// the start of the records kept for a later one.
    pub(super) floor: u64,
    pub(super) subs: HashMap<String, SubState>,
    /// Stored size of each record from `sizes_base` to `next`, when a byte cap is set.
    pub(super) sizes: Option<VecDeque<u32>>,
    pub(super) sizes_base: u64,
    pub(super) backlog_bytes: u64,
    /// Time marks, oldest first (see [`Mark`]).
    pub(super) marks: VecDeque<Mark>,
    pub(super) last_append_ms: u64,
    /// Offsets found corrupt (logged once each), and their count since open.
    pub(super) corrupt: BTreeSet<u64>,
    pub(super) corrupt_total: u64,
    /// The mean size of appended records (for the backpressure window).
    pub(super) mean: crate::flow::MeanSize,
    /// The newest records as appended, for readers that keep up.
    pub(super) tail: Tail,
}

/// The newest records as they were appended, shared by every subscription that
/// reads them while they are fresh: no sled read, no decoding, and one copy in RAM
/// however many triggers read it. Bounded in records and bytes; older reads go to
/// disk.
#[derive(Debug, Default)]
pub(super) struct Tail(crate::run::EventRun);

impl Tail {
    const MAX_RECORDS: usize = 8192;
    const MAX_BYTES: u64 = 16 << 20;

    /// Adds the records appended from offset `first` on; the ones it no longer
    /// holds go to `evicted` (for the caller to drop outside its locks).
    pub(super) fn extend(
        &mut self,
        evicted: &mut Vec<Arc<cemesh_proto::Event>>,
        first: u64,
        events: impl Iterator<Item = (Arc<cemesh_proto::Event>, u32)>,
    ) {
        if first != self.0.end() {
            self.0.reset(first);
        }
        for (e, size) in events {
            self.0.push_sized(e, size);
        }
        while self.0.len() > Self::MAX_RECORDS || self.0.bytes() > Self::MAX_BYTES {
            evicted.extend(self.0.pop_front());
        }
    }

    /// Records `from..to`, if all of them are here.
    pub(super) fn get(&self, from: u64, to: u64) -> Option<Vec<crate::Record>> {
        self.0.records(from, to)
    }
}

impl State {
    /// The subscriptions that hold the log (not passive ones).
    fn active(&self) -> impl Iterator<Item = &SubState> {
        self.subs
            .iter()
            .filter(|(n, _)| !crate::is_passive(n))
            .map(|(_, s)| s)
    }

    /// Where a subscription created now with `at` starts. By time, from the marks:
    /// at the newest mark whose earlier records were all appended before `ms`, so
    /// at most a second early (exact after a pause in appends).
    pub(super) fn start(&self, at: crate::StartAt) -> u64 {
        use crate::StartAt;
        match at {
            StartAt::Earliest => self.base,
            StartAt::Latest => self.next,
            StartAt::Offset(o) => o,
            StartAt::Time(ms) => self
                .marks
                .iter()
                .take_while(|m| m.before < ms)
                .last()
                .map_or(self.base, |m| m.offset),
        }
        .clamp(self.base, self.next)
    }

    /// A subscription's committed cursor.
    pub(super) fn committed(&self, name: &str) -> Result<u64, ChannelError> {
        self.subs
            .get(name)
            .map(|s| s.tracker.committed())
            .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))
    }

    /// Where the backlog starts, from the subscriptions.
    pub(super) fn target_floor(&self) -> u64 {
        match self.active().map(|s| s.tracker.committed()).min() {
            Some(min) => min,
            None => self
                .next
                .saturating_sub(self.config.retain_without_subscribers),
        }
        .max(self.base)
    }

    /// Moves the floor to the target, dropping sizes it passed. A floor moving back
    /// (a new subscription, an unsubscribe) needs [`State::backfill_sizes`] too.
    pub(super) fn sync_floor(&mut self) {
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
    pub(super) fn backfill_sizes(
        &mut self,
        tree: &sled::Tree,
        broker: &str,
    ) -> Result<(), ChannelError> {
        let Some(sizes) = &mut self.sizes else {
            return Ok(());
        };
        if self.floor >= self.sizes_base {
            return Ok(());
        }
        let mut found = Vec::new();
        let mut expect = self.floor;
        let ctx = || format!("reading broker {broker}'s log");
        let start = layout::chunk_start(tree, self.floor).map_err(|e| storage(ctx(), e))?;
        for item in tree.range(record_key(start)..record_key(self.sizes_base)) {
            let (k, v) = item.map_err(|e| storage(ctx(), e))?;
            let Some(first) = offset_of(layout::RECORD_PREFIX, &k) else {
                continue;
            };
            let value = bytes::Bytes::copy_from_slice(&v);
            for (offset, record) in layout::split_records(first, &value) {
                if offset < self.floor {
                    continue;
                }
                if offset >= self.sizes_base {
                    break;
                }
                // Missing records (there should be none) count as empty.
                while expect < offset {
                    found.push(0);
                    expect += 1;
                }
                let len = record.map_or(0, |r| r.len());
                found.push(u32::try_from(len).unwrap_or(u32::MAX));
                expect += 1;
            }
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

    /// Refuses appends while the delivering subscriptions are past the backpressure
    /// window (see [`crate::flow`]).
    pub(super) fn backpressure(&self) -> Result<(), ChannelError> {
        let next = self.next;
        crate::flow::check(
            self.config.backpressure_window,
            self.active().map(|s| crate::flow::Behind {
                records: next.saturating_sub(s.read),
                last_claim: s.last_claim,
            }),
            self.mean.mean(),
            std::time::Instant::now(),
        )
    }

    /// Refuses a batch that would take the backlog past a cap (the backpressure
    /// window is the producers' to ask: [`crate::flow`]).
    pub(super) fn admit(&self, records: u64, bytes: u64) -> Result<(), ChannelError> {
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
}

pub(super) struct ChannelShared {
    pub(super) broker: String,
    pub(super) tree: sled::Tree,
    state: Mutex<State>,
    /// Serialises appends (offsets are assigned in order); readers and ackers only
    /// take `state`, briefly.
    pub(super) append_lock: Mutex<()>,
    /// Serialises writes of cursor keys (taken before `state`), so the periodic
    /// persist writes outside the state lock without reviving a removed cursor.
    pub(super) cursor_lock: Mutex<()>,
    pub(super) notify: Notify,
    pub(super) flusher: Arc<Flusher>,
    pub(super) closed: AtomicBool,
    pub(super) refusing: crate::flow::Refusing,
}

impl ChannelShared {
    /// Loads a broker's channel from its tree.
    pub(super) fn open(
        db: &sled::Db,
        flusher: Arc<Flusher>,
        broker: &str,
        config: SledConfig,
    ) -> Result<Self, ChannelError> {
        let ctx = || format!("opening broker {broker}'s channel");
        let tree = db
            .open_tree(layout::tree_name(broker))
            .map_err(|e| storage(ctx(), e))?;
        let records = record_key(0)..=record_key(u64::MAX);
        let first = match tree.range(records.clone()).next() {
            Some(kv) => offset_of(layout::RECORD_PREFIX, &kv.map_err(|e| storage(ctx(), e))?.0),
            None => None,
        };
        // The last value may be a chunk: the log ends after its last record.
        let last = match tree.range(records).next_back() {
            Some(kv) => {
                let (k, v) = kv.map_err(|e| storage(ctx(), e))?;
                offset_of(layout::RECORD_PREFIX, &k).map(|o| o + layout::record_count(&v) - 1)
            }
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
            if let Some(m) = offset_of(layout::MARK_PREFIX, &k).and_then(|o| Mark::decode(o, &v)) {
                marks.push_back(m);
            }
        }
        let next = last
            .map_or(0, |l| l + 1)
            .max(trimmed)
            .max(cursors.iter().map(|(_, c)| *c).max().unwrap_or(0));
        // A chunk straddling the last trim keeps records below the trim marker.
        let base = first.map_or(next, |f| f.max(trimmed).min(next));
        let subs = cursors
            .into_iter()
            .map(|(name, c)| {
                let c = c.clamp(base, next);
                let sub = SubState {
                    tracker: AckTracker::new(c),
                    read: c,
                    persisted: c,
                    last_claim: std::time::Instant::now(),
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
            mean: crate::flow::MeanSize::default(),
            tail: Tail::default(),
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
            cursor_lock: Mutex::new(()),
            notify: Notify::new(),
            flusher,
            closed: AtomicBool::new(false),
            refusing: Default::default(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(super) fn check_open(&self) -> Result<(), ChannelError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(ChannelError::Closed)
        } else {
            Ok(())
        }
    }

    pub(super) fn reconfigure(&self, config: SledConfig) -> Result<(), ChannelError> {
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
}
