//! The end of a failed delivery: Knative's `knativeerror*` extensions, and the
//! built-in dead-letter store when there is no sink or the sink failed too.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use base64::Engine as _;
use cemesh_channels::{Attempt, DeadLetter};
use cemesh_proto::{knative, metric_names as names, AttributeValue, Event};
use tokio_util::sync::CancellationToken;

use super::{Processed, TriggerContext};
use crate::delivery::Failure;

impl TriggerContext {
    /// Puts a dead letter in the built-in store, retrying a failing store until it
    /// works or shutdown interrupts.
    /// Logs the one WARN line of an event that finally failed (with the last
    /// attempt's status and `latency`, when there were attempts).
    pub(super) async fn store(
        &self,
        event: Event,
        reason: String,
        attempts: Vec<Attempt>,
        latency: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Processed {
        let letter = DeadLetter {
            id: 0,
            trigger: self.runtime.key.to_string(),
            event,
            reason,
            attempts,
            dead_at: knative::now_rfc3339(),
        };
        let mut wait = Duration::from_millis(100);
        loop {
            match self.dead_letters.put(letter.clone()).await {
                Ok(id) => {
                    tracing::warn!(
                        broker = %self.runtime.broker,
                        trigger = %self.runtime.key,
                        event.id = %letter.event.id,
                        attempts = letter.attempts.len(),
                        status = letter.attempts.last().and_then(|a| a.status),
                        latency_ms = latency.map(super::stats::rounded_ms),
                        dead_letter = id,
                        reason = %letter.reason,
                        "Event stored in the dead letters"
                    );
                    self.count_dead_letter(super::stats::Destination::Store);
                    return Processed::DeadLettered(super::DeadLettered::Store(id));
                }
                Err(e) => {
                    tracing::error!(trigger = %self.runtime.key, error = %e, "Storing a dead letter failed; retrying");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Processed::Interrupted,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
}

impl TriggerContext {
    /// Moves an event the trigger fell too far behind on to the built-in store, with
    /// the reason `backlog-overflow` (redrivable like any dead letter). Attempts in
    /// flight for it were abandoned; the subscriber may have received it.
    pub async fn overflow(&self, event: &Event, cancel: &CancellationToken) -> Processed {
        let mut letter = event.clone();
        letter.remove_extension(knative::BROKER_TTL);
        letter.set_extension(
            knative::ERROR_DEST,
            AttributeValue::String(self.runtime.subscriber.to_string()),
        );
        let reason = format!(
            "{BACKLOG_OVERFLOW}: the trigger fell more than its max-lag ({}) behind",
            self.runtime.max_lag
        );
        let processed = self.store(letter, reason, Vec::new(), None, cancel).await;
        if matches!(processed, Processed::DeadLettered(_)) {
            self.stats.overflowed.fetch_add(1, Relaxed);
            self.per_trigger_counter(&self.metrics.overflowed, names::TRIGGER_BACKLOG_OVERFLOW)
                .increment(1);
        }
        processed
    }
}

/// How a dead letter's reason starts when `cemesh.dev/max-lag` moved it there.
pub const BACKLOG_OVERFLOW: &str = "backlog-overflow";

/// Adds Knative's `knativeerror*` extensions describing `failure` at `dest`.
pub(super) fn knative_error(event: &mut Event, dest: &str, failure: &Failure) {
    event.set_extension(knative::ERROR_DEST, AttributeValue::String(dest.to_owned()));
    match failure.status {
        Some(code) => event.set_extension(
            knative::ERROR_CODE,
            AttributeValue::String(code.to_string()),
        ),
        None => {
            event.remove_extension(knative::ERROR_CODE);
        }
    }
    if failure.body.is_empty() {
        event.remove_extension(knative::ERROR_DATA);
    } else {
        let kept = &failure.body[..failure.body.len().min(knative::ERROR_DATA_MAX)];
        event.set_extension(
            knative::ERROR_DATA,
            AttributeValue::String(base64::engine::general_purpose::STANDARD.encode(kept)),
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn error_extensions_keep_at_most_1_kib_of_body() {
        let mut e = Event::new("1", "/s", "t");
        let failure = Failure {
            status: Some(500),
            error: "boom".into(),
            body: Bytes::from(vec![b'x'; 2048]),
            retry_after: None,
            connect_failed: false,
        };
        knative_error(&mut e, "http://127.0.0.1:1/", &failure);
        let data = e.extension(knative::ERROR_DATA).expect("data");
        let AttributeValue::String(b64) = data else {
            panic!("not a string")
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(raw.len(), 1024);
        assert!(
            matches!(e.extension(knative::ERROR_CODE), Some(AttributeValue::String(s)) if s == "500")
        );

        let no_response = Failure {
            status: None,
            error: "refused".into(),
            body: Bytes::new(),
            retry_after: None,
            connect_failed: true,
        };
        knative_error(&mut e, "http://127.0.0.1:1/", &no_response);
        assert!(e.extension(knative::ERROR_CODE).is_none());
        assert!(e.extension(knative::ERROR_DATA).is_none());
    }
}
