//! Ingress backpressure that follows delivery: past a window of bytes that the
//! broker's *delivering* subscriptions have yet to take for delivery, the ingress holds a
//! new request until delivery makes room, for up to the broker's hold, and then
//! answers [`ChannelError::Full`] (429 with `Retry-After`). A producer sending as fast
//! as it can is paced to the rate the triggers deliver at (like a Kafka producer
//! blocking on a full buffer for up to `max.block.ms`), instead of growing a backlog
//! whose age becomes everyone's latency, or being refused while delivery is merely
//! busy.
//!
//! The window is checked at the door ([`crate::Channel::backpressure`] and
//! [`crate::Channel::room`], before a request's body is read), not by `append`: a
//! request let in is stored, so the held requests that one read lets in together are
//! not refused after their bodies were read. The window is soft by the requests in
//! flight at the ingress (bounded by its pending-bytes budget); the backlog caps
//! are hard.
//!
//! The window counts what waits unclaimed (appended, not yet read by a delivery):
//! what is in flight or retrying does not count, so the window does not cap how
//! many deliveries a trigger keeps in flight (a trigger with parallelism 64 and
//! 64 KiB events has 4 MiB in flight), nor does one event retrying at the head of
//! the log hold the ingress while everything behind it is delivered. Reads, not
//! acks, open it again.
//!
//! Only subscriptions that claimed records within [`ACTIVE_WITHIN`] count: a trigger
//! that stopped reading (its breaker is open, it is paused, every one of its
//! deliveries is waiting on retries) must not hold the ingress for every producer;
//! its backlog is bounded by its max-lag and the broker's backlog caps instead. The
//! window is in bytes, estimated as records × the mean size of what was appended.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::ChannelError;

/// A subscription that claimed records this recently is delivering.
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(2);

/// The default window: 1 MiB waiting unclaimed (about 1 000 events of 1 KiB, a
/// fifteenth of a second at 15k events/s), beyond what each trigger has in flight.
/// Smaller is faster for one trigger and worse for a hundred (`bench/README.md`).
pub const DEFAULT_WINDOW_BYTES: u64 = 1 << 20;

/// The default hold: how long the ingress waits for room past the window before
/// answering 429.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(1);

/// While holding, the window is looked at again this often: it also opens without
/// a read, when a subscription stops counting as delivering.
const RECHECK: Duration = Duration::from_millis(250);

/// How long a refused producer is asked to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A subscription's part: how many records wait for it unclaimed and when it last
/// read.
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
/// takes the channel's lock only then; and the requests held for room. Appends note
/// the window under the channel's lock; reads recheck while it is set.
#[derive(Debug, Default)]
pub(crate) struct Refusing {
    refusing: AtomicBool,
    /// Notified when a read finds room again: wakes every held request.
    opened: Notify,
}

impl Refusing {
    /// The early check: passes without running `check` while the window was last
    /// found open.
    pub(crate) fn early(
        &self,
        check: impl FnOnce() -> Result<(), ChannelError>,
    ) -> Result<(), ChannelError> {
        if !self.refusing.load(Relaxed) {
            return Ok(());
        }
        self.note(check())
    }

    /// Notes `checked`, a check made under the channel's lock, and returns it;
    /// wakes the held requests when the window opened.
    pub(crate) fn note(&self, checked: Result<(), ChannelError>) -> Result<(), ChannelError> {
        let refusing = checked.is_err();
        if self.refusing.load(Relaxed) != refusing {
            self.refusing.store(refusing, Relaxed);
            if !refusing {
                self.opened.notify_waiters();
            }
        }
        checked
    }

    /// After a read claimed records: notes whether the window opened again (only
    /// while refusing; otherwise nothing changes).
    pub(crate) fn recheck(&self, check: impl FnOnce() -> Result<(), ChannelError>) {
        if self.refusing.load(Relaxed) {
            let _ = self.note(check());
        }
    }

    /// The early check, waiting up to `hold` (asked only when the window is
    /// passed) for room: returns as soon as a read (or a subscription no longer
    /// delivering) opens it, else the refusal, saying how long it was held.
    pub(crate) async fn wait(
        &self,
        hold: impl FnOnce() -> Duration,
        check: impl Fn() -> Result<(), ChannelError>,
    ) -> Result<(), ChannelError> {
        let refused = match self.early(&check) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let hold = hold();
        if hold.is_zero() {
            return Err(refused);
        }
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            // Registered before the look, so a read right after it is not missed.
            opened.as_mut().enable();
            let refused = match self.early(&check) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(held(refused, hold));
            }
            tokio::select! {
                () = &mut opened => {}
                () = tokio::time::sleep_until(deadline.min(now + RECHECK)) => {}
            }
        }
    }
}

/// A refusal after holding a request `hold` long.
fn held(refused: ChannelError, hold: Duration) -> ChannelError {
    match refused {
        ChannelError::Full {
            reason,
            retry_after,
        } => ChannelError::Full {
            reason: format!(
                "{reason} (held {} ms for room: cemesh.dev/backpressure-hold)",
                hold.as_millis()
            ),
            retry_after,
        },
        other => other,
    }
}

/// Refuses new events while more than `window` bytes wait unclaimed for a delivering
/// subscription (records × `mean_bytes`, the mean size of a record); `None` disables
/// the check.
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
                "delivery is behind: a delivering trigger has {behind} events (~{} KiB) waiting to be delivered, past the broker's backpressure window of {} KiB (cemesh.dev/backpressure-window); retry shortly",
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
