//! The event journal: where each accepted event went, for "where is my event?"
//! (`cemesh trace`, the dashboard's journey view).
//!
//! The ingress records each event it accepts, the dispatcher each delivery attempt
//! and each outcome (with the replies it produced). Recording never waits: entries go
//! through a bounded queue to one writer thread, and an entry that finds the queue
//! full is dropped and counted rather than slow an event down. The writer keeps the
//! entries in RAM, indexed by broker and event id, within a time and a size bound
//! (the oldest go first), and appends them to segment files under the data dir, so a
//! restart finds them again (what the last second wrote may be lost in a power cut:
//! the files are not fsynced, the journal being a diagnosis aid, not the data).
//!
//! Written by hand rather than with sled: an append-only file per few MiB and a hash
//! index cost a fraction of a tree's per-key work, and the journal is written for
//! every event.

use std::collections::VecDeque;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cemesh_proto::{codec, Event};
use serde::{Deserialize, Serialize};

/// Where the journal's entries go. The ingress and the dispatcher hold one.
pub trait Journal: Send + Sync + std::fmt::Debug {
    fn record(&self, entry: Entry);
}

/// One thing that happened to an event.
#[derive(Debug, Clone)]
pub enum Entry {
    Accepted(Box<Accepted>),
    Attempt(Box<AttemptEntry>),
    Outcome(Box<OutcomeEntry>),
}

impl Entry {
    /// `namespace/name` of the broker or channel the event is in.
    pub fn broker(&self) -> &str {
        match self {
            Entry::Accepted(a) => &a.broker,
            Entry::Attempt(a) => &a.broker,
            Entry::Outcome(o) => &o.broker,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Entry::Accepted(a) => &a.event.id,
            Entry::Attempt(a) => &a.id,
            Entry::Outcome(o) => &o.id,
        }
    }

    pub fn source(&self) -> &str {
        match self {
            Entry::Accepted(a) => &a.event.source,
            Entry::Attempt(a) => &a.source,
            Entry::Outcome(o) => &o.source,
        }
    }
}

/// The index key of an event: its broker and id, hashed (a collision only costs a
/// read: entries are checked against both).
fn key(broker: &str, id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    broker.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

/// An event the ingress (or a reply) stored.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// `namespace/name` of the broker or channel.
    pub broker: String,
    /// How it came in: `http-binary`, `http-structured`, `http-batch`, `grpc`, `reply`.
    pub via: String,
    pub at_ms: i64,
    pub event: Event,
}

/// One delivery attempt of a trigger.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptEntry {
    pub broker: String,
    pub trigger: String,
    pub id: String,
    pub source: String,
    pub at_ms: i64,
    pub destination: String,
    pub status: Option<u16>,
    pub latency_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a trigger finished with an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeEntry {
    pub broker: String,
    pub trigger: String,
    pub id: String,
    pub source: String,
    pub at_ms: i64,
    /// `delivered` or `dead-lettered`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The built-in dead-letter store's id, when it went there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replies: Vec<ReplyRef>,
    /// The attempt that delivered it, when it was delivered (one entry instead of
    /// two for the common case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<LastAttempt>,
}

/// The successful attempt of a delivered event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastAttempt {
    pub destination: String,
    pub status: u16,
    pub latency_us: u64,
}

/// A reply event a delivery produced, and where it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyRef {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// `namespace/name` of the broker or channel it was appended to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

/// Bounds of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// Entries older than this are forgotten.
    pub retention: Duration,
    /// Disk the entries may take (RAM holds only an index: 32 bytes an entry).
    pub max_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            retention: Duration::from_secs(3600),
            max_bytes: 32 << 20,
        }
    }
}

/// Entries waiting for the writer at most; past it new ones are dropped.
const QUEUE: usize = 16_384;
/// Entries written at once at most.
const MAX_BATCH: usize = 8192;
/// A segment file is closed past an eighth of the journal's size, within these.
const SEGMENT_BYTES: (u64, u64) = (4 << 10, 4 << 20);
/// How long the writer sleeps when the queue is empty. It never blocks on the queue,
/// so recording an entry never has to wake a thread.
const IDLE: Duration = Duration::from_millis(20);

