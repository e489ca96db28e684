//! `cemesh bench --soak`: the broker under steady load for a long time (30 minutes
//! by default, at most 2 hours; never in CI), to see what only time shows — memory,
//! file descriptors or threads that grow, latency that drifts, events that go
//! missing.
//!
//! The real broker (`cemesh serve`, sled by default) runs with at least three
//! triggers, by index: `i % 3 == 0` healthy, `1` failing (its subscriber refuses a
//! fraction of attempts, so some events exhaust their retries and go to the
//! dead-letter sink), `2` slow (its subscriber waits before answering). Every trigger
//! has the same retries, backoff and a dead-letter sink at the soak sink's `/dl/{i}`
//! ([`sink`]). The generator sends at `--rate`; every `--soak-interval` the broker
//! process is sampled ([`sample`]); after the load the deliveries drain and each
//! trigger is balanced ([`account`]): delivered + dead-lettered = accepted, once each,
//! and the broker's counters agree with the sink's.

mod account;
mod sample;
mod sink;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::child::{self, ChildProc, ProcSample};
use crate::generator::{self, GenResult, Progress};
use crate::histogram::Histogram;
use crate::manifests::{self, SoakManifest};
use crate::report::seconds;
use crate::{BenchArgs, Plan};
use account::{BrokerCounts, Received, TriggerAccount};
use sample::{P99Trend, Sample, Trend};
use sink::{SoakSink, SoakState};

/// However long deliveries keep coming after the load, the soak's drain ends here.
const MAX_SOAK_DRAIN: Duration = Duration::from_secs(300);
/// The broker's log line for each event that exhausts its retries: expected in a
/// soak, so counted in the report but not echoed.
const DEAD_LETTER_LOG: &str = "Delivery failed; the event went to the dead-letter sink";
/// How long the broker's counters may take to settle (lag 0, nothing in flight).
const SETTLE: Duration = Duration::from_secs(10);

/// What a trigger's subscriber does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answers 200 at once.
    Healthy = 0,
    /// Refuses `--soak-fail-ratio` of attempts with 500/503.
    Failing = 1,
    /// Waits `--soak-slow` before answering 200.
    Slow = 2,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Healthy, Role::Failing, Role::Slow];

    /// The role of trigger `i`.
    pub fn of(i: usize) -> Role {
        Role::ALL[i % 3]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Healthy => "healthy",
            Role::Failing => "failing",
            Role::Slow => "slow",
        }
    }
}

/// The soak's settings (`--soak-*`).
#[derive(Debug, Clone, Serialize)]
pub struct SoakOptions {
    #[serde(serialize_with = "seconds")]
    pub interval: Duration,
    pub fail_ratio: f64,
    #[serde(serialize_with = "seconds")]
    pub slow_min: Duration,
    #[serde(serialize_with = "seconds")]
    pub slow_max: Duration,
    pub retry: u32,
    #[serde(serialize_with = "seconds")]
    pub backoff: Duration,
    /// The slow triggers' parallelism, when `--parallelism` does not set every
    /// trigger's: enough for twice the rate at the longest wait.
    pub slow_parallelism: Option<u32>,
}

/// `MIN..MAX`, e.g. `50ms..200ms`.
fn parse_range(s: &str) -> anyhow::Result<(Duration, Duration)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("{s:?} is not MIN..MAX, e.g. 50ms..200ms"))?;
    let p = |v: &str| {
        cemesh_control::duration::parse_humane(v).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
    };
    let (min, max) = (p(a)?, p(b)?);
    anyhow::ensure!(min <= max, "{s:?}: MIN is more than MAX");
    Ok((min, max))
}

