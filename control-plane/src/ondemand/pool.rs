//! One on-demand service's instances and the scaling decisions, Knative Serving's
//! model on one host: the desired number of instances is the demand (deliveries in
//! flight plus those waiting for an instance) divided by the target `concurrency`,
//! clamped to `min..=max`. Scale-up happens when a delivery asks for an instance;
//! scale-down when an instance has had no work for `idle`.
//!
//! Every decision is taken under one lock, so the bounds hold however many triggers
//! and deliveries race: never more than `max` processes (counting those still
//! stopping), never a lease on an instance that was chosen to stop.

use std::fmt;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cemesh_dispatcher::{Endpoints, Lease, LeaseError};
use cemesh_proto::metric_names as names;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::instance::{self, Exit, Instance, Supervisor};
use super::spec::CommandSpec;

/// An instance that stayed up this long before exiting resets the crash backoff.
const STABLE_UPTIME: Duration = Duration::from_secs(10);
/// First restart delay after a crash; doubles per consecutive crash.
const CRASH_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a delivery waiting for an instance re-checks without a wake-up (a crash
/// backoff ending, a start timing out).
const RECHECK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    /// Starting or ready, in start order; not yet asked to stop.
    instances: Vec<Arc<Instance>>,
    /// Asked to stop, process not yet gone (counted against `max`).
    stopping: usize,
    next_number: u64,
    /// Deliveries waiting for an instance (part of the demand).
    waiting: usize,
    /// Consecutive crashes or failed starts.
    crashes: u32,
    /// No new instance before this (crash backoff).
    not_before: Option<Instant>,
    tasks: Vec<JoinHandle<()>>,
}

/// The instances of one `command` service.
pub(crate) struct Pool {
    pub name: String,
    pub spec: CommandSpec,
    state: Mutex<State>,
    /// Woken when an instance becomes ready, ends, or finishes a delivery.
    changed: Arc<Notify>,
    closing: CancellationToken,
    /// For readiness probes (no proxy: instances are on 127.0.0.1).
    pub probe: reqwest::Client,
    /// A `SinkBinding`'s environment.
    binding: Mutex<Vec<(String, String)>>,
}

/// What an instance's task tells its pool, and reads from it.
impl Supervisor for Pool {
    fn service(&self) -> &str {
        &self.name
    }
    fn spec(&self) -> &CommandSpec {
        &self.spec
    }
    fn probe(&self) -> &reqwest::Client {
        &self.probe
    }
    fn became_ready(&self, inst: &Instance, took: Duration) {
        Pool::became_ready(self, inst, took);
    }
    fn exited(&self, inst: &Instance, exit: Exit, uptime: Duration) {
        Pool::exited(self, inst, exit, uptime);
    }
    fn binding(&self) -> Vec<(String, String)> {
        lock(&self.binding).clone()
    }
}

impl fmt::Debug for Pool {
    // Stable across calls: a trigger's fingerprint includes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnDemandPool")
            .field("service", &self.name)
            .field("command", &self.spec.command)
            .finish()
    }
}

