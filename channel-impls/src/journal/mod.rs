//! The event journal: where each accepted event went, for "where is my event?"
//! (`cemesh trace`, the dashboard's journey view).
//!
//! The ingress records each event it accepts, the dispatcher each failed delivery
//! attempt and each outcome (with the successful attempt and the replies it produced).
//! Recording never waits and never allocates: an entry is encoded straight from the
//! borrowed event into one shared buffer ([`format`]), under a mutex held for that
//! copy only; past [`PENDING_MAX`] bytes an entry is dropped and counted rather than
//! slow an event down. One writer thread takes the buffer every [`IDLE`] (swapping in
//! its spare, so neither side allocates in the steady state), appends it to segment
//! files under the data dir and keeps an index in RAM (broker and id hashed, with
//! where each entry is). Entries are forgotten past a time and a size bound, the
//! oldest first. A restart reads the files again; what the last moments wrote may be
//! lost in a power cut: the files are not fsynced, the journal being a diagnosis
//! aid, not the data.
//!
//! Written by hand rather than with sled: an append-only file per few MiB and a
//! scanned index cost a fraction of a tree's per-key work, and the journal is
//! written for every event.

mod format;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use cemesh_proto::knative::now_ms;
use cemesh_proto::Event;

pub use format::{AttemptRef, EntryRef, Name, OutcomeRef};

/// Where the journal's entries go. The ingress and the dispatcher hold one.
pub trait Journal: Send + Sync + std::fmt::Debug {
    fn record(&self, entry: EntryRef<'_>);
}

/// One thing that happened to an event, as read back.
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
/// read: entries are checked against both). The index lives in RAM and is rebuilt
/// from the files at start, so the hash need not be stable across builds:
/// foldhash, a fraction of SipHash's cost for the eight keys an event makes.
fn key(broker: &str, id: &str) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    broker.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

/// An event the ingress (or a reply) stored: its attributes, not its data.
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
#[derive(Debug, Clone)]
pub struct AttemptEntry {
    pub broker: String,
    pub trigger: String,
    pub id: String,
    pub source: String,
    pub at_ms: i64,
    pub destination: String,
    pub status: Option<u16>,
    pub latency_us: u64,
    pub error: Option<String>,
}

/// How a trigger finished with an event.
#[derive(Debug, Clone)]
pub struct OutcomeEntry {
    pub broker: String,
    pub trigger: String,
    pub id: String,
    pub source: String,
    pub at_ms: i64,
    /// `delivered`, `dead-lettered`, `replied` or `refused`.
    pub outcome: String,
    pub reason: Option<String>,
    /// The built-in dead-letter store's id, when it went there.
    pub dead_letter: Option<u64>,
    pub replies: Vec<ReplyRef>,
    /// The attempt that delivered it, when it was delivered (one entry instead of
    /// two for the common case).
    pub last_attempt: Option<LastAttempt>,
}

/// The successful attempt of a delivered event.
#[derive(Debug, Clone)]
pub struct LastAttempt {
    pub destination: String,
    pub status: u16,
    pub latency_us: u64,
}

/// A reply event a delivery produced, and where it went.
#[derive(Debug, Clone)]
pub struct ReplyRef {
    pub id: String,
    pub source: String,
    pub ty: String,
    /// `namespace/name` of the broker or channel it was appended to, if any.
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

/// Bytes of entries waiting for the writer at most; past it new ones are dropped.
pub const PENDING_MAX: usize = 4 << 20;
/// A segment file is closed past an eighth of the journal's size, within these.
const SEGMENT_BYTES: (u64, u64) = (4 << 10, 4 << 20);
/// How long the writer sleeps between rounds. It is never woken, so recording an
/// entry never has to wake a thread.
pub const IDLE: Duration = Duration::from_millis(20);

/// The journal of a process: segment files, and an index of them in RAM.
#[derive(Debug)]
pub struct JournalStore {
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
}

/// What the recorders and the writer share.
#[derive(Debug, Default)]
struct Shared {
    /// Encoded records not written yet.
    pending: Mutex<Vec<u8>>,
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
    /// Every entry kept, in the order written.
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
    /// within the bounds, and starts the writer thread. Files of another format
    /// (an older cemesh's) are deleted.
    pub fn open(dir: &Path, config: JournalConfig) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        for (started, path) in segments(dir)? {
            let Some(records) = read_segment(&path) else {
                tracing::info!(path = %path.display(), "Deleting an event journal file of an older format");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            for (offset, at, key) in records {
                state.slots.push_back(Slot {
                    at_ms: at,
                    key,
                    segment: started,
                    offset,
                });
            }
            let len = std::fs::metadata(&path)?.len();
            state.segments.insert(started, (path, len));
            state.disk_bytes += len;
        }
        state.trim(&config, now_ms(), None);
        // A segment none of whose entries is kept (an empty one) goes too.
        let kept: std::collections::BTreeSet<i64> = state.slots.iter().map(|s| s.segment).collect();
        state.segments.retain(|start, (path, len)| {
            let keep = kept.contains(start);
            if !keep {
                let _ = std::fs::remove_file(&*path);
                state.disk_bytes = state.disk_bytes.saturating_sub(*len);
            }
            keep
        });
        let state = Arc::new(Mutex::new(state));
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            dir: dir.to_owned(),
            config,
            state: state.clone(),
            file: None,
        };
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("cemesh-journal".into())
            .spawn(move || writer.run(weak))?;
        Ok(Arc::new(JournalStore { shared, state }))
    }

