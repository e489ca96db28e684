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
    /// A topic cemesh reads but does not own (a KafkaSource's).
    pub foreign: Option<ForeignTopic>,
}

/// A topic written by others that cemesh only reads: it must exist (it is never
/// created), every subscription joins the one consumer group given (kept when the
/// subscription goes), records that are not CloudEvents become events as Knative's
/// KafkaSource makes them, and gaps in offsets are believed at once (compaction and
/// transaction markers make them there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignTopic {
    /// The consumer group (Knative's `spec.consumerGroup`).
    pub group: String,
    /// The `source` of wrapped records, before `#{topic}`:
    /// `/apis/v1/namespaces/{ns}/kafkasources/{name}`.
    pub source: String,
    /// How record keys become the `key` extension of wrapped records.
    pub key_type: KeyType,
    /// Extensions set on every event (Knative's `ceOverrides`).
    pub overrides: Vec<(String, String)>,
}

/// Knative's `kafkasources.sources.knative.dev/key-type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    #[default]
    String,
    /// 4 bytes, big-endian; other lengths as a string.
    Int,
    /// 4 or 8 bytes, big-endian IEEE 754; other lengths as a string.
    Float,
    /// The bytes as they are (a binary attribute).
    ByteArray,
}

impl KeyType {
    /// `string`, `int`, `float` or `byte-array`, as the label writes them.
    pub fn parse(s: &str) -> Option<KeyType> {
        Some(match s {
            "string" => KeyType::String,
            "int" => KeyType::Int,
            "float" => KeyType::Float,
            "byte-array" => KeyType::ByteArray,
            _ => return None,
        })
    }
}

/// Fills `{name}` placeholders.
pub(crate) fn expand(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}