fn idle_for(inst: &Instance, now: Instant) -> Duration {
    now.saturating_duration_since(*lock(&inst.last_done))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn new(name: String, spec: CommandSpec) -> Arc<Pool> {
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let pool = Arc::new(Pool {
            name,
            spec,
            state: Mutex::default(),
            changed: Arc::new(Notify::new()),
            closing: CancellationToken::new(),
            probe,
            binding: Mutex::default(),
        });
        pool.record_instances(0);
        let maintain = tokio::spawn(pool.clone().maintain());
        lock(&pool.state).tasks.push(maintain);
        pool
    }

    /// Instances running now (starting or ready), for tests and status.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        lock(&self.state).instances.len()
    }

    /// Starts instances until `desired` run (within `max`, after any crash backoff).
    fn scale_to(self: &Arc<Self>, st: &mut State, desired: usize) {
        let max = self.spec.max.get() as usize;
        let desired = desired.min(max);
        while st.instances.len() < desired && st.instances.len() + st.stopping < max {
            if st.not_before.is_some_and(|t| Instant::now() < t) {
                return;
            }
            let cold = st.instances.is_empty();
            st.next_number += 1;
            let number = st.next_number;
            let port = match free_port() {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(service = %self.name, error = %e, "No free port for a new instance");
                    self.crashed(st);
                    return;
                }
            };
            let base = match reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")) {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!(service = %self.name, error = %e, "Bad instance URL");
                    return;
                }
            };
            let inst = Arc::new(Instance {
                number,
                port,
                base,
                ready: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                last_done: Mutex::new(Instant::now()),
                stop: self.closing.child_token(),
                cold,
            });
            let reason = if cold { "cold" } else { "scale_up" };
            metrics::counter!(names::ONDEMAND_INSTANCE_STARTS, "service" => self.name.clone(), "reason" => reason).increment(1);
            if cold {
                metrics::counter!(names::ONDEMAND_COLD_STARTS, "service" => self.name.clone())
                    .increment(1);
            }
            tracing::info!(service = %self.name, instance = number, port, reason, "Starting an instance");
            st.instances.push(inst.clone());
            st.tasks.retain(|t| !t.is_finished());
            st.tasks
                .push(tokio::spawn(instance::run(self.clone(), inst)));
            self.record_instances(st.instances.len() + st.stopping);
        }
    }

    fn crashed(&self, st: &mut State) {
        st.crashes = st.crashes.saturating_add(1);
        let backoff = CRASH_BACKOFF_FIRST
            .saturating_mul(1u32 << st.crashes.saturating_sub(1).min(16))
            .min(CRASH_BACKOFF_MAX);
        st.not_before = Some(Instant::now() + backoff);
    }

    fn record_instances(&self, n: usize) {
        metrics::gauge!(names::ONDEMAND_INSTANCES, "service" => self.name.clone()).set(n as f64);
    }

    /// Called by an instance's task when it became ready.
    pub fn became_ready(&self, inst: &Instance, took: Duration) {
        *lock(&inst.last_done) = Instant::now();
        inst.ready.store(true, SeqCst);
        if inst.cold {
            metrics::histogram!(names::ONDEMAND_COLD_START_DURATION, "service" => self.name.clone())
                .record(took.as_secs_f64());
        }
        tracing::info!(
            service = %self.name,
            instance = inst.number,
            cold_start = inst.cold,
            ready_ms = took.as_millis() as u64,
            "Instance ready"
        );
        self.changed.notify_waiters();
    }

    /// Called by an instance's task when its process is gone.
    pub fn exited(&self, inst: &Instance, exit: Exit, uptime: Duration) {
        {
            let mut st = lock(&self.state);
            let position = st.instances.iter().position(|i| i.number == inst.number);
            let reason = match position {
                Some(p) => {
                    st.instances.remove(p);
                    match &exit {
                        Exit::Stopped => "shutdown",
                        Exit::FailedStart(_) | Exit::Crashed(_) => {
                            if uptime >= STABLE_UPTIME && inst.ready.load(SeqCst) {
                                st.crashes = 0;
                            }
                            self.crashed(&mut st);
                            if matches!(exit, Exit::Crashed(_)) {
                                "crash"
                            } else {
                                "failed_start"
                            }
                        }
                    }
                }
                // Chosen to stop before it ended: not a crash whatever its status.
                None => {
                    st.stopping = st.stopping.saturating_sub(1);
                    "stopped"
                }
            };
            metrics::counter!(names::ONDEMAND_INSTANCE_EXITS, "service" => self.name.clone(), "reason" => reason).increment(1);
            self.record_instances(st.instances.len() + st.stopping);
            match &exit {
                Exit::Crashed(status) if position.is_some() => {
                    let restart_in = st
                        .not_before
                        .map(|t| t.saturating_duration_since(Instant::now()));
                    tracing::warn!(
                        service = %self.name,
                        instance = inst.number,
                        status = %status,
                        in_flight = inst.in_flight.load(Relaxed),
                        restart_in = ?restart_in,
                        "Instance exited unexpectedly; its deliveries are retried"
                    );
                }
                Exit::FailedStart(error) => {
                    tracing::error!(service = %self.name, instance = inst.number, error = %error, "Instance failed to start");
                }
                _ => {
                    tracing::info!(service = %self.name, instance = inst.number, "Instance stopped");
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Stops idle instances (above `min`) and keeps `min` running, until closed.
    async fn maintain(self: Arc<Self>) {
        let tick = (self.spec.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.closing.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let mut st = lock(&self.state);
            let now = Instant::now();
            let min = self.spec.min as usize;
            if st.waiting == 0 {
                // Newest first, so the long-lived low numbers keep the traffic.
                let mut i = st.instances.len();
                while i > 0 && st.instances.len() > min {
                    i -= 1;
                    let inst = &st.instances[i];
                    if inst.ready.load(SeqCst)
                        && inst.in_flight.load(SeqCst) == 0
                        && idle_for(inst, now) >= self.spec.idle
                    {
                        let inst = st.instances.remove(i);
                        st.stopping += 1;
                        tracing::info!(service = %self.name, instance = inst.number, idle = ?self.spec.idle, "Instance idle; stopping");
                        inst.stop.cancel();
                    }
                }
            }
            self.scale_to(&mut st, min);
        }
    }

    /// Stops every instance (SIGTERM, then SIGKILL after `stop_grace`) and waits.
    pub async fn shutdown(&self) {
        self.closing.cancel();
        let tasks = {
            let mut st = lock(&self.state);
            std::mem::take(&mut st.tasks)
        };
        for t in tasks {
            let _ = t.await;
        }
        self.changed.notify_waiters();
    }
}

/// Counts a delivery as waiting while it is; uncounts it however the wait ends.
struct Waiting<'a> {
    pool: &'a Pool,
    counted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            let mut st = lock(&self.pool.state);
            st.waiting = st.waiting.saturating_sub(1);
        }
    }
}

/// Ends a lease: the instance has one delivery fewer in flight.
struct Release {
    instance: Arc<Instance>,
    changed: Arc<Notify>,
}

