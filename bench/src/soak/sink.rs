//! The soak's subscriber: one HTTP server for every trigger (`/t/{i}`) and every
//! dead-letter sink (`/dl/{i}`), behaving per trigger role — healthy answers at once,
//! failing answers 500/503 to a fixed fraction of attempts, slow waits before
//! answering — and counting exactly what arrived: per trigger, the events delivered
//! (2xx) and dead-lettered, duplicates of each, attempts, and the latency of first
//! deliveries per interval.
//!
//! Every decision is a hash of the event's sequence number (and the attempt, counted
//! here per event and trigger), so a run is reproducible and the accounting can tell
//! exactly which events had to end in the dead letters.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Role, SoakOptions};
use crate::bitset::Bitset;
use crate::histogram::Histogram;
use crate::parse_event_id;

/// splitmix64's finalizer: a well-mixed 64-bit hash of `x`.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A number in [0, 1) from the hash of `(seq, salt)`.
fn unit(seq: u64, salt: u64) -> f64 {
    let h = mix64(seq ^ mix64(salt));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Salt of the slow subscriber's wait (attempts use their number as salt).
const DELAY_SALT: u64 = u64::MAX;

/// Whether the failing subscriber refuses attempt `attempt` (0 = the first) of
/// event `seq`: a fraction `ratio` of all attempts, independently per attempt.
pub fn fails(seq: u64, attempt: u32, ratio: f64) -> bool {
    unit(seq, u64::from(attempt)) < ratio
}

/// Whether event `seq` must end in the failing trigger's dead letters: every one of
/// its `retry + 1` attempts fails.
pub fn must_dead_letter(seq: u64, retry: u32, ratio: f64) -> bool {
    (0..=retry).all(|a| fails(seq, a, ratio))
}

/// The refusal's status: 500 or 503 (both retried), by the same hash.
fn failure_status(seq: u64, attempt: u32) -> StatusCode {
    if mix64(seq ^ u64::from(attempt)) & 1 == 0 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// How long the slow subscriber waits before answering event `seq`: spread evenly
/// over `min..max`.
pub fn slow_delay(seq: u64, min: Duration, max: Duration) -> Duration {
    min + max.saturating_sub(min).mul_f64(unit(seq, DELAY_SALT))
}

/// End-to-end latency of first deliveries, one histogram per role.
#[derive(Default)]
pub struct RoleHistograms(pub [Histogram; 3]);

/// What arrived for one trigger, by event.
#[derive(Default)]
struct Seen {
    delivered: Bitset,
    dead: Bitset,
    /// Attempts so far per event (saturating), to number the next one.
    attempts: Vec<u8>,
}

/// One trigger's counts.
pub struct TriggerTally {
    pub role: Role,
    seen: Mutex<Seen>,
    /// Requests to the subscriber path (every attempt).
    pub attempts: AtomicU64,
    /// Attempts refused on purpose (the failing role).
    pub refused: AtomicU64,
    /// 2xx answers, duplicates included.
    pub delivered: AtomicU64,
    pub delivered_unique: AtomicU64,
    /// Events received on the dead-letter path, duplicates included.
    pub dead: AtomicU64,
    pub dead_unique: AtomicU64,
}

/// A copy of what a trigger received, for the accounting.
pub struct SeenSnapshot {
    pub delivered: Bitset,
    pub dead: Bitset,
    /// Attempts after the first, summed over events (what the broker counts as
    /// retries).
    pub retries: u64,
}

impl TriggerTally {
    fn new(role: Role) -> Self {
        TriggerTally {
            role,
            seen: Mutex::default(),
            attempts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_unique: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            dead_unique: AtomicU64::new(0),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> SeenSnapshot {
        let s = self.seen();
        SeenSnapshot {
            delivered: s.delivered.clone(),
            dead: s.dead.clone(),
            retries: s
                .attempts
                .iter()
                .map(|&a| u64::from(a.saturating_sub(1)))
                .sum(),
        }
    }

    /// Events finished (delivered or dead-lettered, counted once each way).
    pub fn finished(&self) -> u64 {
        self.delivered_unique.load(Ordering::Relaxed) + self.dead_unique.load(Ordering::Relaxed)
    }
}

/// Everything the soak's sink counts.
pub struct SoakState {
    run_id: String,
    base: Instant,
    fail_ratio: f64,
    slow: (Duration, Duration),
    pub triggers: Vec<TriggerTally>,
    /// Requests for no trigger of this run (unknown path, foreign id).
    pub foreign: AtomicU64,
    /// First-delivery latency since the last [`SoakState::take_interval`].
    interval: ArcSwap<RoleHistograms>,
    /// First-delivery latency of the whole run.
    pub total: RoleHistograms,
}

impl SoakState {
    pub fn new(run_id: String, base: Instant, triggers: usize, opts: &SoakOptions) -> Self {
        SoakState {
            run_id,
            base,
            fail_ratio: opts.fail_ratio,
            slow: (opts.slow_min, opts.slow_max),
            triggers: (0..triggers)
                .map(|i| TriggerTally::new(Role::of(i)))
                .collect(),
            foreign: AtomicU64::new(0),
            interval: ArcSwap::from_pointee(RoleHistograms::default()),
            total: RoleHistograms::default(),
        }
    }

    /// The latency histograms of the interval that ends now; a new one begins.
    pub fn take_interval(&self) -> Arc<RoleHistograms> {
        self.interval.swap(Arc::new(RoleHistograms::default()))
    }

    /// Every count that moves when something arrives (to see a drain stall).
    pub fn activity(&self) -> u64 {
        self.triggers
            .iter()
            .map(|t| t.attempts.load(Ordering::Relaxed) + t.dead.load(Ordering::Relaxed))
            .sum()
    }

    /// Handles one request; returns the status to answer.
    async fn receive(&self, path: &str, id: Option<&str>, ts: Option<u64>) -> StatusCode {
        let arrived_ns = self.base.elapsed().as_nanos() as u64;
        let target = parse_path(path).and_then(|(dead, i)| Some((dead, self.triggers.get(i)?)));
        let seq = id.and_then(|id| parse_event_id(id, &self.run_id));
        let (Some((dead, t)), Some(seq)) = (target, seq) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return StatusCode::OK;
        };
        if dead {
            t.dead.fetch_add(1, Ordering::Relaxed);
            if t.seen().dead.insert(seq) {
                t.dead_unique.fetch_add(1, Ordering::Relaxed);
            }
            return StatusCode::OK;
        }
        let attempt = {
            let mut s = t.seen();
            let Ok(i) = usize::try_from(seq) else {
                return StatusCode::OK;
            };
            if s.attempts.len() <= i {
                s.attempts.resize(i + 1, 0);
            }
            let a = s.attempts[i];
            s.attempts[i] = a.saturating_add(1);
            u32::from(a)
        };
        t.attempts.fetch_add(1, Ordering::Relaxed);
        match t.role {
            Role::Failing if fails(seq, attempt, self.fail_ratio) => {
                t.refused.fetch_add(1, Ordering::Relaxed);
                return failure_status(seq, attempt);
            }
            Role::Slow => tokio::time::sleep(slow_delay(seq, self.slow.0, self.slow.1)).await,
            _ => {}
        }
        t.delivered.fetch_add(1, Ordering::Relaxed);
        if t.seen().delivered.insert(seq) {
            t.delivered_unique.fetch_add(1, Ordering::Relaxed);
            if let Some(ts) = ts {
                // Latency up to the arrival: the broker's part, not the slow
                // subscriber's own wait.
                let latency = arrived_ns.saturating_sub(ts);
                let role = t.role as usize;
                self.interval.load().0[role].record(latency);
                self.total.0[role].record(latency);
            }
        }
        StatusCode::OK
    }
}

/// `/t/{i}` → `(false, i)`, `/dl/{i}` → `(true, i)`.
fn parse_path(path: &str) -> Option<(bool, usize)> {
    if let Some(i) = path.strip_prefix("/t/") {
        return Some((false, i.parse().ok()?));
    }
    Some((true, path.strip_prefix("/dl/")?.parse().ok()?))
}

/// The running server.
pub struct SoakSink {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl SoakSink {
    pub async fn start(addr: SocketAddr, state: Arc<SoakState>) -> anyhow::Result<SoakSink> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on sink address {addr}"))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(crate::sink::serve(listener, stop.clone(), move |req| {
            handle(req, state.clone())
        }));
        Ok(SoakSink { addr, stop })
    }
}

