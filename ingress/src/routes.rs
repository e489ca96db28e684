//! The live broker table the ingress routes by. The control plane swaps in a new table
//! on reload; requests in flight keep the table they started with.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use cemesh_channels::Channel;
use cemesh_proto::http::HeaderBudget;
use cemesh_proto::{metric_names as names, Event};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{Access, Authenticator};

/// Request bytes the ingress works on at once by default (`--max-pending-bytes`).
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 8 << 20;

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

/// A broker's namespace and name, owned (a [`BrokerKey`]) or borrowed (a request
/// path's two pieces): the table is looked up with the latter, so a request builds
/// no key. Hashed and compared as `BrokerKey`'s derived `Hash` and `Eq` do.
trait KeyParts {
    fn parts(&self) -> (&str, &str);
}

impl KeyParts for BrokerKey {
    fn parts(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl KeyParts for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn KeyParts + 'a> for BrokerKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyParts + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (namespace, name) = self.parts();
        namespace.hash(state);
        name.hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

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
    /// Whether an event may be delivered in binary mode, where its attributes
    /// travel as HTTP headers within [`Routes::header_budget`].
    pub binary: Arc<dyn BinaryDelivery>,
    /// Who may send to it (its `EventPolicy`s and the default mode).
    pub access: Arc<Access>,
    /// A broker stamps arrival time, hop budget and trace context on what it
    /// accepts; a Knative channel must not alter events.
    pub stamps: bool,
    /// The event types it has accepted.
    pub event_types: Arc<crate::seen::EventTypes>,
    /// Its `cemesh.dev/dedup-window`, when it has one.
    pub dedup: Option<Arc<crate::dedup::Dedup>>,
    /// Where accepted events are journaled, unless `cemesh.dev/journal: off`.
    pub journal: Option<Arc<dyn cemesh_channels::journal::Journal>>,
    /// Its metric handles for the common answers.
    pub metrics: EndpointMetrics,
}

/// A broker's ingress metrics for the common case (accepted, `202`), registered on
/// first use: their labels are built and looked up once, not on every request.
#[derive(Debug, Default)]
pub struct EndpointMetrics {
    accepted: std::sync::OnceLock<metrics::Counter>,
    duration: std::sync::OnceLock<metrics::Histogram>,
    append: std::sync::OnceLock<metrics::Histogram>,
}

impl EndpointMetrics {
    /// `cemesh_ingress_events_total` of answers `202`.
    pub(crate) fn accepted(&self, key: &BrokerKey) -> &metrics::Counter {
        self.accepted
            .get_or_init(|| metrics::counter!(names::INGRESS_EVENTS, &ingress_labels(key, 202)))
    }

    pub(crate) fn duration(&self, key: &BrokerKey) -> &metrics::Histogram {
        self.duration.get_or_init(|| {
            metrics::histogram!(names::INGRESS_REQUEST_DURATION,
                "namespace_name" => key.namespace.clone(), "broker_name" => key.name.clone())
        })
    }

    /// `cemesh_channel_append_duration_seconds` of the broker's channel (`kind`).
    pub(crate) fn append(&self, kind: &'static str) -> &metrics::Histogram {
        self.append
            .get_or_init(|| metrics::histogram!(names::CHANNEL_APPEND_DURATION, "channel" => kind))
    }
}

/// The labels of `cemesh_ingress_events_total` for an answer with `status`: `result`
/// follows the code, so no series pairs `refused` with a 2xx code.
pub(crate) fn ingress_labels(key: &BrokerKey, status: u16) -> [(&'static str, String); 5] {
    let accepted = (200..300).contains(&status);
    [
        ("namespace_name", key.namespace.clone()),
        ("broker_name", key.name.clone()),
        (
            "result",
            if accepted { "accepted" } else { "refused" }.to_owned(),
        ),
        ("response_code", status.to_string()),
        (
            "response_code_class",
            names::status_class(Some(status)).to_owned(),
        ),
    ]
}

/// Whether some subscriber could get an event in binary-mode HTTP. The control plane
/// answers from the broker's triggers (their filters and delivery formats); the
/// ingress asks only of an event whose headers go past the budget.
pub trait BinaryDelivery: fmt::Debug + Send + Sync {
    fn needs_binary(&self, event: &Event) -> bool;
}

/// Every event may go out in binary mode: the strict answer, for a broker whose
/// triggers are not known (yet).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyBinary;

impl BinaryDelivery for AnyBinary {
    fn needs_binary(&self, _: &Event) -> bool {
        true
    }
}

/// The table of brokers, cheap to read on every request and swapped whole on change,
/// and whether the process is draining (shutting down: new events are refused with
/// 503 and `Retry-After` while deliveries finish).
#[derive(Debug, Clone)]
pub struct Routes {
    /// foldhash: one lookup for every request (SipHash was 0.3 % of the broker).
    table: Arc<ArcSwap<HashMap<BrokerKey, Arc<BrokerEndpoint>, foldhash::fast::RandomState>>>,
    draining: Arc<AtomicBool>,
    pending: PendingBudget,
    header_budget: HeaderBudget,
    auth: Arc<Authenticator>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            table: Arc::default(),
            draining: Arc::default(),
            pending: PendingBudget::new(DEFAULT_MAX_PENDING_BYTES),
            header_budget: HeaderBudget::default(),
            auth: Arc::default(),
        }
    }
}

