//! The in-memory channel: fast, bounded, and lost on restart (like Knative's
//! InMemoryChannel, minus the unbounded growth: a backlog cap gives backpressure).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cemesh_proto::Event;
use smallvec::SmallVec;
use tokio::sync::Notify;

use crate::flow::{Behind, Refusing};
use crate::run::EventRun;
use crate::{AckTracker, Channel, ChannelError, Position, Record, StartAt, Subscription};

/// Limits of a memory channel.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Records held at most (the slowest subscription's backlog); past it `append`
    /// answers [`ChannelError::Full`].
    pub max_records: usize,
    /// The same cap in bytes (each event's [`Event::approx_size`]), so the backlog's
    /// RAM is bounded whatever the events' size.
    pub max_bytes: u64,
    /// Records kept while no subscription exists, for a later `StartAt::Earliest`.
    pub retain_without_subscribers: usize,
    /// Ingress backpressure: bytes the delivering subscriptions may be behind (see
    /// [`crate::flow`]); `None`: none.
    pub backpressure_window: Option<u64>,
    /// How long [`Channel::room`] waits for room past the window.
    pub backpressure_hold: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_records: 1_000_000,
            max_bytes: 256 << 20,
            retain_without_subscribers: 0,
            backpressure_window: None,
            backpressure_hold: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct SubState {
    tracker: AckTracker,
    /// Next offset to hand out.
    read: u64,
    /// When it last claimed records (backpressure counts delivering ones only).
    last_claim: Instant,
}

#[derive(Debug, Default)]
struct State {
    log: EventRun,
    /// foldhash: looked up on every read and ack (SipHash was 0.7 % of the broker).
    subs: HashMap<String, SubState, foldhash::fast::RandomState>,
}

impl State {
    fn next(&self) -> u64 {
        self.log.end()
    }

    fn backpressure(&self, config: &MemoryConfig) -> Result<(), ChannelError> {
        let next = self.next();
        let behind = self.active().map(|s| Behind {
            records: next.saturating_sub(s.read),
            last_claim: s.last_claim,
        });
        // Every subscription's backlog is in `log`: its mean is the one that counts.
        let mean = self
            .log
            .bytes()
            .checked_div(self.log.len() as u64)
            .unwrap_or(0);
        crate::flow::check(config.backpressure_window, behind, mean, Instant::now())
    }

