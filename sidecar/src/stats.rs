//! Counters of the sidecar, shared by its tasks and shown by its admin endpoints
//! (`/v1/stats` as JSON, `/metrics` as Prometheus text). Metric names live here only.

use std::fmt::Write as _;
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

    /// Prometheus text exposition.
    pub fn prometheus(&self, pending: Option<u64>, dead_letters: Option<u64>) -> String {
        let mut out = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "cemesh_sidecar_published_events_total",
            "counter",
            "Events accepted into the outbox.",
            get(&self.published),
        );
        metric(
            "cemesh_sidecar_outbox_full_total",
            "counter",
            "Publishes refused because the outbox was full.",
            get(&self.outbox_full),
        );
        metric(
            "cemesh_sidecar_forwarded_events_total",
            "counter",
            "Events the broker accepted.",
            get(&self.forwarded),
        );
        metric(
            "cemesh_sidecar_forward_failures_total",
            "counter",
            "Failed attempts to forward an event to the broker.",
            get(&self.forward_failures),
        );
        metric(
            "cemesh_sidecar_dead_lettered_events_total",
            "counter",
            "Events the broker refused as invalid.",
            get(&self.dead_lettered),
        );
        if let Some(p) = pending {
            metric(
                "cemesh_sidecar_outbox_events",
                "gauge",
                "Events waiting in the outbox.",
                p,
            );
        }
        if let Some(d) = dead_letters {
            metric(
                "cemesh_sidecar_dead_letters",
                "gauge",
                "Events in the sidecar's dead letters.",
                d,
            );
        }
        metric(
            "cemesh_sidecar_relayed_events_total",
            "counter",
            "Events the service took (2xx).",
            get(&self.relayed),
        );
        metric(
            "cemesh_sidecar_relay_failures_total",
            "counter",
            "Events the service refused or did not answer.",
            get(&self.relay_failures),
        );
        metric(
            "cemesh_sidecar_gated_deliveries_total",
            "counter",
            "Deliveries answered 503 while the service was unhealthy.",
            get(&self.gated),
        );
        metric(
            "cemesh_sidecar_replies_total",
            "counter",
            "Reply events returned to the mesh.",
            get(&self.replies),
        );
        metric(
            "cemesh_sidecar_app_healthy",
            "gauge",
            "1 when the service's health path answers 2xx.",
            u64::from(self.app_healthy.load(Ordering::Relaxed)),
        );
        out
    }
}
