//! The clients every Kafka channel of a process shares ([`StoreInner`]: options,
//! idempotent producer, admin client), how they are configured and connected, and
//! the helpers around librdkafka calls (errors with context, blocking calls off the
//! async threads, topic creation).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use super::options::KafkaOptions;
use crate::ChannelError;

pub(crate) fn kafka_err(context: impl fmt::Display, e: impl fmt::Display) -> ChannelError {
    ChannelError::Storage(format!("{context}: {e}"))
}

pub(crate) struct StoreInner {
    pub(crate) options: KafkaOptions,
    pub(crate) producer: FutureProducer,
    pub(crate) admin: AdminClient<DefaultClientContext>,
}

impl StoreInner {
    /// Creates the producer and the admin client and checks that Kafka answers
    /// (metadata request), so a wrong address fails at start-up rather than on the
    /// first event.
    pub(crate) async fn connect(options: KafkaOptions) -> Result<StoreInner, ChannelError> {
        if options.bootstrap.trim().is_empty() {
            return Err(ChannelError::Storage(
                "Kafka bootstrap servers are empty (set --kafka-bootstrap HOST:PORT)".into(),
            ));
        }
        if options.partitions < 1 || options.replication < 1 {
            return Err(ChannelError::Storage(format!(
                "Kafka topic partitions ({}) and replication ({}) must be at least 1",
                options.partitions, options.replication
            )));
        }
        let producer_config = base_config(
            &options,
            &[
                // Durable before 202: every in-sync replica has it.
                ("acks", "all"),
                // No duplicates or reordering from the producer's own retries.
                ("enable.idempotence", "true"),
                // The Java client's partitioner: same key, same partition as
                // Knative's Kafka broker and other Java producers.
                ("partitioner", "murmur2_random"),
                ("linger.ms", "2"),
                ("message.timeout.ms", "30000"),
            ],
        );
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| kafka_err("creating the Kafka producer", e))?;
        let admin: AdminClient<DefaultClientContext> = base_config(&options, &[])
            .create()
            .map_err(|e| kafka_err("creating the Kafka admin client", e))?;
        let probe = producer.clone();
        let timeout = options.request_timeout;
        let bootstrap = options.bootstrap.clone();
        blocking(move || {
            probe.client().fetch_metadata(None, timeout).map_err(|e| {
                let hint = if is_unreachable(&e) {
                    " (is Kafka running and reachable there?)"
                } else {
                    ""
                };
                kafka_err(format!("cannot reach Kafka at {bootstrap}{hint}"), e)
            })?;
            Ok(())
        })
        .await?;
        Ok(StoreInner {
            options,
            producer,
            admin,
        })
    }

    /// A client config with the bootstrap servers, the client id and the
    /// passthrough properties (last, so they win).
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        base_config(&self.options, defaults)
    }

    /// Creates `topic` unless it exists; returns its partition count.
    pub(crate) async fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<i32, ChannelError> {
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.options.request_timeout));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| kafka_err(format!("creating topic {topic}"), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(kafka_err(format!("creating topic {t}"), code)),
            }
        }
        // Metadata may lag behind the creation for a moment.
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        loop {
            match self.partition_count(topic).await {
                Ok(n) if n > 0 => return Ok(n),
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(_) => {
                    return Err(ChannelError::Storage(format!(
                        "topic {topic} was created but has no partitions in the metadata"
                    )))
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// How many partitions an existing `topic` has (0 when it does not exist),
    /// asked through a consumer: a producer's metadata request may create the topic
    /// on a cluster with `auto.create.topics.enable`, and a typo in a KafkaSource
    /// must not make an empty topic it then waits on.
    pub(crate) async fn existing_partition_count(&self, topic: &str) -> Result<i32, ChannelError> {
        let config = self.client_config(&[
            ("group.id", "cemesh-metadata"),
            ("allow.auto.create.topics", "false"),
        ]);
        let timeout = self.options.request_timeout;
        let topic = topic.to_owned();
        blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = config
                .create()
                .map_err(|e| kafka_err("creating a client to read metadata", e))?;
            topic_partitions(
                rdkafka::consumer::Consumer::client(&consumer),
                &topic,
                timeout,
            )
        })
        .await
    }

    /// How many partitions `topic` has (0 when it does not exist).
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<i32, ChannelError> {
        let producer = self.producer.clone();
        let timeout = self.options.request_timeout;
        let topic = topic.to_owned();
        blocking(move || topic_partitions(producer.client(), &topic, timeout)).await
    }
}

/// `topic`'s partition count from a metadata request through `client` (0 when the
/// topic does not exist).
fn topic_partitions<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, ChannelError> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| kafka_err(format!("reading metadata of topic {topic}"), e))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32))
}

pub(crate) fn base_config(options: &KafkaOptions, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.bootstrap)
        .set("client.id", &options.client_id)
        .set(
            "socket.timeout.ms",
            options.request_timeout.as_millis().max(10).to_string(),
        );
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &options.properties {
        c.set(k, v);
    }
    c
}

/// Runs a blocking librdkafka call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChannelError> + Send + 'static,
) -> Result<T, ChannelError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ChannelError::Storage(format!("Kafka client task failed: {e}")))?
}

fn is_unreachable(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::BrokerTransportFailure)
            | Some(RDKafkaErrorCode::AllBrokersDown)
            | Some(RDKafkaErrorCode::OperationTimedOut)
    )
}
