//! Ingress backpressure that follows delivery: past a window of bytes that the
//! broker's *delivering* subscriptions have yet to acknowledge, `append` answers
//! [`ChannelError::Full`] (429 with `Retry-After` at the ingress), so a producer
//! sending as fast as it can is held to the rate the triggers deliver at, instead
//! of growing a backlog whose age becomes everyone's latency.
//!
//! Only subscriptions that claimed records within [`ACTIVE_WITHIN`] count: a trigger
//! that stopped reading (its breaker is open, it is paused, every one of its
//! deliveries is waiting on retries) must not hold the ingress for every producer;
//! its backlog is bounded by its max-lag and the broker's backlog caps instead. The
//! window is in bytes, estimated as records × the mean size of what was appended.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::ChannelError;

/// A subscription that claimed records this recently is delivering.
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(2);

/// The default window: 8 MiB (about half a second of delivery at 15k 1 KiB
/// events/s).
pub const DEFAULT_WINDOW_BYTES: u64 = 8 << 20;

/// How long a refused producer is asked to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A subscription's part: how far it is behind and when it last read.
#[derive(Debug, Clone, Copy)]
pub struct Behind {
    pub records: u64,
    pub last_claim: Instant,
}

/// The mean size of appended records, kept cheaply (a running total), for a
/// channel that does not hold the records' sizes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanSize {
    records: u64,
    bytes: u64,
}

impl MeanSize {
    pub fn add(&mut self, records: u64, bytes: u64) {
        // Halve both now and then so the mean follows the recent traffic.
        if self.records > 1 << 20 {
            self.records /= 2;
            self.bytes /= 2;
        }
        self.records += records;
        self.bytes += bytes;
    }

    pub fn mean(&self) -> u64 {
        self.bytes.checked_div(self.records).unwrap_or(1024)
    }
}

/// Whether a channel's last look at its window found it passed, so that the
/// ingress's early check ([`crate::Channel::backpressure`], before it reads a body)
/// takes the channel's lock only then. Appends check the window under the lock and
/// note the answer; acks recheck while it is set.
#[derive(Debug, Default)]
pub(crate) struct Refusing(AtomicBool);

impl Refusing {
    /// The early check: passes without running `check` while the window was last
    /// found open.
    pub(crate) fn early(
        &self,
        check: impl FnOnce() -> Result<(), ChannelError>,
    ) -> Result<(), ChannelError> {
        if !self.0.load(Relaxed) {
            return Ok(());
        }
        self.note(check())
    }

    /// Notes `checked`, a check made under the channel's lock, and returns it.
    pub(crate) fn note(&self, checked: Result<(), ChannelError>) -> Result<(), ChannelError> {
        if self.0.load(Relaxed) != checked.is_err() {
            self.0.store(checked.is_err(), Relaxed);
        }
        checked
    }

    /// After an ack moved a cursor: notes whether the window opened again (only
    /// while refusing; otherwise nothing changes).
    pub(crate) fn recheck(&self, check: impl FnOnce() -> Result<(), ChannelError>) {
        if self.0.load(Relaxed) {
            let _ = self.note(check());
        }
    }
}

/// Refuses appends while the delivering subscriptions are more than `window` bytes
/// behind (records × `mean_bytes`, the mean size of a record); `None` disables the
/// check.
pub fn check(
    window: Option<u64>,
    subs: impl Iterator<Item = Behind>,
    mean_bytes: u64,
    now: Instant,
) -> Result<(), ChannelError> {
    let Some(window) = window else {
        return Ok(());
    };
    let behind = subs
        .filter(|b| now.saturating_duration_since(b.last_claim) <= ACTIVE_WITHIN)
        .map(|b| b.records)
        .max()
        .unwrap_or(0);
    let bytes = behind.saturating_mul(mean_bytes);
    if bytes > window {
        return Err(ChannelError::Full {
            reason: format!(
                "delivery is behind: a delivering trigger has {behind} events (~{} KiB) to deliver, past the broker's backpressure window of {} KiB (cemesh.dev/backpressure-window); retry shortly",
                bytes >> 10,
                window >> 10
            ),
            retry_after: RETRY_AFTER,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_delivering_subscriptions_past_the_window_refuse() {
        let now = Instant::now();
        let mut sizes = MeanSize::default();
        sizes.add(10, 10 * 1024);
        let mean = sizes.mean();
        let active = |records| Behind {
            records,
            last_claim: now,
        };
        let stopped = Behind {
            records: 1_000_000,
            last_claim: now - ACTIVE_WITHIN * 2,
        };
        // 100 KiB window: 100 records of 1 KiB fit, 101 do not.
        let w = Some(100 << 10);
        assert!(check(w, [active(100)].into_iter(), mean, now).is_ok());
        let e = check(w, [active(101)].into_iter(), mean, now).unwrap_err();
        assert!(e.to_string().contains("backpressure window"), "{e}");
        // A subscription that stopped reading does not hold the ingress.
        assert!(check(w, [stopped, active(3)].into_iter(), mean, now).is_ok());
        // Disabled.
        assert!(check(None, [active(u64::MAX)].into_iter(), mean, now).is_ok());
    }
}
