//! The systems under test run as child processes of the bench — the broker as
//! `cemesh serve`, the baseline as the hidden forwarder mode of `cemesh bench` — so
//! their CPU time and peak memory are their own, read from `/proc/<pid>` (Linux), and
//! not mixed with the generator's and the sink's.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

/// Warnings and errors of a child, counted by `level: message`.
type WarningCounts = Arc<Mutex<BTreeMap<String, u64>>>;

/// Log lines kept for an error message when a child fails.
const TAIL_LINES: usize = 40;
/// Warnings and errors of a child echoed to our stderr before we stop echoing.
const ECHO_LINES: usize = 20;
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running child process.
pub struct ChildProc {
    child: Child,
    pub pid: u32,
    /// The broker's admin address (`/readyz`, `/v1/...`).
    pub admin: Option<SocketAddr>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Warnings and errors the child logged.
    warnings: WarningCounts,
    /// Held open: the forwarder exits when it closes.
    _stdin: Option<ChildStdin>,
    /// The temporary config and data dir, removed on drop.
    dir: Option<tempfile::TempDir>,
}

/// CPU and memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Peak resident set size (VmHWM) in KiB.
    pub peak_rss_kib: u64,
}

impl ChildProc {
    /// The last lines the child logged.
    pub fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Every warning and error the child logged so far: `(level: message, count)`.
    pub fn warnings(&self) -> BTreeMap<String, u64> {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The child's temporary directory (config and data), if it has one.
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_path_buf())
    }

    /// Kills the child (the bench has what it needs; nothing of it must survive).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What the bench configures in the broker it starts.
pub struct BrokerLaunch<'a> {
    pub channel: &'a str,
    pub manifests: &'a str,
    pub extra_args: &'a [String],
    /// Parent of the temporary config and data dir.
    pub data_dir: Option<&'a Path>,
    pub triggers: usize,
    /// Log messages expected by the run: counted, never echoed.
    pub quiet: &'static [&'static str],
}

/// Starts `cemesh serve` on free loopback ports with the bench's manifests in a fresh
/// temporary config and data dir; returns once every trigger is running.
pub async fn spawn_broker(launch: &BrokerLaunch<'_>) -> anyhow::Result<(ChildProc, SocketAddr)> {
    let parent = launch
        .data_dir
        .map_or_else(std::env::temp_dir, Path::to_path_buf);
    let dir = tempfile::Builder::new()
        .prefix("cemesh-bench-")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                parent.display()
            )
        })?;
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config)
        .with_context(|| format!("cannot create {}", config.display()))?;
    let file = config.join("bench.yaml");
    std::fs::write(&file, launch.manifests)
        .with_context(|| format!("cannot write {}", file.display()))?;
    let exe = std::env::current_exe().context("cannot find the cemesh executable")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("serve")
        .arg("--config-dir")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--ingress-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--channel", launch.channel, "--log-format", "json"])
        .args(launch.extra_args)
        // Quiet, except for the line that tells the bound addresses.
        .env("RUST_LOG", "warn,cemesh_control::serve=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} serve", exe.display()))?;
    let pid = child.id().context("the broker exited at once")?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let warnings = Arc::new(Mutex::new(BTreeMap::new()));
    let (tx, rx) = oneshot::channel();
    let stderr = child.stderr.take().context("no stderr pipe")?;
    tokio::spawn(read_log(
        "broker",
        stderr,
        tail.clone(),
        (warnings.clone(), launch.quiet),
        Some(tx),
    ));
    let mut proc = ChildProc {
        child,
        pid,
        admin: None,
        tail,
        warnings,
        _stdin: None,
        dir: Some(dir),
    };
    let (ingress, admin) = match wait_ready(&mut proc, rx).await {
        Ok(addrs) => addrs,
        Err(e) => {
            let tail = proc.tail();
            proc.stop().await;
            return Err(e.context(format!("the broker did not start; its log:\n{tail}")));
        }
    };
    if let Err(e) = check_resources(admin, launch.triggers).await {
        proc.stop().await;
        return Err(e);
    }
    proc.admin = Some(admin);
    Ok((proc, ingress))
}

