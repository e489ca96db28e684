//! `cemesh sidecar` through the binary, beside a real `cemesh serve` and a real test
//! service: plain publishes become CloudEvents, a broker outage and a `kill -9` of
//! the sidecar lose nothing (in order per key), health gating and the concurrency
//! limit are seen by the service, plain delivery and wrapped replies, dead letters,
//! trigger registration through the mesh's admin API, and the footprint.
//!
//! "The broker is down" is played by a TCP proxy in front of the broker's port that
//! can refuse connections and later listen again on the same port: the sidecar's
//! `--broker-url` never changes while the broker behind it restarts on a new port.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------
// The sidecar process

/// A running `cemesh sidecar` on free ports with its own data dir.
struct SidecarProc {
    child: Option<Child>,
    listen: SocketAddr,
    deliver: Option<SocketAddr>,
    logs: Arc<Mutex<String>>,
    args: Vec<String>,
    /// Time from spawn to the "listening" line, last start.
    started_in: Duration,
    _tmp: tempfile::TempDir,
}

impl SidecarProc {
    fn start(extra: &[&str]) -> SidecarProc {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = [
            "sidecar",
            "--listen",
            "127.0.0.1:0",
            "--deliver-listen",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(tmp.path().join("outbox").display().to_string());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut s = SidecarProc {
            child: None,
            listen: ([0, 0, 0, 0], 0).into(),
            deliver: None,
            logs: Arc::default(),
            args,
            started_in: Duration::ZERO,
            _tmp: tmp,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let started = Instant::now();
        let mut child = Command::new(cemesh_bin())
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("CEMESH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cemesh sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let logs = self.logs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("cemesh sidecar listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((line.clone(), Instant::now()));
                    }
                }
                let mut l = logs.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (line, at) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                panic!("cemesh sidecar did not start; logs:\n{}", self.logs());
            }
        };
        self.started_in = at.duration_since(started);
        self.listen = field(&line, "listen=").parse().expect("listen addr");
        self.deliver = field(&line, "deliver=").parse().ok();
        self.child = Some(child);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    fn deliver_url(&self) -> String {
        format!("http://{}/", self.deliver.expect("started with --app-url"))
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data dir (new ports).
    fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait for the graceful exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().expect("wait")
    }