impl Drop for Release {
    fn drop(&mut self) {
        *lock(&self.instance.last_done) = Instant::now();
        self.instance.in_flight.fetch_sub(1, SeqCst);
        self.changed.notify_waiters();
    }
}

/// A pool as the dispatcher's [`Endpoints`].
#[derive(Debug, Clone)]
pub(crate) struct PoolEndpoints(pub Arc<Pool>);

impl super::Bindable for PoolEndpoints {
    fn bind(&self, env: Vec<(String, String)>) {
        let pool = &self.0;
        {
            let mut binding = lock(&pool.binding);
            if *binding == env {
                return;
            }
            *binding = env;
        }
        // Running instances restart with it: stopped now, started again by the
        // next delivery (or at once, up to `min`).
        let mut st = lock(&pool.state);
        let running = std::mem::take(&mut st.instances);
        st.stopping += running.len();
        for inst in running {
            tracing::info!(service = %pool.name, instance = inst.number, "Restarting the instance for its SinkBinding");
            inst.stop.cancel();
        }
        let min = pool.spec.min as usize;
        pool.scale_to(&mut st, min);
        drop(st);
        pool.changed.notify_waiters();
    }
}

#[async_trait]
impl Endpoints for PoolEndpoints {
    async fn acquire(&self) -> Result<Lease, LeaseError> {
        self.0.acquire().await
    }
}

impl Pool {
    /// Waits for a ready instance (starting instances as the demand requires) and
    /// leases it for one attempt.
    async fn acquire(self: &Arc<Self>) -> Result<Lease, LeaseError> {
        let deadline = tokio::time::Instant::now() + self.spec.start_timeout;
        let concurrency = self.spec.concurrency.get() as usize;
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if self.closing.is_cancelled() {
                    return Err(LeaseError::ShuttingDown {
                        service: self.name.clone(),
                    });
                }
                let in_flight: usize = st.instances.iter().map(|i| i.in_flight.load(SeqCst)).sum();
                let demand = in_flight + st.waiting + usize::from(waiting.is_none());
                let desired = demand.div_ceil(concurrency).max(self.spec.min as usize);
                self.scale_to(&mut st, desired);
                // Least in flight; ties to the oldest, so light traffic packs onto few
                // instances and the rest go idle.
                let best = st
                    .instances
                    .iter()
                    .filter(|i| i.ready.load(SeqCst))
                    .min_by_key(|i| (i.in_flight.load(SeqCst), i.number));
                let starting = st.instances.iter().any(|i| !i.ready.load(SeqCst));
                if let Some(inst) = best {
                    // Over the target only when no other instance is on its way.
                    if inst.in_flight.load(SeqCst) < concurrency || !starting {
                        inst.in_flight.fetch_add(1, SeqCst);
                        let lease = Lease::new(
                            inst.base.clone(),
                            Release {
                                instance: inst.clone(),
                                changed: self.changed.clone(),
                            },
                        );
                        if let Some(mut w) = waiting.take() {
                            // Uncount under this lock, not in Drop (which locks).
                            w.counted = false;
                            st.waiting = st.waiting.saturating_sub(1);
                        }
                        return Ok(lease);
                    }
                }
                if waiting.is_none() {
                    st.waiting += 1;
                    waiting = Some(Waiting {
                        pool: self,
                        counted: true,
                    });
                }
            }
            let recheck = (tokio::time::Instant::now() + RECHECK).min(deadline);
            tokio::select! {
                _ = notified => {}
                _ = self.closing.cancelled() => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LeaseError::NotReady {
                    service: self.name.clone(),
                    waited: self.spec.start_timeout,
                });
            }
        }
    }
}

/// A port free on 127.0.0.1 now (the OS picks; the instance binds it moments later).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn spec(command: &[&str]) -> CommandSpec {
        CommandSpec {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            port_env: "PORT".into(),
            readiness: None,
            concurrency: NonZeroU32::MIN,
            min: 0,
            max: NonZeroU32::MIN,
            idle: Duration::from_secs(60),
            start_timeout: Duration::from_millis(400),
            stop_grace: Duration::from_secs(1),
            env: Default::default(),
            working_dir: None,
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_fails_the_attempt_with_backoff() {
        let pool = Pool::new("broken".into(), spec(&["/nonexistent/cemesh-test-program"]));
        let err = pool.acquire().await.expect_err("no instance can start");
        assert!(
            err.to_string().contains("no instance of service broken"),
            "{err}"
        );
        assert_eq!(pool.running(), 0);
        // Backoff doubles from 100 ms: within 400 ms, a handful of tries, not hundreds.
        let crashes = lock(&pool.state).crashes;
        assert!((1..=4).contains(&crashes), "{crashes} starts");
        pool.shutdown().await;
    }

    #[tokio::test]
    async fn nothing_starts_before_the_first_delivery() {
        let pool = Pool::new("lazy".into(), spec(&["sleep", "30"]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.running(), 0);
        pool.shutdown().await;
    }
}
