//! Settings of the Kafka channels and how topics and consumer groups are named
//! (cemesh's templates, and Knative's for sharing topics with its Kafka broker).

use std::collections::BTreeMap;
use std::time::Duration;

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