/// The journal of a process: segment files, and an index of them in RAM.
#[derive(Debug)]
pub struct JournalStore {
    tx: SyncSender<Entry>,
    state: Arc<Mutex<State>>,
    dropped: AtomicU64,
}

/// Where one entry is: its segment (the segment's start time) and offset there.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at_ms: i64,
    key: u64,
    segment: i64,
    offset: u64,
}

/// The index is the slots alone, scanned on a lookup (a few milliseconds for the
/// hundreds of thousands of entries the default size holds): a hash map of them
/// cost three times the RAM, and RAM is what a flood of small events is short of.
#[derive(Debug, Default)]
struct State {
    /// Every entry kept, oldest first.
    slots: VecDeque<Slot>,
    /// Segment start time to its file and size.
    segments: std::collections::BTreeMap<i64, (PathBuf, u64)>,
    disk_bytes: u64,
}

impl State {
    /// Records a segment's length as written so far.
    fn set_len(&mut self, segment: i64, len: u64) {
        if let Some((_, l)) = self.segments.get_mut(&segment) {
            self.disk_bytes = self.disk_bytes + len - (*l).min(len);
            *l = len;
        }
    }

    fn push(&mut self, slot: Slot) {
        self.slots.push_back(slot);
    }

    /// Forgets the oldest entries while past the bounds, and deletes each segment
    /// once none of its entries is kept (never `current`, being written).
    fn trim(&mut self, config: &JournalConfig, now_ms: i64, current: Option<i64>) {
        let cutoff = now_ms - config.retention.as_millis() as i64;
        while let Some(front) = self.slots.front().copied() {
            let too_old = front.at_ms < cutoff;
            let too_big = self.disk_bytes > config.max_bytes && Some(front.segment) != current;
            if !too_old && !too_big {
                break;
            }
            self.slots.pop_front();
            let segment_done = self
                .slots
                .front()
                .is_none_or(|next| next.segment != front.segment);
            if segment_done && Some(front.segment) != current {
                if let Some((path, len)) = self.segments.remove(&front.segment) {
                    let _ = std::fs::remove_file(path);
                    self.disk_bytes = self.disk_bytes.saturating_sub(len);
                }
            }
        }
    }
}

