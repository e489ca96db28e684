//! [`KafkaStore`]: one connection to a Kafka cluster, which opens brokers'
//! channels (creating their topics) and holds the built-in dead-letter store.

use std::fmt;
use std::sync::Arc;

use super::channel::KafkaChannel;
use super::client::StoreInner;
use super::deadletters::KafkaDeadLetters;
use super::options::{expand, KafkaChannelConfig, KafkaOptions};
use crate::ChannelError;

/// One connection to a Kafka cluster: the producer, the admin client and the
/// dead-letter store that every channel of the process shares.
#[derive(Clone)]
pub struct KafkaStore {
    inner: Arc<StoreInner>,
    /// Holds only a weak reference to `inner`.
    dead_letters: Arc<KafkaDeadLetters>,
}

impl fmt::Debug for KafkaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaStore")
            .field("bootstrap", &self.inner.options.bootstrap)
            .finish()
    }
}

impl KafkaStore {
    /// Connects to Kafka and checks that it answers (metadata request), so a wrong
    /// address fails at start-up rather than on the first event.
    pub async fn connect(options: KafkaOptions) -> Result<KafkaStore, ChannelError> {
        let inner = Arc::new(StoreInner::connect(options).await?);
        let dead_letters = Arc::new(KafkaDeadLetters::new(Arc::downgrade(&inner)));
        Ok(KafkaStore {
            inner,
            dead_letters,
        })
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
        let partitions = if config.foreign.is_some() {
            match self.inner.existing_partition_count(&topic).await? {
                0 => {
                    return Err(ChannelError::Storage(format!(
                        "topic {topic} does not exist in Kafka at {}",
                        self.inner.options.bootstrap
                    )))
                }
                n => n,
            }
        } else {
            self.inner
                .ensure_topic(
                    &topic,
                    config.partitions.unwrap_or(self.inner.options.partitions),
                    config.replication.unwrap_or(self.inner.options.replication),
                    &config.topic_configs,
                )
                .await?
        };
        Ok(KafkaChannel::new(
            self.inner.clone(),
            namespace,
            broker,
            topic,
            partitions,
            config.max_backlog,
            config.foreign,
        ))
    }

    /// The built-in dead-letter store: one topic per trigger.
    pub fn dead_letters(&self) -> Arc<KafkaDeadLetters> {
        self.dead_letters.clone()
    }
}
