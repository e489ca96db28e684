//! A trigger's circuit breaker. When a subscriber is down, retrying every event on
//! its own schedule burns the whole backlog's retries in parallel and sends most of
//! it to the dead letters (knative/eventing#6019). The breaker instead notices
//! consecutive failures that say "down" (no response, a timeout, 5xx), holds every
//! event of the trigger, lets one delivery at a time through as a probe (backoff with
//! jitter), and lets them all go again once a probe gets an answer. Failures while
//! it is open do not use up an event's retries; answers that are about the event
//! (4xx) still follow Knative's retry rules.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When the breaker opens and how it probes (`cemesh.dev/breaker-*` annotations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSpec {
    /// Consecutive "down" failures that open the breaker; 0 turns it off.
    pub failures: u32,
    /// ...and for at least this long since the first of them: a short blip (a
    /// restart, a few bad answers) leaves the events' own retries in charge.
    pub window: Duration,
    /// Wait before the first probe; it doubles after each failed probe.
    pub probe_delay: Duration,
    /// Longest wait between probes.
    pub probe_max: Duration,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            failures: 5,
            window: Duration::from_secs(10),
            probe_delay: Duration::from_secs(1),
            probe_max: Duration::from_secs(10),
        }
    }
}

/// What an attempt's outcome says about the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// It answered (2xx, or a 4xx about the event).
    Up,
    /// No answer, a timeout, or 5xx.
    Down,
    /// 429: alive but asking for less; neither opens nor closes the breaker.
    Busy,
}

/// `outcome`: `None` for a 2xx, else the failure's status (`Some(None)`: no
/// response or a timeout).
fn health(outcome: Option<Option<u16>>) -> Health {
    match outcome {
        None => Health::Up,
        Some(None) => Health::Down,
        Some(Some(429)) => Health::Busy,
        Some(Some(s)) if (500..600).contains(&s) => Health::Down,
        Some(Some(_)) => Health::Up,
    }
}

/// One trigger's breaker, shared by all its deliveries.
#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    /// When the first of the consecutive failures happened.
    failing_since: Option<Instant>,
    open: Option<Open>,
    opened_total: u64,
    probes_total: u64,
}

#[derive(Debug)]
struct Open {
    since: chrono::DateTime<chrono::Utc>,
    next_probe: Instant,
    wait: Duration,
    probing: bool,
}

/// Leave to make one attempt; a probe's leave must be reported (or it is released
/// when dropped, so another waiter probes).
#[derive(Debug)]
pub struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

/// The breaker as `describe` and the scale endpoint show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// `closed`, `open` or `off`.
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// When it opened (RFC 3339), while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_since: Option<String>,
    /// Seconds until the next probe, while open and not probing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_probe_in_seconds: Option<f64>,
    pub opened_total: u64,
    pub probes_total: u64,
}

impl Breaker {
    pub fn new(spec: BreakerSpec) -> Self {
        Breaker {
            spec,
            state: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_open(&self) -> bool {
        self.lock().open.is_some()
    }

    /// Waits until an attempt may go: at once while closed; while open, until this
    /// caller is the one probe. `None` when `cancel` fired first.
    pub async fn admit(&self, cancel: &CancellationToken) -> Option<Pass<'_>> {
        // No breaker, or closed: no waiter registered (every delivery passes here).
        if self.spec.failures == 0 || !self.is_open() {
            return Some(Pass {
                breaker: self,
                probe: false,
            });
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut st = self.lock();
                let now = Instant::now();
                match st.open.as_mut() {
                    None => {
                        return Some(Pass {
                            breaker: self,
                            probe: false,
                        })
                    }
                    Some(o) if o.probing => None,
                    Some(o) if now >= o.next_probe => {
                        o.probing = true;
                        st.probes_total += 1;
                        return Some(Pass {
                            breaker: self,
                            probe: true,
                        });
                    }
                    Some(o) => Some(o.next_probe),
                }
            };
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = notified => {}
                _ = sleep => {}
            }
        }
    }

    /// The state as shown to people and autoscalers.
    pub fn view(&self) -> BreakerView {
        let st = self.lock();
        let now = Instant::now();
        BreakerView {
            state: match (&st.open, self.spec.failures) {
                (_, 0) => "off",
                (Some(_), _) => "open",
                (None, _) => "closed",
            },
            consecutive_failures: st.consecutive,
            open_since: st.open.as_ref().map(|o| o.since.to_rfc3339()),
            next_probe_in_seconds: st
                .open
                .as_ref()
                .filter(|o| !o.probing)
                .map(|o| o.next_probe.saturating_duration_since(now).as_secs_f64()),
            opened_total: st.opened_total,
            probes_total: st.probes_total,
        }
    }

    /// The wait before the next probe: `wait` with equal jitter (half fixed, half
    /// random), so probes of many triggers do not line up.
    fn jittered(wait: Duration) -> Duration {
        wait.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// What the caller does after reporting a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The breaker is closed: the event's own retry policy decides.
    Count,
    /// The breaker is open: the event waits for it, and this attempt is not counted.
    Hold,
}

