//! A 202 comes after the flush that makes its event durable, seen in a syscall trace.
//!
//! `durability.rs` kills the broker with `kill -9`, but the kernel keeps the page
//! cache: an event written to the data file (not yet synced) when its 202 went out
//! survives the kill just as well as a synced one, so those tests cannot tell a broker
//! that answers after the flush from one that answers after a mere `write`. This test
//! runs the real binary on sled under `strace -f` and checks, for each event posted,
//! the order of its syscalls: the ingress reads the request carrying the event's id,
//! writes the event to a file of the data dir, a sync of that file that covers the
//! write *returns*, and only then the ingress starts writing `HTTP/1.1 202`.
//!
//! sled flushes with `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` on the range it
//! just wrote of `<data-dir>/sled/db`, which promises nothing after a crash (no
//! metadata, no disk cache flush); cemesh's group commit follows it with an
//! `fdatasync` of that file, and only an `fsync`/`fdatasync` counts here.
//!
//! strace delays the start of every sync (a slow disk), so a broker that requests the
//! flush but does not wait for it answers before the sync returns every time, not only
//! when it wins a race against its flusher thread.
//!
//! The order of the trace's lines is the order of the syscalls: strace reports every
//! stop before it lets the thread go on, so a sync's exit line precedes whatever that
//! thread does next (waking the waiting append, which then answers), and a call that
//! another thread's call interrupted is split into `<unfinished ...>` and
//! `<... resumed>` lines, its start and its end.
//!
//! As a control, events posted to a broker with `cemesh.dev/durability: none` (202
//! at once, sled flushes within 500 ms) must fail the same check, so the check can
//! tell the difference.
//!
//! strace is installed by `scripts/test.sh`. Without it, or where ptrace is not
//! permitted, the test is skipped with a reason on stderr; with `CI=true` it fails.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cemesh_proto::Event;
use cemesh_tests::*;

/// Syscalls that read a request from a socket.
const READS: &[&str] = &["read", "recvfrom", "recvmsg"];
/// Syscalls that write an answer to a socket, or data to a file.
const WRITES: &[&str] = &[
    "write", "writev", "sendto", "sendmsg", "pwrite64", "pwritev", "pwritev2",
];
/// Syscalls that make a file's data durable (`msync` is traced to be seen in a
/// failure's trace, but it names no file, so it covers no write here).
const SYNCS: &[&str] = &["fsync", "fdatasync", "sync_file_range", "syncfs", "msync"];

/// How late strace lets every sync start. A broker that answers without waiting for
/// its flush then always answers before the sync returns, instead of only when it
/// wins the race against the flusher thread; one that waits pays this per event.
const SYNC_DELAY: Duration = Duration::from_millis(25);

/// One syscall of the trace: from the line where it started to the line where it
/// returned (the same line unless another thread's call came in between).
#[derive(Debug, Clone)]
struct Call {
    pid: u32,
    name: String,
    /// The arguments as strace printed them (strings escaped and cut at `-s`).
    args: String,
    ret: Option<i64>,
    start: usize,
    end: usize,
    start_time: String,
    end_time: String,
}

impl Call {
    /// The first argument: the fd with its `-yy` decoration, e.g.
    /// `13</tmp/x/data/sled/db>` or `17<TCP:[127.0.0.1:1->127.0.0.1:2]>`.
    fn fd(&self) -> &str {
        self.args.split(',').next().unwrap_or("").trim()
    }

    /// The path of the file the fd is open on (`-y`), if it is one.
    fn path(&self) -> Option<&str> {
        let fd = self.fd();
        let inner = fd.get(fd.find('<')? + 1..fd.rfind('>')?)?;
        inner.starts_with('/').then_some(inner)
    }

    fn what(&self) -> String {
        let mut args = self.args.clone();
        if args.len() > 160 {
            let mut cut = 160;
            while !args.is_char_boundary(cut) {
                cut -= 1;
            }
            args.truncate(cut);
            args.push_str("...");
        }
        let ret = self.ret.map_or("?".to_owned(), |r| r.to_string());
        format!(
            "[pid {} lines {}-{} {}..{}] {}({args}) = {ret}",
            self.pid,
            self.start + 1,
            self.end + 1,
            self.start_time,
            self.end_time,
            self.name
        )
    }
}