impl Drop for SoakSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<SoakState>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let (id, ts) = crate::sink::delivery(&parts.headers);
    let status = state.receive(parts.uri.path(), id, ts).await;
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = status;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SoakOptions {
        SoakOptions {
            interval: Duration::from_secs(1),
            fail_ratio: 0.1,
            slow_min: Duration::from_millis(1),
            slow_max: Duration::from_millis(2),
            retry: 2,
            backoff: Duration::from_millis(50),
            slow_parallelism: None,
        }
    }

    #[test]
    fn the_failing_subscriber_refuses_the_ratio_of_attempts_deterministically() {
        let n = 200_000u64;
        for attempt in 0..3 {
            let refused = (0..n).filter(|&s| fails(s, attempt, 0.1)).count() as f64;
            let ratio = refused / n as f64;
            assert!((ratio - 0.1).abs() < 0.003, "attempt {attempt}: {ratio}");
        }
        // The same question gets the same answer; attempts are independent.
        assert_eq!(
            (0..1000).map(|s| fails(s, 1, 0.1)).collect::<Vec<_>>(),
            (0..1000).map(|s| fails(s, 1, 0.1)).collect::<Vec<_>>()
        );
        let both = (0..n)
            .filter(|&s| fails(s, 0, 0.1) && fails(s, 1, 0.1))
            .count() as f64;
        assert!((both / n as f64 - 0.01).abs() < 0.001, "{both}");
        // Dead letters: every attempt failed, about ratio^(retry+1) of events.
        let dead = (0..n).filter(|&s| must_dead_letter(s, 2, 0.1)).count();
        assert!((100..=300).contains(&dead), "{dead}");
        assert!((0..n).all(|s| !fails(s, 0, 0.0) && fails(s, 0, 1.0)));
        // Both refusal statuses are used.
        let statuses: std::collections::BTreeSet<_> =
            (0..100).map(|s| failure_status(s, 0)).collect();
        assert_eq!(statuses.len(), 2);
    }

    #[test]
    fn slow_delays_spread_over_the_range() {
        let (min, max) = (Duration::from_millis(50), Duration::from_millis(200));
        let delays: Vec<_> = (0..10_000).map(|s| slow_delay(s, min, max)).collect();
        assert!(delays.iter().all(|d| (min..max).contains(d)));
        let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
        assert!(
            mean > Duration::from_millis(115) && mean < Duration::from_millis(135),
            "{mean:?}"
        );
        assert_eq!(slow_delay(7, min, min), min);
    }

    #[test]
    fn paths_name_a_trigger_or_its_dead_letters() {
        assert_eq!(parse_path("/t/2"), Some((false, 2)));
        assert_eq!(parse_path("/dl/0"), Some((true, 0)));
        assert_eq!(parse_path("/x/0"), None);
        assert_eq!(parse_path("/t/"), None);
    }

    /// The sink counts attempts per event, refuses exactly the planned ones, and
    /// tells deliveries, dead letters and duplicates apart.
    #[tokio::test]
    async fn the_sink_counts_attempts_deliveries_and_dead_letters() {
        let st = SoakState::new("run".into(), Instant::now(), 3, &opts());
        // An event the failing trigger refuses first.
        let seq = (0..)
            .find(|&s| fails(s, 0, 0.1) && !fails(s, 1, 0.1))
            .expect("seq");
        let id = format!("run-{seq}");
        let failing = "/t/1";
        assert!(st
            .receive(failing, Some(&id), Some(0))
            .await
            .is_server_error());
        assert_eq!(
            st.receive(failing, Some(&id), Some(0)).await,
            StatusCode::OK
        );
        let t = &st.triggers[1];
        assert_eq!(t.attempts.load(Ordering::Relaxed), 2);
        assert_eq!(t.refused.load(Ordering::Relaxed), 1);
        assert_eq!(t.delivered_unique.load(Ordering::Relaxed), 1);
        assert_eq!(t.snapshot().retries, 1);
        // The slow trigger answers 200 after its wait; a second delivery is a duplicate.
        assert_eq!(
            st.receive("/t/2", Some("run-3"), None).await,
            StatusCode::OK
        );
        assert_eq!(
            st.receive("/t/2", Some("run-3"), None).await,
            StatusCode::OK
        );
        let slow = &st.triggers[2];
        assert_eq!(slow.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(slow.delivered_unique.load(Ordering::Relaxed), 1);
        // Dead letters.
        assert_eq!(
            st.receive("/dl/0", Some("run-4"), None).await,
            StatusCode::OK
        );
        assert_eq!(
            st.receive("/dl/0", Some("run-4"), None).await,
            StatusCode::OK
        );
        let healthy = &st.triggers[0];
        assert_eq!(healthy.dead.load(Ordering::Relaxed), 2);
        assert_eq!(healthy.dead_unique.load(Ordering::Relaxed), 1);
        assert!(healthy.snapshot().dead.contains(4));
        // Foreign traffic is counted apart.
        assert_eq!(
            st.receive("/t/9", Some("run-1"), None).await,
            StatusCode::OK
        );
        assert_eq!(
            st.receive("/t/0", Some("other-1"), None).await,
            StatusCode::OK
        );
        assert_eq!(st.foreign.load(Ordering::Relaxed), 2);
        // One latency sample: the failing trigger's first delivery.
        assert_eq!(st.total.0[Role::Failing as usize].count(), 1);
        assert_eq!(st.take_interval().0[Role::Failing as usize].count(), 1);
        assert_eq!(st.take_interval().0[Role::Failing as usize].count(), 0);
    }
}
