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
//! room (a cheap syscall), and on every write while there is not.

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
    low: AtomicBool,
}

impl DiskSpace {
    pub(super) fn new(path: PathBuf, reserve: u64) -> Self {
        DiskSpace {
            path,
            reserve,
            started: Instant::now(),
            checked_ms: AtomicU64::new(0),
            low: AtomicBool::new(true),
        }
    }

    /// `Ok` while the filesystem has more than the reserve free.
    pub(super) fn check(&self) -> Result<(), ChannelError> {
        if self.reserve == 0 {
            return Ok(());
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        let fresh = now_ms.saturating_sub(self.checked_ms.load(Ordering::Relaxed))
            < CHECK_EVERY.as_millis() as u64;
        if fresh && !self.low.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some((free, read_only)) = free_bytes(&self.path) else {
            // Unknown (an unusual filesystem): do not refuse writes over it.
            return Ok(());
        };
        if read_only {
            if !self.low.swap(true, Ordering::Relaxed) {
                tracing::error!(path = %self.path.display(), "The data dir's disk is read-only: refusing writes until it is writable");
            }
            return Err(read_only_refusal());
        }
        let low = free < self.reserve;
        let was_low = self.low.swap(low, Ordering::Relaxed);
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
        if was_low && now_ms > 0 {
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
        assert!(matches!(full.check(), Err(ChannelError::DiskFull { .. })));
        // Still refused on the next call: no stale "room" answer.
        assert!(full.check().is_err());
        assert!(DiskSpace::new(dir.clone(), 0).check().is_ok());
        assert!(DiskSpace::new(dir, 1).check().is_ok());
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
        assert!(space.check().is_ok());
        assert!(mount("remount,ro"));
        std::thread::sleep(CHECK_EVERY * 2); // past the cached "there is room"
        let refused = space.check();
        assert!(mount("remount,rw"));
        let writable = space.check();
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        match refused {
            Err(ChannelError::ReadOnlyDisk { retry_after }) => assert_eq!(retry_after, RETRY_AFTER),
            other => panic!("expected ReadOnlyDisk, got {other:?}"),
        }
        assert!(writable.is_ok(), "{writable:?}");
    }
}
