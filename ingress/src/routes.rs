//! The live broker table the ingress routes by. The control plane swaps in a new table
//! on reload; requests in flight keep the table they started with.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The table of brokers, cheap to read on every request and swapped whole on change,
/// and whether the process is draining (shutting down: new events are refused with
/// 503 and `Retry-After` while deliveries finish).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    table: Arc<ArcSwap<HashMap<BrokerKey, Arc<BrokerEndpoint>>>>,
    draining: Arc<AtomicBool>,
}

impl Routes {
    pub fn get(&self, key: &BrokerKey) -> Option<Arc<BrokerEndpoint>> {
        self.table.load().get(key).cloned()
    }

    pub fn replace(&self, table: HashMap<BrokerKey, Arc<BrokerEndpoint>>) {
        self.table.store(Arc::new(table));
    }

    pub fn keys(&self) -> Vec<BrokerKey> {
        self.table.load().keys().cloned().collect()
    }

    /// From now on, refuse new events (503) until the process exits.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
