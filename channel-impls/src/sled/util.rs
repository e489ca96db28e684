//! Small helpers every sled module uses: storage errors with context, a mutex lock
//! that survives poisoning, and wall-clock milliseconds.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use crate::ChannelError;

pub(super) fn storage(what: impl fmt::Display, e: impl fmt::Display) -> ChannelError {
    ChannelError::Storage(format!("{what}: {e}"))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its state consistent at each step that can
    // panic (disk errors are returned, not raised), so a poisoned lock is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`cemesh_proto::knative::now_ms`] as the unsigned milliseconds sled's marks keep
/// (0 before the epoch).
pub(super) fn now_ms() -> u64 {
    u64::try_from(cemesh_proto::knative::now_ms()).unwrap_or(0)
}