    /// Entries dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every entry of event `id` on `broker` (`namespace/name`), in the order they
    /// were recorded, with when each happened.
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
    fn record(&self, entry: EntryRef<'_>) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pending.len() >= PENDING_MAX {
            drop(pending);
            self.shared.dropped.fetch_add(entry.count() as u64, Relaxed);
            return;
        }
        format::encode(&mut pending, &entry);
    }
}

struct Writer {
    dir: PathBuf,
    config: JournalConfig,
    state: Arc<Mutex<State>>,
    /// The segment being written: its start, the file, its length.
    file: Option<(i64, std::fs::File, u64)>,
}

impl Writer {
    /// Takes what was recorded every [`IDLE`], until the store is dropped.
    fn run(mut self, shared: Weak<Shared>) {
        let mut spare = Vec::with_capacity(64 << 10);
        let mut slots = Vec::new();
        loop {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            std::mem::swap(
                &mut *shared.pending.lock().unwrap_or_else(|p| p.into_inner()),
                &mut spare,
            );
            drop(shared);
            if spare.is_empty() {
                std::thread::sleep(IDLE);
                continue;
            }
            let now = now_ms();
            if let Err(err) = self.write(now, &spare, &mut slots) {
                tracing::warn!(error = %err, "Writing the event journal failed");
                self.file = None;
                slots.clear();
            }
            spare.clear();
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.slots.extend(slots.drain(..));
            if let Some((start, _, len)) = &self.file {
                st.set_len(*start, *len);
            }
            let current = self.file.as_ref().map(|(s, ..)| *s);
            st.trim(&self.config, now, current);
            drop(st);
            std::thread::sleep(IDLE);
        }
    }

    /// Appends encoded records to the segment, one write per segment they fill (a
    /// new one starts when this one is full), and says where each went.
    fn write(&mut self, now: i64, records: &[u8], slots: &mut Vec<Slot>) -> std::io::Result<()> {
        let segment_max = (self.config.max_bytes / 8).clamp(SEGMENT_BYTES.0, SEGMENT_BYTES.1);
        let mut written = 0;
        let mut at = 0;
        while let Some(len) = records.get(at..at + 4) {
            let len = 4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let full = self
                .file
                .as_ref()
                .is_none_or(|(_, _, n)| *n + (at - written) as u64 >= segment_max);
            if full {
                self.append(&records[written..at])?;
                written = at;
                self.rotate(now)?;
            }
            let Some((segment, _, n)) = &self.file else {
                return Err(std::io::Error::other("no segment open"));
            };
            if let Some((at_ms, broker, id)) = records.get(at + 4..at + len).and_then(format::peek)
            {
                slots.push(Slot {
                    at_ms,
                    key: key(broker, id),
                    segment: *segment,
                    offset: *n + (at - written) as u64,
                });
            }
            at += len;
        }
        self.append(&records[written..])
    }