impl SoakOptions {
    pub fn from_args(a: &BenchArgs, rate: f64) -> anyhow::Result<SoakOptions> {
        let humane = |flag: &str, v: &str| {
            cemesh_control::duration::parse_humane(v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        let interval = humane("--soak-interval", &a.soak_interval)?;
        anyhow::ensure!(
            interval >= Duration::from_secs(1),
            "--soak-interval: at least 1s"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&a.soak_fail_ratio),
            "--soak-fail-ratio: {} is not from 0 to below 1",
            a.soak_fail_ratio
        );
        let (slow_min, slow_max) =
            parse_range(&a.soak_slow).map_err(|e| e.context("--soak-slow"))?;
        anyhow::ensure!(
            slow_max <= Duration::from_secs(30),
            "--soak-slow: at most 30s (the triggers' timeout is 60s)"
        );
        let backoff = humane("--soak-backoff", &a.soak_backoff)?;
        let slow_parallelism = a.parallelism.is_none().then(|| {
            let needed = (rate * slow_max.as_secs_f64() * 2.0).ceil();
            needed.clamp(64.0, 10_000.0) as u32
        });
        Ok(SoakOptions {
            interval,
            fail_ratio: a.soak_fail_ratio,
            slow_min,
            slow_max,
            retry: a.soak_retry,
            backoff,
            slow_parallelism,
        })
    }

    pub fn manifest(&self, triggers: usize) -> SoakManifest {
        SoakManifest {
            retry: self.retry,
            backoff_delay: self.backoff,
            parallelism: (0..triggers)
                .map(|i| match Role::of(i) {
                    Role::Slow => self.slow_parallelism,
                    _ => None,
                })
                .collect(),
        }
    }
}

/// Everything a soak reports (`--json` prints it).
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub plan: Plan,
    pub samples: Vec<Sample>,
    pub resources: Vec<Trend>,
    pub p99: Vec<P99Trend>,
    /// First-delivery latency of the whole load, per role.
    pub latency: Vec<RoleLatency>,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub errors: u64,
    pub drained: bool,
    #[serde(serialize_with = "seconds")]
    pub drain_time: Duration,
    pub accounts: Vec<TriggerAccount>,
    /// Requests the sink could not attribute to a trigger of this run.
    pub foreign: u64,
    /// The broker's warnings and errors, by message.
    pub broker_warnings: BTreeMap<String, u64>,
    /// False when an accepted event was neither delivered nor dead-lettered, or the
    /// drain timed out.
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct RoleLatency {
    pub role: Role,
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Runs the soak the plan describes.
pub async fn run(plan: &Plan, json: bool) -> anyhow::Result<()> {
    let opts = plan.soak.as_ref().context("not a soak")?;
    let base = Instant::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let state = Arc::new(SoakState::new(run_id.clone(), base, plan.triggers, opts));
    let sink = SoakSink::start(
        plan.sink_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        state.clone(),
    )
    .await?;
    let manifests = plan.manifests(&format!("http://{}", sink.addr));
    eprintln!("{}", describe(plan, opts));
    let (proc, ingress) = child::spawn_broker(&child::BrokerLaunch {
        channel: plan.channel,
        manifests: &manifests,
        extra_args: &plan.serve_args,
        data_dir: plan.data_dir.as_deref(),
        triggers: plan.triggers,
        quiet: &[DEAD_LETTER_LOG],
    })
    .await
    .context("soak: cannot start the broker")?;
    let result = soak(plan, opts, &state, &proc, ingress, base, run_id).await;
    if result.is_err() {
        eprintln!("soak: log of the broker:\n{}", proc.tail());
    }
    let warnings = proc.warnings();
    proc.stop().await;
    let mut report = result?;
    report.broker_warnings = warnings;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        print!("{}", text(&report, opts));
    }
    anyhow::ensure!(
        report.passed,
        "soak failed: {}",
        if report.drained {
            "accepted events were neither delivered nor dead-lettered"
        } else {
            "the deliveries did not drain"
        }
    );
    Ok(())
}

fn describe(plan: &Plan, opts: &SoakOptions) -> String {
    let roles: Vec<String> = (0..plan.triggers)
        .map(|i| format!("bench-{i} {}", Role::of(i).as_str()))
        .collect();
    format!(
        "cemesh bench --soak: {} channel{}, {} triggers ({}); failing refuses {:.0}% of \
         attempts, slow waits {:?}..{:?}{}; retry {}, exponential backoff from {:?}, \
         dead-letter sink /dl/i; {} B events over {} connections at {} events/s for {:?}, \
         sampled every {:?}",
        plan.channel,
        plan.durability
            .as_deref()
            .map_or(String::new(), |d| format!(" ({d})")),
        plan.triggers,
        roles.join(", "),
        opts.fail_ratio * 100.0,
        opts.slow_min,
        opts.slow_max,
        opts.slow_parallelism
            .map_or(String::new(), |p| format!(" (parallelism {p})")),
        opts.retry,
        opts.backoff,
        plan.size_bytes,
        plan.connections,
        plan.rate.unwrap_or_default(),
        plan.duration,
        opts.interval,
    )
}

/// Takes a [`Sample`] each interval, from the deltas since the last one.
struct Sampler<'a> {
    state: &'a SoakState,
    proc: &'a ChildProc,
    progress: &'a Progress,
    start: Instant,
    last_at: Instant,
    last_proc: ProcSample,
    last_bench_cpu: f64,
    last_accepted: u64,
    samples: Vec<Sample>,
}

