//! The broker side of a Kafka channel: appends through the shared idempotent
//! producer; subscriptions are consumer groups ([`super::subscription`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cemesh_proto::Event;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;

use super::client::{kafka_err, StoreInner};
use super::codec;
use super::offsets;
use super::subscription::{self, SubInner};
use super::topic::BrokerTopic;
use crate::{is_passive, Channel, ChannelError, Position, StartAt, Subscription};

/// One broker's topic.
#[derive(Clone)]
pub struct KafkaChannel {
    inner: Arc<ChannelInner>,
}

struct ChannelInner {
    target: BrokerTopic,
    /// This process's open subscriptions by name; a second `subscribe` of a name
    /// reuses the consumer (a changed trigger restarts without a rebalance).
    subs: Mutex<HashMap<String, Arc<SubInner>>>,
    /// The backlog cap (`KafkaChannelConfig::max_backlog`).
    max_backlog: Option<u64>,
    backlog: Mutex<Backlog>,
}

/// The last measured lag of the slowest subscription.
#[derive(Default)]
struct Backlog {
    lag: u64,
    measured: Option<Instant>,
    measuring: bool,
}

/// How old a backlog measurement may be before an append starts a new one.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

impl fmt::Debug for KafkaChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaChannel")
            .field("topic", &self.inner.target.topic)
            .field("partitions", &self.inner.target.partitions)
            .finish()
    }
}

impl KafkaChannel {
    pub(crate) fn new(
        store: Arc<StoreInner>,
        namespace: &str,
        broker: &str,
        topic: String,
        partitions: i32,
        max_backlog: Option<u64>,
        foreign: Option<super::options::ForeignTopic>,
    ) -> Self {
        KafkaChannel {
            inner: Arc::new(ChannelInner {
                target: BrokerTopic {
                    store,
                    namespace: namespace.to_owned(),
                    broker: broker.to_owned(),
                    topic,
                    partitions,
                    foreign,
                },
                subs: Mutex::default(),
                max_backlog,
                backlog: Mutex::default(),
            }),
        }
    }

