//! The Kafka channel: a broker's log is a Kafka topic, a trigger's cursor is a
//! consumer group. This is how cemesh scales past one machine: any number of
//! stateless `cemesh serve` replicas point at the same Kafka cluster and the same
//! manifests; every replica's ingress appends to any broker's topic, and the
//! replicas share each trigger's partitions through consumer-group rebalancing, so an
//! event is delivered once per trigger across them (at-least-once around a
//! rebalance or a crash).
//!
//! The contract, mapped onto Kafka (see `DESIGN.md`, "The channel contract"):
//! - `append` answers only after Kafka acknowledged every record with `acks=all`
//!   from an idempotent producer. Records use the CloudEvents Kafka binding's
//!   binary mode ([`codec`]), so Knative's Kafka broker and plain Kafka tools read
//!   the topics. A batch is not atomic in Kafka: when one record of a batch fails,
//!   the call fails and the caller's retry may duplicate the others
//!   (at-least-once, like every other failure path).
//! - `subscribe` joins the trigger's consumer group. A group with no committed
//!   offsets is new: its offsets are written before it joins (latest, earliest or
//!   the given offset, per partition), as Knative's controller does before a
//!   trigger turns ready, so nothing appended after `subscribe` returns is missed.
//! - Acks arrive out of order; per partition an [`AckTracker`](crate::AckTracker) keeps the contiguous
//!   prefix of finished records and only that prefix is committed (every
//!   `commit_interval`, and synchronously when a partition is revoked or the
//!   subscription closes). Unlike Knative's Kafka broker, a record whose dead-letter
//!   send failed is simply not acked, so the offset never passes it.
//! - `lag` is the sum over partitions of high watermark minus committed offset,
//!   using this replica's exact in-memory watermark for the partitions it owns.
//! - A crashed replica's partitions go to the survivors after the session timeout;
//!   a subscription that finds partitions assigned to no live member (a coordinator
//!   keeping a dead member's assignment, as tansu 0.6 does) leaves and rejoins its
//!   group (module `orphans`).
//! - `KafkaChannelConfig::max_backlog` refuses appends (`Full`) while the slowest
//!   subscription of the process lags past it.
//! - Retention is Kafka's (`retention.ms` / `retention.bytes` of the topic), not
//!   "removed once every subscription passed": a new subscription starting at
//!   `Earliest` sees everything Kafka still keeps.
//! - Ordering: the `partitionkey` extension is the record key, hashed with
//!   `murmur2` like the Java client, so one key lives in one partition and is read
//!   in append order; the dispatcher's ordered mode does the rest.

mod channel;
pub mod codec;
mod deadletters;
mod orphans;
mod subscription;
#[doc(hidden)]
pub mod testing;
mod topic;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

pub use channel::KafkaChannel;
pub use deadletters::KafkaDeadLetters;
/// The Kafka client, for tools and tests that talk to the topics directly.
pub use rdkafka;

use crate::ChannelError;

/// cemesh's default topic name for a broker.
pub const DEFAULT_TOPIC_TEMPLATE: &str = "cemesh.{namespace}.{broker}";
/// Knative Kafka broker's topic name (`brokers-topic-template`), for sharing topics
/// with it or migrating from it.
pub const KNATIVE_TOPIC_TEMPLATE: &str = "knative-broker-{namespace}-{broker}";
/// cemesh's default consumer group of a trigger.
pub const DEFAULT_GROUP_TEMPLATE: &str = "cemesh.{namespace}.{trigger}";
/// Knative Kafka broker's consumer group (`triggers-consumergroup-template`).
pub const KNATIVE_GROUP_TEMPLATE: &str = "knative-trigger-{namespace}-{trigger}";
/// The dead-letter topic of a trigger (the built-in dead-letter store).
pub const DEFAULT_DEAD_LETTER_TEMPLATE: &str = "cemesh.{namespace}.{trigger}.deadletters";