impl Sampler<'_> {
    fn take(&mut self, phase: &'static str) -> anyhow::Result<()> {
        let now = Instant::now();
        let p = child::proc_sample(self.proc.pid).context("the broker process is gone")?;
        let bench_cpu = child::proc_stats(std::process::id()).map_or(0.0, |s| s.cpu_s);
        let accepted = self.progress.accepted.load(Ordering::Relaxed);
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-9);
        let lat = self.state.take_interval();
        let mut backlog = [0u64; 3];
        let mut dead_letters = 0;
        for t in &self.state.triggers {
            backlog[t.role as usize] += accepted.saturating_sub(t.finished());
            dead_letters += t.dead_unique.load(Ordering::Relaxed);
        }
        let p99 = |h: &Histogram| (h.count() > 0).then(|| ms(h.quantile(0.99)));
        let sample = Sample {
            t_s: now.saturating_duration_since(self.start).as_secs_f64(),
            phase,
            rss_mib: p.rss_kib as f64 / 1024.0,
            fds: p.fds,
            threads: p.threads,
            cpu_pct: (p.cpu_s - self.last_proc.cpu_s) / secs * 100.0,
            bench_cpu_pct: (bench_cpu - self.last_bench_cpu) / secs * 100.0,
            load1: sample::load1(),
            data_mib: self.proc.dir().map_or(0.0, |d| sample::dir_mib(&d)),
            accepted_per_s: accepted.saturating_sub(self.last_accepted) as f64 / secs,
            p99_ms: [p99(&lat.0[0]), p99(&lat.0[1]), p99(&lat.0[2])],
            backlog,
            dead_letters,
        };
        // One line per sample while the soak runs, so a long run shows life.
        let t = sample::table(std::slice::from_ref(&sample));
        let mut lines = t.lines();
        let header = lines.next().unwrap_or_default();
        if self.samples.is_empty() {
            eprintln!("{header}");
        }
        eprintln!("{}", lines.next().unwrap_or_default());
        self.samples.push(sample);
        self.last_at = now;
        self.last_proc = p;
        self.last_bench_cpu = bench_cpu;
        self.last_accepted = accepted;
        Ok(())
    }
}

