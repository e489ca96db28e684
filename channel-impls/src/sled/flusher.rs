//! The flusher: group commit for a store. Appends (and dead letters) insert their
//! writes, then ask for a ticket and wait; one thread runs `flush` in a loop, and
//! each flush covers every writer that arrived while the previous one ran, so
//! concurrent producers share fsyncs instead of paying one each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::util::lock;
use crate::ChannelError;

#[derive(Debug, Clone, Default)]
struct FlushStatus {
    /// Every ticket up to this one has been flushed (or failed).
    done: u64,
    /// Every ticket up to this one is durable.
    last_ok: u64,
    error: Option<String>,
    /// The last failure was the filesystem refusing writes (EROFS: ext4's
    /// `errors=remount-ro`, which on recent kernels statvfs does not report).
    read_only: bool,
}

#[derive(Debug)]
struct FlushState {
    /// Ticket handed to writers arriving now; the flusher takes it and moves on.
    epoch: u64,
    /// A writer waits for the next flush.
    waiting: bool,
    /// Writers waiting for the next flush (its group).
    writers: u64,
    /// Flush no later than this (Durability::Interval).
    deadline: Option<Instant>,
    shutdown: bool,
}

/// The single flusher thread of a store, and the tickets appenders wait on.
#[derive(Debug)]
pub(super) struct Flusher {
    state: Mutex<FlushState>,
    cv: Condvar,
    status: watch::Sender<FlushStatus>,
    pub(super) flushes: AtomicU64,
    /// The most writers one flush covered.
    pub(super) largest_group: AtomicU64,
    /// Every durable write of the store asks it first.
    pub(super) space: super::space::DiskSpace,
}

impl Flusher {
    pub(super) fn new(space: super::space::DiskSpace) -> Self {
        Flusher {
            space,
            state: Mutex::new(FlushState {
                epoch: 1,
                waiting: false,
                writers: 0,
                deadline: None,
                shutdown: false,
            }),
            cv: Condvar::new(),
            status: watch::Sender::new(FlushStatus::default()),
            flushes: AtomicU64::new(0),
            largest_group: AtomicU64::new(0),
        }
    }

    /// Asks for a flush covering every write made before this call; returns the
    /// ticket to wait for.
    pub(super) fn request(&self) -> u64 {
        let ticket = {
            let mut st = lock(&self.state);
            st.waiting = true;
            st.writers += 1;
            st.epoch
        };
        self.cv.notify_one();
        ticket
    }

    /// Asks for a flush within `within`, without waiting for it.
    pub(super) fn request_within(&self, within: Duration) {
        let at = Instant::now() + within;
        {
            let mut st = lock(&self.state);
            st.deadline = Some(st.deadline.map_or(at, |d| d.min(at)));
        }
        self.cv.notify_one();
    }

    pub(super) async fn wait(&self, ticket: u64) -> Result<(), ChannelError> {
        let mut rx = self.status.subscribe();
        let status = rx
            .wait_for(|s| s.done >= ticket)
            .await
            .map_err(|_| ChannelError::Closed)?
            .clone();
        if status.last_ok >= ticket {
            Ok(())
        } else if status.read_only {
            Err(super::space::read_only_refusal())
        } else {
            Err(ChannelError::Storage(format!(
                "flushing to disk failed: {}",
                status.error.as_deref().unwrap_or("unknown error")
            )))
        }
    }

    /// The flusher thread's loop: one `flush` per round covers every writer that
    /// arrived while the previous one ran.
    /// sled's `flush` ends with `sync_file_range`, which writes no metadata (a file
    /// that grew loses its tail in a power cut) and flushes no disk cache: an
    /// `fdatasync` of sled's file follows it, and only then are the writers told.
    pub(super) fn run(&self, db: sled::Db, file: std::fs::File) {
        loop {
            let ticket = {
                let mut st = lock(&self.state);
                loop {
                    if st.waiting || st.deadline.is_some_and(|d| d <= Instant::now()) {
                        break;
                    }
                    if st.shutdown {
                        return;
                    }
                    st = match st.deadline {
                        Some(d) => {
                            let wait = d.saturating_duration_since(Instant::now());
                            self.cv
                                .wait_timeout(st, wait)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                    };
                }
                st.waiting = false;
                st.deadline = None;
                let group = std::mem::take(&mut st.writers);
                if group > 0 {
                    self.largest_group.fetch_max(group, Ordering::Relaxed);
                    metrics::histogram!(cemesh_proto::metric_names::CHANNEL_GROUP_COMMIT_BATCH)
                        .record(group as f64);
                }
                st.epoch += 1;
                st.epoch - 1
            };
            let result = db
                .flush()
                .and_then(|_| file.sync_data().map_err(sled::Error::Io));
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.status.send_modify(|s| {
                s.done = ticket;
                match result {
                    Ok(_) => {
                        s.last_ok = ticket;
                        s.error = None;
                        s.read_only = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "sled flush failed; appends waiting for it fail");
                        s.read_only = super::space::is_read_only(&e);
                        s.error = Some(e.to_string());
                    }
                }
            });
        }
    }

    pub(super) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }
}
