//! What the pipeline tells the event journal: each failed attempt (to the subscriber
//! or the dead-letter sink), each outcome with the successful attempt in it, and the
//! replies a delivery produced. Entries are encoded from borrowed names and the
//! event itself: nothing is built unless the trigger's broker journals.

use std::cell::Cell;
use std::time::Duration;

use cemesh_channels::journal::{AttemptRef, EntryRef, Name, OutcomeRef};
use cemesh_proto::knative::now_ms;
use cemesh_proto::Event;

use super::{DeadLettered, Processed, TriggerContext};

/// The subscriber's successful attempt (at the trigger's subscriber URL).
#[derive(Clone, Copy)]
struct Success {
    status: u16,
    latency_us: u64,
}

tokio::task_local! {
    /// The successful attempt of the event this task is processing, until its
    /// outcome is journaled with it.
    static SUCCESS: Cell<Option<Success>>;
}

/// Runs `f` (an event's processing) with a place for its successful attempt.
///
/// Not an `async fn`: one would keep `f` twice in its state (the argument and the
/// scope that polls it), and every delivery's task moves that state.
pub(super) fn with_success_slot<F: std::future::Future>(
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    SUCCESS.scope(Cell::new(None), f)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl TriggerContext {
    fn journal_broker(&self) -> Name<'_> {
        Name::new(&self.runtime.key.namespace, &self.runtime.broker)
    }

    fn journal_trigger(&self) -> Name<'_> {
        Name::new(&self.runtime.key.namespace, &self.runtime.key.name)
    }

    pub(super) fn broker_key(&self) -> String {
        format!("{}/{}", self.runtime.key.namespace, self.runtime.broker)
    }

    pub(super) fn journal_attempt(
        &self,
        event: &Event,
        destination: &str,
        status: Option<u16>,
        latency: Duration,
        error: Option<&str>,
    ) {
        let Some(journal) = &self.journal else { return };
        journal.record(EntryRef::Attempt(&AttemptRef {
            broker: self.journal_broker(),
            trigger: self.journal_trigger(),
            id: &event.id,
            source: &event.source,
            at_ms: now_ms(),
            destination,
            status,
            latency_us: micros(latency),
            error,
        }));
    }

    /// Keeps the subscriber's successful attempt for the outcome's entry.
    pub(super) fn journal_success(&self, status: u16, latency: Duration) {
        if self.journal.is_none() {
            return;
        }
        let success = Success {
            status,
            latency_us: micros(latency),
        };
        let _ = SUCCESS.try_with(|s| s.set(Some(success)));
    }

    pub(super) fn journal_outcome(&self, event: &Event, processed: &Processed) {
        let Some(journal) = &self.journal else { return };
        let sink_reason;
        let (outcome, reason, dead_letter) = match processed {
            Processed::Delivered => ("delivered", None, None),
            Processed::DeadLettered(DeadLettered::Sink(url)) => {
                sink_reason = format!("taken by the dead-letter sink {url}");
                ("dead-lettered", Some(sink_reason.as_str()), None)
            }
            Processed::DeadLettered(DeadLettered::Store(id)) => (
                "dead-lettered",
                Some("kept in the dead-letter store"),
                Some(*id),
            ),
            Processed::Interrupted => return,
        };
        let success = SUCCESS.try_with(|s| s.take()).ok().flatten();
        journal.record(EntryRef::Outcome(&OutcomeRef {
            broker: self.journal_broker(),
            trigger: self.journal_trigger(),
            id: &event.id,
            source: &event.source,
            at_ms: now_ms(),
            outcome,
            reason,
            dead_letter,
            last_attempt: success
                .map(|s| (self.runtime.subscriber.as_str(), s.status, s.latency_us)),
            replies: &[],
            replies_to: None,
        }));
    }

    /// The replies a delivery of `original` produced, appended to `to`
    /// (`namespace/name` of a broker or channel of this mesh).
    pub(super) fn journal_replies(&self, original: &Event, replies: &[Event], to: &str) {
        let Some(journal) = &self.journal else { return };
        let at_ms = now_ms();
        journal.record(EntryRef::Outcome(&OutcomeRef {
            broker: self.journal_broker(),
            trigger: self.journal_trigger(),
            id: &original.id,
            source: &original.source,
            at_ms,
            outcome: "replied",
            reason: None,
            dead_letter: None,
            last_attempt: None,
            replies,
            replies_to: Some(Name::parse(to)),
        }));
        let via = format!("reply from {} to {}", self.runtime.key, original.id);
        journal.record(EntryRef::Accepted {
            broker: Name::parse(to),
            via: &via,
            at_ms,
            events: replies,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_success_slot_holds_its_future_once() {
        let work = async {
            let state = [7u8; 4096];
            tokio::task::yield_now().await;
            state.iter().map(|b| u64::from(*b)).sum::<u64>()
        };
        let alone = std::mem::size_of_val(&work);
        let slotted = with_success_slot(work);
        assert!(
            std::mem::size_of_val(&slotted) < alone + 256,
            "{} bytes around a {alone}-byte future",
            std::mem::size_of_val(&slotted)
        );
    }
}
