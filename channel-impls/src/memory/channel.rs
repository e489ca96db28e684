//! The in-memory channel: fast, bounded, and lost on restart (like Knative's
//! InMemoryChannel, minus the unbounded growth: a backlog cap gives backpressure).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cemesh_proto::Event;
use tokio::sync::Notify;

use crate::{AckTracker, Channel, ChannelError, Position, Record, StartAt, Subscription};

/// Limits of a memory channel.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Records held at most (the slowest subscription's backlog); past it `append`
    /// answers [`ChannelError::Full`].
    pub max_records: usize,
    /// Records kept while no subscription exists, for a later `StartAt::Earliest`.
    pub retain_without_subscribers: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_records: 1_000_000,
            retain_without_subscribers: 0,
        }
    }
}

#[derive(Debug)]
struct SubState {
    tracker: AckTracker,
    /// Next offset to hand out.
    read: u64,
}

#[derive(Debug, Default)]
struct State {
    log: VecDeque<Arc<Event>>,
    /// Offset of `log[0]`.
    base: u64,
    subs: HashMap<String, SubState>,
}

impl State {
    fn next(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    fn trim(&mut self, retain_without: usize) {
        let floor = match self.subs.values().map(|s| s.tracker.committed()).min() {
            Some(min) => min,
            None => self.next().saturating_sub(retain_without as u64),
        };
        while self.base < floor && self.log.pop_front().is_some() {
            self.base += 1;
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    config: MemoryConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the log half-written (every
        // mutation is a single push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError> {
        {
            let mut st = self.shared.lock();
            let max = self.shared.config.max_records;
            if st.log.len() + events.len() > max {
                return Err(ChannelError::Full {
                    reason: format!("backlog holds {} of at most {max} events", st.log.len()),
                    retry_after: Duration::from_secs(1),
                });
            }
            st.log.extend(events.into_iter().map(Arc::new));
            st.trim(self.shared.config.retain_without_subscribers);
        }
        self.shared.notify.notify_waiters();
        Ok(())
    }

    async fn subscribe(
        &self,
        name: &str,
        start: StartAt,
    ) -> Result<Arc<dyn Subscription>, ChannelError> {
        let mut st = self.shared.lock();
        let (base, next) = (st.base, st.next());
        let sub = st.subs.entry(name.to_owned()).or_insert_with(|| {
            let at = match start {
                StartAt::Earliest => base,
                StartAt::Latest => next,
                StartAt::Offset(o) => o.clamp(base, next),
            };
            SubState {
                tracker: AckTracker::new(at),
                read: at,
            }
        });
        sub.tracker.reset();
        sub.read = sub.tracker.committed();
        Ok(Arc::new(MemorySubscription {
            shared: self.shared.clone(),
            name: name.to_owned(),
        }))
    }

    async fn unsubscribe(&self, name: &str) -> Result<(), ChannelError> {
        {
            let mut st = self.shared.lock();
            st.subs.remove(name);
            st.trim(self.shared.config.retain_without_subscribers);
        }
        self.shared.notify.notify_waiters();
        Ok(())
    }

    async fn lag(&self, name: &str) -> Result<u64, ChannelError> {
        let st = self.shared.lock();
        let sub = st
            .subs
            .get(name)
            .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))?;
        Ok(st.next() - sub.tracker.committed())
    }

    async fn ends(&self) -> Result<Vec<Position>, ChannelError> {
        Ok(vec![Position::new(0, self.shared.lock().next())])
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
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = self.shared.lock();
                let st = &mut *guard;
                let next = st.next();
                let base = st.base;
                let sub = st.subs.get_mut(&self.name).ok_or(ChannelError::Closed)?;
                if sub.read < next {
                    let from = sub.read.max(base);
                    let to = next.min(from + max as u64);
                    sub.read = to;
                    let records = (from..to)
                        .map(|offset| Record {
                            position: Position::new(0, offset),
                            event: st.log[(offset - base) as usize].clone(),
                        })
                        .collect();
                    return Ok(records);
                }
            }
            notified.await;
        }
    }

    async fn ack(&self, position: Position) -> Result<(), ChannelError> {
        let mut st = self.shared.lock();
        let sub = st.subs.get_mut(&self.name).ok_or(ChannelError::Closed)?;
        if sub.tracker.ack(position.offset) {
            st.trim(self.shared.config.retain_without_subscribers);
        }
        Ok(())
    }
}