/// Parses `strace -f -tt` output (`PID HH:MM:SS.micros CALL`) into calls, joining
/// `<unfinished ...>` with their `<... NAME resumed>` lines.
#[test]
fn four_and_five_digit_pids_parse_alike() {
    let text = "8053  09:31:45.387249 recvfrom(18<TCP:[1]>, \"x\", 8192, 0, NULL, NULL) = 181\n\
                12345 09:31:45.387250 fdatasync(14</d/sled/db>) = 0\n";
    let calls = parse_trace(text);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].name, "recvfrom");
    assert_eq!(calls[0].ret, Some(181));
    assert_eq!(calls[1].pid, 12345);
}

fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<u32, Call> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        // strace pads the pid column: `8053  09:31:45.38 call(...)` has two spaces.
        let Some((pid, after_pid)) = line.split_once(' ') else {
            continue;
        };
        let Some((time, rest)) = after_pid.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some(mut call) = pending.remove(&pid).filter(|c| c.name == name) else {
                continue;
            };
            let (args_tail, ret) = split_ret(tail);
            call.args.push_str(args_tail);
            call.ret = ret;
            call.end = i;
            call.end_time = time.to_owned();
            calls.push(call);
            continue;
        }
        let Some((name, after)) = rest.split_once('(') else {
            continue;
        };
        let mut call = Call {
            pid,
            name: name.to_owned(),
            args: String::new(),
            ret: None,
            start: i,
            end: i,
            start_time: time.to_owned(),
            end_time: time.to_owned(),
        };
        if let Some(head) = after.strip_suffix(" <unfinished ...>") {
            call.args = head.to_owned();
            pending.insert(pid, call);
        } else {
            let (args, ret) = split_ret(after);
            call.args = args.to_owned();
            call.ret = ret;
            calls.push(call);
        }
    }
    calls.sort_by_key(|c| c.start);
    calls
}

/// `ARGS) = RET ...` into the arguments and the return value (None for `?`).
fn split_ret(s: &str) -> (&str, Option<i64>) {
    match s.rfind(") = ") {
        Some(at) => {
            let ret = s[at + 4..]
                .split_whitespace()
                .next()
                .and_then(|r| r.parse().ok());
            (&s[..at], ret)
        }
        None => (s, None),
    }
}

/// What the trace shows for one event that was answered only after its flush.
struct Covered {
    read: Call,
    write: Call,
    sync: Call,
    answer: Call,
}