impl JournalStore {
    /// Opens the journal in `dir` (created if needed), indexing what its files hold
    /// within the bounds, and starts the writer thread.
    pub fn open(dir: &Path, config: JournalConfig) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        for (started, path) in segments(dir)? {
            let mut len = 0;
            for (offset, at, entry) in read_segment(&path) {
                state.push(Slot {
                    at_ms: at,
                    key: key(entry.broker(), entry.id()),
                    segment: started,
                    offset,
                });
                len = offset;
            }
            let len = std::fs::metadata(&path).map_or(len, |m| m.len());
            state.segments.insert(started, (path, len));
            state.disk_bytes += len;
        }
        state.trim(&config, now_ms(), None);
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer {
            dir: dir.to_owned(),
            config,
            state: state.clone(),
            file: None,
        };
        std::thread::Builder::new()
            .name("cemesh-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(JournalStore {
            tx,
            state,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Entries dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every entry of event `id` on `broker` (`namespace/name`), oldest first, with
    /// when it was written.
    pub fn lookup(&self, broker: &str, id: &str) -> Vec<(i64, Entry)> {
        let k = key(broker, id);
        let places: Vec<(PathBuf, u64)> = {
            let st = self.lock();
            st.slots
                .iter()
                .filter(|s| s.key == k)
                .filter_map(|s| {
                    st.segments
                        .get(&s.segment)
                        .map(|(p, _)| (p.clone(), s.offset))
                })
                .collect()
        };
        places
            .into_iter()
            .filter_map(|(path, offset)| read_at(&path, offset))
            .filter(|(_, e)| e.broker() == broker && e.id() == id)
            .collect()
    }
}

impl Journal for JournalStore {
    fn record(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

struct Writer {
    dir: PathBuf,
    config: JournalConfig,
    state: Arc<Mutex<State>>,
    /// The segment being written: its start, the file, its length.
    file: Option<(i64, BufWriter<std::fs::File>, u64)>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut buf = Vec::with_capacity(1 << 20);
        let mut slots = Vec::with_capacity(MAX_BATCH);
        loop {
            loop {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
            }
            if batch.is_empty() {
                std::thread::sleep(IDLE);
                continue;
            }
            let now = now_ms();
            if let Err(err) = self.write(now, &batch, &mut buf, &mut slots) {
                tracing::warn!(error = %err, "Writing the event journal failed");
                self.file = None;
                slots.clear();
            }
            batch.clear();
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for slot in slots.drain(..) {
                st.push(slot);
            }
            if let Some((start, _, len)) = &self.file {
                st.set_len(*start, *len);
            }
            let current = self.file.as_ref().map(|(s, ..)| *s);
            st.trim(&self.config, now, current);
        }
    }

    /// Appends a batch to the segment, one write per segment it fills (a new one
    /// starts when this one is full), and says where each entry went.
    fn write(
        &mut self,
        now: i64,
        batch: &[Entry],
        buf: &mut Vec<u8>,
        slots: &mut Vec<Slot>,
    ) -> std::io::Result<()> {
        let segment_max = (self.config.max_bytes / 8).clamp(SEGMENT_BYTES.0, SEGMENT_BYTES.1);
        buf.clear();
        for e in batch {
            let full = self
                .file
                .as_ref()
                .is_none_or(|(_, _, n)| *n + buf.len() as u64 >= segment_max);
            if full {
                self.flush(buf)?;
                self.rotate(now)?;
            }
            let Some((segment, _, n)) = &self.file else {
                return Err(std::io::Error::other("no segment open"));
            };
            let offset = *n + buf.len() as u64;
            encode_into(buf, now, e);
            slots.push(Slot {
                at_ms: now,
                key: key(e.broker(), e.id()),
                segment: *segment,
                offset,
            });
        }
        self.flush(buf)
    }

    /// Writes what `buf` holds to the open segment.
    fn flush(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if let Some((_, f, n)) = &mut self.file {
            f.write_all(buf)?;
            f.flush()?;
            *n += buf.len() as u64;
        }
        buf.clear();
        Ok(())
    }

    /// Starts a new segment, named by when it starts.
    fn rotate(&mut self, now: i64) -> std::io::Result<()> {
        let previous = self.file.take().map(|(s, mut f, len)| {
            let _ = f.flush();
            (s, len)
        });
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, len)) = previous {
            st.set_len(s, len);
        }
        drop(st);
        let previous = previous.map(|(s, _)| s);
        let start = previous.map_or(now, |p| now.max(p + 1));
        let path = self.dir.join(format!("{start:016}.journal"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        self.file = Some((start, BufWriter::with_capacity(64 << 10, file), len));
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.segments.entry(start).or_insert((path, len));
        Ok(())
    }
}

/// The segment files, oldest first, with when each started.
fn segments(dir: &Path) -> std::io::Result<Vec<(i64, PathBuf)>> {
    let mut v: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let started = p
                .file_name()?
                .to_str()?
                .strip_suffix(".journal")?
                .parse()
                .ok()?;
            Some((started, p))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The header of a stored entry: what is not the event.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum Stored {
    Accepted {
        broker: String,
        via: String,
        at_ms: i64,
    },
    Attempt(AttemptEntry),
    Outcome(OutcomeEntry),
}

/// What [`Stored`] holds, borrowed from an entry: written without copying it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum StoredRef<'a> {
    Accepted {
        broker: &'a str,
        via: &'a str,
        at_ms: i64,
    },
    Attempt(&'a AttemptEntry),
    Outcome(&'a OutcomeEntry),
}

/// Appends one record to `out`: `[u32 length]` then `[u64 written at][u32 header
/// length][header JSON][event protobuf]`.
fn encode_into(out: &mut Vec<u8>, now: i64, e: &Entry) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&now.to_be_bytes());
    let header_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let header = match e {
        Entry::Accepted(a) => StoredRef::Accepted {
            broker: &a.broker,
            via: &a.via,
            at_ms: a.at_ms,
        },
        Entry::Attempt(a) => StoredRef::Attempt(a),
        Entry::Outcome(o) => StoredRef::Outcome(o),
    };
    let _ = serde_json::to_writer(&mut *out, &header);
    let header_len = (out.len() - header_at - 4) as u32;
    out[header_at..header_at + 4].copy_from_slice(&header_len.to_be_bytes());
    if let Entry::Accepted(a) = e {
        out.extend_from_slice(&codec::encode(&a.event));
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn decode(record: &[u8]) -> Option<(i64, Entry)> {
    let at = i64::from_be_bytes(record.get(..8)?.try_into().ok()?);
    let len = u32::from_be_bytes(record.get(8..12)?.try_into().ok()?) as usize;
    let header: Stored = serde_json::from_slice(record.get(12..12 + len)?).ok()?;
    let entry = match header {
        Stored::Accepted { broker, via, at_ms } => {
            let event =
                codec::decode(&bytes::Bytes::copy_from_slice(record.get(12 + len..)?)).ok()?;
            Entry::Accepted(Box::new(Accepted {
                broker,
                via,
                at_ms,
                event,
            }))
        }
        Stored::Attempt(a) => Entry::Attempt(Box::new(a)),
        Stored::Outcome(o) => Entry::Outcome(Box::new(o)),
    };
    Some((at, entry))
}

/// A segment's entries with their offsets; a torn or damaged tail ends the read.
fn read_segment(path: &Path) -> Vec<(u64, i64, Entry)> {
    let mut bytes = Vec::new();
    if std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .is_err()
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(record) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        match decode(record) {
            Some((t, e)) => out.push((at as u64, t, e)),
            None => break,
        }
        at += 4 + len;
    }
    out
}

/// The entry at `offset` of a segment.
fn read_at(path: &Path, offset: u64) -> Option<(i64, Entry)> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len).ok()?;
    let mut record = vec![0u8; u32::from_be_bytes(len) as usize];
    f.read_exact(&mut record).ok()?;
    decode(&record)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(broker: &str, id: &str) -> Entry {
        Entry::Accepted(Box::new(Accepted {
            broker: broker.into(),
            via: "http-binary".into(),
            at_ms: now_ms(),
            event: Event::new(id, "/s", "t"),
        }))
    }

