//! Attempts with retries: each attempt goes to the subscriber (or a leased on-demand
//! instance) or the dead-letter sink; attempts to the subscriber are counted in the
//! trigger's metrics; `retry::RetryState` decides whether and when to try again.
//! Each failed attempt logs at DEBUG; the event's final failure is the one WARN line
//! (`process_inner`, `store`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cemesh_channels::Attempt;
use cemesh_proto::{knative, metric_names as names, Event};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::stats::rounded_ms;
use super::{Sent, Target, TriggerContext};
use crate::breaker::{AfterFailure, Transition};
use crate::delivery::{Failure, Format, Success};
use crate::retry::{RetryAction, RetryState};

impl TriggerContext {
    /// Attempts with retries; returns the 2xx answer, or every attempt and the last
    /// failure.
    pub(super) async fn send(
        &self,
        url: &reqwest::Url,
        target: Target,
        event: &Event,
        format: Format,
        cancel: &CancellationToken,
    ) -> Sent {
        let spec = &self.runtime.delivery;
        let ns = &self.runtime.key.namespace;
        // Each destination says how to prove the sender and whom to trust.
        let auth = match target {
            Target::Subscriber => &self.runtime.auth,
            Target::DeadLetterSink => &self.runtime.dead_letter_auth,
            Target::Reply => match &self.runtime.reply {
                crate::ReplyTo::Url { auth, .. } => auth,
                _ => &self.runtime.auth,
            },
        };
        let subject = match auth.audience.is_none() {
            true => String::new(),
            false => self.runtime.key.to_string(),
        };
        let how = crate::delivery::AttemptSpec {
            namespace: ns,
            format,
            timeout: spec.timeout,
            auth,
            subject: &subject,
            max_answer: spec.max_answer_bytes,
            hide_broker_ttl: target == Target::Subscriber,
        };
        let pool = match &self.runtime.endpoints {
            Some(p) if target == Target::Subscriber => Some(p),
            _ => None,
        };
        let mut attempts: Vec<(Attempt, Failure)> = Vec::new();
        let mut last_latency: Duration;
        let mut retry = RetryState::default();
        let mut wait: Option<Duration> = None;
        loop {
            if let Some(wait) = wait.take() {
                tokio::select! {
                    _ = cancel.cancelled() => return Sent::Interrupted,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            // Only the subscriber has a breaker (and a pause); a probe's leave is
            // reported below.
            if target == Target::Subscriber && !self.pause.wait(cancel).await {
                return Sent::Interrupted;
            }
            let pass = match target {
                Target::Subscriber => match self.breaker.admit(cancel).await {
                    Some(pass) => Some(pass),
                    None => return Sent::Interrupted,
                },
                _ => None,
            };
            // At debug, as the ingress's span (see there).
            let span = tracing::debug_span!(
                "deliver",
                broker = %self.runtime.broker,
                trigger = %self.runtime.key,
                event.id = %event.id,
                to = %url,
                attempt = attempts.len() + 1,
                status = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
            );
            cemesh_proto::trace::continue_from(&span, || match event.extension("traceparent") {
                Some(cemesh_proto::AttributeValue::String(tp)) => Some(tp.as_str()),
                _ => None,
            });
            let started = Instant::now();
            let result = match pool {
                None => {
                    let uri = match target {
                        Target::Subscriber => self.subscriber_uri(),
                        _ => None,
                    };
                    self.deliverer
                        .attempt(url, uri, event, &how, started)
                        .instrument(span.clone())
                        .await
                }
                Some(pool) => match pool.acquire().instrument(span.clone()).await {
                    Ok(lease) => {
                        let target = lease.target(url);
                        let r = self
                            .deliverer
                            .attempt(&target, None, event, &how, started)
                            .instrument(span.clone())
                            .await;
                        drop(lease);
                        r
                    }
                    Err(e) => Err(Failure {
                        status: None,
                        error: format!("no instance of {url}: {e}"),
                        body: Bytes::new(),
                        retry_after: None,
                        connect_failed: true,
                    }),
                },
            };
            let latency = started.elapsed();
            last_latency = latency;
            span.record("latency_ms", rounded_ms(latency));
            if target == Target::Subscriber {
                self.record_attempt(attempts.len() as u32, &result, latency);
            }
            match &result {
                // A subscriber's success is journaled with the outcome, in one entry.
                Ok(s) if target == Target::Subscriber => {
                    self.journal_success(s.status, latency);
                }
                Ok(s) => self.journal_attempt(event, url.as_str(), Some(s.status), latency, None),
                Err(f) => {
                    self.journal_attempt(event, url.as_str(), f.status, latency, Some(&f.error))
                }
            }
            match result {
                Ok(success) => {
                    span.record("status", success.status);
                    if let Some(pass) = pass {
                        self.breaker_moved(pass.succeeded());
                    }
                    return Sent::Ok(success);
                }
                Err(failure) => {
                    if let Some(s) = failure.status {
                        span.record("status", s);
                    }
                    if let Some(pass) = pass {
                        let probe = pass.is_probe();
                        let (after, moved) = pass.failed(failure.status);
                        self.breaker_moved(moved);
                        if after == AfterFailure::Hold {
                            // The breaker holds the event: not an attempt of its own.
                            span.in_scope(|| {
                                tracing::debug!(error = %failure.error, probe, "Delivery attempt failed; the circuit breaker holds the event");
                            });
                            continue;
                        }
                    }
                    let action = retry.after_failure(spec, &failure, Instant::now());
                    let (in_grace, last) = match action {
                        RetryAction::Retry { wait: w, counted } => {
                            wait = Some(w);
                            (!counted, false)
                        }
                        RetryAction::DontRetry(_) => (false, true),
                    };
                    // The span holds the status (when there was a response) and
                    // the latency.
                    span.in_scope(|| {
                        tracing::debug!(
                            error = %failure.error,
                            cold_start_grace = in_grace,
                            final_attempt = last,
                            "Delivery attempt failed"
                        );
                    });
                    // When the attempt began, read from the wall clock only for a
                    // failure (a clock read per delivery otherwise).
                    let at = chrono::Utc::now()
                        - chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
                    attempts.push((
                        Attempt {
                            at: knative::rfc3339(at),
                            status: failure.status,
                            error: failure.error.clone(),
                            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                            to: target,
                            url: url.to_string(),
                        },
                        failure,
                    ));
                    if last {
                        break;
                    }
                }
            }
        }
        let failure = attempts
            .last()
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| Failure {
                status: None,
                error: "no attempt was made".into(),
                body: Bytes::new(),
                retry_after: None,
                connect_failed: false,
            });
        Sent::Failed(
            attempts.into_iter().map(|(a, _)| a).collect(),
            failure,
            last_latency,
        )
    }

    pub(super) fn record_attempt(
        &self,
        k: u32,
        result: &Result<Success, Failure>,
        latency: Duration,
    ) {
        let key = &self.runtime.key;
        let status = match result {
            Ok(s) => Some(s.status),
            Err(f) => f.status,
        };
        let class = names::status_class(status);
        let slot = names::STATUS_CLASSES
            .iter()
            .position(|c| *c == class)
            .unwrap_or(names::STATUS_CLASSES.len() - 1);
        let (count, latencies) = self.metrics.attempts[slot].get_or_init(|| {
            let labels = [
                ("namespace_name", key.namespace.clone()),
                ("broker_name", self.runtime.broker.clone()),
                ("trigger_name", key.name.clone()),
                ("response_code_class", class.to_owned()),
            ];
            (
                metrics::counter!(names::TRIGGER_DISPATCH_ATTEMPTS, &labels),
                metrics::histogram!(names::TRIGGER_DISPATCH_DURATION, &labels),
            )
        });
        count.increment(1);
        latencies.record(latency.as_secs_f64());
        self.stats.latency.record(latency);
        if result.is_err() {
            self.stats.failed_attempts.fetch_add(1, Relaxed);
        }
        if k > 0 {
            self.stats.retries.fetch_add(1, Relaxed);
            self.per_trigger_counter(&self.metrics.retries, names::TRIGGER_RETRIES)
                .increment(1);
        }
    }
}

impl TriggerContext {
    /// Logs and counts a change of the breaker's state.
    fn breaker_moved(&self, moved: Option<Transition>) {
        let Some(moved) = moved else { return };
        let key = &self.runtime.key;
        match moved {
            Transition::Opened => {
                tracing::warn!(trigger = %key, subscriber = %self.runtime.subscriber, "Circuit breaker opened: the subscriber looks down; events are held and probed one at a time");
                self.per_trigger_counter(
                    &self.metrics.breaker_opened,
                    names::TRIGGER_BREAKER_OPENED,
                )
                .increment(1);
            }
            Transition::Closed => {
                tracing::info!(trigger = %key, subscriber = %self.runtime.subscriber, "Circuit breaker closed: a probe got an answer; delivery resumes");
            }
        }
        self.breaker_gauge().set(if moved == Transition::Opened {
            1.0
        } else {
            0.0
        });
    }
}
