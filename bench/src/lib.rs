//! `cemesh bench`: one trustworthy way to measure cemesh's speed on this machine, the
//! way `nats bench` or `kafka-producer-perf-test` do for their systems.
//!
//! A run puts a system between a load generator and a sink, both in this process:
//! - the **generator** ([`generator`]) POSTs binary-mode CloudEvents over N keep-alive
//!   connections, stamping each with its send time (`ce-benchts`);
//! - the **sink** ([`sink`]) is the subscriber of every trigger; it counts deliveries
//!   per trigger, finds duplicates by event id and records end-to-end latency;
//! - the **system under test** is a child process ([`child`]) so its CPU time and
//!   peak memory are its own: the real broker (`cemesh serve`, the code users run,
//!   with the bench's manifests from [`manifests`]) or the **baseline**
//!   ([`forwarder`]), a bare forwarder that only POSTs each event on to the sink — the
//!   ceiling of any broker here. `--baseline` alternates the two and prints the ratio.
//!   `--target-url` measures a broker that is already running instead.
//!
//! Every run is bounded in events and time, and talks to loopback only unless told
//! otherwise. Counts are exact (bitsets over sequence numbers, [`bitset`]), so a run
//! also proves there was no loss and, on the memory channel, no duplicate.

mod bitset;
mod child;
mod forwarder;
mod generator;
mod histogram;
mod manifests;
mod report;
mod sink;
mod soak;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use cemesh_control::config::ChannelKind;
use cemesh_control::duration::{parse_bytes, parse_humane};
use report::{Report, RunReport, TargetKind};
use sink::{RunTally, Sink};

/// Extension carrying the generator's send time, ns after the bench's clock base.
pub(crate) const TS_HEADER: &str = "ce-benchts";
/// Extension tagging the events that triggers match when `--match-ratio` < 1.
pub(crate) const MATCH_ATTRIBUTE: &str = "benchmatch";
pub(crate) const MATCH_HEADER: &str = "ce-benchmatch";

const DEFAULT_EVENTS: u64 = 20_000;
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Hard caps: a bench must stop by itself, and its bitsets stay small.
const MAX_EVENTS: u64 = 10_000_000;
const MAX_DURATION: Duration = Duration::from_secs(300);
/// A soak's default length and its own cap (it is never run in CI).
const DEFAULT_SOAK_DURATION: Duration = Duration::from_secs(30 * 60);
const MAX_SOAK_DURATION: Duration = Duration::from_secs(2 * 3600);
/// However long deliveries keep coming after the generator stops, the drain ends here.
const MAX_DRAIN: Duration = Duration::from_secs(120);

/// How the triggers filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterKind {
    /// No filter: every event matches.
    None,
    /// `spec.filter.attributes` (exact match on type, and on the tag).
    Attributes,
    /// `spec.filters` `exact`.
    Exact,
    /// `spec.filters` `prefix`.
    Prefix,
    /// `spec.filters` `cesql`.
    Cesql,
    /// `spec.filters` `exact` on the type, then cemesh's `data` on three fields of
    /// a JSON payload (events carry JSON data of `--size` bytes).
    Data,
}

impl FilterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterKind::None => "none",
            FilterKind::Attributes => "attributes",
            FilterKind::Exact => "exact",
            FilterKind::Prefix => "prefix",
            FilterKind::Cesql => "cesql",
            FilterKind::Data => "data",
        }
    }
}