    fn attempt(broker: &str, id: &str, status: u16) -> Entry {
        Entry::Attempt(Box::new(AttemptEntry {
            broker: broker.into(),
            trigger: "ns/t".into(),
            id: id.into(),
            source: "/s".into(),
            at_ms: now_ms(),
            destination: "http://x".into(),
            status: Some(status),
            latency_us: 1200,
            error: None,
        }))
    }

    fn wait_for(j: &JournalStore, broker: &str, id: &str, n: usize) -> Vec<(i64, Entry)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = j.lookup(broker, id);
            if got.len() >= n || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn entries_are_found_by_broker_and_id_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalStore::open(dir.path(), JournalConfig::default()).unwrap();
        j.record(accepted("ns/b", "e1"));
        j.record(attempt("ns/b", "e1", 503));
        j.record(attempt("ns/b", "e1", 200));
        j.record(accepted("ns/other", "e1"));
        let got = wait_for(&j, "ns/b", "e1", 3);
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[2].1, Entry::Attempt(a) if a.status == Some(200)));
        // Flushed within a second; a new process reads the files.
        std::thread::sleep(Duration::from_millis(1300));
        j.record(accepted("ns/b", "flush"));
        std::thread::sleep(Duration::from_millis(1300));
        let again = JournalStore::open(dir.path(), JournalConfig::default()).unwrap();
        let got = again.lookup("ns/b", "e1");
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0].1, Entry::Accepted(a) if a.via == "http-binary"));
    }

    #[test]
    fn the_journal_stays_within_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            max_bytes: 100 * 500,
            ..JournalConfig::default()
        };
        let j = JournalStore::open(dir.path(), config).unwrap();
        for i in 0..2000 {
            j.record(accepted("ns/b", &format!("e{i}")));
        }
        wait_for(&j, "ns/b", "e1999", 1);
        assert!(j.lookup("ns/b", "e0").is_empty(), "the oldest went first");
        assert_eq!(j.lookup("ns/b", "e1999").len(), 1);
        let st = j.lock();
        assert!(
            st.disk_bytes <= config.max_bytes + config.max_bytes / 8 + 1024,
            "{}",
            st.disk_bytes
        );
    }
}
