//! What a trigger is once the control plane has resolved it: its identity, compiled
//! filter, subscriber URL and delivery policy. Both the loop (`trigger`) and the
//! per-event pipeline (`pipeline`) read it, so it sits below both.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
    /// Deliveries in flight at most, of the trigger's own.
    pub parallelism: usize,
    /// Whether, while its own slots are all busy, the trigger may borrow more from
    /// the ones every such trigger of the process shares (`cemesh.dev/parallelism`
    /// unset: the default 64 is not a limit the user chose).
    pub borrows: bool,
    /// Set when the subscriber is a pool of on-demand instances: each attempt leases
    /// one and `subscriber`'s host is replaced by the instance's.
    pub endpoints: Option<Arc<dyn Endpoints>>,
    /// How far behind the trigger may fall (`cemesh.dev/max-lag`).
    pub max_lag: MaxLag,
    /// How deliveries to the subscriber prove they come from cemesh.
    pub auth: crate::signing::DeliveryAuth,
    /// The same for the dead-letter sink, from its own `Destination`.
    pub dead_letter_auth: crate::signing::DeliveryAuth,
    /// Where the subscriber's reply events go.
    pub reply: ReplyTo,
}

/// Where a subscriber's reply events go. A trigger's go back into its broker; a
/// Knative `Subscription`'s go to its `spec.reply`, or nowhere without one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReplyTo {
    /// Appended to the trigger's own broker.
    #[default]
    Broker,
    /// Appended to another channel or broker of this mesh (its address name): the
    /// hop is as durable as that channel, and no HTTP is involved.
    Local { namespace: String, name: String },
    /// Sent over HTTP with the trigger's retries; a reply that cannot be sent is
    /// dead-lettered.
    Url {
        url: reqwest::Url,
        auth: crate::signing::DeliveryAuth,
    },
    /// Dropped and counted (a `Subscription` without `spec.reply`, as in Knative).
    Drop,
}

/// How far behind a trigger may fall before its oldest waiting events move to its
/// dead letters with the reason `backlog-overflow`, so that one stuck subscriber
/// never holds the broker's retention (and with it the ingress) for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaxLag {
    /// Records waiting (the channel's lag for the trigger) at most.
    pub records: Option<u64>,
    /// Age (since `knativearrivaltime`) of the oldest waiting event at most.
    pub age: Option<Duration>,
    /// Past the limit, pause the trigger (keeping every event) instead of moving
    /// the oldest to the dead letters (`cemesh.dev/max-lag-action: pause`).
    pub pause: bool,
}

impl MaxLag {
    pub fn is_set(&self) -> bool {
        self.records.is_some() || self.age.is_some()
    }
}

impl fmt::Display for MaxLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.records, self.age) {
            (Some(r), Some(a)) => write!(f, "{r} records or {a:?}")?,
            (Some(r), None) => write!(f, "{r} records")?,
            (None, Some(a)) => write!(f, "{a:?}")?,
            (None, None) => return f.write_str("none"),
        }
        if self.pause {
            f.write_str(", then pause")?;
        }
        Ok(())
    }
}

/// Two runtimes are equal when a running trigger would deliver the same way under
/// either, which is what decides whether a reload restarts it. The on-demand pool
/// is compared by identity: pools live as long as the server config.
impl PartialEq for TriggerRuntime {
    fn eq(&self, other: &Self) -> bool {
        let same_pool = match (&self.endpoints, &other.endpoints) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            _ => false,
        };
        self.key == other.key
            && self.broker == other.broker
            && self.filter == other.filter
            && self.subscriber == other.subscriber
            && self.delivery == other.delivery
            && self.parallelism == other.parallelism
            && self.borrows == other.borrows
            && self.max_lag == other.max_lag
            && self.auth == other.auth
            && self.dead_letter_auth == other.dead_letter_auth
            && self.reply == other.reply
            && same_pool
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::filter::AttributesFilter;

    fn runtime(filter: Filter) -> TriggerRuntime {
        TriggerRuntime {
            key: TriggerKey::new("default", "t"),
            broker: "default".into(),
            filter,
            reply: ReplyTo::Broker,
            subscriber: "http://127.0.0.1:1/".parse().unwrap(),
            delivery: DeliverySpec::default(),
            parallelism: 64,
            borrows: true,
            endpoints: None,
            max_lag: MaxLag::default(),
            auth: Default::default(),
            dead_letter_auth: Default::default(),
        }
    }

    #[test]
    fn a_reload_restarts_a_trigger_only_when_its_runtime_differs() {
        let attrs = |v: &str| {
            let map = BTreeMap::from([("type".to_owned(), v.to_owned())]);
            Filter::Attributes(AttributesFilter::new(&map, "spec.filter.attributes").unwrap())
        };
        assert_eq!(runtime(attrs("a")), runtime(attrs("a")));
        assert_ne!(runtime(attrs("a")), runtime(attrs("b")));
        assert_ne!(runtime(attrs("a")), runtime(Filter::All));
        let mut slower = runtime(Filter::All);
        slower.delivery.retry += 1;
        assert_ne!(runtime(Filter::All), slower);
        let mut wider = runtime(Filter::All);
        wider.parallelism = 8;
        assert_ne!(runtime(Filter::All), wider);
    }
}