/// Options of `cemesh bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent HTTP/1.1 keep-alive connections of the load generator
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Size of each event's data, e.g. 1KiB
    #[arg(long, default_value = "1KiB")]
    pub size: String,
    /// Events to send per run [default: 20000; 10M cap when only --duration is given]
    #[arg(long)]
    pub events: Option<u64>,
    /// How long to send per run, e.g. 10s [default: 10s; 300s cap when only --events
    /// is given; with --soak: default 30m, at most 2h]
    #[arg(long)]
    pub duration: Option<String>,
    /// Send at this fixed total rate (events/s) instead of as fast as possible
    #[arg(long)]
    pub rate: Option<f64>,
    /// Channel of the embedded broker [default: memory; sled with --soak]
    #[arg(long, value_enum)]
    pub channel: Option<ChannelKind>,
    /// sled durability (Broker annotation cemesh.dev/durability): flush-per-batch,
    /// none or interval(10ms)
    #[arg(long)]
    pub durability: Option<String>,
    /// Give the broker a dedup window (annotation cemesh.dev/dedup-window), e.g. 10m:
    /// every event's source and id are checked and kept
    #[arg(long)]
    pub dedup_window: Option<String>,
    /// The broker's ingress backpressure window (annotation
    /// cemesh.dev/backpressure-window), e.g. 1MiB or none
    #[arg(long)]
    pub backpressure_window: Option<String>,
    /// How long a request past the window is held for room before a 429 (annotation
    /// cemesh.dev/backpressure-hold), e.g. 0s
    #[arg(long)]
    pub backpressure_hold: Option<String>,
    /// The event journal of the broker (annotation cemesh.dev/journal): on (the
    /// default, as a broker runs) or off, to measure what it costs
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub journal: String,
    /// Number of triggers on the broker, each delivering to the sink
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub triggers: u32,
    /// Fraction of events each trigger matches (the generator tags that fraction)
    #[arg(long, default_value_t = 1.0)]
    pub match_ratio: f64,
    /// How triggers filter
    #[arg(long, value_enum, default_value_t = FilterKind::Attributes)]
    pub filter: FilterKind,
    /// Deliveries in flight per trigger (annotation cemesh.dev/parallelism)
    #[arg(long)]
    pub parallelism: Option<u32>,
    /// Also run the bare-forwarder baseline, alternating with the broker, and print
    /// the ratio
    #[arg(long)]
    pub baseline: bool,
    /// Runs of each kind (alternating with --baseline); the summary takes the median
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// After sending, wait at most this long without a new delivery
    #[arg(long, default_value = "5s")]
    pub drain_timeout: String,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Measure a running broker: its ingress URL, e.g. http://127.0.0.1:8080/default/bench
    #[arg(long, requires = "sink_addr")]
    pub target_url: Option<String>,
    /// Where the sink listens; with --target-url, the address the broker's triggers
    /// deliver to (paths /t/0 .. /t/K-1)
    #[arg(long)]
    pub sink_addr: Option<SocketAddr>,
    /// With an https --target-url: --cacert (besides the Mozilla roots) or
    /// --insecure-skip-verify; with any --target-url: --token/--token-file, sent as
    /// Authorization: Bearer with every event
    #[command(flatten)]
    pub client: cemesh_client::args::ClientTls,
    /// With --target-url: the broker's process id, to report its CPU and memory
    #[arg(long, requires = "target_url")]
    pub target_pid: Option<u32>,
    /// Print the Broker and Trigger manifests of the run (for a deployed broker: use
    /// with --sink-addr) and exit
    #[arg(long)]
    pub print_manifests: bool,
    /// Where the embedded broker's temporary config and data dir are made (put it on
    /// the disk to measure) [default: the system's temp dir]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Extra argument for the embedded `cemesh serve` (repeatable)
    #[arg(long = "serve-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Soak the embedded broker: send at --rate for --duration (default 30m, at most
    /// 2h) to at least 3 triggers — healthy, failing --soak-fail-ratio of attempts,
    /// slow — with retries and a dead-letter sink; sample the broker's RSS, fds,
    /// threads and the p99 every --soak-interval; then check that every accepted
    /// event was delivered or dead-lettered (exit 1 on loss)
    #[arg(long, requires = "rate")]
    pub soak: bool,
    /// With --soak: how often to sample the broker and cut a latency interval
    #[arg(
        long,
        default_value = "60s",
        value_name = "DURATION",
        requires = "soak"
    )]
    pub soak_interval: String,
    /// With --soak: the fraction of delivery attempts the failing trigger's subscriber
    /// answers 500/503 (decided by a hash of the event and the attempt)
    #[arg(long, default_value_t = 0.1, value_name = "RATIO", requires = "soak")]
    pub soak_fail_ratio: f64,
    /// With --soak: how long the slow trigger's subscriber waits before answering,
    /// MIN..MAX (per event, spread evenly)
    #[arg(
        long,
        default_value = "50ms..200ms",
        value_name = "MIN..MAX",
        requires = "soak"
    )]
    pub soak_slow: String,
    /// With --soak: the triggers' spec.delivery.retry (attempts after the first)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=20), requires = "soak")]
    pub soak_retry: u32,
    /// With --soak: the triggers' exponential spec.delivery.backoffDelay
    #[arg(
        long,
        default_value = "50ms",
        value_name = "DURATION",
        requires = "soak"
    )]
    pub soak_backoff: String,
    /// Internal: run as the baseline forwarder in front of this sink URL.
    #[arg(long, hide = true)]
    pub internal_forwarder: Option<String>,
    /// Internal: the forwarder passes only events tagged as matching.
    #[arg(long, hide = true)]
    pub internal_forwarder_filter: bool,
}