    /// Writes records to the open segment.
    fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        if let Some((_, f, n)) = &mut self.file {
            f.write_all(records)?;
            *n += records.len() as u64;
        }
        Ok(())
    }

    /// Starts a new segment, named by when it starts.
    fn rotate(&mut self, now: i64) -> std::io::Result<()> {
        let previous = self.file.take().map(|(s, _, len)| (s, len));
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, len)) = previous {
            st.set_len(s, len);
        }
        drop(st);
        let previous = previous.map(|(s, _)| s);
        let start = previous.map_or(now, |p| now.max(p + 1));
        let path = self.dir.join(format!("{start:016}.journal"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut len = file.metadata()?.len();
        if len == 0 {
            file.write_all(format::MAGIC)?;
            len = format::MAGIC.len() as u64;
        }
        self.file = Some((start, file, len));
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

/// A segment's records: offset, time and index key; a torn or damaged tail ends
/// the read. `None` for a file of another format.
fn read_segment(path: &Path) -> Option<Vec<(u64, i64, u64)>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .ok()?;
    if !bytes.starts_with(format::MAGIC) {
        return None;
    }
    let mut out = Vec::new();
    let mut at = format::MAGIC.len();
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        match format::peek(body) {
            Some((t, broker, id)) => out.push((at as u64, t, key(broker, id))),
            None => break,
        }
        at += 4 + len;
    }
    Some(out)
}

/// The entry at `offset` of a segment.
fn read_at(path: &Path, offset: u64) -> Option<(i64, Entry)> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    f.read_exact(&mut body).ok()?;
    format::decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(j: &JournalStore, broker: &str, id: &str) {
        j.record(EntryRef::Accepted {
            broker: Name::parse(broker),
            via: "http-binary",
            at_ms: now_ms(),
            events: &[Event::new(id, "/s", "t")],
        });
    }

    fn attempt(j: &JournalStore, broker: &str, id: &str, status: u16) {
        j.record(EntryRef::Attempt(&AttemptRef {
            broker: Name::parse(broker),
            trigger: Name::new("ns", "t"),
            id,
            source: "/s",
            at_ms: now_ms(),
            destination: "http://x",
            status: Some(status),
            latency_us: 1200,
            error: None,
        }));
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
        accepted(&j, "ns/b", "e1");
        attempt(&j, "ns/b", "e1", 503);
        attempt(&j, "ns/b", "e1", 200);
        accepted(&j, "ns/other", "e1");
        let got = wait_for(&j, "ns/b", "e1", 3);
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[2].1, Entry::Attempt(a) if a.status == Some(200)));
        // Flushed within a second; a new process reads the files.
        std::thread::sleep(Duration::from_millis(1300));
        accepted(&j, "ns/b", "flush");
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
            accepted(&j, "ns/b", &format!("e{i}"));
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

    #[test]
    fn files_of_an_older_format_and_a_torn_tail_are_handled_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("0000001700000000.journal");
        std::fs::write(&old, b"\0\0\0\x10{\"json\": \"header\"}").unwrap();
        let j = JournalStore::open(dir.path(), JournalConfig::default()).unwrap();
        assert!(!old.exists(), "an older format's file is deleted");
        accepted(&j, "ns/b", "e1");
        accepted(&j, "ns/b", "e2");
        wait_for(&j, "ns/b", "e2", 1);
        drop(j);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let again = JournalStore::open(dir.path(), JournalConfig::default()).unwrap();
        assert_eq!(again.lookup("ns/b", "e1").len(), 1);
        assert!(
            again.lookup("ns/b", "e2").is_empty(),
            "the torn record is not read"
        );
    }

    #[test]
    fn recording_past_the_pending_bound_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalStore::open(dir.path(), JournalConfig::default()).unwrap();
        let mut e = Event::new("big", "/s", "t");
        e.subject = Some("x".repeat(16 << 10));
        let events = vec![e; 64];
        let mut recorded = 0;
        while j.dropped() == 0 && recorded < 100_000 {
            j.record(EntryRef::Accepted {
                broker: Name::new("ns", "b"),
                via: "http-batch",
                at_ms: now_ms(),
                events: &events,
            });
            recorded += 64;
        }
        assert!(j.dropped() > 0, "1 GiB recorded without one drop");
        assert!(
            j.shared.pending.lock().unwrap().len() < PENDING_MAX + 64 * (17 << 10),
            "the pending buffer stays bounded"
        );
    }
}