/// How to reach Kafka and name things in it; shared by every Kafka channel of a
/// process.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `bootstrap.servers`: `HOST:PORT[,HOST:PORT...]`.
    pub bootstrap: String,
    /// librdkafka properties passed through as they are, e.g. `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`. Applied to producer,
    /// consumers and the admin client; they may override cemesh's defaults.
    pub properties: BTreeMap<String, String>,
    /// Topic of a broker; `{namespace}` and `{broker}` are replaced.
    pub topic_template: String,
    /// Consumer group of a trigger; `{namespace}`, `{trigger}` and `{broker}` are
    /// replaced.
    pub group_template: String,
    /// Dead-letter topic of a trigger; `{namespace}` and `{trigger}` are replaced.
    pub dead_letter_template: String,
    /// Partitions of topics cemesh creates.
    pub partitions: i32,
    /// Replication factor of topics cemesh creates.
    pub replication: i32,
    /// How often finished offsets are committed. A crash re-delivers at most what
    /// was in flight plus this much.
    pub commit_interval: Duration,
    /// How long a crashed replica keeps its partitions (`session.timeout.ms`).
    pub session_timeout: Duration,
    /// Timeout of admin and metadata requests.
    pub request_timeout: Duration,
    /// `client.id`, shown in Kafka's logs and tools.
    pub client_id: String,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            bootstrap: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            topic_template: DEFAULT_TOPIC_TEMPLATE.into(),
            group_template: DEFAULT_GROUP_TEMPLATE.into(),
            dead_letter_template: DEFAULT_DEAD_LETTER_TEMPLATE.into(),
            partitions: 10,
            replication: 1,
            commit_interval: Duration::from_millis(200),
            session_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            client_id: "cemesh".into(),
        }
    }
}

/// Settings of one broker's Kafka channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaChannelConfig {
    /// Use this topic instead of the template's (Knative's `external.topic`).
    pub topic: Option<String>,
    /// Partitions when the topic is created (default: [`KafkaOptions::partitions`]).
    pub partitions: Option<i32>,
    /// Replication factor when the topic is created.
    pub replication: Option<i32>,
    /// Extra topic configs when the topic is created, e.g. `retention.ms`.
    pub topic_configs: BTreeMap<String, String>,
    /// `cemesh.dev/max-backlog`: appends answer [`ChannelError::Full`] while the
    /// slowest subscription of this process lags more records than this. The lag
    /// is measured in the background at most once a second, so the cap is
    /// approximate (Kafka's retention stays the hard limit). `None`: no cap.
    pub max_backlog: Option<u64>,
}

/// Fills `{name}` placeholders.
pub(crate) fn expand(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

pub(crate) fn kafka_err(context: impl fmt::Display, e: impl fmt::Display) -> ChannelError {
    ChannelError::Storage(format!("{context}: {e}"))
}

/// One connection to a Kafka cluster: the producer, the admin client and the
/// dead-letter store that every channel of the process shares.
#[derive(Clone)]
pub struct KafkaStore {
    inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    pub(crate) options: KafkaOptions,
    pub(crate) producer: FutureProducer,
    pub(crate) admin: AdminClient<DefaultClientContext>,
    dead_letters: Arc<KafkaDeadLetters>,
}

impl fmt::Debug for KafkaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaStore")
            .field("bootstrap", &self.inner.options.bootstrap)
            .finish()
    }
}

impl StoreInner {
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

    /// How many partitions `topic` has (0 when it does not exist).
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<i32, ChannelError> {
        let producer = self.producer.clone();
        let timeout = self.options.request_timeout;
        let topic = topic.to_owned();
        blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| kafka_err(format!("reading metadata of topic {topic}"), e))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32))
        })
        .await
    }
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

impl KafkaStore {
    /// Connects to Kafka and checks that it answers (metadata request), so a wrong
    /// address fails at start-up rather than on the first event.
    pub async fn connect(options: KafkaOptions) -> Result<KafkaStore, ChannelError> {
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
        let inner = Arc::new_cyclic(|weak| StoreInner {
            options,
            producer,
            admin,
            dead_letters: Arc::new(KafkaDeadLetters::new(weak.clone())),
        });
        Ok(KafkaStore { inner })
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.inner.options
    }

    /// The topic name of a broker.
    pub fn topic_name(&self, namespace: &str, broker: &str, config: &KafkaChannelConfig) -> String {
        config.topic.clone().unwrap_or_else(|| {
            expand(
                &self.inner.options.topic_template,
                &[("namespace", namespace), ("broker", broker)],
            )
        })
    }

    /// Opens the channel of broker `namespace/broker`, creating its topic through the
    /// admin API if it does not exist.
    pub async fn channel(
        &self,
        namespace: &str,
        broker: &str,
        config: KafkaChannelConfig,
    ) -> Result<KafkaChannel, ChannelError> {
        let topic = self.topic_name(namespace, broker, &config);
        let partitions = self
            .inner
            .ensure_topic(
                &topic,
                config.partitions.unwrap_or(self.inner.options.partitions),
                config.replication.unwrap_or(self.inner.options.replication),
                &config.topic_configs,
            )
            .await?;
        Ok(KafkaChannel::new(
            self.inner.clone(),
            namespace,
            broker,
            topic,
            partitions,
            config.max_backlog,
        ))
    }

    /// The built-in dead-letter store: one topic per trigger.
    pub fn dead_letters(&self) -> Arc<KafkaDeadLetters> {
        self.inner.dead_letters.clone()
    }
}
