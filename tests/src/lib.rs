//! The end-to-end harness: starts the real `cemesh` binary on free ports with a
//! temporary config dir, and real HTTP subscribers on 127.0.0.1 that record what they
//! receive.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use cemesh_proto::Event;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;

/// The `cemesh` binary: `$CEMESH_BIN`, or the one in this test's target dir. Without
/// `$CEMESH_BIN` it is (re)built once per test run, so a test never runs a stale
/// binary (a no-op when the test script built everything first).
pub fn cemesh_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("CEMESH_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/e2e-<hash> -> target/<profile>/cemesh
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Every feature (Kafka, OpenTelemetry), as `scripts/test.sh` builds it, so the
        // same artifacts serve both and the Kafka tests have their channel.
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "cemesh-broker",
            "--bin",
            "cemesh",
            "--all-features",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of cemesh failed");
        profile_dir.join(format!("cemesh{}", std::env::consts::EXE_SUFFIX))
    })
    .clone()
}

/// A running `cemesh serve`.
pub struct Cemesh {
    child: Option<Child>,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    /// The gRPC listener (Publisher, Admin, KEDA's scaler, health).
    pub grpc: SocketAddr,
    logs: Arc<Mutex<String>>,
    dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start a `cemesh serve`.
pub struct CemeshBuilder {
    files: Vec<(String, String)>,
    args: Vec<String>,
    channel: String,
    data_dir: Option<PathBuf>,
    envs: Vec<(String, String)>,
}

impl Default for CemeshBuilder {
    fn default() -> Self {
        CemeshBuilder {
            files: Vec::new(),
            args: Vec::new(),
            channel: "memory".into(),
            data_dir: None,
            envs: Vec::new(),
        }
    }
}

impl CemeshBuilder {
    /// Adds a file to the config dir.
    pub fn manifest(mut self, name: &str, text: &str) -> Self {
        self.files.push((name.to_owned(), text.to_owned()));
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// Sets an environment variable of the broker process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Keeps data in `dir` (e.g. a small filesystem the test made) instead of the
    /// broker's temporary dir.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    pub fn channel(mut self, c: &str) -> Self {
        self.channel = c.to_owned();
        self
    }

