//! Where a subscription starting at a [`StartAt`] starts in each partition.
//!
//! `Time` asks Kafka (`ListOffsets` by timestamp, i.e. the records' timestamps) and
//! checks each answer against the records around it: the record at the answer is
//! not older than the time, the one before it is. tansu 0.6 answers from when it
//! stored each batch and says 0, not "none", when nothing is that new; an answer
//! that fails the check is replaced by a binary search over the partition's record
//! timestamps (one single-record fetch per step), which assumes they grow with the
//! offsets. On a server that answers a fetch from the middle of a batch with the
//! next batch, the search may start up to a batch early, never late.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::client::{blocking, kafka_err, StoreInner};
use super::topic::BrokerTopic;
use crate::{ChannelError, Position, StartAt};

/// Per partition, where a subscription created now with `at` would start.
pub(crate) async fn offsets_at(
    chan: &BrokerTopic,
    at: StartAt,
) -> Result<Vec<Position>, ChannelError> {
    let config = reader_config(&chan.store);
    let (topic, partitions) = (chan.topic.clone(), chan.partitions);
    let timeout = chan.store.options.request_timeout;
    blocking(move || {
        let c: BaseConsumer = config
            .create()
            .map_err(|e| kafka_err("creating a client to read offsets", e))?;
        let starts = starts(&c, &config, &topic, partitions, at, timeout)?;
        Ok((0u32..)
            .zip(starts)
            .map(|(p, o)| Position::new(p, u64::try_from(o).unwrap_or(0)))
            .collect())
    })
    .await
}

/// The config of clients that read offsets and single records (no group joined).
pub(crate) fn reader_config(store: &StoreInner) -> ClientConfig {
    store.client_config(&[
        ("group.id", "cemesh-offsets"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "true"),
        ("auto.offset.reset", "earliest"),
        ("fetch.wait.max.ms", "100"),
    ])
}

/// Blocking: each partition's start offset. `consumer` reads the watermarks and asks
/// Kafka; for `Time`, a client made from `reader` checks the answers.
pub(crate) fn starts<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    reader: &ClientConfig,
    topic: &str,
    partitions: i32,
    at: StartAt,
    timeout: Duration,
) -> Result<Vec<i64>, ChannelError> {
    let marks = (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| kafka_err(format!("reading the offsets of topic {topic}"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let offset = |o: u64| i64::try_from(o).unwrap_or(i64::MAX);
    Ok(match at {
        StartAt::Earliest => marks.iter().map(|m| m.0).collect(),
        StartAt::Latest => marks.iter().map(|m| m.1).collect(),
        StartAt::Offset(o) => marks.iter().map(|&m| clamp(offset(o), m)).collect(),
        StartAt::Time(ms) => at_time(consumer, reader, topic, &marks, offset(ms), timeout)?,
    })
}

/// `o` within `[low, high]`.
pub(crate) fn clamp(o: i64, (low, high): (i64, i64)) -> i64 {
    o.min(high).max(low)
}

fn at_time<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    reader: &ClientConfig,
    topic: &str,
    marks: &[(i64, i64)],
    ts: i64,
    timeout: Duration,
) -> Result<Vec<i64>, ChannelError> {
    let mut tpl = TopicPartitionList::new();
    for p in (0..).take(marks.len()) {
        tpl.add_partition_offset(topic, p, Offset::Offset(ts))
            .map_err(|e| kafka_err("building an offset list", e))?;
    }
    let told = consumer
        .offsets_for_times(tpl, timeout)
        .map_err(|e| kafka_err(format!("looking up offsets by time in topic {topic}"), e))?;
    let mut records: Option<Records> = None;
    let mut out = Vec::with_capacity(marks.len());
    for (p, &(low, high)) in (0..).zip(marks) {
        if low >= high {
            out.push(high);
            continue;
        }
        let said = told
            .find_partition(topic, p)
            .filter(|e| e.error().is_ok())
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(clamp(o, (low, high))),
                Offset::End => Some(high),
                _ => None,
            });
        let records = match &mut records {
            Some(r) => r,
            None => records.insert(Records::new(reader, topic, timeout)?),
        };
        let at = match said {
            Some(o) if records.starts_at(p, o, (low, high), ts)? => o,
            _ => {
                let found = records.search(p, (low, high), ts)?;
                tracing::debug!(topic, partition = p, ?said, found, "Kafka's offset for a time does not match the records' timestamps; searched them");
                found
            }
        };
        out.push(at);
    }
    Ok(out)
}