impl Pass<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports an answer that was not a failure (2xx).
    pub fn succeeded(self) -> Option<Transition> {
        self.report(None).1
    }

    /// Reports a failed attempt by its status (`None`: no response or a timeout).
    pub fn failed(self, status: Option<u16>) -> (AfterFailure, Option<Transition>) {
        self.report(Some(status))
    }

    fn report(mut self, failure: Option<Option<u16>>) -> (AfterFailure, Option<Transition>) {
        let breaker = self.breaker;
        let probe = std::mem::take(&mut self.probe);
        if breaker.spec.failures == 0 {
            return (AfterFailure::Count, None);
        }
        let health = health(failure);
        let mut transition = None;
        let after = {
            let mut st = breaker.lock();
            match health {
                Health::Up => {
                    st.consecutive = 0;
                    st.failing_since = None;
                    if st.open.take().is_some() {
                        transition = Some(Transition::Closed);
                    }
                }
                Health::Down => {
                    st.consecutive = st.consecutive.saturating_add(1);
                    let now = Instant::now();
                    let since = *st.failing_since.get_or_insert(now);
                    let trips = st.consecutive >= breaker.spec.failures
                        && now.saturating_duration_since(since) >= breaker.spec.window;
                    match st.open.as_mut() {
                        Some(o) if probe => {
                            o.wait = (o.wait * 2).min(breaker.spec.probe_max);
                            o.next_probe = Instant::now() + Breaker::jittered(o.wait);
                            o.probing = false;
                        }
                        Some(_) => {}
                        None if trips => {
                            let wait = breaker.spec.probe_delay;
                            st.open = Some(Open {
                                since: chrono::Utc::now(),
                                next_probe: Instant::now() + Breaker::jittered(wait),
                                wait,
                                probing: false,
                            });
                            st.opened_total += 1;
                            transition = Some(Transition::Opened);
                        }
                        None => {}
                    }
                }
                Health::Busy => {
                    if let Some(o) = st.open.as_mut().filter(|_| probe) {
                        o.next_probe = Instant::now() + Breaker::jittered(o.wait);
                        o.probing = false;
                    }
                }
            }
            match (health, st.open.is_some()) {
                (Health::Down, true) => AfterFailure::Hold,
                _ => AfterFailure::Count,
            }
        };
        breaker.changed.notify_waiters();
        (after, transition)
    }
}

/// A change of state the caller logs and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

