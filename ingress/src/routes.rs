//! The live broker table the ingress routes by. The control plane swaps in a new table
//! on reload; requests in flight keep the table they started with.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cemesh_channels::Channel;

/// A broker's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerKey {
    pub namespace: String,
    pub name: String,
}

impl BrokerKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        BrokerKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for BrokerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the ingress needs of a broker.
#[derive(Debug)]
pub struct BrokerEndpoint {
    pub key: BrokerKey,
    pub channel: Arc<dyn Channel>,
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
}

/// The table of brokers, cheap to read on every request and swapped whole on change.
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<ArcSwap<HashMap<BrokerKey, Arc<BrokerEndpoint>>>>);

impl Routes {
    pub fn get(&self, key: &BrokerKey) -> Option<Arc<BrokerEndpoint>> {
        self.0.load().get(key).cloned()
    }

    pub fn replace(&self, table: HashMap<BrokerKey, Arc<BrokerEndpoint>>) {
        self.0.store(Arc::new(table));
    }

    pub fn keys(&self) -> Vec<BrokerKey> {
        self.0.load().keys().cloned().collect()
    }
}
