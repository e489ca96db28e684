//! Counters of the sidecar, shared by its tasks and shown by its admin endpoints:
//! `/v1/stats` as JSON, and `/metrics` through the same `metrics` recorder and
//! exporter as the broker's (names in `cemesh_proto::metric_names`).

use cemesh_proto::metric_names as names;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Every counter the sidecar keeps; all monotonic except the gauges noted.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events accepted into the outbox (202 answered).
    pub published: AtomicU64,
    /// Publishes refused because the outbox was full.
    pub outbox_full: AtomicU64,
    /// Events the broker accepted (removed from the outbox).
    pub forwarded: AtomicU64,
    /// Failed forwarding attempts (each retry counts).
    pub forward_failures: AtomicU64,
    /// Events the broker refused for good, now in the dead letters.
    pub dead_lettered: AtomicU64,
    /// Events handed to the service with a 2xx answer.
    pub relayed: AtomicU64,
    /// Events the service answered with a failure (or did not answer).
    pub relay_failures: AtomicU64,
    /// Deliveries answered 503 because the service was not healthy.
    pub gated: AtomicU64,
    /// Reply events returned to the mesh.
    pub replies: AtomicU64,
    /// Whether there is a service to deliver to (`--app-url`).
    pub app_configured: AtomicBool,
    /// Gauge: the service answered its health path with 2xx last time.
    pub app_healthy: AtomicBool,
    /// Gauge: requests to the service in flight.
    pub app_in_flight: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// The counters as JSON (camelCase, like the mesh's admin API).
    pub fn json(&self, pending: Option<u64>, dead_letters: Option<u64>) -> serde_json::Value {
        serde_json::json!({
            "outbox": {
                "pending": pending,
                "deadLetters": dead_letters,
                "published": get(&self.published),
                "refusedFull": get(&self.outbox_full),
                "forwarded": get(&self.forwarded),
                "forwardFailures": get(&self.forward_failures),
                "deadLettered": get(&self.dead_lettered),
            },
            "app": {
                "configured": self.app_configured.load(Ordering::Relaxed),
                "healthy": self.app_configured.load(Ordering::Relaxed)
                    && self.app_healthy.load(Ordering::Relaxed),
                "inFlight": get(&self.app_in_flight),
                "relayed": get(&self.relayed),
                "failures": get(&self.relay_failures),
                "gated": get(&self.gated),
                "replies": get(&self.replies),
            },
        })
    }

    /// Copies the counters into the process's `metrics` recorder (names and help in
    /// `cemesh_proto::metric_names`), for `/metrics` to render like the broker's.
    pub fn record(&self, pending: Option<u64>, dead_letters: Option<u64>) {
        for (name, value) in [
            (names::SIDECAR_PUBLISHED, &self.published),
            (names::SIDECAR_OUTBOX_FULL, &self.outbox_full),
            (names::SIDECAR_FORWARDED, &self.forwarded),
            (names::SIDECAR_FORWARD_FAILURES, &self.forward_failures),
            (names::SIDECAR_DEAD_LETTERED, &self.dead_lettered),
            (names::SIDECAR_RELAYED, &self.relayed),
            (names::SIDECAR_RELAY_FAILURES, &self.relay_failures),
            (names::SIDECAR_GATED, &self.gated),
            (names::SIDECAR_REPLIES, &self.replies),
        ] {
            metrics::counter!(name).absolute(get(value));
        }
        if let Some(p) = pending {
            metrics::gauge!(names::SIDECAR_OUTBOX_EVENTS).set(p as f64);
        }
        if let Some(d) = dead_letters {
            metrics::gauge!(names::SIDECAR_DEAD_LETTERS).set(d as f64);
        }
        let healthy = self.app_healthy.load(Ordering::Relaxed);
        metrics::gauge!(names::SIDECAR_APP_HEALTHY).set(f64::from(u8::from(healthy)));
    }
}
