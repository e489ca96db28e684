//! The retry decision after a failed delivery attempt, as one pure step: from the
//! failure, the trigger's policy and what happened before, either "retry after this
//! wait" or "give up, because…". Knative's rules (retry on no response, 404, 408,
//! 409, 429 and 5xx; `retry` extra attempts; exponential or linear backoff;
//! `Retry-After` honoured up to `retryAfterMax`) plus cemesh's cold-start grace live
//! here and nowhere else, so the delivery loop only carries the decision out.

use std::time::{Duration, Instant};

use crate::delivery::{is_retryable, DeliverySpec, Failure};

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Attempt again after `wait`. `counted` is false for a cold-start failure
    /// inside `cemesh.dev/cold-start-grace`, which does not use up a retry.
    Retry { wait: Duration, counted: bool },
    /// Stop: the event goes to the dead letters.
    DontRetry(GiveUp),
}

/// Why a delivery gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The answer cannot change on another attempt (e.g. 400, 401, 413).
    NotRetryable,
    /// `retry` extra attempts were made.
    Exhausted,
}

/// The retry bookkeeping of one event's delivery to one destination.
#[derive(Debug, Default)]
pub struct RetryState {
    /// Failed attempts counted against `retry`.
    counted: u32,
    /// When the first cold-start-looking failure happened.
    cold_since: Option<Instant>,
}

impl RetryState {
    /// Decides after `failure` (which happened at `now`).
    pub fn after_failure(
        &mut self,
        spec: &DeliverySpec,
        failure: &Failure,
        now: Instant,
    ) -> RetryAction {
        let in_grace = match (spec.cold_start_grace, failure.looks_cold()) {
            (Some(grace), true) => {
                let since = *self.cold_since.get_or_insert(now);
                now.saturating_duration_since(since) < grace
            }
            _ => false,
        };
        if !in_grace {
            self.counted += 1;
        }
        if !is_retryable(failure.status) {
            return RetryAction::DontRetry(GiveUp::NotRetryable);
        }
        if self.counted > spec.retry {
            return RetryAction::DontRetry(GiveUp::Exhausted);
        }
        RetryAction::Retry {
            wait: spec.wait_before(self.counted.max(1), failure),
            counted: !in_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::delivery::BackoffPolicy;

    fn spec(retry: u32) -> DeliverySpec {
        DeliverySpec {
            retry,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::from_millis(200),
            jitter: false,
            ..DeliverySpec::default()
        }
    }

    fn failure(status: Option<u16>) -> Failure {
        Failure {
            status,
            error: "x".into(),
            body: Bytes::new(),
            retry_after: None,
            connect_failed: status.is_none(),
        }
    }

    fn retry(wait_ms: u64) -> RetryAction {
        RetryAction::Retry {
            wait: Duration::from_millis(wait_ms),
            counted: true,
        }
    }

    #[test]
    fn final_statuses_give_up_at_once_and_the_others_retry() {
        let now = Instant::now();
        for status in [400, 401, 403, 405, 410, 413, 415, 422, 301, 100] {
            let action = RetryState::default().after_failure(&spec(3), &failure(Some(status)), now);
            assert_eq!(
                action,
                RetryAction::DontRetry(GiveUp::NotRetryable),
                "{status}"
            );
        }
        for status in [
            None,
            Some(404),
            Some(408),
            Some(409),
            Some(429),
            Some(500),
            Some(503),
            Some(599),
        ] {
            let action = RetryState::default().after_failure(&spec(3), &failure(status), now);
            assert_eq!(action, retry(200), "{status:?}");
        }
    }

    #[test]
    fn retry_counts_extra_attempts_with_exponential_and_linear_waits() {
        let now = Instant::now();
        let mut s = RetryState::default();
        let f = failure(Some(500));
        assert_eq!(s.after_failure(&spec(3), &f, now), retry(200));
        assert_eq!(s.after_failure(&spec(3), &f, now), retry(400));
        assert_eq!(s.after_failure(&spec(3), &f, now), retry(800));
        assert_eq!(
            s.after_failure(&spec(3), &f, now),
            RetryAction::DontRetry(GiveUp::Exhausted)
        );
        let linear = DeliverySpec {
            backoff_policy: BackoffPolicy::Linear,
            ..spec(3)
        };
        let mut s = RetryState::default();
        let waits: Vec<_> = (0..3).map(|_| s.after_failure(&linear, &f, now)).collect();
        assert_eq!(waits, [retry(200), retry(400), retry(600)]);
        assert_eq!(
            RetryState::default().after_failure(&spec(0), &f, now),
            RetryAction::DontRetry(GiveUp::Exhausted)
        );
    }

    #[test]
    fn retry_after_stretches_the_wait_up_to_retry_after_max() {
        let now = Instant::now();
        let mut f = failure(Some(429));
        f.retry_after = Some(Duration::from_secs(5));
        let s = spec(3);
        assert_eq!(
            RetryState::default().after_failure(&s, &f, now),
            retry(5000)
        );
        let capped = DeliverySpec {
            retry_after_max: Duration::from_secs(2),
            ..spec(3)
        };
        assert_eq!(
            RetryState::default().after_failure(&capped, &f, now),
            retry(2000)
        );
        let ignored = DeliverySpec {
            retry_after_max: Duration::ZERO,
            ..spec(3)
        };
        assert_eq!(
            RetryState::default().after_failure(&ignored, &f, now),
            retry(200)
        );
        // Only 429 and 503 carry a Retry-After that counts.
        f.status = Some(500);
        assert_eq!(RetryState::default().after_failure(&s, &f, now), retry(200));
    }

    #[test]
    fn cold_start_failures_inside_the_grace_do_not_count() {
        let start = Instant::now();
        let s = DeliverySpec {
            cold_start_grace: Some(Duration::from_secs(10)),
            ..spec(1)
        };
        let mut state = RetryState::default();
        let refused = failure(None);
        for secs in [0, 3, 9] {
            let action = state.after_failure(&s, &refused, start + Duration::from_secs(secs));
            assert_eq!(
                action,
                RetryAction::Retry {
                    wait: Duration::from_millis(200),
                    counted: false
                },
                "{secs}s"
            );
        }
        // Past the grace the failures count: retry 1 is allowed, then it is over.
        let late = start + Duration::from_secs(11);
        assert_eq!(state.after_failure(&s, &refused, late), retry(200));
        assert_eq!(
            state.after_failure(&s, &refused, late),
            RetryAction::DontRetry(GiveUp::Exhausted)
        );
        // A failure that does not look cold always counts.
        let mut state = RetryState::default();
        assert_eq!(
            state.after_failure(&s, &failure(Some(500)), start),
            retry(200)
        );
        assert_eq!(
            state.after_failure(&s, &failure(Some(500)), start),
            RetryAction::DontRetry(GiveUp::Exhausted)
        );
    }
}