    /// A subscription's committed cursor.
    fn committed(&self, name: &str) -> Result<u64, ChannelError> {
        self.subs
            .get(name)
            .map(|s| s.tracker.committed())
            .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))
    }

    /// The subscriptions that hold the log (not passive ones).
    fn active(&self) -> impl Iterator<Item = &SubState> {
        self.subs
            .iter()
            .filter(|(n, _)| !crate::is_passive(n))
            .map(|(_, s)| s)
    }

    fn start(&self, at: StartAt) -> u64 {
        let (base, next) = (self.log.base(), self.next());
        match at {
            StartAt::Earliest => base,
            StartAt::Latest => next,
            StartAt::Offset(o) => o.clamp(base, next),
            StartAt::Time(ms) => self.log.first_since(ms),
        }
    }

    /// Drops what no subscription needs; the events removed are handed back, to be
    /// dropped after the lock (freeing an event is a dozen deallocations). An ack's
    /// few fit in the returned vector itself, without an allocation.
    #[must_use = "drop the removed events after the lock"]
    fn trim(&mut self, retain_without: usize) -> SmallVec<[Arc<Event>; 8]> {
        let floor = match self.active().map(|s| s.tracker.committed()).min() {
            Some(min) => min,
            None => self.next().saturating_sub(retain_without as u64),
        };
        let mut removed = SmallVec::new();
        while self.log.base() < floor {
            match self.log.pop_front() {
                Some(e) => removed.push(e),
                None => break,
            }
        }
        removed
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    /// Readers waiting on `notify`: an append wakes them only when there are some
    /// (`notify_waiters` takes the Notify's lock every time).
    waiting: AtomicUsize,
    refusing: Refusing,
    config: MemoryConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the log half-written (every
        // mutation is a single push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the readers waiting for records, if any.
    fn wake_readers(&self) {
        if self.waiting.load(AtomicOrdering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A channel held in RAM.
#[derive(Debug, Clone)]
pub struct MemoryChannel {
    shared: Arc<Shared>,
}

impl MemoryChannel {
    pub fn new(config: MemoryConfig) -> Self {
        MemoryChannel {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                waiting: AtomicUsize::new(0),
                refusing: Refusing::default(),
                config,
            }),
        }
    }
}

impl Default for MemoryChannel {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

#[async_trait]
impl Channel for MemoryChannel {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn backpressure(&self) -> Result<(), ChannelError> {
        let sh = &*self.shared;
        sh.refusing.early(|| sh.lock().backpressure(&sh.config))
    }

    async fn room(&self) -> Result<(), ChannelError> {
        let sh = &*self.shared;
        sh.refusing
            .wait(
                || sh.config.backpressure_hold,
                || sh.lock().backpressure(&sh.config),
            )
            .await
    }

    async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError> {
        // Sized and boxed before the lock: the lock is shared with every delivery's
        // ack.
        let events: Vec<(Arc<Event>, u32)> = events.into_iter().map(crate::run::sized).collect();
        let removed = {
            let mut st = self.shared.lock();
            let config = &self.shared.config;
            let max = config.max_records;
            if st.log.len() + events.len() > max {
                return Err(ChannelError::Full {
                    reason: format!("backlog holds {} of at most {max} events", st.log.len()),
                    retry_after: Duration::from_secs(1),
                });
            }
            let bytes: u64 = events.iter().map(|(_, size)| u64::from(*size)).sum();
            if !st.log.is_empty() && st.log.bytes() + bytes > config.max_bytes {
                return Err(ChannelError::Full {
                    reason: format!(
                        "backlog holds {} of at most {} bytes",
                        st.log.bytes(),
                        config.max_bytes
                    ),
                    retry_after: Duration::from_secs(1),
                });
            }
            for (e, size) in events {
                st.log.push_sized(e, size);
            }
            let _ = self.shared.refusing.note(st.backpressure(config));
            st.trim(config.retain_without_subscribers)
        };
        drop(removed);
        self.shared.wake_readers();
        Ok(())
    }

    async fn subscribe(
        &self,
        name: &str,
        start: StartAt,
    ) -> Result<Arc<dyn Subscription>, ChannelError> {
        let mut st = self.shared.lock();
        let at = st.start(start);
        let sub = st.subs.entry(name.to_owned()).or_insert_with(|| SubState {
            tracker: AckTracker::new(at),
            read: at,
            last_claim: Instant::now(),
        });
        sub.tracker.reset();
        sub.read = sub.tracker.committed();
        Ok(Arc::new(MemorySubscription {
            shared: self.shared.clone(),
            name: name.to_owned(),
        }))
    }

    async fn unsubscribe(&self, name: &str) -> Result<(), ChannelError> {
        let removed = {
            let mut st = self.shared.lock();
            st.subs.remove(name);
            st.trim(self.shared.config.retain_without_subscribers)
        };
        drop(removed);
        self.shared.wake_readers();
        Ok(())
    }

    async fn lag(&self, name: &str) -> Result<u64, ChannelError> {
        let st = self.shared.lock();
        Ok(st.next() - st.committed(name)?)
    }

    async fn ends(&self) -> Result<Vec<Position>, ChannelError> {
        Ok(vec![Position::new(0, self.shared.lock().next())])
    }

    async fn offsets_at(&self, at: StartAt) -> Result<Vec<Position>, ChannelError> {
        Ok(vec![Position::new(0, self.shared.lock().start(at))])
    }

    async fn seek(&self, name: &str, to: &[Position]) -> Result<(), ChannelError> {
        let removed = {
            let mut st = self.shared.lock();
            let (base, next) = (st.log.base(), st.next());
            let sub = st
                .subs
                .get_mut(name)
                .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))?;
            if let Some(p) = to.iter().find(|p| p.partition == 0) {
                let at = p.offset.clamp(base, next);
                sub.tracker = AckTracker::new(at);
                sub.read = at;
            }
            st.trim(self.shared.config.retain_without_subscribers)
        };
        drop(removed);
        self.shared.wake_readers();
        Ok(())
    }

    async fn committed(&self, name: &str) -> Result<Vec<Position>, ChannelError> {
        Ok(vec![Position::new(0, self.shared.lock().committed(name)?)])
    }
}

struct MemorySubscription {
    shared: Arc<Shared>,
    name: String,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&self, max: usize) -> Result<Vec<Record>, ChannelError> {
        let max = max.max(1);
        let _waiting = Waiting::new(&self.shared.waiting);
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = self.shared.lock();
                let st = &mut *guard;
                let (base, next) = (st.log.base(), st.next());
                let sub = st.subs.get_mut(&self.name).ok_or(ChannelError::Closed)?;
                if sub.read < next {
                    let from = sub.read.max(base);
                    let to = next.min(from + max as u64);
                    if let Some(records) = st.log.records(from, to) {
                        sub.read = to;
                        sub.last_claim = Instant::now();
                        self.shared
                            .refusing
                            .recheck(|| st.backpressure(&self.shared.config));
                        return Ok(records);
                    }
                }
            }
            notified.await;
        }
    }

    fn ack(&self, position: Position) -> Result<(), ChannelError> {
        let removed = {
            let mut st = self.shared.lock();
            let sub = st.subs.get_mut(&self.name).ok_or(ChannelError::Closed)?;
            if !sub.tracker.ack(position.offset) {
                return Ok(());
            }
            st.trim(self.shared.config.retain_without_subscribers)
        };
        drop(removed);
        Ok(())
    }
}

/// Counts a reader in [`Shared::waiting`] while it lives (the count goes up before
/// the reader looks at the log, so an append after that look sees it).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, AtomicOrdering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::SeqCst);
    }
}
