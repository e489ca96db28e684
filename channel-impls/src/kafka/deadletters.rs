//! The built-in dead-letter store on Kafka: one topic per trigger (one partition,
//! so ids are ordered), so dead letters survive like the events they came from and
//! every replica sees the same ones.
//!
//! A dead letter is a record in CloudEvents binary mode (other Kafka tools read the
//! event) plus a `cemesh_deadletter` header with the trigger, reason, time and
//! attempts as JSON. Its id is its offset + 1. Kafka cannot delete one record, so
//! `remove` appends a marker record (`cemesh_deadletter_remove: ID`); readers fold
//! the topic into the current set, and each replica caches that fold and only reads
//! what was appended since.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::client::{blocking, kafka_err, StoreInner};
use super::codec;
use super::options::expand;
use crate::deadletter::{Attempt, DeadLetter, DeadLetterStore};
use crate::ChannelError;

const META_HEADER: &str = "cemesh_deadletter";
const REMOVE_HEADER: &str = "cemesh_deadletter_remove";

#[derive(Serialize, Deserialize)]
struct Meta {
    trigger: String,
    reason: String,
    dead_at: String,
    attempts: Vec<Attempt>,
}

/// A trigger's dead letters as folded from its topic so far.
#[derive(Default)]
struct View {
    /// Next offset to read.
    next: i64,
    letters: BTreeMap<u64, DeadLetter>,
}

/// Dead letters in Kafka topics (see the module docs).
pub struct KafkaDeadLetters {
    store: Weak<StoreInner>,
    views: tokio::sync::Mutex<HashMap<String, View>>,
    created: std::sync::Mutex<HashSet<String>>,
}

impl fmt::Debug for KafkaDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaDeadLetters").finish_non_exhaustive()
    }
}

fn storage(what: impl fmt::Display, e: impl fmt::Display) -> ChannelError {
    kafka_err(what, e)
}

impl KafkaDeadLetters {
    pub(crate) fn new(store: Weak<StoreInner>) -> Self {
        KafkaDeadLetters {
            store,
            views: Default::default(),
            created: Default::default(),
        }
    }

    fn store(&self) -> Result<Arc<StoreInner>, ChannelError> {
        self.store.upgrade().ok_or(ChannelError::Closed)
    }

    /// The topic of a trigger (`namespace/name`).
    pub fn topic(&self, trigger: &str) -> Result<String, ChannelError> {
        let store = self.store()?;
        let (ns, name) = trigger.split_once('/').unwrap_or(("default", trigger));
        Ok(expand(
            &store.options.dead_letter_template,
            &[("namespace", ns), ("trigger", name)],
        ))
    }

    async fn ensure(&self, store: &StoreInner, topic: &str) -> Result<(), ChannelError> {
        if self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        store
            .ensure_topic(topic, 1, store.options.replication, &BTreeMap::new())
            .await?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    async fn produce(
        &self,
        store: &StoreInner,
        topic: &str,
        headers: OwnedHeaders,
        value: Option<&[u8]>,
    ) -> Result<u64, ChannelError> {
        self.ensure(store, topic).await?;
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let delivery = store
            .producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| storage(format!("writing to dead-letter topic {topic}"), e))?;
        Ok(u64::try_from(delivery.offset).unwrap_or(0) + 1)
    }