/// Checks the trace for the event `id`: the request read, the event written to a file
/// under `data_dir`, a sync of that file covering the write that returned before the
/// `HTTP/1.1 202` write began. Err says what is missing or out of order.
fn check_event(calls: &[Call], id: &str, data_dir: &str) -> Result<Covered, String> {
    let read = calls
        .iter()
        .find(|c| READS.contains(&c.name.as_str()) && c.ret > Some(0) && c.args.contains(id))
        .ok_or_else(|| format!("{id}: no read of a request carrying it in the trace"))?;
    let answer = calls
        .iter()
        .find(|c| {
            c.start > read.end
                && WRITES.contains(&c.name.as_str())
                && c.fd() == read.fd()
                && c.args.contains("\"HTTP/1.1 ")
        })
        .ok_or_else(|| {
            format!(
                "{id}: no answer written on {} after {}",
                read.fd(),
                read.what()
            )
        })?;
    if !answer.args.contains("\"HTTP/1.1 202") {
        return Err(format!("{id}: answered other than 202: {}", answer.what()));
    }
    let in_data_dir = |c: &Call| c.path().is_some_and(|p| p.starts_with(data_dir));
    let writes: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.start > read.start
                && c.start < answer.start
                && WRITES.contains(&c.name.as_str())
                && in_data_dir(c)
                && c.args.contains(id)
        })
        .collect();
    if writes.is_empty() {
        return Err(format!(
            "{id}: its 202 was written before the event reached a file of the data dir:\n  read   {}\n  answer {}",
            read.what(),
            answer.what()
        ));
    }
    // Any one copy of the event made durable will do (sled may write a page holding
    // it again, e.g. when merging, with no need to sync that before the 202).
    let covered = writes.iter().find_map(|w| {
        calls
            .iter()
            .find(|s| {
                SYNCS.contains(&s.name.as_str())
                    && s.start > w.end
                    && s.end < answer.start
                    && s.ret == Some(0)
                    && s.path() == w.path()
                    && covers(s, w)
            })
            .map(|s| (*w, s))
    });
    let Some((write, sync)) = covered else {
        let first = writes[0].end;
        let around: Vec<String> = calls
            .iter()
            .filter(|s| SYNCS.contains(&s.name.as_str()) && s.end > first && s.start <= answer.end)
            .map(|s| format!("  sync   {}", s.what()))
            .collect();
        let writes: Vec<String> = writes
            .iter()
            .map(|w| format!("  write  {}", w.what()))
            .collect();
        return Err(format!(
            "{id}: its 202 began before a sync covering its write to the data dir had returned:\n  read   {}\n{}\n  answer {}\nsyncs in flight meanwhile:\n{}",
            read.what(),
            writes.join("\n"),
            answer.what(),
            if around.is_empty() { "  (none)".to_owned() } else { around.join("\n") }
        ));
    };
    Ok(Covered {
        read: read.clone(),
        write: write.clone(),
        sync: sync.clone(),
        answer: answer.clone(),
    })
}

/// Whether the sync `s` makes the write `w` durable: `fsync`/`fdatasync`/`syncfs` of
/// the file do. `sync_file_range` (sled's own flush) does not: it writes no metadata
/// (a file that grew loses its tail) and flushes no disk cache, so its man page
/// promises nothing after a crash.
fn covers(s: &Call, _w: &Call) -> bool {
    matches!(s.name.as_str(), "fsync" | "fdatasync" | "syncfs")
}

/// strace runs here (and may trace its child); otherwise why not.
fn strace_usable() -> Result<(), String> {
    match Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync"])
        .args(["-e", "inject=fsync:delay_enter=1us", "true"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Err(format!(
            "strace cannot be run ({e}); scripts/test.sh installs it"
        )),
        Ok(o) if !o.status.success() => Err(format!(
            "strace cannot trace a child here (ptrace not permitted? strace too old to delay syscalls?): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// `cemesh serve` under strace. Dropping it kills the broker (then strace exits).
struct Traced {
    strace: Child,
    broker_pid: Option<u32>,
}

impl Traced {
    /// Kills the broker with SIGKILL and waits for strace to write the rest of the
    /// trace and exit.
    fn stop(&mut self) {
        if let Some(pid) = self.broker_pid.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        } else {
            // Unknown broker pid: killing strace detaches the broker, which then
            // runs on; only when there is nothing better.
            let _ = self.strace.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.strace.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.stop();
    }
}

fn broker(name: &str, durability: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/channel: sled\n    cemesh.dev/durability: {durability}\n"
    )
}

/// Starts `cemesh serve` (sled, brokers `durable` and `nosync`) under strace writing
/// to `trace`; answers the process and the ingress address.
fn start_traced(dir: &Path, trace: &Path) -> (Traced, String) {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("mesh.yaml"),
        docs(&[
            broker("durable", "flush-per-batch"),
            broker("nosync", "none"),
        ]),
    )
    .expect("manifest");
    let data = dir.join("data");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-tt", "-yy", "-s", "16384", "-o"])
        .arg(trace)
        .arg("-e")
        .arg(format!(
            "trace={},{},{}",
            READS.join(","),
            WRITES.join(","),
            SYNCS.join(",")
        ))
        // A slow disk: every sync starts SYNC_DELAY late.
        .arg("-e")
        .arg(format!(
            "inject=fsync,fdatasync,sync_file_range:delay_enter={}us",
            SYNC_DELAY.as_micros()
        ))
        .arg(cemesh_bin())
        .arg("serve")
        .arg("--config-dir")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--ingress-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--channel",
            "sled",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let stderr = child.stderr.take().expect("stderr");
    // strace's only child is the broker.
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let mut traced = Traced {
        strace: child,
        broker_pid: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut logs = String::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            logs.push_str(&line);
            logs.push('\n');
            if line.contains("cemesh listening") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Ok(line));
                }
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(logs));
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(line)) => line,
        Ok(Err(logs)) => panic!("cemesh under strace exited before listening:\n{logs}"),
        Err(_) => panic!("cemesh under strace did not listen within 20 s"),
    };
    traced.broker_pid = std::fs::read_to_string(&children)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    let ingress = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("ingress="))
        .unwrap_or_else(|| panic!("no ingress= in {line:?}"))
        .to_owned();
    (traced, ingress)
}