/// The validated plan of an invocation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub connections: usize,
    pub size_bytes: u64,
    pub max_events: u64,
    #[serde(serialize_with = "report::seconds")]
    pub duration: Duration,
    pub rate: Option<f64>,
    pub channel: &'static str,
    pub durability: Option<String>,
    pub dedup_window: Option<String>,
    pub backpressure_window: Option<String>,
    pub backpressure_hold: Option<String>,
    pub journal: String,
    pub triggers: usize,
    pub match_ratio: f64,
    pub filter: FilterKind,
    pub parallelism: Option<u32>,
    pub baseline: bool,
    pub rounds: u32,
    #[serde(serialize_with = "report::seconds")]
    pub drain_timeout: Duration,
    pub target_url: Option<String>,
    pub sink_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    #[serde(skip)]
    pub target_pid: Option<u32>,
    /// Trust and credential for --target-url.
    #[serde(skip)]
    pub client: cemesh_client::args::ClientTls,
    #[serde(skip)]
    pub serve_args: Vec<String>,
    /// Set for a soak (`--soak`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<soak::SoakOptions>,
}

impl Plan {
    fn from_args(a: &BenchArgs) -> anyhow::Result<Plan> {
        let size_bytes = parse_bytes(&a.size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
        anyhow::ensure!(
            size_bytes <= 64 << 20,
            "--size: {size_bytes} bytes is more than 64MiB"
        );
        let duration = a
            .duration
            .as_deref()
            .map(parse_humane)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
        let (default_duration, max_duration) = if a.soak {
            (DEFAULT_SOAK_DURATION, MAX_SOAK_DURATION)
        } else {
            (DEFAULT_DURATION, MAX_DURATION)
        };
        let (max_events, duration) = match (a.events, duration) {
            (None, None) if a.soak => (MAX_EVENTS, default_duration),
            (None, None) => (DEFAULT_EVENTS, default_duration),
            (Some(n), None) => (n, max_duration),
            (None, Some(d)) => (MAX_EVENTS, d),
            (Some(n), Some(d)) => (n, d),
        };
        anyhow::ensure!(
            (1..=MAX_EVENTS).contains(&max_events),
            "--events: {max_events} is not from 1 to {MAX_EVENTS}"
        );
        anyhow::ensure!(
            !duration.is_zero() && duration <= max_duration,
            "--duration: {duration:?} is not more than 0s and at most {max_duration:?}{}",
            if a.soak {
                ""
            } else {
                " (--soak runs up to 2h)"
            }
        );
        if let Some(r) = a.rate {
            anyhow::ensure!(
                r.is_finite() && r > 0.0,
                "--rate: {r} is not a positive number of events per second"
            );
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&a.match_ratio),
            "--match-ratio: {} is not from 0 to 1",
            a.match_ratio
        );
        anyhow::ensure!(
            a.match_ratio >= 1.0 || a.filter != FilterKind::None,
            "--match-ratio below 1 needs a filter (--filter attributes, exact, prefix or cesql)"
        );
        let channel = a.channel.unwrap_or(if a.soak {
            ChannelKind::Sled
        } else {
            ChannelKind::Memory
        });
        if a.durability.is_some() {
            anyhow::ensure!(
                channel == ChannelKind::Sled,
                "--durability applies to the sled channel only (use --channel sled)"
            );
        }
        if let Some(p) = a.parallelism {
            anyhow::ensure!(
                (1..=10_000).contains(&p),
                "--parallelism: {p} is not from 1 to 10000"
            );
        }
        let drain_timeout =
            parse_humane(&a.drain_timeout).map_err(|e| anyhow::anyhow!("--drain-timeout: {e}"))?;
        let (triggers, soak) = if a.soak {
            anyhow::ensure!(
                !a.baseline && a.target_url.is_none() && a.rounds == 1,
                "--soak runs the embedded broker once: no --baseline, --target-url or --rounds"
            );
            anyhow::ensure!(
                a.match_ratio >= 1.0,
                "--soak: every trigger matches every event (no --match-ratio)"
            );
            let rate = a.rate.context("--soak needs --rate")?;
            anyhow::ensure!(
                rate * duration.as_secs_f64() <= MAX_EVENTS as f64,
                "--soak: {rate} events/s for {duration:?} is more than {MAX_EVENTS} events"
            );
            let triggers = (a.triggers as usize).max(3);
            (triggers, Some(soak::SoakOptions::from_args(a, rate)?))
        } else {
            (a.triggers as usize, None)
        };
        Ok(Plan {
            connections: a.connections as usize,
            size_bytes,
            max_events,
            duration,
            rate: a.rate,
            channel: channel.as_str(),
            durability: a.durability.clone(),
            dedup_window: a.dedup_window.clone(),
            backpressure_window: a.backpressure_window.clone(),
            backpressure_hold: a.backpressure_hold.clone(),
            journal: a.journal.clone(),
            triggers,
            match_ratio: a.match_ratio,
            filter: a.filter,
            parallelism: a.parallelism,
            baseline: a.baseline,
            rounds: a.rounds,
            drain_timeout,
            target_url: a.target_url.clone(),
            sink_addr: a.sink_addr,
            data_dir: a.data_dir.clone(),
            target_pid: a.target_pid,
            client: a.client.clone(),
            serve_args: a.serve_args.clone(),
            soak,
        })
    }

