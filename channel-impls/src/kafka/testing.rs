//! A Kafka for tests: the address in `CEMESH_TEST_KAFKA`, or a `tansu` broker
//! (a Kafka-protocol server in Rust, in-memory storage) started on a free
//! 127.0.0.1 port for the life of the test process. Tests that need Kafka call
//! [`bootstrap`], which panics, failing the test, when neither works: Kafka
//! tests never skip silently. `scripts/kafka.sh` installs tansu.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable naming an existing Kafka (`HOST:PORT`).
pub const ENV: &str = "CEMESH_TEST_KAFKA";

fn tansu_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CEMESH_TANSU") {
        return Some(PathBuf::from(p));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_home.map(|c| c.join("bin")));
    candidates.map(|d| d.join("tansu")).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn start_tansu() -> String {
    let bin = tansu_binary().unwrap_or_else(|| {
        panic!(
            "no Kafka for the Kafka tests: set {ENV}=HOST:PORT, or install tansu \
             (scripts/kafka.sh install, or cargo install tansu --locked --features dynostore)"
        )
    });
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    // The shell stops tansu when this test process ends, however it ends.
    let script = format!(
        "\"$0\" broker --listener-url {url} --advertised-listener-url {url} \
         --storage-engine memory://tansu/ >/dev/null 2>&1 & child=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $child",
        parent = std::process::id()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&bin)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    std::thread::spawn(move || child.wait());
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu ({}) did not listen on {addr} within 30 s",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    addr
}

/// The bootstrap address of the test Kafka (started once per process).
pub fn bootstrap() -> String {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| match std::env::var(ENV) {
        Ok(a) if !a.trim().is_empty() => a,
        _ => start_tansu(),
    })
    .clone()
}

/// A name no other test run uses, for topics and groups.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{prefix}{}x{t:x}x{n}", std::process::id())
}

/// Options for the test Kafka. One record per produce batch: tansu 0.6 answers a
/// "latest offset" request with the last batch's first offset + 1, so with
/// multi-record batches high watermarks (lag, `StartAt::Latest`) come out low.
/// Harmless on Apache Kafka.
pub fn options() -> super::options::KafkaOptions {
    super::options::KafkaOptions {
        bootstrap: bootstrap(),
        properties: [(TANSU_WORKAROUND.0.to_owned(), TANSU_WORKAROUND.1.to_owned())].into(),
        ..super::options::KafkaOptions::default()
    }
}

/// The librdkafka property working around tansu 0.6's high watermarks.
pub const TANSU_WORKAROUND: (&str, &str) = ("batch.num.messages", "1");
