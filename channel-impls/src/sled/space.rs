//! The disk-space guard: sled must never meet a full or read-only disk. After a write fails with
//! `ENOSPC`, sled 0.34 wedges (its flush never completes, appends block, shutdown
//! hangs), so a store refuses durable writes while the free space of its filesystem
//! is under a reserve, and takes them again by itself once space returns. A
//! filesystem the kernel remounted read-only (ext4's `errors=remount-ro`) is
//! refused the same way, as 503, until it is writable again. (ext4's emergency
//! read-only state after an error is not a read-only mount on recent kernels:
//! statvfs does not see it, so sled's write fails first, and that EROFS is refused
//! as the same 503 by the writer and the flusher.)
//!
//! Free space is read with `statvfs` at most every [`CHECK_EVERY`] while there is
//! room (a cheap syscall), and on every write while there is not. Between two reads
//! the bytes asked for are counted, and past an eighth of the reserve (sled writes
//! each value two to three times over as its pages are rewritten) the next write
//! reads again: a fast producer cannot run through a small reserve in one
//! `CHECK_EVERY`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ChannelError;

/// How stale a "there is room" answer may be.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// How long a producer refused for space should wait.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct DiskSpace {
    path: PathBuf,
    reserve: u64,
    started: Instant,
    /// Milliseconds since `started` of the last check that found room.
    checked_ms: AtomicU64,
    /// Bytes asked for since that check.
    since_check: AtomicU64,
    /// Under the reserve (or read-only) at the last read.
    low: AtomicBool,
    /// The disk has been read once (until then it is neither low nor roomy).
    known: AtomicBool,
}

impl DiskSpace {
    pub(super) fn new(path: PathBuf, reserve: u64) -> Self {
        DiskSpace {
            path,
            reserve,
            started: Instant::now(),
            checked_ms: AtomicU64::new(0),
            since_check: AtomicU64::new(0),
            low: AtomicBool::new(false),
            known: AtomicBool::new(false),
        }
    }

    /// `Ok` while the filesystem has more than the reserve free, for a write of
    /// about `bytes`.
    pub(super) fn check(&self, bytes: u64) -> Result<(), ChannelError> {
        if self.reserve == 0 {
            return Ok(());
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        let fresh = now_ms.saturating_sub(self.checked_ms.load(Ordering::Relaxed))
            < CHECK_EVERY.as_millis() as u64;
        let asked = self.since_check.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if fresh
            && asked < self.reserve / 8
            && self.known.load(Ordering::Relaxed)
            && !self.low.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        self.since_check.store(0, Ordering::Relaxed);
        let Some((free, read_only)) = free_bytes(&self.path) else {
            // Unknown (an unusual filesystem): do not refuse writes over it.
            return Ok(());
        };
        self.known.store(true, Ordering::Relaxed);
        let low = read_only || free < self.reserve;
        let was_low = self.low.swap(low, Ordering::Relaxed);
        if read_only {
            if !was_low {
                tracing::error!(path = %self.path.display(), "The data dir's disk is read-only: refusing writes until it is writable");
            }
            return Err(read_only_refusal());
        }
        if low {
            if !was_low {
                tracing::error!(path = %self.path.display(), free, reserve = self.reserve, "Disk almost full: refusing writes until space returns");
            }
            return Err(ChannelError::DiskFull {
                free,
                reserve: self.reserve,
                retry_after: RETRY_AFTER,
            });
        }
        if was_low {
            tracing::info!(path = %self.path.display(), free, "Disk space is back: taking writes again");
        }
        self.checked_ms.store(now_ms, Ordering::Relaxed);
        Ok(())
    }
}

/// The refusal of a write to a read-only disk (503 with Retry-After).
pub(super) fn read_only_refusal() -> ChannelError {
    ChannelError::ReadOnlyDisk {
        retry_after: RETRY_AFTER,
    }
}

/// Whether sled failed because the filesystem refuses writes (EROFS).
pub(super) fn is_read_only(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`, and
/// whether it is mounted read-only.
fn free_bytes(path: &std::path::Path) -> Option<(u64, bool)> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_zero_never_does() {
        let dir = std::env::temp_dir();
        let full = DiskSpace::new(dir.clone(), u64::MAX);
        assert!(matches!(full.check(0), Err(ChannelError::DiskFull { .. })));
        // Still refused on the next call: no stale "room" answer.
        assert!(full.check(0).is_err());
        assert!(DiskSpace::new(dir.clone(), 0).check(0).is_ok());
        assert!(DiskSpace::new(dir, 1).check(0).is_ok());
    }

    /// Mounts a tmpfs (needs root; skipped without it), flips it read-only and back.
    #[test]
    fn a_read_only_filesystem_is_refused_until_writable() {
        let dir = tempfile::tempdir().unwrap();
        let mount = |opts: &str| {
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !mount("size=1m") {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let space = DiskSpace::new(dir.path().to_path_buf(), 1);
        assert!(space.check(0).is_ok());
        assert!(mount("remount,ro"));
        std::thread::sleep(CHECK_EVERY * 2); // past the cached "there is room"
        let refused = space.check(0);
        assert!(mount("remount,rw"));
        let writable = space.check(0);
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        match refused {
            Err(ChannelError::ReadOnlyDisk { retry_after }) => assert_eq!(retry_after, RETRY_AFTER),
            other => panic!("expected ReadOnlyDisk, got {other:?}"),
        }
        assert!(writable.is_ok(), "{writable:?}");
    }

    /// Mounts a tmpfs (needs root; skipped without it) and fills it between two
    /// checks: within one `CHECK_EVERY`, small writes keep the cached answer, but
    /// asking for an eighth of the reserve reads the disk again.
    #[test]
    fn writes_past_an_eighth_of_the_reserve_read_the_disk_again() {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let reserve = 2 << 20;
        let space = DiskSpace::new(dir.path().to_path_buf(), reserve);
        let first = space.check(1024);
        // Another writer takes 7 MiB of the 8: under the reserve now.
        std::fs::write(dir.path().join("fill"), vec![0u8; 7 << 20]).unwrap();
        let small = space.check(1024);
        let large = space.check(reserve / 8);
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        assert!(first.is_ok(), "{first:?}");
        // A run slow enough to get past CHECK_EVERY reads the disk anyway.
        if space.started.elapsed() < CHECK_EVERY {
            assert!(small.is_ok(), "{small:?}");
        }
        assert!(
            matches!(large, Err(ChannelError::DiskFull { .. })),
            "{large:?}"
        );
    }
}
