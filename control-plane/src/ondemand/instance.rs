//! One instance's process from spawn to exit: start it on its own port, copy its
//! output into cemesh's log (tagged with the service and instance number), wait for
//! readiness, then wait for it to exit or to be asked to stop (SIGTERM to its process
//! group, SIGKILL after the grace). Whatever happens, the pool hears how it ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cemesh_sources::process::stop_group;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Child;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::spec::CommandSpec;

/// One running (starting or ready) process of a service.
pub(crate) struct Instance {
    /// 1, 2, 3... per service, never reused: the log names instances by it.
    pub number: u64,
    pub port: u16,
    pub base: reqwest::Url,
    pub ready: AtomicBool,
    pub in_flight: AtomicUsize,
    /// When the instance last finished a delivery (or became ready).
    pub last_done: Mutex<Instant>,
    /// Asks the instance's task to stop the process.
    pub stop: CancellationToken,
    /// Started to serve a service that had no instance (a cold start).
    pub cold: bool,
}

/// Why an instance's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    /// We stopped it (idle or shutdown).
    Stopped,
    /// It could not start or never became ready.
    FailedStart(String),
    /// It exited on its own.
    Crashed(String),
}

/// The side of a pool an instance's task talks to: what to run and how to probe it,
/// and where to report readiness and the exit. (The pool depends on this module,
/// never the other way round.)
pub(crate) trait Supervisor: Send + Sync + 'static {
    /// The service's name, for logs and the instance's environment.
    fn service(&self) -> &str;
    fn spec(&self) -> &CommandSpec;
    /// The HTTP client readiness probes use.
    fn probe(&self) -> &reqwest::Client;
    fn became_ready(&self, inst: &Instance, took: Duration);
    fn exited(&self, inst: &Instance, exit: Exit, uptime: Duration);
    /// What a `SinkBinding` adds to the environment (`K_SINK`, ...).
    fn binding(&self) -> Vec<(String, String)>;
}

/// How often readiness is probed while an instance starts.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Output lines longer than this are cut (a process printing without newlines must
/// not grow our memory).
const MAX_LINE: usize = 16 * 1024;

pub(crate) async fn run<P: Supervisor>(pool: Arc<P>, inst: Arc<Instance>) {
    let started = Instant::now();
    let mut child = match spawn(&*pool, &inst) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot run {:?}: {e}", pool.spec().command);
            pool.exited(&inst, Exit::FailedStart(msg), started.elapsed());
            return;
        }
    };
    let pid = child.id();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(
            out,
            pool.service().to_owned(),
            inst.number,
            "stdout",
        ));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(
            err,
            pool.service().to_owned(),
            inst.number,
            "stderr",
        ));
    }

    enum Start {
        Ready,
        Exited(String),
        TimedOut,
        Stop,
    }
    let start = tokio::select! {
        r = wait_ready(&*pool, &inst) => if r { Start::Ready } else { Start::TimedOut },
        status = child.wait() => Start::Exited(describe(status)),
        _ = inst.stop.cancelled() => Start::Stop,
    };
    let exit = match start {
        Start::Ready => {
            pool.became_ready(&inst, started.elapsed());
            tokio::select! {
                status = child.wait() => {
                    // Leftover children of the process go with it.
                    cemesh_sources::process::kill_group(pid);
                    Exit::Crashed(describe(status))
                }
                _ = inst.stop.cancelled() => {
                    stop_group(&mut child, pid, pool.spec().stop_grace).await;
                    Exit::Stopped
                }
            }
        }
        Start::Exited(status) => {
            cemesh_sources::process::kill_group(pid);
            Exit::FailedStart(format!("exited before it was ready: {status}"))
        }
        Start::TimedOut => {
            stop_group(&mut child, pid, pool.spec().stop_grace).await;
            Exit::FailedStart(match &pool.spec().readiness {
                Some(path) => format!(
                    "GET {path} did not answer 2xx within {:?}",
                    pool.spec().start_timeout
                ),
                None => format!(
                    "port {} did not accept connections within {:?}",
                    inst.port,
                    pool.spec().start_timeout
                ),
            })
        }
        Start::Stop => {
            stop_group(&mut child, pid, pool.spec().stop_grace).await;
            Exit::Stopped
        }
    };
    pool.exited(&inst, exit, started.elapsed());
}

fn spawn(pool: &impl Supervisor, inst: &Instance) -> std::io::Result<Child> {
    let spec = pool.spec();
    let mut cmd =
        cemesh_sources::process::command(&spec.command, &spec.env, spec.working_dir.as_deref())?;
    cmd.envs(pool.binding())
        .env(&spec.port_env, inst.port.to_string())
        .env("CEMESH_SERVICE", pool.service())
        .env("CEMESH_INSTANCE", inst.number.to_string());
    cmd.spawn()
}

/// Probes until ready; false when `start_timeout` passed first.
async fn wait_ready(pool: &impl Supervisor, inst: &Instance) -> bool {
    let deadline = tokio::time::Instant::now() + pool.spec().start_timeout;
    let url = pool
        .spec()
        .readiness
        .as_ref()
        .and_then(|path| inst.base.join(path.trim_start_matches('/')).ok());
    loop {
        let ready = match &url {
            Some(url) => matches!(
                pool.probe().get(url.clone()).send().await,
                Ok(r) if r.status().is_success()
            ),
            None => tokio::net::TcpStream::connect(("127.0.0.1", inst.port))
                .await
                .is_ok(),
        };
        if ready {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Copies a stream of the instance into the log, line by line.
async fn forward(
    mut stream: impl AsyncRead + Unpin,
    service: String,
    instance: u64,
    which: &'static str,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            emit(&buf[..nl], &service, instance, which);
            buf.drain(..=nl);
        }
        if buf.len() > MAX_LINE {
            emit(&buf, &service, instance, which);
            buf.clear();
        }
    }
    if !buf.is_empty() {
        emit(&buf, &service, instance, which);
    }
}

fn emit(line: &[u8], service: &str, instance: u64, which: &'static str) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    tracing::info!(target: "cemesh::ondemand::output", service, instance, stream = which, "{line}");
}