/// Reads single records by offset, from a client assigned one partition at a time.
struct Records {
    consumer: BaseConsumer,
    topic: String,
    timeout: Duration,
}

impl Records {
    fn new(config: &ClientConfig, topic: &str, timeout: Duration) -> Result<Records, ChannelError> {
        Ok(Records {
            consumer: config
                .create()
                .map_err(|e| kafka_err("creating a client to read records", e))?,
            topic: topic.to_owned(),
            timeout,
        })
    }

    /// The offset and timestamp of the first record at or after `offset`; `None`
    /// when there is none.
    fn first_from(&self, p: i32, offset: i64) -> Result<Option<(i64, Option<i64>)>, ChannelError> {
        let topic = &self.topic;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .map_err(|e| kafka_err("building an offset list", e))?;
        // A new assignment drops what was fetched for the previous one.
        self.consumer
            .assign(&tpl)
            .map_err(|e| kafka_err(format!("reading partition {p} of topic {topic}"), e))?;
        let deadline = Instant::now() + self.timeout;
        let mut last_error = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = last_error
                    .map_or_else(|| "no answer".to_owned(), |e: KafkaError| e.to_string());
                return Err(ChannelError::Storage(format!(
                    "reading partition {p} of topic {topic} at offset {offset}: {why} within {:?}",
                    self.timeout
                )));
            }
            match self.consumer.poll(left) {
                Some(Ok(m)) if m.partition() == p && m.offset() >= offset => {
                    return Ok(Some((m.offset(), m.timestamp().to_millis())))
                }
                Some(Err(KafkaError::PartitionEOF(q))) if q == p => return Ok(None),
                Some(Err(e)) => last_error = Some(e),
                Some(Ok(_)) | None => {}
            }
        }
    }

    /// Whether the first record at or after `offset` is older than `ts`.
    fn older(&self, p: i32, offset: i64, ts: i64) -> Result<bool, ChannelError> {
        Ok(matches!(self.first_from(p, offset)?, Some((_, Some(t))) if t < ts))
    }

    /// Whether records reach `ts` at `o`: the record there (if any) is not older,
    /// the one before it (if any) is.
    fn starts_at(
        &self,
        p: i32,
        o: i64,
        (low, high): (i64, i64),
        ts: i64,
    ) -> Result<bool, ChannelError> {
        Ok((o >= high || !self.older(p, o, ts)?) && (o <= low || self.older(p, o - 1, ts)?))
    }

    /// The first offset in `[low, high]` from which records are not older than `ts`.
    fn search(&self, p: i32, (low, high): (i64, i64), ts: i64) -> Result<i64, ChannelError> {
        let (mut lo, mut hi) = (low, high);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.first_from(p, mid)? {
                // Everything up to that record is older.
                Some((o, Some(t))) if t < ts => lo = (o.max(mid) + 1).min(hi),
                _ => hi = mid,
            }
        }
        Ok(lo)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::producer::FutureRecord;

    use super::*;

    /// Records stamped 1 s, 2 s, ... 10 s after the epoch: tansu 0.6 answers 0 for
    /// every such time (it goes by when it stored them), so past the first record
    /// the answer fails the check and the search finds the offset.
    #[tokio::test]
    async fn a_time_between_records_starts_at_the_first_record_not_older() {
        let store = StoreInner::connect(crate::kafka::testing::options())
            .await
            .unwrap();
        let topic = crate::kafka::testing::unique("cemesh-offsets-test.");
        store
            .ensure_topic(&topic, 1, 1, &BTreeMap::new())
            .await
            .unwrap();
        for i in 1..=10i64 {
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
                .payload(b"x".as_slice())
                .timestamp(i * 1000);
            store
                .producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap();
        }
        let config = reader_config(&store);
        let timeout = store.options.request_timeout;
        let answers = blocking(move || {
            let c: BaseConsumer = config.create().unwrap();
            let at = |ms| starts(&c, &config, &topic, 1, StartAt::Time(ms), timeout).unwrap()[0];
            let records = Records::new(&config, &topic, timeout).unwrap();
            assert!(records.starts_at(0, 5, (0, 10), 5500).unwrap());
            assert!(!records.starts_at(0, 0, (0, 10), 5500).unwrap());
            assert!(!records.starts_at(0, 10, (0, 10), 5500).unwrap());
            Ok([0, 1000, 1001, 5500, 10_000, 10_001, u64::MAX].map(|ms| (ms, at(ms))))
        })
        .await
        .unwrap();
        let want = [0, 0, 1, 5, 9, 10, 10];
        assert_eq!(answers.map(|(_, o)| o), want, "{answers:?}");
    }
}