impl Drop for Pass<'_> {
    /// A probe that never reported (interrupted) lets another waiter probe at once.
    fn drop(&mut self) {
        if !self.probe {
            return;
        }
        if let Some(o) = self.breaker.lock().open.as_mut() {
            o.probing = false;
            o.next_probe = Instant::now();
        }
        self.breaker.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: Option<u16>) -> Option<u16> {
        status
    }

    fn spec(failures: u32) -> BreakerSpec {
        BreakerSpec {
            failures,
            window: Duration::ZERO,
            probe_delay: Duration::from_millis(40),
            probe_max: Duration::from_millis(160),
        }
    }

    #[tokio::test]
    async fn consecutive_down_failures_open_it_and_only_those_count() {
        let b = Breaker::new(spec(3));
        let cancel = CancellationToken::new();
        for _ in 0..2 {
            let pass = b.admit(&cancel).await.unwrap();
            assert_eq!(pass.failed(failure(Some(503))).0, AfterFailure::Count);
        }
        // A 4xx is an answer: the subscriber is up, the count starts again.
        let pass = b.admit(&cancel).await.unwrap();
        assert_eq!(pass.failed(failure(Some(400))).0, AfterFailure::Count);
        assert_eq!(b.view().consecutive_failures, 0);
        for _ in 0..2 {
            let pass = b.admit(&cancel).await.unwrap();
            pass.failed(failure(None));
        }
        assert!(!b.is_open());
        let pass = b.admit(&cancel).await.unwrap();
        let (after, transition) = pass.failed(failure(Some(500)));
        assert_eq!(
            (after, transition),
            (AfterFailure::Hold, Some(Transition::Opened))
        );
        assert_eq!(b.view().state, "open");
    }

    #[tokio::test(start_paused = true)]
    async fn while_open_one_probe_at_a_time_goes_and_a_success_closes_it() {
        let b = std::sync::Arc::new(Breaker::new(spec(1)));
        let cancel = CancellationToken::new();
        b.admit(&cancel).await.unwrap().failed(failure(None));
        assert!(b.is_open());

        // The first probe comes after the jittered delay (20–40 ms), alone.
        let started = Instant::now();
        let probe = b.admit(&cancel).await.unwrap();
        assert!(probe.is_probe());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(20) && waited <= Duration::from_millis(41),
            "{waited:?}"
        );
        let other = {
            let b = b.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { b.admit(&cancel).await.map(|p| p.is_probe()) })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !other.is_finished(),
            "a second attempt went while a probe was out"
        );

        // A failed probe doubles the wait; the waiting one becomes the next probe.
        assert_eq!(probe.failed(failure(Some(502))).0, AfterFailure::Hold);
        assert_eq!(other.await.unwrap(), Some(true));
        assert_eq!(b.view().probes_total, 2);

        // The probe (the second) was dropped without a report: the next one goes now.
        let probe = b.admit(&cancel).await.unwrap();
        assert!(probe.is_probe());
        assert_eq!(probe.succeeded(), Some(Transition::Closed));
        assert!(!b.admit(&cancel).await.unwrap().is_probe());
        assert_eq!(b.view().state, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn probe_waits_grow_to_the_maximum() {
        let b = Breaker::new(spec(1));
        let cancel = CancellationToken::new();
        b.admit(&cancel).await.unwrap().failed(failure(None));
        let mut waits = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let probe = b.admit(&cancel).await.unwrap();
            waits.push(started.elapsed());
            probe.failed(failure(None));
        }
        // Equal jitter: each wait is in [w/2, w] for w = 40, 80, 160, 160, 160 ms.
        for (wait, w) in waits.iter().zip([40u64, 80, 160, 160, 160]) {
            let w = Duration::from_millis(w);
            assert!(
                *wait >= w / 2 && *wait <= w + Duration::from_millis(1),
                "{waits:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_only_once_failures_last_the_window() {
        let b = Breaker::new(BreakerSpec {
            window: Duration::from_secs(10),
            ..spec(2)
        });
        let cancel = CancellationToken::new();
        for _ in 0..20 {
            b.admit(&cancel).await.unwrap().failed(failure(Some(503)));
        }
        assert!(!b.is_open(), "20 failures within a moment are a blip");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (after, moved) = b.admit(&cancel).await.unwrap().failed(failure(Some(503)));
        assert_eq!(
            (after, moved),
            (AfterFailure::Hold, Some(Transition::Opened))
        );
    }

    #[tokio::test]
    async fn off_never_holds_and_cancel_ends_a_wait() {
        let b = Breaker::new(spec(0));
        let cancel = CancellationToken::new();
        for _ in 0..10 {
            let pass = b.admit(&cancel).await.unwrap();
            assert_eq!(pass.failed(failure(None)).0, AfterFailure::Count);
        }
        assert_eq!(b.view().state, "off");

        let b = Breaker::new(BreakerSpec {
            failures: 1,
            window: Duration::ZERO,
            probe_delay: Duration::from_secs(3600),
            probe_max: Duration::from_secs(3600),
        });
        b.admit(&cancel).await.unwrap().failed(failure(None));
        let stop = CancellationToken::new();
        let waiting = b.admit(&stop);
        stop.cancel();
        assert!(waiting.await.is_none());
    }
}
