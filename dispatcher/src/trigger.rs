//! One trigger's delivery loop: read, filter, deliver with bounded parallelism, ack.

use std::fmt;
use std::sync::Arc;

use cemesh_channels::Subscription;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Deliverer, DeliverySpec};
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
}

/// A running trigger loop.
#[derive(Debug)]
pub struct TriggerHandle {
    trigger: Arc<TriggerRuntime>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl TriggerHandle {
    pub fn trigger(&self) -> &TriggerRuntime {
        &self.trigger
    }

    /// Stops reading new events and waits for in-flight deliveries to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Starts a trigger's loop on its subscription.
pub fn spawn_trigger(
    trigger: Arc<TriggerRuntime>,
    subscription: Arc<dyn Subscription>,
    deliverer: Deliverer,
) -> TriggerHandle {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        trigger.clone(),
        subscription,
        deliverer,
        cancel.clone(),
    ));
    TriggerHandle {
        trigger,
        cancel,
        task,
    }
}

async fn run(
    trigger: Arc<TriggerRuntime>,
    sub: Arc<dyn Subscription>,
    deliverer: Deliverer,
    cancel: CancellationToken,
) {
    let parallelism = trigger.parallelism.max(1);
    let permits = Arc::new(Semaphore::new(parallelism));
    let batch = parallelism.clamp(16, 512);
    tracing::info!(trigger = %trigger.key, subscriber = %trigger.subscriber, "Trigger started");
    'outer: loop {
        let records = tokio::select! {
            _ = cancel.cancelled() => break,
            r = sub.next(batch) => match r {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(trigger = %trigger.key, error = %e, "Subscription ended");
                    break;
                }
            },
        };
        for record in records {
            if !trigger.filter.matches(&record.event) {
                if let Err(e) = sub.ack(record.position).await {
                    tracing::warn!(trigger = %trigger.key, error = %e, "Ack failed");
                }
                continue;
            }
            let permit = tokio::select! {
                _ = cancel.cancelled() => break 'outer,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'outer,
                },
            };
            let (trigger, sub, deliverer) = (trigger.clone(), sub.clone(), deliverer.clone());
            tokio::spawn(async move {
                let _outcome = deliverer.deliver(&trigger, &record.event).await;
                if let Err(e) = sub.ack(record.position).await {
                    tracing::warn!(trigger = %trigger.key, error = %e, "Ack failed");
                }
                drop(permit);
            });
        }
    }
    // Let in-flight deliveries finish; unread records stay unacked and come again.
    let _ = permits.acquire_many(parallelism as u32).await;
    tracing::info!(trigger = %trigger.key, "Trigger stopped");
}