    /// Refuses appends while the slowest subscription lags past the cap. Answers
    /// from the last measurement and starts a new one when it is stale, so an
    /// append never waits for Kafka's offsets.
    fn check_backlog(&self) -> Result<(), ChannelError> {
        let Some(cap) = self.inner.max_backlog else {
            return Ok(());
        };
        let lag = {
            let mut st = self.inner.backlog.lock().unwrap_or_else(|p| p.into_inner());
            let stale = st.measured.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY);
            if stale && !st.measuring {
                st.measuring = true;
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    let lag = inner.slowest_lag().await;
                    let mut st = inner.backlog.lock().unwrap_or_else(|p| p.into_inner());
                    st.measuring = false;
                    st.measured = Some(Instant::now());
                    if let Some(lag) = lag {
                        st.lag = lag;
                    }
                });
            }
            st.lag
        };
        if lag > cap {
            return Err(ChannelError::Full {
                reason: format!(
                    "the slowest trigger of topic {} is {lag} events behind (max-backlog {cap})",
                    self.inner.target.topic
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(())
    }

    /// The Kafka topic holding this channel's events.
    pub fn topic(&self) -> &str {
        &self.inner.target.topic
    }

    /// The consumer group of a subscription. The broker names subscriptions
    /// `namespace/trigger`; a bare name is taken to be in the broker's namespace.
    pub fn group_name(&self, subscription: &str) -> String {
        self.inner.target.group_name(subscription)
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<String, Arc<SubInner>>> {
        self.inner.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChannelInner {
    /// The largest lag over this process's subscriptions, passive ones aside;
    /// `None` when none could be measured.
    async fn slowest_lag(self: &Arc<Self>) -> Option<u64> {
        let subs: Vec<(String, Arc<SubInner>)> = self
            .subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(n, _)| !is_passive(n))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let mut slowest = None;
        for (name, sub) in subs {
            match subscription::lag(&self.target, &name, Some(sub)).await {
                Ok(lag) => slowest = Some(slowest.unwrap_or(0).max(lag)),
                Err(e) => {
                    tracing::debug!(topic = %self.target.topic, subscription = %name, error = %e, "Measuring the backlog failed")
                }
            }
        }
        slowest
    }
}

fn full(e: &KafkaError) -> Option<ChannelError> {
    (e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)).then(|| ChannelError::Full {
        reason: "the Kafka producer's queue is full".into(),
        retry_after: Duration::from_secs(1),
    })
}

#[async_trait]
impl Channel for KafkaChannel {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError> {
        self.check_backlog()?;
        let topic = &self.inner.target.topic;
        let producer = &self.inner.target.store.producer;
        let mut pending = Vec::with_capacity(events.len());
        for event in &events {
            let enc = codec::encode(event);
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(topic).headers(enc.headers);
            if let Some(v) = &enc.value {
                record = record.payload(v.as_ref());
            }
            if let Some(k) = &enc.key {
                record = record.key(k.as_str());
            }
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => {
                    // Records already queued still go out; the caller's retry may
                    // duplicate them (at-least-once).
                    return Err(full(&e).unwrap_or_else(|| {
                        kafka_err(format!("queueing an event for topic {topic}"), e)
                    }));
                }
            }
        }
        let mut first_error = None;
        for delivery in pending {
            let outcome = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => {
                    full(&e).unwrap_or_else(|| kafka_err(format!("writing to topic {topic}"), e))
                }
                Err(_) => ChannelError::Storage(format!(
                    "writing to topic {topic}: the producer dropped the delivery report"
                )),
            };
            first_error.get_or_insert(outcome);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn subscribe(
        &self,
        name: &str,
        start: StartAt,
    ) -> Result<Arc<dyn Subscription>, ChannelError> {
        let existing = self.subs().get(name).cloned();
        if let Some(sub) = existing {
            sub.reopen().await?;
            return Ok(Arc::new(subscription::Handle::new(sub)));
        }
        let sub = SubInner::open(&self.inner.target, name, start).await?;
        // Two racing subscribes of one name: keep the first, close the other.
        let (sub, loser) = {
            let mut subs = self.subs();
            match subs.get(name) {
                Some(first) => (first.clone(), Some(sub)),
                None => {
                    subs.insert(name.to_owned(), sub.clone());
                    (sub, None)
                }
            }
        };
        if let Some(loser) = loser {
            loser.close().await;
        }
        Ok(Arc::new(subscription::Handle::new(sub)))
    }

    async fn unsubscribe(&self, name: &str) -> Result<(), ChannelError> {
        let sub = self.subs().remove(name);
        if let Some(sub) = sub {
            sub.close().await;
        }
        if self.inner.target.foreign.is_some() {
            // The group is its owners' (a KafkaSource's `consumerGroup`).
            return Ok(());
        }
        subscription::delete_group(&self.inner.target, &self.group_name(name)).await
    }

    async fn lag(&self, name: &str) -> Result<u64, ChannelError> {
        let local = self.subs().get(name).cloned();
        subscription::lag(&self.inner.target, name, local).await
    }

    async fn ends(&self) -> Result<Vec<Position>, ChannelError> {
        let local = self.subs().values().next().cloned();
        subscription::ends(&self.inner.target, local).await
    }

    async fn offsets_at(&self, at: StartAt) -> Result<Vec<Position>, ChannelError> {
        offsets::offsets_at(&self.inner.target, at).await
    }

    async fn seek(&self, name: &str, to: &[Position]) -> Result<(), ChannelError> {
        let topic = &self.inner.target.topic;
        if self.inner.target.foreign.is_some() {
            return Err(ChannelError::Storage(format!(
                "subscription {name} reads topic {topic}, which cemesh does not own: its \
                 consumer group {} is not cemesh's to move",
                self.group_name(name)
            )));
        }
        // Open with no handle: its trigger stopped. Closing commits what it
        // finished and leaves the group.
        let idle = {
            let mut subs = self.subs();
            match subs.get(name) {
                Some(sub) if sub.in_use() => {
                    return Err(ChannelError::Storage(format!(
                        "subscription {name} of topic {topic} is being read in this process; \
                         stop its trigger first"
                    )))
                }
                Some(_) => subs.remove(name),
                None => None,
            }
        };
        if let Some(sub) = idle {
            sub.close().await;
        }
        subscription::seek(&self.inner.target, name, to).await
    }

    async fn committed(&self, name: &str) -> Result<Vec<Position>, ChannelError> {
        let local = self.subs().get(name).cloned();
        subscription::committed(&self.inner.target, name, local).await
    }
}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        let subs = std::mem::take(self.subs.get_mut().unwrap_or_else(|p| p.into_inner()));
        for sub in subs.into_values() {
            sub.close_in_background();
        }
    }
}