async fn wait_ready(
    proc: &mut ChildProc,
    rx: oneshot::Receiver<(SocketAddr, SocketAddr)>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    tokio::select! {
        r = rx => r.context("the broker closed its log before listening"),
        status = proc.child.wait() => {
            anyhow::bail!("the broker exited ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string()))
        }
        () = tokio::time::sleep(START_TIMEOUT) => {
            anyhow::bail!("the broker did not listen within {START_TIMEOUT:?}")
        }
    }
}

/// Asks `/readyz` whether every trigger runs: a broker that reports a problem (a
/// channel this build lacks, a filter it cannot compile) would otherwise just
/// deliver nothing.
async fn check_resources(admin: SocketAddr, triggers: usize) -> anyhow::Result<()> {
    let url = format!("http://{admin}/readyz");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let answer = client.get(&url).send().await;
        if let Ok(resp) = answer {
            let bytes = resp
                .bytes()
                .await
                .with_context(|| format!("{url}: cannot read the answer"))?;
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{url}: not JSON"))?;
            let problems: Vec<&str> = body["problems"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
                .unwrap_or_default();
            if !problems.is_empty() {
                anyhow::bail!(
                    "the broker could not start the bench's resources:\n  {}",
                    problems.join("\n  ")
                );
            }
            let running = body["triggers"].as_array().map_or(0, Vec::len);
            if body["ready"] == true && running == triggers {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the broker did not report {triggers} running triggers at {url}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the baseline forwarder in front of `sink_base`; returns its address.
pub async fn spawn_forwarder(
    sink_base: &str,
    triggers: usize,
    filter: bool,
) -> anyhow::Result<(ChildProc, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find the cemesh executable")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "--internal-forwarder", sink_base])
        .arg("--triggers")
        .arg(triggers.to_string());
    if filter {
        cmd.arg("--internal-forwarder-filter");
    }
    cmd.env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} bench --internal-forwarder", exe.display()))?;
    let pid = child.id().context("the forwarder exited at once")?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let warnings = Arc::new(Mutex::new(BTreeMap::new()));
    let stderr = child.stderr.take().context("no stderr pipe")?;
    tokio::spawn(read_log(
        "forwarder",
        stderr,
        tail.clone(),
        (warnings.clone(), &[]),
        None,
    ));
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stdin = child.stdin.take();
    let proc = ChildProc {
        child,
        pid,
        admin: None,
        tail,
        warnings,
        _stdin: stdin,
        dir: None,
    };
    let first = tokio::time::timeout(START_TIMEOUT, async {
        BufReader::new(stdout).lines().next_line().await
    })
    .await;
    let addr = match first {
        Ok(Ok(Some(line))) => line
            .strip_prefix("listening ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok()),
        _ => None,
    };
    match addr {
        Some(addr) => Ok((proc, addr)),
        None => {
            let tail = proc.tail();
            proc.stop().await;
            anyhow::bail!("the baseline forwarder did not start; its log:\n{tail}")
        }
    }
}

/// Keeps the tail of a child's log, counts its warnings and echoes the first ones
/// (except the `quiet` messages), and reports the addresses from `serve`'s "cemesh
/// listening" line.
async fn read_log(
    who: &'static str,
    stderr: impl AsyncRead + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    (warnings, quiet): (WarningCounts, &'static [&'static str]),
    mut listening: Option<oneshot::Sender<(SocketAddr, SocketAddr)>>,
) {
    let mut lines = BufReader::new(stderr).lines();
    let mut echoed = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        if let Some(j) = &json {
            let f = &j["fields"];
            if f["message"] == "cemesh listening" {
                let addr = |k: &str| f[k].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                if let (Some(i), Some(a), Some(tx)) =
                    (addr("ingress"), addr("admin"), listening.take())
                {
                    let _ = tx.send((i, a));
                }
            }
            let level = j["level"].as_str().unwrap_or("");
            let warning = matches!(level, "WARN" | "ERROR");
            let message = f["message"].as_str().unwrap_or("(no message)");
            if warning {
                *warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(format!("{level}: {message}"))
                    .or_default() += 1;
            }
            if warning && !quiet.contains(&message) && echoed < ECHO_LINES {
                echoed += 1;
                eprintln!("{who} {level}: {f}");
                if echoed == ECHO_LINES {
                    eprintln!("{who}: further warnings not shown");
                }
            }
        }
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// CPU seconds and peak RSS of a process, from `/proc` (Linux only).
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let dir = Path::new("/proc").join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first,
    // utime and stime the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let peak_rss_kib = status_field(&status, "VmHWM")?;
    Some(ProcStats {
        cpu_s: ticks as f64 / clock_ticks_per_second(),
        peak_rss_kib,
    })
}

/// What a soak watches of a process: memory, file descriptors, threads and CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProcSample {
    /// Resident set size now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fds: u64,
    /// Threads (`Threads:` of `/proc/PID/status`).
    pub threads: u64,
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
}

/// Samples a live process from `/proc` (Linux only); `None` once it is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
    Some(ProcSample {
        rss_kib: status_field(&status, "VmRSS")?,
        fds,
        threads: status_field(&status, "Threads")?,
        cpu_s: proc_stats(pid)?.cpu_s,
    })
}

/// The number of a `/proc/PID/status` line `Name:   123 kB`.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `sysconf(_SC_CLK_TCK)` without `unsafe`: asked of `getconf` once; 100 (every
/// mainstream Linux) when that fails.
fn clock_ticks_per_second() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_exact_name() {
        let status = "Name:\tcemesh\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS"), Some(10_240));
        assert_eq!(status_field(status, "VmHWM"), Some(20_480));
        assert_eq!(status_field(status, "Threads"), Some(7));
        assert_eq!(status_field(status, "VmRS"), None);
        assert_eq!(status_field(status, "Missing"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = proc_sample(std::process::id()).expect("/proc of this process");
        assert!(s.rss_kib > 0 && s.threads >= 1 && s.fds >= 3, "{s:?}");
    }
}