    fn prepare(&self) -> (tempfile::TempDir, Vec<String>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("config");
        std::fs::create_dir_all(&config).expect("config dir");
        for (name, text) in &self.files {
            std::fs::write(config.join(name), text).expect("write manifest");
        }
        let mut args = vec![
            "serve".to_owned(),
            "--config-dir".into(),
            config.display().to_string(),
            "--data-dir".into(),
            self.data_dir
                .clone()
                .unwrap_or_else(|| tmp.path().join("data"))
                .display()
                .to_string(),
            "--ingress-addr".into(),
            "127.0.0.1:0".into(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--channel".into(),
            self.channel.clone(),
        ];
        if !self.args.iter().any(|a| a.starts_with("--grpc-addr")) {
            // Never the shared default port: tests run in parallel.
            args.extend(["--grpc-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.extend(self.args.iter().cloned());
        (tmp, args)
    }

    /// Starts the broker and waits for its "listening" line.
    pub fn start(self) -> Cemesh {
        let (tmp, args) = self.prepare();
        let dir = tmp.path().to_owned();
        let mut c = Cemesh {
            child: None,
            ingress: ([0, 0, 0, 0], 0).into(),
            admin: ([0, 0, 0, 0], 0).into(),
            grpc: ([0, 0, 0, 0], 0).into(),
            logs: Arc::default(),
            dir,
            args,
            envs: self.envs,
            _tmp: Some(tmp),
        };
        c.spawn();
        c
    }

    /// Runs a broker that is expected to fail at start-up; returns its stderr.
    pub fn start_expect_failure(self) -> String {
        let (_tmp, args) = self.prepare();
        let out = Command::new(cemesh_bin())
            .args(&args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run cemesh");
        assert!(
            !out.status.success(),
            "cemesh started although it should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Cemesh {
    pub fn builder() -> CemeshBuilder {
        CemeshBuilder::default()
    }

    /// Starts a broker with one manifest file.
    pub fn start(manifests: &str) -> Cemesh {
        Self::builder().manifest("mesh.yaml", manifests).start()
    }

    fn spawn(&mut self) {
        let mut child = Command::new(cemesh_bin())
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("CEMESH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cemesh");
        let stderr = child.stderr.take().expect("stderr");
        let logs = self.logs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Logged first, so whoever wakes on the "listening" line finds it there.
                {
                    let mut l = logs.lock().unwrap_or_else(|p| p.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
                if line.contains("cemesh listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("cemesh did not start; logs:\n{}", self.logs());
            }
        };
        self.ingress = field(&line, "ingress=").parse().expect("ingress addr");
        self.admin = field(&line, "admin=").parse().expect("admin addr");
        self.grpc = field(&line, "grpc=")
            .trim_matches('"')
            .parse()
            .expect("grpc addr");
        self.child = Some(child);
    }

    /// The ingress URL of a broker.
    pub fn broker_url(&self, namespace: &str, broker: &str) -> String {
        format!("http://{}/{namespace}/{broker}", self.ingress)
    }

    /// GETs `path` on the admin API and reads the JSON answer.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        client()
            .get(self.admin_url(path))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    /// GETs the resource at `path` on the admin API, checks that its first condition
    /// (Ready) is `True`, and returns its JSON.
    pub async fn ready_resource(&self, path: &str) -> serde_json::Value {
        let status = self.admin_json(path).await;
        assert_eq!(
            status["status"]["conditions"][0]["status"], "True",
            "{status}"
        );
        status
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A connection to the gRPC listener (Publisher, Admin, ...).
    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("the gRPC address is a URI")
            .connect()
            .await
            .expect("connect to the gRPC listener")
    }

    /// Everything the broker logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The temp dir holding `config/` and `data/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's resident set size in KiB (Linux), while running.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }

    /// Kills the process with SIGKILL (no graceful shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops with SIGTERM and waits for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().expect("wait")
    }

    /// Starts the same configuration again (same dirs; ports may change).
    pub fn restart(&mut self) {
        self.kill9();
        for a in self.args.iter_mut() {
            if a.starts_with("127.0.0.1:") {
                *a = "127.0.0.1:0".into();
            }
        }
        self.spawn();
    }

    /// Waits until the logs contain `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Cemesh {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(key)
        .map(|i| i + key.len())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    line[start..].split_whitespace().next().unwrap_or("")
}

/// One request a subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The decoded event (None if it was not a valid CloudEvent).
    pub event: Option<Event>,
    pub at: Instant,
    /// The status the subscriber answered.
    pub status_sent: u16,
}

#[derive(Default)]
struct SubState {
    received: Mutex<Vec<Received>>,
    status: AtomicU16,
    notify: tokio::sync::Notify,
    behaviour: Mutex<Behaviour>,
    /// Requests being answered now, in all and per `partitionkey`.
    in_flight: Mutex<(usize, HashMap<String, usize>)>,
    max_in_flight: AtomicUsize,
    /// Set when two requests of one `partitionkey` were in flight at once.
    key_overlapped: AtomicBool,
}

/// How a subscriber answers, besides its status.
#[derive(Default, Clone)]
struct Behaviour {
    delay: Duration,
    /// Extra random delay up to this much.
    jitter: Duration,
    headers: Vec<(String, String)>,
    body: Bytes,
    reply: Option<Event>,
    echo: bool,
    /// Replies with what this makes of the received event (none: plain success).
    transform: Option<Transform>,
}

/// What a transforming subscriber makes of an event.
pub type Transform = Arc<dyn Fn(Event) -> Option<Event> + Send + Sync>;

/// A real HTTP subscriber on 127.0.0.1 that records every request.
#[derive(Clone)]
pub struct Subscriber {
    pub addr: SocketAddr,
    state: Arc<SubState>,
}

impl Subscriber {
    /// Starts a subscriber answering 202.
    pub async fn start() -> Subscriber {
        let state = Arc::new(SubState::default());
        state.status.store(202, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Subscriber { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Sets the status code answered from now on.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Delays every answer (a slow or hanging service), plus up to `jitter` more.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        let mut b = self.behaviour();
        b.delay = delay;
        b.jitter = jitter;
    }

    /// Adds headers and a body to every answer.
    pub fn set_response(&self, headers: &[(&str, &str)], body: &[u8]) {
        let mut b = self.behaviour();
        b.headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        b.body = Bytes::copy_from_slice(body);
    }

    /// Answers every request with this event (binary mode), as a reply.
    pub fn set_reply(&self, event: Option<Event>) {
        self.behaviour().reply = event;
    }

    /// Answers every request with the event it received, as a reply.
    pub fn set_echo(&self, echo: bool) {
        self.behaviour().echo = echo;
    }

    /// Answers every request with what `f` makes of the event it received (2xx with
    /// no event when `f` gives none).
    pub fn set_transform(&self, f: impl Fn(Event) -> Option<Event> + Send + Sync + 'static) {
        self.behaviour().transform = Some(Arc::new(f));
    }

    fn behaviour(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.state
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The most requests this subscriber was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Whether two events with the same `partitionkey` were ever in flight at once.
    pub fn same_key_overlapped(&self) -> bool {
        self.state.key_overlapped.load(Ordering::SeqCst)
    }

    /// The ids of the events received so far, in arrival order.
    pub fn ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter_map(|r| r.event.map(|e| e.id))
            .collect()
    }

    /// The ids of the events this subscriber took (answered 2xx), not those it refused.
    pub fn taken_ids(&self) -> std::collections::HashSet<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status_sent))
            .filter_map(|r| r.event.map(|e| e.id))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.state
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Waits until at least `n` requests arrived (or the timeout passed) and returns
    /// what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a request arriving in between wakes us.
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.received()
    }

    /// Waits `quiet` and returns everything received; for asserting nothing more
    /// arrives.
    pub async fn settle(&self, quiet: Duration) -> Vec<Received> {
        tokio::time::sleep(quiet).await;
        self.received()
    }
}

async fn record(State(state): State<Arc<SubState>>, req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let event = cemesh_proto::http::decode(&parts.headers, body.clone())
        .ok()
        .and_then(|mut v| v.pop());
    let status = state.status.load(Ordering::SeqCst);
    let behaviour = state
        .behaviour
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    state
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Received {
            headers: parts.headers,
            body,
            event: event.clone(),
            at: Instant::now(),
            status_sent: status,
        });
    state.notify.notify_waiters();
    let key = event
        .as_ref()
        .and_then(|e| e.extension("partitionkey"))
        .map(|k| format!("{k:?}"));
    let _answering = InFlight::enter(&state, key);
    let mut wait = behaviour.delay;
    if !behaviour.jitter.is_zero() {
        use std::hash::{BuildHasher as _, Hasher as _};
        // A fresh RandomState is randomly keyed: good enough noise for a test.
        let noise = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        wait += Duration::from_nanos(noise % behaviour.jitter.as_nanos().max(1) as u64);
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
    let mut headers = HeaderMap::new();
    let reply = if let Some(f) = &behaviour.transform {
        event.and_then(|e| f(e))
    } else if behaviour.echo {
        event
    } else {
        behaviour.reply
    };
    let body = match reply {
        Some(r) => cemesh_proto::http::encode_binary(&r, &mut headers).unwrap_or_default(),
        None => behaviour.body,
    };
    for (k, v) in &behaviour.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    (code, headers, body)
}

/// A request being answered, counted in the subscriber's in-flight figures.
struct InFlight<'a> {
    state: &'a SubState,
    key: Option<String>,
}

impl<'a> InFlight<'a> {
    fn enter(state: &'a SubState, key: Option<String>) -> Self {
        let mut f = state.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        f.0 += 1;
        state.max_in_flight.fetch_max(f.0, Ordering::SeqCst);
        if let Some(k) = &key {
            let n = f.1.entry(k.clone()).or_default();
            *n += 1;
            if *n > 1 {
                state.key_overlapped.store(true, Ordering::SeqCst);
            }
        }
        InFlight { state, key }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut f = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f.0 -= 1;
        if let Some(k) = &self.key {
            if let Some(n) = f.1.get_mut(k) {
                *n -= 1;
            }
        }
    }
}

/// A path in the repository's `examples/`.
pub fn example_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(rel)
}

/// Writes `server.yaml` into `dir`, sending the Service `event-display` that
/// Knative's source examples name to `url`; returns its path.
pub fn event_display_config(dir: &Path, url: &str) -> PathBuf {
    let server = dir.join("server.yaml");
    std::fs::write(
        &server,
        format!("services:\n  event-display: {{url: \"{url}\"}}\n"),
    )
    .expect("write the server config");
    server
}

/// Fails unless `cemesh validate PATH --config CONFIG` passes.
pub fn assert_validates(path: &Path, config: &Path) {
    let (ok, out, err) = cemesh_cli(&[
        "validate",
        path.to_str().expect("UTF-8 path"),
        "--config",
        config.to_str().expect("UTF-8 path"),
    ]);
    assert!(ok, "{out}{err}");
}

/// The sum of the samples in Prometheus `text` whose line starts with `name` and
/// contains every one of `labels` (e.g. `broker_name="default"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs a `cemesh` client command (no stdin, no `CEMESH_ADMIN`); answers whether it
/// succeeded, its stdout and its stderr.
pub fn cemesh_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cemesh_bin())
        .args(args)
        .env_remove("CEMESH_ADMIN")
        .stdin(Stdio::null())
        .output()
        .expect("run cemesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Broker manifest.
pub fn broker_yaml(name: &str) -> String {
    format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n")
}

/// A Trigger manifest with an attributes filter (`filter` as `key: value` pairs).
pub fn trigger_yaml(name: &str, broker: &str, subscriber: &str, filter: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: {broker}\n  subscriber:\n    uri: {subscriber}\n"
    );
    if !filter.is_empty() {
        s.push_str("  filter:\n    attributes:\n");
        for (k, v) in filter {
            s.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    s
}

/// Joins manifests into one multi-document file.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// A shared HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

/// POSTs a binary-mode event.
pub async fn post_binary(client: &reqwest::Client, url: &str, event: &Event) -> reqwest::Response {
    try_post_binary(client, url, event).await.expect("POST")
}

/// POSTs a binary-mode event; a connection error is returned, not a panic (for
/// producers that keep going while a broker is killed).
pub async fn try_post_binary(
    client: &reqwest::Client,
    url: &str,
    event: &Event,
) -> reqwest::Result<reqwest::Response> {
    let mut headers = HeaderMap::new();
    let body = cemesh_proto::http::encode_binary(event, &mut headers).unwrap_or_default();
    client.post(url).headers(headers).body(body).send().await
}

/// A process's resident memory in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A memory broker `default` whose one trigger's subscriber never answers (and no
/// backpressure window holds the producers back): everything sent waits in the
/// channel. Keep the subscriber alive for the test.
pub async fn broker_holding_everything() -> (Subscriber, String) {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_secs(120), Duration::ZERO);
    let broker = format!(
        "{}  annotations:\n    cemesh.dev/backpressure-window: none\n",
        broker_yaml("default")
    );
    let manifests = docs(&[broker, trigger_yaml("t", "default", &sub.url(), &[])]);
    (sub, manifests)
}

/// An event with 1 KiB of data, `id` `{tag}{producer}-{i}`.
pub fn kib_event(tag: &str, producer: usize, i: usize) -> Event {
    let mut e = Event::new(format!("{tag}{producer}-{i}"), "/pin", "test.pin");
    e.data = Some(Bytes::from(vec![b'x'; 1024]));
    e
}

/// How many bytes the broker's RSS grows by for each of `events` events that
/// `send("e", per_producer)` stores, after a warm-up `send("w", warm)` (connections
/// and the channel grown to their working size), each read 500 ms after its round.
pub async fn rss_bytes_per_event<F, Fut>(
    mesh: &Cemesh,
    send: F,
    warm: usize,
    per_producer: usize,
    events: u64,
) -> u64
where
    F: Fn(&'static str, usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    send("w", warm).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = mesh.rss_kib().expect("the broker's RSS (/proc/PID/status)");
    send("e", per_producer).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = mesh.rss_kib().expect("the broker's RSS (/proc/PID/status)");
    let per_event = after.saturating_sub(before) * 1024 / events;
    println!(
        "{events} waiting events of 1 KiB: RSS {} -> {} MiB, {per_event} bytes an event",
        before / 1024,
        after / 1024
    );
    per_event
}

/// Certificates made in the tests (rcgen): a CA and leaves for 127.0.0.1, written as
/// `cemesh serve --tls-cert/--tls-key` and cert-manager write them.
pub mod pki {
    use std::path::Path;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    /// A test CA: its certificate and key.
    pub struct Ca {
        pub cert: rcgen::Certificate,
        pub key: KeyPair,
    }

    /// A new CA (ECDSA P-256, CN "cemesh test CA").
    pub fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cemesh test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for 127.0.0.1 signed by `ca`, written as chain (leaf then CA) and key;
    /// returns the leaf's DER.
    pub fn leaf(ca: &Ca, serial: u64, cert_file: &Path, key_file: &Path) -> Vec<u8> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        // Written beside and renamed over, as cert-manager's atomic writer does.
        let tmp_cert = std::path::PathBuf::from(format!("{}.new", cert_file.display()));
        let tmp_key = std::path::PathBuf::from(format!("{}.new", key_file.display()));
        std::fs::write(&tmp_cert, cert.pem() + &ca.cert.pem()).unwrap();
        std::fs::write(&tmp_key, key.serialize_pem()).unwrap();
        std::fs::rename(&tmp_key, key_file).unwrap();
        std::fs::rename(&tmp_cert, cert_file).unwrap();
        cert.der().to_vec()
    }

    /// A client certificate signed by `ca` naming `name` (a URI SAN when it has a
    /// scheme, the subject's CN otherwise), written as chain and key.
    pub fn client_leaf(ca: &Ca, name: &str, cert_file: &Path, key_file: &Path) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if name.contains("://") {
            params.subject_alt_names = vec![rcgen::SanType::URI(name.try_into().unwrap())];
        } else {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        std::fs::write(cert_file, cert.pem() + &ca.cert.pem()).unwrap();
        std::fs::write(key_file, key.serialize_pem()).unwrap();
    }
}
