//! Local scale-to-zero: subscribers that are commands, not URLs.
//!
//! Serverless platforms run a subscriber only while there is work; this brings the
//! same model to one host and to development. A `services:` entry with a `command`
//! becomes a [`pool::Pool`] of processes: the first delivery to an idle service
//! starts one (a cold start; the delivery waits for readiness instead of failing),
//! more start while deliveries in flight per instance stay above `concurrency` (up to
//! `max`), deliveries go to the ready instance with the fewest in flight, and an
//! instance with no work for `idle` is stopped (down to `min`, zero by default).
//!
//! The data plane sees none of this: the pool implements the dispatcher's
//! [`Endpoints`] seam, each attempt leases an instance and the lease ends with the
//! attempt. A crashed instance fails its attempts like any unreachable subscriber
//! (they are retried by the trigger's delivery policy) and is replaced on the next
//! delivery, after a backoff that doubles with consecutive crashes.

mod instance;
mod pool;
pub mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;

use cemesh_dispatcher::Endpoints;

pub use spec::{CommandSpec, ServiceEntry, ServiceEntryRaw, ServiceTarget};

use pool::{Pool, PoolEndpoints};

/// A service whose processes a `SinkBinding` can give environment variables.
pub trait Bindable: std::fmt::Debug + Send + Sync {
    /// From now on every instance runs with `env` besides the service's own; the
    /// running ones are restarted so they do (the empty list unbinds).
    fn bind(&self, env: Vec<(String, String)>);
}

/// The pools of every `command` service of the server config.
#[derive(Debug, Default)]
pub struct OnDemand {
    pools: BTreeMap<String, Arc<Pool>>,
}

impl OnDemand {
    /// Creates a pool per `command` service (starting `min` instances of each) and
    /// gives each entry its pool, so triggers whose subscriber `ref` names it lease
    /// instances from it. Must run inside the Tokio runtime.
    pub fn start(services: &mut BTreeMap<String, ServiceEntry>) -> OnDemand {
        let mut pools = BTreeMap::new();
        for (name, entry) in services.iter_mut() {
            let ServiceTarget::Command(spec) = &entry.target else {
                continue;
            };
            // `namespace/name` keys: instances are named by the service's own name.
            let pool = Pool::new(name.clone(), spec.clone());
            entry.endpoints = Some(Arc::new(PoolEndpoints(pool.clone())) as Arc<dyn Endpoints>);
            entry.binding = Some(Arc::new(PoolEndpoints(pool.clone())) as Arc<dyn Bindable>);
            pools.insert(name.clone(), pool);
        }
        if !pools.is_empty() {
            tracing::info!(
                services = ?pools.keys().collect::<Vec<_>>(),
                "On-demand services configured"
            );
        }
        OnDemand { pools }
    }

    /// Stops every instance of every service (SIGTERM, SIGKILL after each service's
    /// `stop_grace`) and waits for them. Call after the triggers stopped.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.pools.values().map(|p| p.shutdown())).await;
    }
}