    /// Whether triggers filter on the match tag.
    fn filter_on_tag(&self) -> bool {
        self.match_ratio < 1.0
    }

    fn manifests(&self, sink_base: &str) -> String {
        let soak = self.soak.as_ref().map(|s| s.manifest(self.triggers));
        manifests::render(&manifests::ManifestOptions {
            channel: self.channel,
            durability: self.durability.as_deref(),
            dedup_window: self.dedup_window.as_deref(),
            backpressure_window: self.backpressure_window.as_deref(),
            backpressure_hold: self.backpressure_hold.as_deref(),
            journal: self.journal == "on",
            triggers: self.triggers,
            filter: self.filter,
            filter_on_tag: self.filter_on_tag(),
            parallelism: self.parallelism,
            sink_base,
            soak: soak.as_ref(),
        })
    }
}

/// Whether event `seq` carries the match tag: a fraction `ratio` of events, spread
/// evenly (event n matches when floor((n+1)·r) passes an integer).
pub(crate) fn event_matches(seq: u64, ratio: f64) -> bool {
    ratio >= 1.0 || ((seq + 1) as f64 * ratio).floor() > (seq as f64 * ratio).floor()
}

/// The sequence number of an event id `RUN-SEQ` of run `run_id`.
pub(crate) fn parse_event_id(id: &str, run_id: &str) -> Option<u64> {
    id.strip_prefix(run_id)?.strip_prefix('-')?.parse().ok()
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(sink) = &args.internal_forwarder {
        return forwarder::serve_child(
            sink,
            args.triggers as usize,
            args.internal_forwarder_filter,
        )
        .await;
    }
    let plan = Plan::from_args(&args)?;
    if plan.soak.is_some() && !args.print_manifests {
        return soak::run(&plan, args.json).await;
    }
    if args.print_manifests {
        let sink = plan
            .sink_addr
            .context("--print-manifests needs --sink-addr: where the triggers deliver")?;
        print!("{}", plan.manifests(&format!("http://{sink}")));
        return Ok(());
    }
    let base = Instant::now();
    let sink = Sink::start(
        plan.sink_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await?;
    let mut runs = Vec::new();
    for round in 1..=plan.rounds {
        if plan.target_url.is_some() {
            runs.push(run_once(&plan, &sink, base, TargetKind::External, round).await?);
        } else {
            runs.push(run_once(&plan, &sink, base, TargetKind::Broker, round).await?);
        }
        if plan.baseline {
            runs.push(run_once(&plan, &sink, base, TargetKind::Baseline, round).await?);
        }
    }
    let report = Report::new(plan, runs);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The system a run measures, started.
struct Started {
    proc: Option<child::ChildProc>,
    pid: Option<u32>,
    addr: SocketAddr,
    authority: String,
    path: http::Uri,
    /// https (`--target-url` only).
    tls: Option<tls::Secure>,
    /// `Authorization` of every event (`--target-url` only).
    authorization: Option<http::HeaderValue>,
}

async fn start_target(plan: &Plan, sink: &Sink, kind: TargetKind) -> anyhow::Result<Started> {
    let sink_base = format!("http://{}", sink.addr);
    match kind {
        TargetKind::Broker => {
            let manifests = plan.manifests(&sink_base);
            let (proc, addr) = child::spawn_broker(&child::BrokerLaunch {
                channel: plan.channel,
                manifests: &manifests,
                extra_args: &plan.serve_args,
                data_dir: plan.data_dir.as_deref(),
                triggers: plan.triggers,
                quiet: &[],
            })
            .await?;
            Ok(Started {
                pid: Some(proc.pid),
                proc: Some(proc),
                addr,
                authority: addr.to_string(),
                path: format!("/{}/{}", manifests::NAMESPACE, manifests::BROKER).parse()?,
                tls: None,
                authorization: None,
            })
        }
        TargetKind::Baseline => {
            let (proc, addr) =
                child::spawn_forwarder(&sink_base, plan.triggers, plan.filter_on_tag()).await?;
            Ok(Started {
                pid: Some(proc.pid),
                proc: Some(proc),
                addr,
                authority: addr.to_string(),
                path: http::Uri::from_static("/"),
                tls: None,
                authorization: None,
            })
        }
        TargetKind::External => {
            let url = plan.target_url.as_deref().unwrap_or_default();
            let uri: http::Uri = url
                .parse()
                .with_context(|| format!("--target-url: {url:?} is not a URL"))?;
            let (secure, default_port) = match uri.scheme_str() {
                Some("http") => (false, 80),
                Some("https") => (true, 443),
                _ => anyhow::bail!("--target-url: use an http:// or https:// URL"),
            };
            let authority = uri
                .authority()
                .context("--target-url: no host")?
                .to_string();
            let host_port = if uri.port().is_some() {
                authority.clone()
            } else {
                format!("{authority}:{default_port}")
            };
            let tls = match secure {
                true => Some(tls::Secure::new(
                    &plan.client,
                    uri.host().unwrap_or_default(),
                )?),
                false => None,
            };
            let addr = tokio::net::lookup_host(&host_port)
                .await
                .with_context(|| format!("--target-url: cannot resolve {host_port}"))?
                .next()
                .with_context(|| format!("--target-url: {host_port} has no address"))?;
            let path = uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .parse()
                .context("--target-url: bad path")?;
            Ok(Started {
                proc: None,
                pid: plan.target_pid,
                addr,
                authority,
                path,
                tls,
                authorization: cemesh_client::admin_client::bearer(&plan.client)?,
            })
        }
    }
}

/// One measured run against one system.
async fn run_once(
    plan: &Plan,
    sink: &Sink,
    base: Instant,
    kind: TargetKind,
    round: u32,
) -> anyhow::Result<RunReport> {
    let label = format!("{} #{round}", kind.as_str());
    eprintln!("{label}: starting");
    let target = start_target(plan, sink, kind)
        .await
        .with_context(|| format!("{label}: cannot start"))?;
    let result = measure(plan, sink, base, kind, round, &target).await;
    if let Some(proc) = target.proc {
        if result.is_err() {
            eprintln!("{label}: log of the system under test:\n{}", proc.tail());
        }
        proc.stop().await;
    }
    result.with_context(|| format!("{label} failed"))
}

async fn measure(
    plan: &Plan,
    sink: &Sink,
    base: Instant,
    kind: TargetKind,
    round: u32,
    target: &Started,
) -> anyhow::Result<RunReport> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tally = Arc::new(RunTally::new(run_id.clone(), base, plan.triggers));
    sink.begin(tally.clone());
    let before = target.pid.and_then(child::proc_stats);
    let own_before = child::proc_stats(std::process::id());
    eprintln!(
        "{} #{round}: sending {} events of {} bytes over {} connections{}",
        kind.as_str(),
        if plan.max_events == MAX_EVENTS {
            format!("for {:?}", plan.duration)
        } else {
            format!("up to {}", plan.max_events)
        },
        plan.size_bytes,
        plan.connections,
        plan.rate
            .map(|r| format!(" at {r} events/s"))
            .unwrap_or_default(),
    );
    let size = usize::try_from(plan.size_bytes).context("--size too large")?;
    let gen = generator::run(generator::GenConfig {
        addr: target.addr,
        authority: target.authority.clone(),
        path: target.path.clone(),
        tls: target.tls.clone(),
        authorization: target.authorization.clone(),
        connections: plan.connections,
        max_events: plan.max_events,
        duration: plan.duration,
        rate: plan.rate,
        payload: generator::payload(size, plan.filter == FilterKind::Data),
        match_ratio: plan.match_ratio,
        run_id,
        base,
        progress: None,
    })
    .await?;

    // Expected deliveries: every accepted event that the triggers match, per trigger.
    let matching = gen
        .accepted
        .iter()
        .filter(|&s| event_matches(s, plan.match_ratio))
        .count() as u64;
    let expected_total = matching * plan.triggers as u64;
    let drained = drain(&tally, expected_total, plan.drain_timeout).await;
    let after = target.pid.and_then(child::proc_stats);
    let own_after = child::proc_stats(std::process::id());

    let target_stats = match (before, after) {
        (Some(b), Some(a)) => Some((a.cpu_s - b.cpu_s, a.peak_rss_kib)),
        _ => None,
    };
    let bench_cpu = match (own_before, own_after) {
        (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    let report = RunReport::build(report::RunInputs {
        kind,
        round,
        plan,
        gen: &gen,
        tally: &tally,
        matching,
        drained,
        base,
        target_stats,
        bench_cpu,
    });
    eprintln!(
        "{} #{round}: done, {} accepted, {} delivered",
        kind.as_str(),
        report.accepted,
        report.delivered
    );
    Ok(report)
}

/// Waits until every expected delivery arrived, or none arrived for `idle`.
async fn drain(tally: &RunTally, expected: u64, idle: Duration) -> bool {
    let hard_stop = Instant::now() + MAX_DRAIN;
    let mut last = tally.deliveries.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        if tally.unique() >= expected {
            return true;
        }
        let now = Instant::now();
        if now >= hard_stop || now.duration_since(last_change) >= idle {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let d = tally.deliveries.load(Ordering::Relaxed);
        if d != last {
            last = d;
            last_change = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_ratio_spreads_evenly() {
        let n = (0..1000).filter(|&s| event_matches(s, 0.1)).count();
        assert_eq!(n, 100);
        assert_eq!((0..1000).filter(|&s| event_matches(s, 1.0)).count(), 1000);
        assert_eq!((0..1000).filter(|&s| event_matches(s, 0.0)).count(), 0);
        // Evenly: never more than one in ten among any ten in a row.
        for start in 0..990 {
            let k = (start..start + 10)
                .filter(|&s| event_matches(s, 0.1))
                .count();
            assert_eq!(k, 1);
        }
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("bench").chain(args.iter().copied()),
        )?;
        Plan::from_args(&cli.bench)
    }

    #[test]
    fn a_soak_runs_long_on_sled_with_three_triggers_and_a_bench_stays_short() {
        let p = plan(&["--soak", "--rate", "500"]).expect("soak");
        assert_eq!(p.duration, DEFAULT_SOAK_DURATION);
        assert_eq!((p.channel, p.triggers), ("sled", 3));
        let soak = p.soak.as_ref().expect("soak options");
        assert_eq!(soak.retry, 2);
        // Twice the rate at the longest wait, in flight.
        assert_eq!(soak.slow_parallelism, Some(200));
        assert!(plan(&["--soak", "--rate", "500", "--duration", "2h"]).is_ok());
        assert!(plan(&["--soak", "--rate", "500", "--duration", "121m"]).is_err());
        assert!(plan(&[
            "--soak",
            "--rate",
            "1",
            "--channel",
            "memory",
            "--triggers",
            "4"
        ])
        .is_ok_and(|p| p.channel == "memory" && p.triggers == 4));
        // A soak needs a rate and runs the embedded broker alone.
        assert!(plan(&["--soak"]).is_err());
        assert!(plan(&["--soak", "--rate", "5", "--baseline"]).is_err());
        assert!(plan(&["--soak", "--rate", "5", "--match-ratio", "0.5"]).is_err());
        assert!(
            plan(&["--soak-retry", "3"]).is_err(),
            "--soak-* need --soak"
        );
        // An ordinary run keeps its defaults and its 300 s cap.
        let p = plan(&[]).expect("bench");
        assert_eq!(
            (p.channel, p.triggers, p.duration),
            ("memory", 1, DEFAULT_DURATION)
        );
        assert!(p.soak.is_none());
        assert!(plan(&["--duration", "301s"]).is_err());
    }

    #[test]
    fn event_ids_belong_to_their_run() {
        assert_eq!(parse_event_id("abc-42", "abc"), Some(42));
        assert_eq!(parse_event_id("abd-42", "abc"), None);
        assert_eq!(parse_event_id("abc42", "abc"), None);
        assert_eq!(parse_event_id("abc-x", "abc"), None);
    }
}