async fn soak(
    plan: &Plan,
    opts: &SoakOptions,
    state: &SoakState,
    proc: &ChildProc,
    ingress: SocketAddr,
    base: Instant,
    run_id: String,
) -> anyhow::Result<SoakReport> {
    let progress = Arc::new(Progress::default());
    let size = usize::try_from(plan.size_bytes).context("--size too large")?;
    let cfg = generator::GenConfig {
        addr: ingress,
        authority: ingress.to_string(),
        path: format!("/{}/{}", manifests::NAMESPACE, manifests::BROKER).parse()?,
        tls: None,
        authorization: None,
        connections: plan.connections,
        max_events: plan.max_events,
        duration: plan.duration,
        rate: plan.rate,
        payload: generator::payload(size, false),
        match_ratio: 1.0,
        run_id,
        base,
        progress: Some(progress.clone()),
    };
    let before = Instant::now();
    let mut sampler = Sampler {
        state,
        proc,
        progress: &progress,
        start: before,
        last_at: before,
        last_proc: child::proc_sample(proc.pid).context("cannot sample the broker")?,
        last_bench_cpu: child::proc_stats(std::process::id()).map_or(0.0, |s| s.cpu_s),
        last_accepted: 0,
        samples: Vec::new(),
    };
    // The idle broker's CPU over a second, before the load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    sampler.start = start;
    sampler.take("start")?;
    let mut gen = tokio::spawn(generator::run(cfg));
    let mut ticker = tokio::time::interval_at((start + opts.interval).into(), opts.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let gen: GenResult = loop {
        tokio::select! {
            r = &mut gen => break r.context("the load generator panicked")??,
            _ = ticker.tick() => sampler.take("load")?,
        }
    };
    // Drain: until every trigger finished every accepted event, or nothing arrives
    // for --drain-timeout, or the soak's drain cap.
    let drain_start = Instant::now();
    let accepted = gen.accepted.len();
    let mut last_activity = state.activity();
    let mut last_change = Instant::now();
    let drained = loop {
        if state.triggers.iter().all(|t| t.finished() >= accepted) {
            break true;
        }
        let now = Instant::now();
        if now.duration_since(last_change) >= plan.drain_timeout
            || now.duration_since(drain_start) >= MAX_SOAK_DRAIN
        {
            break false;
        }
        tokio::select! {
            _ = ticker.tick() => sampler.take("drain")?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let a = state.activity();
        if a != last_activity {
            last_activity = a;
            last_change = Instant::now();
        }
    };
    let drain_time = drain_start.elapsed();
    let broker = broker_counts(proc, plan.triggers).await;
    sampler.take("end")?;

    let accounts: Vec<TriggerAccount> = state
        .triggers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let seen = t.snapshot();
            let r = Received {
                accepted: &gen.accepted,
                delivered: &seen.delivered,
                dead: &seen.dead,
                deliveries: t.delivered.load(Ordering::Relaxed),
                dead_letters: t.dead.load(Ordering::Relaxed),
                retries: seen.retries,
            };
            let expect_dead = |s: u64| {
                t.role == Role::Failing && sink::must_dead_letter(s, opts.retry, opts.fail_ratio)
            };
            account::account(i, t.role, &r, expect_dead, broker.get(i).cloned().flatten())
        })
        .collect();
    let samples = sampler.samples;
    let resources = vec![
        sample::trend("RSS MiB", &samples, |s| s.rss_mib, 0.10, 8.0),
        sample::trend("fds", &samples, |s| s.fds as f64, 0.10, 8.0),
        sample::trend("threads", &samples, |s| s.threads as f64, 0.0, 2.0),
        sample::trend("data MiB", &samples, |s| s.data_mib, 0.25, 16.0),
    ];
    let p99 = Role::ALL
        .iter()
        .map(|&r| sample::p99_trend(r, &samples))
        .collect();
    let latency = Role::ALL
        .iter()
        .map(|&role| {
            let h = &state.total.0[role as usize];
            RoleLatency {
                role,
                samples: h.count(),
                p50_ms: ms(h.quantile(0.5)),
                p99_ms: ms(h.quantile(0.99)),
                max_ms: ms(h.max()),
            }
        })
        .collect();
    let passed = drained && !accounts.iter().any(TriggerAccount::lost_events);
    Ok(SoakReport {
        plan: plan.clone(),
        samples,
        resources,
        p99,
        latency,
        sent: gen.sent,
        accepted,
        rejected: gen
            .rejected
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        errors: gen.errors,
        drained,
        drain_time,
        accounts,
        foreign: state.foreign.load(Ordering::Relaxed),
        broker_warnings: BTreeMap::new(),
        passed,
    })
}

/// Every trigger's counters from the broker's admin API, once they settle (lag 0
/// and nothing in flight, or [`SETTLE`]).
async fn broker_counts(proc: &ChildProc, triggers: usize) -> Vec<Option<BrokerCounts>> {
    let Some(admin) = proc.admin else {
        return vec![None; triggers];
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut counts = Vec::with_capacity(triggers);
        for i in 0..triggers {
            let url = format!(
                "http://{admin}/v1/namespaces/{}/triggers/bench-{i}",
                manifests::NAMESPACE
            );
            let c = async {
                let body = client.get(&url).send().await.ok()?.bytes().await.ok()?;
                let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                BrokerCounts::from_stats(&v["status"]["stats"])
            }
            .await;
            counts.push(c);
        }
        let settled = counts
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| c.lag == 0 && c.in_flight == 0));
        if settled || Instant::now() >= deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The report for people.