    /// Reads what was appended to a trigger's topic since the last look.
    async fn refresh(
        &self,
        trigger: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, HashMap<String, View>>, ChannelError> {
        let store = self.store()?;
        let topic = self.topic(trigger)?;
        let mut views = self.views.lock().await;
        let view = views.remove(trigger).unwrap_or_default();
        if store.partition_count(&topic).await? == 0 {
            views.insert(trigger.to_owned(), view);
            return Ok(views);
        }
        let config = store.client_config(&[
            ("group.id", "cemesh-deadletter-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ]);
        let timeout = store.options.request_timeout;
        let view = blocking(move || read_forward(config, &topic, view, timeout)).await?;
        views.insert(trigger.to_owned(), view);
        Ok(views)
    }
}

fn read_forward(
    config: rdkafka::ClientConfig,
    topic: &str,
    mut view: View,
    timeout: Duration,
) -> Result<View, ChannelError> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| storage("creating a dead-letter reader", e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .map_err(|e| storage(format!("reading the offsets of {topic}"), e))?;
    view.next = view.next.max(low);
    if view.next >= high {
        return Ok(view);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(view.next))
        .map_err(|e| storage("building an offset list", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| storage(format!("reading {topic}"), e))?;
    let deadline = Instant::now() + timeout;
    while view.next < high {
        if Instant::now() > deadline {
            return Err(ChannelError::Storage(format!(
                "reading dead-letter topic {topic}: timed out at offset {} of {high}",
                view.next
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => continue,
            Err(e) => return Err(storage(format!("reading {topic}"), e)),
        };
        view.next = m.offset() + 1;
        let id = u64::try_from(m.offset()).unwrap_or(0) + 1;
        let headers = m.headers();
        let header = |name: &str| {
            headers.and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        };
        if let Some(removed) = header(REMOVE_HEADER) {
            if let Some(removed) = std::str::from_utf8(removed)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                view.letters.remove(&removed);
            }
            continue;
        }
        let Some(meta) = header(META_HEADER) else {
            continue;
        };
        let meta: Meta = serde_json::from_slice(meta).map_err(|e| {
            storage(
                format!("dead letter {id} in {topic} has unreadable metadata"),
                e,
            )
        })?;
        let event = match codec::decode(headers, m.payload()) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                return Err(storage(
                    format!("dead letter {id} in {topic} holds an invalid event"),
                    e,
                ))
            }
        };
        view.letters.insert(
            id,
            DeadLetter {
                id,
                trigger: meta.trigger,
                event,
                reason: meta.reason,
                attempts: meta.attempts,
                dead_at: meta.dead_at,
            },
        );
    }
    Ok(view)
}

#[async_trait]
impl DeadLetterStore for KafkaDeadLetters {
    async fn put(&self, letter: DeadLetter) -> Result<u64, ChannelError> {
        let store = self.store()?;
        let topic = self.topic(&letter.trigger)?;
        let meta = serde_json::to_vec(&Meta {
            trigger: letter.trigger.clone(),
            reason: letter.reason.clone(),
            dead_at: letter.dead_at.clone(),
            attempts: letter.attempts.clone(),
        })
        .map_err(|e| storage("encoding a dead letter", e))?;
        let enc = codec::encode(&letter.event);
        let headers = enc.headers.insert(Header {
            key: META_HEADER,
            value: Some(&meta),
        });
        self.produce(&store, &topic, headers, enc.value.as_deref())
            .await
    }

    async fn list(
        &self,
        trigger: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ChannelError> {
        let views = self.refresh(trigger).await?;
        Ok(views
            .get(trigger)
            .map(|v| {
                v.letters
                    .range(after.map_or(0, |a| a.saturating_add(1))..)
                    .take(limit)
                    .map(|(_, l)| l.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn get(&self, trigger: &str, id: u64) -> Result<Option<DeadLetter>, ChannelError> {
        let views = self.refresh(trigger).await?;
        Ok(views.get(trigger).and_then(|v| v.letters.get(&id).cloned()))
    }

    async fn remove(&self, trigger: &str, id: u64) -> Result<bool, ChannelError> {
        if self.get(trigger, id).await?.is_none() {
            return Ok(false);
        }
        let store = self.store()?;
        let topic = self.topic(trigger)?;
        let id_text = id.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: REMOVE_HEADER,
            value: Some(&id_text),
        });
        self.produce(&store, &topic, headers, None).await?;
        if let Some(v) = self.views.lock().await.get_mut(trigger) {
            v.letters.remove(&id);
        }
        Ok(true)
    }

    async fn count(&self, trigger: &str) -> Result<u64, ChannelError> {
        let views = self.refresh(trigger).await?;
        Ok(views.get(trigger).map_or(0, |v| v.letters.len() as u64))
    }
}
