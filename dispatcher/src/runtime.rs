//! What a trigger is once the control plane has resolved it: its identity, compiled
//! filter, subscriber URL and delivery policy. Both the loop (`trigger`) and the
//! per-event pipeline (`pipeline`) read it, so it sits below both.

use std::fmt;
use std::sync::Arc;

use crate::delivery::DeliverySpec;
use crate::endpoint::Endpoints;
use crate::filter::Filter;

/// A trigger's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TriggerKey {
    pub namespace: String,
    pub name: String,
}

impl TriggerKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        TriggerKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The channel subscription name for this trigger.
    pub fn subscription_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for TriggerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A trigger as the data plane runs it: references resolved, filter compiled.
#[derive(Debug, Clone)]
pub struct TriggerRuntime {
    pub key: TriggerKey,
    pub broker: String,
    pub filter: Filter,
    pub subscriber: reqwest::Url,
    pub delivery: DeliverySpec,
    /// Deliveries in flight at most.
    pub parallelism: usize,
    /// Set when the subscriber is a pool of on-demand instances: each attempt leases
    /// one and `subscriber`'s host is replaced by the instance's.
    pub endpoints: Option<Arc<dyn Endpoints>>,
}