fn text(r: &SoakReport, opts: &SoakOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", describe(&r.plan, opts));
    out.push_str(&sample::table(&r.samples));
    let _ = writeln!(
        out,
        "\nload: sent {}, accepted {}{}{}; drain {:.1}s{}",
        r.sent,
        r.accepted,
        if r.rejected.is_empty() {
            String::new()
        } else {
            format!(
                ", rejected {}",
                r.rejected
                    .iter()
                    .map(|(k, v)| format!("{v}×{k}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
        if r.errors > 0 {
            format!(", {} errors", r.errors)
        } else {
            String::new()
        },
        r.drain_time.as_secs_f64(),
        if r.drained { "" } else { " — TIMED OUT" },
    );
    let _ = writeln!(
        out,
        "\nresources (under load: first / last / max; start → end):"
    );
    for t in &r.resources {
        let _ = writeln!(
            out,
            "  {:<9} {} / {} / {}; {} → {}; second half {:+.1}/h, high {} vs {} in the first half: {}",
            t.name,
            fmt_num(t.first),
            fmt_num(t.last),
            fmt_num(t.max),
            fmt_num(t.start),
            fmt_num(t.end),
            t.slope_per_hour,
            fmt_num(t.second_half_max),
            fmt_num(t.first_half_max),
            match t.flat {
                Some(true) => "flat",
                Some(false) => "GROWING",
                None => "too short to tell",
            }
        );
    }
    let _ = writeln!(
        out,
        "\nlatency of first deliveries, ms (interval p99: min / median / max; whole run p50 / p99 / max):"
    );
    for (t, l) in r.p99.iter().zip(&r.latency) {
        let _ = writeln!(
            out,
            "  {:<8} {} / {} / {}; {} / {} / {} over {} events; halves' median p99 {} → {}: {}",
            t.role.as_str(),
            fmt_num(t.min_ms),
            fmt_num(t.median_ms),
            fmt_num(t.max_ms),
            fmt_num(l.p50_ms),
            fmt_num(l.p99_ms),
            fmt_num(l.max_ms),
            l.samples,
            fmt_num(t.first_half_median_ms),
            fmt_num(t.second_half_median_ms),
            match t.stable {
                Some(true) => "stable",
                Some(false) => "DRIFTING",
                None => "too short to tell",
            }
        );
    }
    let _ = writeln!(out, "\naccounting (per trigger, exact):");
    for a in &r.accounts {
        let b = a.broker.as_ref().map_or("broker: -".to_owned(), |b| {
            format!(
                "broker: delivered {} retries {} dead-lettered {} stored {} lag {} in flight {}",
                b.delivered, b.retries, b.dead_lettered, b.dead_letters_stored, b.lag, b.in_flight
            )
        });
        let _ = writeln!(
            out,
            "  bench-{} {:<8} accepted {} = delivered {} + dead-lettered {} (expected {}), lost {}, \
             duplicates {}+{}, retries {}; {}: {}",
            a.trigger,
            a.role.as_str(),
            a.accepted,
            a.delivered,
            a.dead_lettered,
            a.expected_dead_letters,
            a.lost,
            a.duplicate_deliveries,
            a.duplicate_dead_letters,
            a.sink_retries,
            b,
            if a.problems.is_empty() {
                "ok".to_owned()
            } else {
                format!("MISMATCH: {}", a.problems.join("; "))
            }
        );
    }
    if r.foreign > 0 {
        let _ = writeln!(out, "  {} requests for no trigger of this run", r.foreign);
    }
    if !r.broker_warnings.is_empty() {
        let _ = writeln!(out, "\nbroker log, warnings and errors:");
        for (m, n) in &r.broker_warnings {
            let _ = writeln!(out, "  {n:>8} × {m}");
        }
    }
    let problems = r.accounts.iter().any(|a| !a.problems.is_empty());
    let flat = r.resources.iter().all(|t| t.flat != Some(false));
    let stable = r.p99.iter().all(|t| t.stable != Some(false));
    let _ = writeln!(
        out,
        "\nverdict: {}; resources {}; p99 {}{}",
        if r.passed {
            "every accepted event delivered or dead-lettered"
        } else {
            "FAILED: events lost or not drained"
        },
        if flat { "flat" } else { "GROWING (see above)" },
        if stable {
            "stable"
        } else {
            "DRIFTING (see above)"
        },
        if problems {
            "; WARNING: mismatches in the accounting (see above)"
        } else {
            ""
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_cycle_over_the_triggers() {
        let roles: Vec<Role> = (0..5).map(Role::of).collect();
        assert_eq!(
            roles,
            [
                Role::Healthy,
                Role::Failing,
                Role::Slow,
                Role::Healthy,
                Role::Failing
            ]
        );
    }

    #[test]
    fn ranges_parse_as_min_dot_dot_max() {
        assert_eq!(
            parse_range("50ms..200ms").expect("range"),
            (Duration::from_millis(50), Duration::from_millis(200))
        );
        assert_eq!(
            parse_range("0..1s").expect("range"),
            (Duration::ZERO, Duration::from_secs(1))
        );
        assert!(parse_range("200ms..50ms").is_err());
        assert!(parse_range("200ms").is_err());
        assert!(parse_range("a..b").is_err());
    }
}