/// Every 202 of a sled broker follows a returned sync covering its event's write to
/// the data dir; a broker with `durability: none` visibly does not. `kill -9` (in
/// `durability.rs`) keeps the page cache, so only the syscall order can tell.
#[tokio::test(flavor = "multi_thread")]
async fn sled_202_follows_the_fsync_of_its_event() {
    if let Err(why) = strace_usable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and strace is not usable: {why}"
        );
        // Straight to stderr, not captured: a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED sled_202_follows_the_fsync_of_its_event: {why}"
        );
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    // strace -y prints resolved paths.
    let dir = tmp.path().canonicalize().expect("canonical tempdir");
    let trace_file = dir.join("strace.txt");
    let (mut traced, ingress) = start_traced(&dir, &trace_file);
    let c = client();
    let run = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    let mut durable_ids = Vec::new();
    let mut nosync_ids = Vec::new();
    // One at a time, so each flush covers one event; durable first, so no event of
    // `nosync` waits in sled's buffer for a flush of `durable`.
    for (broker, ids, n) in [
        ("durable", &mut durable_ids, 5),
        ("nosync", &mut nosync_ids, 3),
    ] {
        let url = format!("http://{ingress}/default/{broker}");
        for i in 0..n {
            let id = format!("fsyncprobe-{run}-{broker}-{i}");
            let resp = post_binary(&c, &url, &Event::new(&id, "/fsync", "test.fsync")).await;
            assert_eq!(resp.status(), 202, "{id} refused: {:?}", resp.text().await);
            ids.push(id);
        }
    }
    traced.stop();
    let text = std::fs::read_to_string(&trace_file).expect("read the trace");
    let calls = parse_trace(&text);
    let data_dir = format!("{}/", dir.join("data").display());

    let mut failures = Vec::new();
    for id in &durable_ids {
        match check_event(&calls, id, &data_dir) {
            Ok(cov) => println!(
                "{id}: read {} | {} {} | {} returned {} | 202 from {}",
                cov.read.start_time,
                cov.write.name,
                cov.write.end_time,
                cov.sync.name,
                cov.sync.end_time,
                cov.answer.start_time
            ),
            Err(e) => failures.push(e),
        }
    }
    let control: Vec<Result<Covered, String>> = nosync_ids
        .iter()
        .map(|id| check_event(&calls, id, &data_dir))
        .collect();
    for r in &control {
        if let Err(e) = r {
            println!("control (durability: none), as expected: {e}");
        }
    }
    println!(
        "{} syscalls traced, {:.1} s",
        calls.len(),
        started.elapsed().as_secs_f64()
    );
    let control_caught = control.iter().any(Result::is_err);
    // Kept for a look when the test fails.
    let kept = if failures.is_empty() && control_caught {
        None
    } else {
        Some(tmp.keep().join("strace.txt"))
    };
    assert!(
        failures.is_empty(),
        "a 202 of a flush-per-batch sled broker preceded the sync of its event (trace: {}):\n{}",
        kept.as_ref()
            .map_or(String::new(), |p| p.display().to_string()),
        failures.join("\n")
    );
    assert!(
        control_caught,
        "every 202 of the `durability: none` broker also followed a covering sync: the check cannot tell (trace: {})",
        kept.as_ref().map_or(String::new(), |p| p.display().to_string()),
    );
}
