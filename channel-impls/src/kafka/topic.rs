//! One broker's topic as its channel and subscriptions see it: the shared Kafka
//! clients, the topic and its partitions, and how a subscription's consumer group
//! is named. It sits below both `channel` and `subscription` so that neither needs
//! the other's internals.

use std::sync::Arc;

use super::client::StoreInner;
use super::options::{expand, ForeignTopic};

/// A broker's topic and the clients that reach it.
pub(crate) struct BrokerTopic {
    pub(crate) store: Arc<StoreInner>,
    pub(crate) namespace: String,
    pub(crate) broker: String,
    pub(crate) topic: String,
    pub(crate) partitions: i32,
    /// Set when cemesh only reads the topic ([`ForeignTopic`]).
    pub(crate) foreign: Option<ForeignTopic>,
}

impl BrokerTopic {
    /// The consumer group of a subscription. The broker names subscriptions
    /// `namespace/trigger`; a bare name is taken to be in the broker's namespace.
    pub(crate) fn group_name(&self, subscription: &str) -> String {
        if let Some(f) = &self.foreign {
            return f.group.clone();
        }
        let (ns, trigger) = subscription
            .split_once('/')
            .unwrap_or((&self.namespace, subscription));
        expand(
            &self.store.options.group_template,
            &[
                ("namespace", ns),
                ("trigger", trigger),
                ("broker", &self.broker),
            ],
        )
    }
}
