//! What the pipeline tells the event journal: each attempt (to the subscriber or the
//! dead-letter sink), each outcome, and the replies a delivery produced. Nothing is
//! built unless the trigger's broker journals.

use std::time::Duration;

use std::cell::RefCell;

use cemesh_channels::journal::{AttemptEntry, Entry, LastAttempt, OutcomeEntry, ReplyRef};
use cemesh_proto::Event;

use super::{DeadLettered, Processed, TriggerContext};

tokio::task_local! {
    /// The successful attempt of the event this task is processing, until its
    /// outcome is journaled with it.
    static SUCCESS: RefCell<Option<LastAttempt>>;
}

/// Runs `f` (an event's processing) with a place for its successful attempt.
pub(super) async fn with_success_slot<T>(f: impl std::future::Future<Output = T>) -> T {
    SUCCESS.scope(RefCell::new(None), f).await
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl TriggerContext {
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
        journal.record(Entry::Attempt(Box::new(AttemptEntry {
            broker: self.broker_key(),
            trigger: self.runtime.key.to_string(),
            id: event.id.clone(),
            source: event.source.clone(),
            at_ms: now_ms(),
            destination: destination.to_owned(),
            status,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            error: error.map(str::to_owned),
        })));
    }

    /// Keeps the subscriber's successful attempt for the outcome's entry.
    pub(super) fn journal_success(&self, destination: &str, status: u16, latency: Duration) {
        if self.journal.is_none() {
            return;
        }
        let _ = SUCCESS.try_with(|s| {
            *s.borrow_mut() = Some(LastAttempt {
                destination: destination.to_owned(),
                status,
                latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            });
        });
    }

    pub(super) fn journal_outcome(&self, event: &Event, processed: &Processed) {
        let Some(journal) = &self.journal else { return };
        let (outcome, reason, dead_letter) = match processed {
            Processed::Delivered => ("delivered", None, None),
            Processed::DeadLettered(DeadLettered::Sink(url)) => (
                "dead-lettered",
                Some(format!("taken by the dead-letter sink {url}")),
                None,
            ),
            Processed::DeadLettered(DeadLettered::Store(id)) => (
                "dead-lettered",
                Some("kept in the dead-letter store".to_owned()),
                Some(*id),
            ),
            Processed::Interrupted => return,
        };
        journal.record(Entry::Outcome(Box::new(OutcomeEntry {
            broker: self.broker_key(),
            trigger: self.runtime.key.to_string(),
            id: event.id.clone(),
            source: event.source.clone(),
            at_ms: now_ms(),
            outcome: outcome.to_owned(),
            reason,
            dead_letter,
            replies: Vec::new(),
            last_attempt: SUCCESS.try_with(|s| s.borrow_mut().take()).ok().flatten(),
        })));
    }

    /// The replies a delivery of `original` produced, appended to `to`
    /// (`namespace/name` of a broker or channel of this mesh).
    pub(super) fn journal_replies(&self, original: &Event, replies: &[Event], to: Option<String>) {
        let Some(journal) = &self.journal else { return };
        let refs = replies
            .iter()
            .map(|r| ReplyRef {
                id: r.id.clone(),
                source: r.source.clone(),
                ty: r.ty.clone(),
                broker: to.clone(),
            })
            .collect();
        journal.record(Entry::Outcome(Box::new(OutcomeEntry {
            broker: self.broker_key(),
            trigger: self.runtime.key.to_string(),
            id: original.id.clone(),
            source: original.source.clone(),
            at_ms: now_ms(),
            outcome: "replied".to_owned(),
            reason: None,
            dead_letter: None,
            replies: refs,
            last_attempt: None,
        })));
        if let Some(to) = to {
            let at_ms = now_ms();
            for r in replies {
                journal.record(Entry::Accepted(Box::new(
                    cemesh_channels::journal::Accepted {
                        broker: to.clone(),
                        via: format!("reply from {} to {}", self.runtime.key, original.id),
                        at_ms,
                        event: r.attributes_only(),
                    },
                )));
            }
        }
    }
}
