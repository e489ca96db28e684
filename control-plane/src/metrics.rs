//! The Prometheus endpoint: one process-wide recorder (`metrics` with its Prometheus
//! exporter), the names and help texts in `cemesh_proto::metric_names` (described at
//! install, so every metric has `# HELP`), gauges that are read at scrape time (lag
//! per trigger) and the `process_*` metrics, rendered at scrape time.

use std::sync::OnceLock;

use cemesh_proto::metric_names as names;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::mesh::Registry;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets of every duration histogram (`..._duration_seconds`), in seconds: from
/// half a millisecond to a minute.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the recorder once per process (an embedded broker may start twice) and
/// describes the broker's metrics.
pub fn install() {
    HANDLE.get_or_init(|| {
        // Default buckets for every histogram, so none renders as a summary.
        let builder = PrometheusBuilder::new()
            .set_buckets(&DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix(names::DURATION_SUFFIX.into()),
                    &DURATION_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::CHANNEL_GROUP_COMMIT_BATCH.into()),
                    &[
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                    ],
                )
            });
        match builder.map(PrometheusBuilder::install_recorder) {
            Ok(Ok(handle)) => {
                describe(&names::BROKER_METRICS);
                spawn_upkeep(handle.clone());
                Some(handle)
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "Metrics recorder not installed");
                None
            }
        }
    });
}

/// How often recorded histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The exporter keeps every histogram sample recorded since the last render until
/// upkeep folds it into the buckets; `install_recorder` leaves upkeep to the caller.
/// Without it a broker nobody scrapes grew by every sample it recorded (a few
/// MiB a minute under load: issue 17's soak). A plain thread, so it runs whatever
/// runtime (or none) the process has.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Metrics upkeep not started; histograms grow until scraped");
    }
}

/// Renders every metric in Prometheus text format, after refreshing the gauges that
/// are read at scrape time.
pub async fn render(registry: &Registry) -> String {
    // Lag, delivery rate and oldest-waiting age per trigger.
    crate::keda::signals::export(registry).await;
    let mut out = render_recorded();
    if let Some(p) = read_process() {
        // Rendered here rather than recorded: the CPU counter is fractional seconds,
        // which a `metrics` counter (u64) cannot hold.
        write_sample(&mut out, names::PROCESS_RSS, p.rss_bytes as f64);
        write_sample(&mut out, names::PROCESS_CPU, p.cpu_seconds);
        write_sample(&mut out, names::PROCESS_FDS, p.open_fds as f64);
    }
    out
}

/// Appends one unlabelled sample of a metric in [`names::BROKER_METRICS`], with its
/// `# HELP` and `# TYPE`.
fn write_sample(out: &mut String, name: &str, value: f64) {
    use std::fmt::Write as _;
    let Some((_, kind, help)) = names::BROKER_METRICS.iter().find(|(n, ..)| *n == name) else {
        return;
    };
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {}\n{name} {value}\n\n",
        kind.as_str()
    );
}

/// Renders what the process-wide recorder holds (for a process with no mesh, such
/// as the sidecar, which sets its own gauges first).
pub fn render_recorded() -> String {
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    }
}

/// Gives each metric its `# HELP` text.
pub fn describe(metrics: &[(&'static str, names::Kind, &'static str)]) {
    for (name, kind, help) in metrics {
        match kind {
            names::Kind::Counter => metrics::describe_counter!(*name, *help),
            names::Kind::Gauge => metrics::describe_gauge!(*name, *help),
            names::Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

struct Process {
    rss_bytes: u64,
    cpu_seconds: f64,
    open_fds: usize,
}

/// Linux `/proc/self`; `None` elsewhere.
fn read_process() -> Option<Process> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    Some(Process {
        rss_bytes: rss_kib * 1024,
        cpu_seconds: ticks / 100.0,
        open_fds,
    })
}