    async fn stats(&self) -> Value {
        client()
            .get(self.url("/v1/stats"))
            .send()
            .await
            .expect("GET /v1/stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// Waits until the outbox holds nothing, failing with the stats after `WAIT`.
    async fn wait_drained(&self) {
        let deadline = Instant::now() + WAIT;
        while self.stats().await["outbox"]["pending"] != 0 {
            assert!(Instant::now() < deadline, "{}", self.stats().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SidecarProc {
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

// ---------------------------------------------------------------------------------
// A TCP proxy that plays "the broker is down"

struct TcpProxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    tasks: Mutex<Option<tokio::task::JoinSet<()>>>,
}

impl TcpProxy {
    /// A proxy to `upstream`, not listening yet (down).
    async fn new(upstream: SocketAddr) -> TcpProxy {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        TcpProxy {
            addr,
            upstream: Arc::new(Mutex::new(upstream)),
            tasks: Mutex::new(None),
        }
    }

    fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// Listens (again) on the same port and pipes every connection upstream.
    fn up(&self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.addr).expect("rebind the proxy port");
        let listener = socket.listen(128).expect("listen");
        let upstream = self.upstream.clone();
        let mut set = tokio::task::JoinSet::new();
        set.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let to = *upstream.lock().unwrap();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            // `conns` is dropped (its connections aborted) when this task is aborted.
        });
        *self.tasks.lock().unwrap() = Some(set);
    }

    /// Stops listening and cuts every open connection: connections are refused.
    fn down(&self) {
        if let Some(mut set) = self.tasks.lock().unwrap().take() {
            set.abort_all();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

// ---------------------------------------------------------------------------------
// A test service that knows nothing of CloudEvents

#[derive(Default)]
struct AppState {
    healthy: AtomicBool,
    health_probes: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay_ms: AtomicU64,
    received: Mutex<Vec<(String, HeaderMap, Bytes)>>,
    reply: Mutex<Option<(String, Bytes)>>,
    notify: tokio::sync::Notify,
}

#[derive(Clone)]
struct TestApp {
    addr: SocketAddr,
    state: Arc<AppState>,
}

impl TestApp {
    async fn start() -> TestApp {
        let state = Arc::new(AppState::default());
        state.healthy.store(true, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/health", axum::routing::get(app_health))
            .fallback(app_event)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestApp { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set_healthy(&self, ok: bool) {
        self.state.healthy.store(ok, Ordering::SeqCst);
    }

    fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn set_reply(&self, content_type: &str, body: &[u8]) {
        *self.state.reply.lock().unwrap() =
            Some((content_type.to_owned(), Bytes::copy_from_slice(body)));
    }

    fn received(&self) -> Vec<(String, HeaderMap, Bytes)> {
        self.state.received.lock().unwrap().clone()
    }

    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<(String, HeaderMap, Bytes)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.received.lock().unwrap().len() >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.received()
    }
}

async fn app_health(State(s): State<Arc<AppState>>) -> StatusCode {
    s.health_probes.fetch_add(1, Ordering::SeqCst);
    if s.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn app_event(State(s): State<Arc<AppState>>, req: Request) -> impl IntoResponse {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    s.received.lock().unwrap().push((path, parts.headers, body));
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    s.notify.notify_waiters();
    match s.reply.lock().unwrap().clone() {
        Some((ct, body)) => {
            (StatusCode::OK, [(http::header::CONTENT_TYPE, ct)], body).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

// ---------------------------------------------------------------------------------
// Helpers

/// A Trigger with annotations (jitter off) and optional `spec.delivery` lines.
fn trigger(
    name: &str,
    subscriber: &str,
    filter: &[(&str, &str)],
    annotations: &[(&str, &str)],
    delivery: &str,
) -> String {
    let mut s = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/backoff-jitter: \"false\"\n"
    );
    for (k, v) in annotations {
        s.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    s.push_str(&format!(
        "spec:\n  broker: default\n  subscriber:\n    uri: {subscriber}\n"
    ));
    if !filter.is_empty() {
        s.push_str("  filter:\n    attributes:\n");
        for (k, v) in filter {
            s.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    if !delivery.is_empty() {
        s.push_str("  delivery:\n");
        s.push_str(delivery);
    }
    s
}

/// A plain publish; returns the status and the event id the sidecar gave it.
async fn publish_plain(
    c: &reqwest::Client,
    sidecar: &SidecarProc,
    ty: &str,
    key: Option<&str>,
    json: &str,
) -> (u16, Option<String>, HeaderMap) {
    let mut req = c
        .post(sidecar.url(&format!("/publish/{ty}")))
        .header("content-type", "application/json")
        .body(json.to_owned());
    if let Some(k) = key {
        req = req.header("x-partition-key", k);
    }
    let resp = req.send().await.expect("POST /publish");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, id, resp.headers().clone())
}

/// The sidecar's first page of dead letters once it holds `n` (or after [`WAIT`]).
async fn wait_dead_letters(c: &reqwest::Client, sidecar: &SidecarProc, n: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let page: Value = c
            .get(sidecar.url("/v1/deadletters"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["total"] == n || Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An EventPolicy admitting only the subject `orders-sidecar` to the broker.
const SIDECAR_POLICY: &str = "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: sidecars\nspec:\n  from:\n    - sub: orders-sidecar\n";

/// The subject `orders-sidecar`: `token` written to `dir/token` and the mesh's
/// `--config` (returned) naming it, an admin of the mesh.
fn sidecar_subject(dir: &std::path::Path, token: &str) -> PathBuf {
    std::fs::write(dir.join("token"), token).unwrap();
    let config = dir.join("cemesh.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  tokens:\n    - name: orders-sidecar\n      file: {}\n  admin:\n    admin: [orders-sidecar]\n",
            dir.join("token").display()
        ),
    )
    .unwrap();
    config
}

fn event_by_id<'a>(got: &'a [Received], id: &str) -> &'a Event {
    got.iter()
        .filter_map(|r| r.event.as_ref())
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("event {id} not received"))
}

fn string_ext<'a>(e: &'a Event, name: &str) -> Option<&'a str> {
    e.attribute(name).and_then(|v| v.as_str())
}

/// Waits until the subscriber has seen every id (duplicates allowed).
async fn wait_ids(sub: &Subscriber, ids: &HashSet<String>, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = sub.ids();
        let seen: HashSet<&String> = got.iter().collect();
        if ids.iter().all(|i| seen.contains(i)) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts every expected id arrived and, per key, in publish order (first
/// occurrences: at-least-once may repeat an event after a crash).
fn assert_complete_and_ordered(got: &[String], per_key: &HashMap<String, Vec<String>>) {
    let seen: HashSet<&String> = got.iter().collect();
    let mut first_seen: Vec<&String> = Vec::new();
    let mut dedup = HashSet::new();
    for id in got {
        if dedup.insert(id) {
            first_seen.push(id);
        }
    }
    for (key, ids) in per_key {
        let missing: Vec<&String> = ids.iter().filter(|i| !seen.contains(i)).collect();
        assert!(
            missing.is_empty(),
            "key {key}: {} lost: {missing:?}",
            missing.len()
        );
        let wanted: HashSet<&String> = ids.iter().collect();
        let order: Vec<&String> = first_seen
            .iter()
            .copied()
            .filter(|i| wanted.contains(i))
            .collect();
        let expected: Vec<&String> = ids.iter().collect();
        assert_eq!(order, expected, "key {key}: out of order");
    }
}

// ---------------------------------------------------------------------------------
// Tests

/// A service that knows no CloudEvents posts JSON to `/publish/{type}`; a trigger
/// receives a valid CloudEvent with the configured source, a UUID v7 id, time,
/// content type and partition key. CloudEvents posts and the ingress's refusals work
/// as at the broker.
#[tokio::test(flavor = "multi_thread")]
async fn plain_json_publish_arrives_as_a_valid_cloudevent() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("t", "default", &sub.url(), &[]),
    ]));
    let sc = SidecarProc::start(&[
        "--broker-url",
        &mesh.broker_url("default", "default"),
        "--source",
        "/orders-service",
    ]);
    let c = client();
    let (status, id, _) = publish_plain(
        &c,
        &sc,
        "com.example.order.created",
        Some("customer-7"),
        r#"{"order":42}"#,
    )
    .await;
    assert_eq!(status, 202);
    let id = id.expect("ce-id in the 202");

    // A CloudEvent in structured mode, on the broker's own path.
    let structured = r#"{"specversion":"1.0","id":"ce-1","source":"/legacy","type":"com.example.ping","datacontenttype":"application/json","data":{"x":1}}"#;
    let resp = c
        .post(sc.url("/default/default"))
        .header("content-type", "application/cloudevents+json")
        .body(structured)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // Refusals mirror the ingress.
    let resp = c
        .post(sc.url("/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-type", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["attribute"], "source", "{body}");
    let resp = c
        .post(sc.url("/"))
        .header("content-type", "application/cloudevents+avro")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = c.put(sc.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    let got = sub.wait_for(2, WAIT).await;
    let e = event_by_id(&got, &id);
    assert_eq!(e.ty, "com.example.order.created");
    assert_eq!(e.source, "/orders-service");
    assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(e.data.as_deref(), Some(&br#"{"order":42}"#[..]));
    assert_eq!(string_ext(e, "partitionkey"), Some("customer-7"));
    assert!(e.time.is_some());
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "7", "a UUID v7: {id}");
    assert!(
        e.extension("knativearrivaltime").is_some(),
        "went through the broker's ingress"
    );
    let ping = event_by_id(&got, "ce-1");
    assert_eq!(ping.ty, "com.example.ping");
    assert_eq!(ping.data.as_deref(), Some(&br#"{"x":1}"#[..]));
    assert_eq!(sub.settle(Duration::from_millis(300)).await.len(), 2);
}

/// The broker goes down (connections refused, then killed) while the service keeps
/// publishing; every 202'd event arrives once it is back, in order per key.
#[tokio::test(flavor = "multi_thread")]
async fn broker_outage_loses_nothing_and_keeps_per_key_order() {
    let sub = Subscriber::start().await;
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                trigger(
                    "t",
                    &sub.url(),
                    &[],
                    &[("cemesh.dev/delivery-order", "ordered")],
                    "",
                ),
            ]),
        )
        .start();
    let proxy = TcpProxy::new(mesh.ingress).await;
    proxy.up();
    let sc = SidecarProc::start(&[
        "--broker-url",
        &proxy.url("/default/default"),
        "--backoff-delay",
        "50ms",
        "--backoff-max",
        "500ms",
    ]);
    let c = client();
    let keys = ["alice", "bob", "carol"];
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    let mut all = HashSet::new();
    let publish_round = |round: usize, n: usize| {
        let c = c.clone();
        let sc_url = sc.url("");
        async move {
            let mut out = Vec::new();
            for i in 0..n {
                for key in keys {
                    let resp = c
                        .post(format!("{sc_url}/publish/com.example.step"))
                        .header("content-type", "application/json")
                        .header("x-partition-key", key)
                        .body(format!(r#"{{"round":{round},"i":{i}}}"#))
                        .send()
                        .await
                        .expect("publish");
                    assert_eq!(resp.status(), 202);
                    let id = resp.headers()["ce-id"].to_str().unwrap().to_owned();
                    out.push((key.to_owned(), id));
                }
            }
            out
        }
    };
    for (k, id) in publish_round(0, 10).await {
        per_key.entry(k).or_default().push(id.clone());
        all.insert(id);
    }
    wait_ids(&sub, &all, WAIT).await;
    // The subscriber can have an event before the broker's 202 reached the sidecar
    // (delivery starts once the append is durable): wait for the outbox to drain, so
    // the outage below finds nothing of round 0 in flight.
    sc.wait_drained().await;

    // Down: connections refused, then the broker dies too.
    proxy.down();
    mesh.kill9();
    for (k, id) in publish_round(1, 20).await {
        per_key.entry(k).or_default().push(id.clone());
        all.insert(id);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = sc.stats().await;
    assert_eq!(stats["outbox"]["pending"], 60, "{stats}");
    assert!(
        stats["outbox"]["forwardFailures"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );

    // Back up on another port behind the same URL.
    mesh.restart();
    proxy.set_upstream(mesh.ingress);
    proxy.up();
    let got = wait_ids(&sub, &all, WAIT).await;
    assert_complete_and_ordered(&got, &per_key);
    let stats = sc.stats().await;
    println!(
        "outage: {} events published, {} received (duplicates allowed), sidecar stats {stats}",
        all.len(),
        got.len()
    );
    assert_eq!(stats["outbox"]["pending"], 0, "{stats}");
}

/// With the broker unreachable the outbox fills to its cap (503 with Retry-After past
/// it); the sidecar is killed with SIGKILL and restarted; every 202'd event arrives.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_a_full_outbox_loses_nothing() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                trigger(
                    "t",
                    &sub.url(),
                    &[],
                    &[("cemesh.dev/delivery-order", "ordered")],
                    "",
                ),
            ]),
        )
        .start();
    let proxy = TcpProxy::new(mesh.ingress).await; // down
    let mut sc = SidecarProc::start(&[
        "--broker-url",
        &proxy.url("/default/default"),
        "--outbox-max-events",
        "50",
        "--backoff-delay",
        "50ms",
        "--backoff-max",
        "300ms",
    ]);
    let c = client();
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    let mut all = HashSet::new();
    let mut refused = None;
    for i in 0..60 {
        let key = format!("k{}", i % 4);
        let (status, id, headers) = publish_plain(
            &c,
            &sc,
            "com.example.full",
            Some(&key),
            &format!("{{\"i\":{i}}}"),
        )
        .await;
        match status {
            202 => {
                let id = id.expect("ce-id");
                per_key.entry(key).or_default().push(id.clone());
                all.insert(id);
            }
            503 => {
                refused.get_or_insert(headers);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(all.len(), 50, "the cap is 50 events");
    let refused = refused.expect("a 503 past the cap");
    assert!(refused.contains_key("retry-after"), "{refused:?}");

    sc.kill9();
    sc.restart();
    assert_eq!(sc.stats().await["outbox"]["pending"], 50);
    proxy.up();
    let got = wait_ids(&sub, &all, WAIT).await;
    assert_complete_and_ordered(&got, &per_key);
    // Drained: publishing works again.
    let (status, _, _) = publish_plain(&c, &sc, "com.example.full", None, "{}").await;
    assert_eq!(status, 202);
}

/// The service is unhealthy at first: the mesh is answered 503 and the service sees
/// nothing; once healthy it gets every event, never more than the concurrency limit
/// at once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_and_health_gating_at_the_service() {
    let app = TestApp::start().await;
    app.set_healthy(false);
    app.set_delay(Duration::from_millis(300));
    let sc = SidecarProc::start(&[
        "--broker-url",
        "http://127.0.0.1:9/default/default",
        "--app-url",
        &app.url("/events"),
        "--app-health-path",
        "/health",
        "--app-health-interval",
        "100ms",
        "--app-max-concurrency",
        "2",
    ]);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "to-app",
            &sc.deliver_url(),
            &[],
            &[("cemesh.dev/parallelism", "8")],
            "    retry: 30\n    backoffPolicy: linear\n    backoffDelay: PT0.1S\n",
        ),
    ]));
    let c = client();
    for i in 0..8 {
        let resp = post_binary(
            &c,
            &mesh.broker_url("default", "default"),
            &Event::new(format!("e{i}"), "/test", "com.example.work"),
        )
        .await;
        assert_eq!(resp.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        app.received().is_empty(),
        "delivered to an unhealthy service"
    );
    assert!(app.state.health_probes.load(Ordering::SeqCst) > 0);
    let stats = sc.stats().await;
    let gated = stats["app"]["gated"].as_u64().unwrap_or(0);
    assert!(gated > 0, "{stats}");

    app.set_healthy(true);
    let got = app.wait_for(8, WAIT).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|(_, h, _)| h.get("ce-id")?.to_str().ok().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 8, "every event once healthy");
    assert!(got.iter().all(|(path, _, _)| path == "/events"));
    let max = app.max_in_flight();
    println!("health gating: {gated} deliveries answered 503 while unhealthy; max in flight at the service {max} (limit 2)");
    assert_eq!(max, 2, "the limit is reached and never passed");
}

/// `--app-protocol plain`: the service gets the data with its content type; its JSON
/// answer becomes a reply of `--reply-type` that reaches another trigger.
#[tokio::test(flavor = "multi_thread")]
async fn plain_protocol_delivery_and_a_wrapped_reply_reaching_another_trigger() {
    let app = TestApp::start().await;
    app.set_reply("application/json", br#"{"checked":true}"#);
    let replies = Subscriber::start().await;
    let sc = SidecarProc::start(&[
        "--broker-url",
        "http://127.0.0.1:9/default/default",
        "--app-url",
        &app.url("/events"),
        "--app-protocol",
        "plain",
        "--reply-type",
        "com.example.order.checked",
        "--source",
        "/checker",
    ]);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger(
            "to-app",
            &sc.deliver_url(),
            &[("type", "com.example.order.created")],
            &[],
            "",
        ),
        trigger(
            "replies",
            &replies.url(),
            &[("type", "com.example.order.checked")],
            &[],
            "",
        ),
    ]));
    let mut e = Event::new("order-1", "/shop", "com.example.order.created");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(Bytes::from_static(br#"{"order":1}"#));
    e.set_extension("partitionkey", AttributeValue::String("c-1".into()));
    let resp = post_binary(&client(), &mesh.broker_url("default", "default"), &e).await;
    assert_eq!(resp.status(), 202);

    let got = app.wait_for(1, WAIT).await;
    let (path, headers, body) = &got[0];
    assert_eq!(path, "/events");
    assert_eq!(&body[..], br#"{"order":1}"#, "only the data");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers["ce-id"], "order-1",
        "attributes ride as ce- headers"
    );

    let r = replies.wait_for(1, WAIT).await;
    let reply = r[0].event.as_ref().expect("a valid CloudEvent reply");
    assert_eq!(reply.ty, "com.example.order.checked");
    assert_eq!(reply.source, "/checker");
    assert_eq!(reply.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(reply.data.as_deref(), Some(&br#"{"checked":true}"#[..]));
    assert_eq!(string_ext(reply, "cemeshcause"), Some("order-1"));
    assert_eq!(string_ext(reply, "partitionkey"), Some("c-1"));
    assert_eq!(replies.settle(Duration::from_millis(300)).await.len(), 1);
}

/// An event the broker refuses (here: unknown broker, 404) lands in the sidecar's
/// dead letters, visible and redrivable through its admin endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn refused_events_are_dead_lettered_in_the_sidecar() {
    let mesh = Cemesh::start(&broker_yaml("default"));
    let sc = SidecarProc::start(&["--broker-url", &mesh.broker_url("default", "missing")]);
    let c = client();
    let (status, id, _) = publish_plain(&c, &sc, "com.example.lost", None, "{}").await;
    assert_eq!(status, 202);
    let id = id.unwrap();
    let page = wait_dead_letters(&c, &sc, 1).await;
    assert_eq!(page["total"], 1, "{page}");
    let letter = &page["items"][0];
    assert_eq!(letter["event"]["id"], id.as_str());
    assert_eq!(letter["event"]["knativeerrorcode"], "404");
    assert!(
        letter["reason"].as_str().unwrap().contains("404"),
        "{letter}"
    );
    // The letter is stored before the entry leaves the outbox (nothing is lost
    // between the two), so the outbox empties just after.
    sc.wait_drained().await;
    let one = c
        .get(sc.url(&format!("/v1/deadletters/{}", letter["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    // The same through the CLI.
    let out = std::process::Command::new(cemesh_bin())
        .args(["deadletters", "--sidecar", &sc.url(""), "list"])
        .output()
        .expect("run cemesh deadletters");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&id) && text.contains("1 of 1 shown"),
        "{text}"
    );
    // An empty list is not "all": refused, naming the problem.
    let resp = c
        .post(sc.url("/v1/deadletters:redrive"))
        .json(&serde_json::json!({"ids": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("ids is empty"), "{text}");
    // Redrive puts it back into the outbox (and, still refused, back here).
    let resp = c
        .post(sc.url("/v1/deadletters:redrive"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["redriving"], 1);
    let resp = c.delete(sc.url("/v1/deadletters")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// `--triggers`: applied through the mesh's admin API once the mesh answers (it is
/// unreachable at start; publishing works meanwhile), with the sidecar as subscriber
/// (relative URIs kept as paths on the service), and deleted on SIGTERM with
/// `--unregister-on-exit`.
#[tokio::test(flavor = "multi_thread")]
async fn triggers_register_and_unregister_through_the_admin_api() {
    let app = TestApp::start().await;
    let mesh = Cemesh::start(&broker_yaml("default"));
    let admin = TcpProxy::new(mesh.admin).await; // the mesh's admin API, down for now
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("triggers.yaml");
    std::fs::write(
        &file,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: sidecar-orders\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: com.example.order.created\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: sidecar-payments\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: com.example.payment\n  subscriber:\n    uri: /payments\n",
    )
    .unwrap();
    let mut sc = SidecarProc::start(&[
        "--broker-url",
        &mesh.broker_url("default", "default"),
        "--app-url",
        &app.url("/events"),
        "--triggers",
        &file.display().to_string(),
        "--mesh-admin",
        &admin.url(""),
        "--unregister-on-exit",
    ]);
    let c = client();
    let (status, _, _) = publish_plain(&c, &sc, "com.example.early", None, "{}").await;
    assert_eq!(
        status, 202,
        "publishing works while the mesh is unreachable"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready: Value = c
        .get(sc.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["registration"][0]["state"], "pending", "{ready}");

    admin.up();
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        let ready: Value = c
            .get(sc.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let states: Vec<&str> = ready["registration"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t["state"].as_str()).collect())
            .unwrap_or_default();
        if states.iter().all(|s| *s != "pending") || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["registration"][0]["state"], "registered", "{ready}");
    assert_eq!(ready["registration"][1]["state"], "registered", "{ready}");

    // Events published through the sidecar come back to the service through it.
    publish_plain(&c, &sc, "com.example.order.created", None, r#"{"o":1}"#).await;
    publish_plain(&c, &sc, "com.example.payment", None, r#"{"p":1}"#).await;
    let got = app.wait_for(2, WAIT).await;
    let mut paths: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/events", "/payments"]);

    let status = sc.terminate();
    assert!(status.success(), "{status:?}\n{}", sc.logs());
    assert!(sc.logs().contains("Trigger unregistered"), "{}", sc.logs());
    for name in ["sidecar-orders", "sidecar-payments"] {
        let resp = c
            .delete(mesh.admin_url(&format!("/v1/namespaces/default/triggers/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{name} was deleted by the sidecar");
    }
}

/// Start time (exec to the listening line, and to an accepted connection) and idle
/// RSS, printed, not asserted: timings depend on the machine.
#[tokio::test(flavor = "multi_thread")]
async fn footprint_rss_and_start_time() {
    let app = TestApp::start().await;
    let mut line_ms = Vec::new();
    let mut connect_ms = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut child = Command::new(cemesh_bin())
            .args([
                "sidecar",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--deliver-listen",
                "127.0.0.1:0",
                "--broker-url",
                "http://127.0.0.1:9/default/default",
                "--app-url",
                &app.url("/events"),
                "--data-dir",
                &dir.path().display().to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no listener");
            std::thread::sleep(Duration::from_micros(500));
        }
        connect_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(rss_kib(child.id()).unwrap_or(0));
        let _ = child.kill();
        let _ = child.wait();
    }
    // Time to the log line, through the harness.
    for _ in 0..3 {
        let sc = SidecarProc::start(&["--broker-url", "http://127.0.0.1:9/default/default"]);
        line_ms.push(sc.started_in.as_secs_f64() * 1000.0);
        drop(sc);
    }
    let sc = SidecarProc::start(&["--broker-url", "http://127.0.0.1:9/default/default"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let publish_only_rss = rss_kib(sc.pid()).unwrap_or(0);
    println!(
        "sidecar footprint ({}):\n  exec -> accepting connections: {:?} ms\n  exec -> 'listening' log line: {:?} ms\n  idle RSS with --app-url: {:?} KiB\n  idle RSS publish-only: {publish_only_rss} KiB",
        cemesh_bin().display(),
        connect_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
        line_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
        rss
    );
}

/// The sidecar's `/metrics` comes from the same `metrics` exporter as the broker's:
/// every series has `# HELP` and `# TYPE`, and the counters count.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_use_the_brokers_exporter_and_count() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("t", "default", &sub.url(), &[]),
    ]));
    let sc = SidecarProc::start(&["--broker-url", &mesh.broker_url("default", "default")]);
    let c = client();
    for i in 0..3 {
        let (status, _, _) =
            publish_plain(&c, &sc, "com.example.m", None, &format!("{{\"i\":{i}}}")).await;
        assert_eq!(status, 202);
    }
    sub.wait_for(3, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = c
            .get(sc.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("cemesh_sidecar_forwarded_events_total 3") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (name, kind) in [
        ("cemesh_sidecar_published_events_total", "counter"),
        ("cemesh_sidecar_forwarded_events_total", "counter"),
        ("cemesh_sidecar_outbox_events", "gauge"),
        ("cemesh_sidecar_app_healthy", "gauge"),
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}:\n{text}"
        );
    }
    assert!(
        text.contains("cemesh_sidecar_published_events_total 3\n"),
        "{text}"
    );
    assert!(text.contains("cemesh_sidecar_outbox_events 0\n"), "{text}");
}

/// The sidecar on a secured mesh (issue 19 §1, §2): both its listeners speak TLS, it
/// trusts the mesh's CA (--cacert), and its token reaches the mesh (publishing to a
/// broker an EventPolicy guards, registering triggers on a locked admin API) but
/// never the service.
#[tokio::test(flavor = "multi_thread")]
async fn over_tls_with_a_token_to_a_secured_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cemesh_tests::pki::ca();
    cemesh_tests::pki::leaf(
        &ca,
        1,
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    );
    std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
    let token = "sidecar-token-5f4e3d2c1b0a99887766";
    let config = sidecar_subject(dir.path(), token);
    let cert = dir.path().join("tls.crt").display().to_string();
    let key = dir.path().join("tls.key").display().to_string();
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[broker_yaml("default"), SIDECAR_POLICY.to_owned()]),
        )
        .arg("--config")
        .arg(&config.display().to_string())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .start();
    let https = |u: String| u.replacen("http://", "https://", 1);
    let app = TestApp::start().await;
    let triggers = dir.path().join("triggers.yaml");
    std::fs::write(
        &triggers,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: tls-sidecar\nspec:\n  broker: default\n",
    )
    .unwrap();
    let ca_file = dir.path().join("ca.crt").display().to_string();
    let sc = SidecarProc::start(&[
        "--broker-url",
        &https(mesh.broker_url("default", "default")),
        "--app-url",
        &app.url("/events"),
        "--triggers",
        &triggers.display().to_string(),
        "--mesh-admin",
        &https(mesh.admin_url("")),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--cacert",
        &ca_file,
        "--token-file",
        &dir.path().join("token").display().to_string(),
    ]);
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    // Registered on the locked admin API, with the advertised URL over https.
    let deadline = Instant::now() + WAIT;
    loop {
        let t: Value = c
            .get(https(
                mesh.admin_url("/v1/namespaces/default/triggers/tls-sidecar"),
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["spec"]["subscriber"]["uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not registered: {t}\n{}",
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Plain HTTP to the sidecar is not served; https is.
    assert!(client()
        .post(sc.url("/publish/com.example.tls"))
        .body("{}")
        .send()
        .await
        .map_or(true, |r| !r.status().is_success()));
    let resp = c
        .post(https(sc.url("/publish/com.example.tls")))
        .header("content-type", "application/json")
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // Forwarded with the token (the policy admits it), delivered back over TLS.
    let got = app.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}\n{}", sc.logs(), mesh.logs());
    assert!(
        got[0].1.get("authorization").is_none(),
        "the token went to the service"
    );
    assert!(!sc.logs().contains(token) && !mesh.logs().contains(token));
}

/// Over plain HTTP the forwarder sends through the dispatcher's own connection pool
/// (issue 20): every attribute, the data byte for byte, the trace context and the
/// token reach the broker as reqwest sent them. The broker's EventPolicy admits only
/// the token's subject, so a sidecar without it has its events refused (401) and
/// dead-lettered: the header is what let the first one's through.
#[tokio::test(flavor = "multi_thread")]
async fn over_plain_http_the_pool_carries_the_event_its_trace_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "sidecar-plain-token-0f1e2d3c4b5a6978";
    let config = sidecar_subject(dir.path(), token);
    let sub = Subscriber::start().await;
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                SIDECAR_POLICY.to_owned(),
                trigger_yaml("t", "default", &sub.url(), &[]),
            ]),
        )
        .arg("--config")
        .arg(&config.display().to_string())
        .start();
    let sc = SidecarProc::start(&[
        "--broker-url",
        &mesh.broker_url("default", "default"),
        "--token-file",
        &dir.path().join("token").display().to_string(),
    ]);
    let c = client();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let data: Vec<u8> = (0..=255u8)
        .chain(b"\r\n\r\nnot a header".iter().copied())
        .collect();
    let resp = c
        .post(sc.url("/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "plain-1")
        .header("ce-source", "/orders/plain")
        .header("ce-type", "com.example.plain")
        .header("ce-subject", "caf\u{e9} 42")
        .header("ce-partitionkey", "k-1")
        .header("ce-traceparent", traceparent)
        .header("ce-tracestate", "congo=t61rcWkgMzE")
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let got = sub.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}\n{}", sc.logs(), mesh.logs());
    let e = got[0].event.as_ref().expect("a CloudEvent");
    assert_eq!(
        (e.id.as_str(), e.source.as_str(), e.ty.as_str()),
        ("plain-1", "/orders/plain", "com.example.plain")
    );
    assert_eq!(e.subject.as_deref(), Some("caf\u{e9} 42"));
    assert_eq!(string_ext(e, "partitionkey"), Some("k-1"));
    assert_eq!(string_ext(e, "traceparent"), Some(traceparent));
    assert_eq!(
        e.datacontenttype.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(e.data.as_deref(), Some(&data[..]));
    assert_eq!(
        got[0]
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
        Some(traceparent),
        "the trace context continues"
    );
    assert!(got[0].headers.get("authorization").is_none());
    assert!(!sc.logs().contains(token) && !mesh.logs().contains(token));

    // Without the token the broker refuses (401): dead-lettered, not retried forever.
    let anonymous = SidecarProc::start(&["--broker-url", &mesh.broker_url("default", "default")]);
    let (status, id, _) = publish_plain(&c, &anonymous, "com.example.anon", None, "{}").await;
    assert_eq!(status, 202);
    let page = wait_dead_letters(&c, &anonymous, 1).await;
    assert_eq!(page["total"], 1, "{page}\n{}", anonymous.logs());
    let letter = &page["items"][0];
    assert_eq!(letter["event"]["id"], id.unwrap().as_str());
    assert_eq!(letter["event"]["knativeerrorcode"], "401", "{letter}");
    assert_eq!(sub.settle(Duration::from_millis(300)).await.len(), 1);
}

/// The sidecar's own listener locked (issue 19 §3): with --api-token-file the
/// service's publishes and the outbox admin endpoints need the token, a
/// --read-token-file token may only read, probes and scrapers stay open, the CLI
/// sends its token; with --tls-client-ca a client certificate that CA issued is
/// required; an unlocked listener beyond loopback is refused.
#[tokio::test(flavor = "multi_thread")]
async fn its_publishing_and_admin_endpoints_take_tokens_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (api, read) = (
        "app-token-0a1b2c3d4e5f60718293",
        "read-token-99aa88bb77cc66dd55",
    );
    std::fs::write(path("api"), format!("{api}\n")).unwrap();
    std::fs::write(path("read"), read).unwrap();
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("t", "default", &sub.url(), &[]),
    ]));
    let broker = mesh.broker_url("default", "default");
    let sc = SidecarProc::start(&[
        "--broker-url",
        &broker,
        "--api-token-file",
        &path("api"),
        "--read-token-file",
        &path("read"),
    ]);
    let c = client();
    let call = |method: reqwest::Method, p: &str, token: Option<&str>| {
        let mut req = c.request(method, sc.url(p));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req
                .header("content-type", "application/json")
                .body("{\"n\":1}")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    use reqwest::Method;
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call(Method::GET, open, None).await.0, 200, "{open}");
    }
    let (status, body) = call(Method::POST, "/publish/order.created", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    assert_eq!(
        call(Method::POST, "/publish/order.created", Some("wrong"))
            .await
            .0,
        401
    );
    let (status, body) = call(Method::POST, "/publish/order.created", Some(read)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("sidecar-read"), "{body}");
    let (status, body) = call(Method::POST, "/publish/order.created", Some(api)).await;
    assert_eq!(status, 202, "{body}");
    let got = sub.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "only the authorized publish reached the mesh");
    assert_eq!(call(Method::GET, "/v1/stats", None).await.0, 401);
    assert_eq!(call(Method::GET, "/v1/stats", Some(read)).await.0, 200);
    assert_eq!(
        call(Method::GET, "/v1/deadletters", Some(read)).await.0,
        200
    );
    assert_eq!(
        call(Method::DELETE, "/v1/deadletters", Some(read)).await.0,
        403
    );
    let (status, body) = call(Method::DELETE, "/v1/deadletters", Some(api)).await;
    assert!((200..300).contains(&status), "{status} {body}");
    // The CLI sends --token-file to the sidecar.
    let (ok, _, err) = cemesh_cli(&["deadletters", "--sidecar", &sc.url(""), "list"]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = cemesh_cli(&[
        "deadletters",
        "--sidecar",
        &sc.url(""),
        "list",
        "--token-file",
        &path("read"),
    ]);
    assert!(ok, "{out}{err}");
    // The tokens never reach the logs.
    assert!(!sc.logs().contains(api) && !sc.logs().contains(read));

    // mTLS on the same listener.
    let ca = cemesh_tests::pki::ca();
    cemesh_tests::pki::leaf(
        &ca,
        1,
        dir.path().join("tls.crt").as_path(),
        dir.path().join("tls.key").as_path(),
    );
    let clients = cemesh_tests::pki::ca();
    std::fs::write(path("clients.pem"), clients.cert.pem()).unwrap();
    cemesh_tests::pki::client_leaf(
        &clients,
        "orders-app",
        dir.path().join("app.crt").as_path(),
        dir.path().join("app.key").as_path(),
    );
    let tls = SidecarProc::start(&[
        "--broker-url",
        &broker,
        "--tls-cert",
        &path("tls.crt"),
        "--tls-key",
        &path("tls.key"),
        "--tls-client-ca",
        &path("clients.pem"),
    ]);
    let https = tls
        .url("/publish/order.created")
        .replacen("http://", "https://", 1);
    let trusting = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
    };
    let anonymous = trusting().build().unwrap();
    let r = anonymous.post(&https).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("client certificate"));
    let mut pem = std::fs::read(path("app.crt")).unwrap();
    pem.extend(std::fs::read(path("app.key")).unwrap());
    let with_cert = trusting()
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let r = with_cert.post(&https).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(sub.wait_for(2, WAIT).await.len(), 2);

    // Unlocked beyond loopback: refused, and allowed with --insecure-admin.
    let (ok, _, err) = cemesh_cli(&[
        "sidecar",
        "--listen",
        "0.0.0.0:0",
        "--broker-url",
        &broker,
        "--data-dir",
        &path("open-outbox"),
    ]);
    assert!(
        !ok && err.contains("--api-token-file") && err.contains("--insecure-admin"),
        "{err}"
    );
}
