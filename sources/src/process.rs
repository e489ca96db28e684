//! A process a `ContainerSource` keeps running: started with the source's
//! environment (`K_SINK`, `K_CE_OVERRIDES`, its own `env`), restarted after it
//! exits (waiting 1 s, doubling to 30 s while it keeps failing within a minute),
//! stopped with SIGTERM to its process group and SIGKILL after a grace period.
//! [`command`] and [`stop_group`] also start and stop the control plane's on-demand
//! service instances.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// `namespace/name` of the source, for logs.
    pub owner: String,
    /// Program and arguments.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
}

/// A supervised process.
pub struct ProcessHandle {
    spec: ProcessSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
    starts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ProcessHandle {
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u64 {
        self.starts.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

const GRACE: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Running this long resets the restart backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Starts `spec` and keeps it running until stopped.
pub fn spawn_process(spec: ProcessSpec) -> ProcessHandle {
    let stop = CancellationToken::new();
    let starts = std::sync::Arc::default();
    let task = tokio::spawn(supervise(
        spec.clone(),
        stop.clone(),
        std::sync::Arc::clone(&starts),
    ));
    ProcessHandle {
        spec,
        stop,
        task,
        starts,
    }
}

async fn supervise(
    spec: ProcessSpec,
    stop: CancellationToken,
    starts: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match start(&spec) {
            Ok(mut child) => {
                starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let pid = child.id();
                tracing::info!(source = %spec.owner, pid, "Source process started");
                forward_output(&spec.owner, &mut child);
                tokio::select! {
                    status = child.wait() => {
                        // Leftover children of the process go with it.
                        kill_group(pid);
                        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                        tracing::warn!(source = %spec.owner, %status, "Source process exited; restarting it");
                    }
                    () = stop.cancelled() => {
                        stop_group(&mut child, pid, GRACE).await;
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(source = %spec.owner, command = ?spec.command, error = %e, "Source process could not start; retrying");
            }
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn start(spec: &ProcessSpec) -> std::io::Result<Child> {
    command(
        &spec.command,
        &spec.env,
        spec.working_dir.as_deref().map(std::path::Path::new),
    )?
    .spawn()
}

/// A program cemesh supervises (a ContainerSource's, an on-demand service's): no
/// stdin, its output piped for the log, killed if its handle is dropped without a
/// stop, and in its own process group, so a stop reaches whatever it started (a
/// shell's children) and a Ctrl-C meant for cemesh does not reach it.
pub fn command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    working_dir: Option<&std::path::Path>,
) -> std::io::Result<Command> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no command",
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = working_dir {
        cmd.current_dir(dir);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    Ok(cmd)
}

/// The process's output lines, in cemesh's log at info, named by source.
fn forward_output(owner: &str, child: &mut Child) {
    let owner = owner.to_owned();
    let out = child.stdout.take();
    let err = child.stderr.take();
    for stream in [
        out.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        err.map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let owner = owner.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(source = %owner, "{line}");
            }
        });
    }
}

/// SIGTERM to the process group, then SIGKILL to it: at once when the program has
/// exited (whatever it left behind), after `grace` when it has not.
pub async fn stop_group(child: &mut Child, pid: Option<u32>, grace: Duration) {
    signal_group(pid, false);
    if tokio::time::timeout(grace, child.wait()).await.is_ok() {
        signal_group(pid, true);
    } else {
        signal_group(pid, true);
        let _ = child.kill().await;
    }
}

/// SIGKILL to what is left of a program's process group (its children, once it
/// exited by itself).
pub fn kill_group(pid: Option<u32>) {
    signal_group(pid, true);
}

#[cfg(unix)]
fn signal_group(pid: Option<u32>, kill: bool) {
    use rustix::process::{kill_process_group, Pid, Signal};
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw)
    else {
        return;
    };
    // ESRCH (already gone) is the common, harmless case.
    let _ = kill_process_group(pid, if kill { Signal::KILL } else { Signal::TERM });
}

#[cfg(not(unix))]
fn signal_group(_pid: Option<u32>, _kill: bool) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_exits_is_started_again_and_a_stop_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("runs");
        let spec = ProcessSpec {
            owner: "default/test".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("echo run >> {}; exit 1", marker.display()),
            ],
            env: BTreeMap::new(),
            working_dir: None,
        };
        let handle = spawn_process(spec);
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.starts() < 2 {
            assert!(Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop().await;
        let runs = std::fs::read_to_string(&marker).unwrap();
        assert!(runs.lines().count() >= 2, "{runs}");
    }
}