/// The request bytes the ingress reads, decodes and stores at once, over every
/// connection: what bounds its memory whatever producers send (a thousand
/// connections each posting a 1 MiB batch wait their turn instead of holding a
/// gigabyte of bodies and decoded events). Counted in KiB.
#[derive(Debug, Clone)]
struct PendingBudget {
    permits: Arc<Semaphore>,
    kib: u32,
}

impl PendingBudget {
    fn new(bytes: u64) -> Self {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u32);
        PendingBudget {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }
}

impl Routes {
    /// The same table with `bytes` as the pending-request budget.
    pub fn with_pending_budget(mut self, bytes: u64) -> Self {
        self.pending = PendingBudget::new(bytes);
        self
    }

    /// The same table with `budget` for the binary-mode headers of accepted events
    /// (`--max-header-line-bytes`, `--max-header-bytes-total`).
    pub fn with_header_budget(mut self, budget: HeaderBudget) -> Self {
        self.header_budget = budget;
        self
    }

    /// The same table checking senders with `auth` (the server config's `auth:`).
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    /// How senders are authenticated.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// What an accepted event's binary-mode headers may take.
    pub fn header_budget(&self) -> HeaderBudget {
        self.header_budget
    }

    /// Room for a request of `bytes` in the pending budget, waiting at most `wait`
    /// for it (`None` past that); the request holds its share until the permit
    /// drops. A request larger than the whole budget takes all of it. Room free now
    /// is taken without a timer.
    pub async fn reserve_pending_within(
        &self,
        bytes: usize,
        wait: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        match self.try_reserve_pending(bytes) {
            Some(permit) => Some(permit),
            None => tokio::time::timeout(wait, self.reserve_pending(bytes))
                .await
                .ok(),
        }
    }

    /// Waits until a request of `bytes` fits the pending budget.
    async fn reserve_pending(&self, bytes: usize) -> OwnedSemaphorePermit {
        let b = &self.pending;
        let want = self.pending_kib(bytes);
        b.permits
            .clone()
            .acquire_many_owned(want)
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// [`Self::reserve_pending`] when the budget has room now.
    fn try_reserve_pending(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let want = self.pending_kib(bytes);
        self.pending
            .permits
            .clone()
            .try_acquire_many_owned(want)
            .ok()
    }

    fn pending_kib(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.pending.kib)
    }

    pub fn get(&self, key: &BrokerKey) -> Option<Arc<BrokerEndpoint>> {
        self.table.load().get(key).cloned()
    }

    /// [`Routes::get`] by the namespace and name as they are, without a key made.
    pub fn get_by(&self, namespace: &str, name: &str) -> Option<Arc<BrokerEndpoint>> {
        self.table
            .load()
            .get(&(namespace, name) as &dyn KeyParts)
            .cloned()
    }

    pub fn replace(&self, table: HashMap<BrokerKey, Arc<BrokerEndpoint>>) {
        self.table.store(Arc::new(table.into_iter().collect()));
    }

    pub fn keys(&self) -> Vec<BrokerKey> {
        self.table.load().keys().cloned().collect()
    }

    /// Every endpoint of the current table.
    pub fn all(&self) -> Vec<Arc<BrokerEndpoint>> {
        self.table.load().values().cloned().collect()
    }

    /// From now on, refuse new events (503) until the process exits.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's borrowed pieces find what the owned key was stored under (hashed and
    /// compared alike), and nothing else.
    #[test]
    fn a_broker_is_found_by_its_path_pieces() {
        let mut table: HashMap<BrokerKey, u32, foldhash::fast::RandomState> = HashMap::default();
        for (i, (ns, name)) in [("ns", "b"), ("ns", "b2"), ("n", "sb"), ("", "nsb")]
            .into_iter()
            .enumerate()
        {
            table.insert(BrokerKey::new(ns, name), i as u32);
        }
        let get = |ns, name| table.get(&(ns, name) as &dyn KeyParts).copied();
        assert_eq!(get("ns", "b"), Some(0));
        assert_eq!(get("ns", "b2"), Some(1));
        assert_eq!(get("n", "sb"), Some(2));
        assert_eq!(get("", "nsb"), Some(3));
        assert_eq!(get("nsb", ""), None);
        assert_eq!(get("ns", "B"), None);
    }

    /// The budget's quick path takes room only when there is some, and never ahead
    /// of a request already waiting for it.
    #[tokio::test]
    async fn the_pending_budget_is_taken_at_once_only_when_free() {
        let routes = Routes::default().with_pending_budget(4 << 10);
        let held = routes.try_reserve_pending(3 << 10).expect("room for 3 KiB");
        assert!(
            routes.try_reserve_pending(2 << 10).is_none(),
            "past the budget"
        );
        let waiting = tokio::spawn({
            let routes = routes.clone();
            async move { routes.reserve_pending(2 << 10).await }
        });
        tokio::task::yield_now().await;
        assert!(
            routes.try_reserve_pending(1 << 10).is_none(),
            "the free KiB went ahead of the waiter"
        );
        drop(held);
        // The waiter was owed the room that came back first.
        let _waited = waiting.await.expect("the waiter got its room");
        assert!(routes.try_reserve_pending(3 << 10).is_none());
        let _quick = routes
            .reserve_pending_within(2 << 10, Duration::ZERO)
            .await
            .expect("free room is taken at once, without waiting");
        // No room left: the wait ends empty.
        assert!(routes
            .reserve_pending_within(1 << 10, Duration::from_millis(20))
            .await
            .is_none());
    }
}
