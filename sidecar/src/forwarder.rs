//! Forwarding the outbox to the broker: in order per partition key, retried until the
//! broker takes each event, removed from the outbox only after the broker's 202.
//!
//! Why it looks like this:
//! - **Retry forever, except on a refusal.** A 202 from the sidecar promised the event
//!   would reach the mesh, so connection errors, timeouts, 408, 429 and 5xx are
//!   retried with exponential backoff and full jitter (capped by `--backoff-max`),
//!   stretched to the broker's `Retry-After` on 429 and 503. Any other 4xx means the
//!   broker will never take this event (invalid, too large, unknown broker): it goes
//!   to the sidecar's dead letters, where an operator sees and can redrive it.
//! - **Order per partition key, concurrency across keys.** Events with the same
//!   `partitionkey` go one at a time in outbox order (a later one never overtakes an
//!   earlier one that is being retried); events of different keys, and events without
//!   a key, go concurrently. A window of `--max-in-flight` unacknowledged events bounds
//!   memory and the load on the broker; a key stuck behind retries can fill it, which
//!   only happens while the broker fails anyway.
//! - **Ack after the 202.** The outbox commits the contiguous prefix of acks; after a
//!   crash, everything after it is sent again (at-least-once, never lost).
//! - **The delivery client for a plain broker URL.** An `http://` broker (the usual
//!   pod network, no proxy in the environment) is sent to over the dispatcher's own
//!   connection pool ([`PlainPoster`]), which writes the event's headers straight into
//!   the request; reqwest, kept for `https://` (client certificates, `--cacert`,
//!   `--insecure-skip-verify`) and proxies, cost about half of the sidecar's CPU.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cemesh_channels::{Attempt, ChannelError, DeadLetter, DeadLetterStore, Record};
use cemesh_dispatcher::delivery::{parse_retry_after, root_cause};
use cemesh_dispatcher::{DeliverySpec, PlainPoster};
use cemesh_proto::{knative, AttributeValue, Event};
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, DEAD_LETTER_KEY};
use crate::stats::{inc, Stats};

/// Attempts kept in a dead letter's history.
const ATTEMPTS_KEPT: usize = 16;
/// How long in-flight attempts may finish when the sidecar stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The most of a broker's answer body kept (shown in a dead letter).
const MAX_ANSWER: usize = 64 * 1024;

/// What the broker's answer means for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: remove it from the outbox.
    Accepted,
    /// The broker will never take it: dead-letter it.
    Refused,
    /// Try again later.
    Retry,
}

/// Classifies an attempt: 2xx accepted, 4xx other than 408 and 429 refused,
/// everything else retried. Stricter than the dispatcher's `is_retryable` (which
/// retries 404 and 409) because the outbox retries forever: an answer that will not
/// change must not block a partition key.
pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Accepted,
        Some(s @ 400..=499) if !matches!(s, 408 | 429) => Verdict::Refused,
        // No answer, 408, 429, 5xx; and 1xx/3xx, which refuse nothing either.
        _ => Verdict::Retry,
    }
}

/// A failed attempt; `status` is absent when there was no answer.
#[derive(Debug, Clone)]
struct Failure {
    status: Option<u16>,
    error: String,
    body: bytes::Bytes,
    /// The `Retry-After` the broker asked for.
    retry_after: Option<Duration>,
}

/// The wait before retry `k`: the policy's exponential backoff (capped by
/// `--backoff-max`) with full jitter, stretched to the broker's `Retry-After` on 429
/// and 503 (itself capped by `retry_after_max`).
fn wait_before(spec: &DeliverySpec, k: u32, failure: &Failure) -> Duration {
    let mut wait = spec.backoff(k);
    if spec.jitter && !wait.is_zero() {
        wait = wait.mul_f64(fastrand::f64());
    }
    if let (Some(429 | 503), Some(ra)) = (failure.status, failure.retry_after) {
        wait = wait.max(ra.min(spec.retry_after_max));
    }
    wait
}

/// Settings of the forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub broker_url: reqwest::Url,
    /// `Authorization` sent to the broker (the mesh client's `--token`), for the
    /// plain pool; reqwest's client carries it itself.
    pub authorization: Option<HeaderValue>,
    pub max_in_flight: usize,
    pub backoff_delay: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
}

struct Shared {
    outbox: Outbox,
    stats: Arc<Stats>,
    client: reqwest::Client,
    url: reqwest::Url,
    /// The plain pool and the broker's URL as its `Uri`, when the broker is `http://`
    /// and no proxy is named; else `client` sends.
    plain: Option<(PlainPoster, http::Uri)>,
    authorization: Option<HeaderValue>,
    spec: DeliverySpec,
    timeout: Duration,
    stop: CancellationToken,
    /// Events waiting behind the one in flight, per partition key. A key is present
    /// exactly while a worker for it runs.
    queues: Mutex<HashMap<String, VecDeque<(Record, OwnedSemaphorePermit)>>>,
}

impl Shared {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, VecDeque<(Record, OwnedSemaphorePermit)>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the forwarder until `stop` is cancelled; returns when its tasks have ended.
pub async fn run(
    outbox: Outbox,
    stats: Arc<Stats>,
    client: reqwest::Client,
    config: ForwarderConfig,
    stop: CancellationToken,
) {
    let spec = DeliverySpec {
        retry: u32::MAX,
        backoff_delay: config.backoff_delay,
        backoff_max: Some(config.backoff_max),
        jitter: true,
        timeout: config.timeout,
        retry_after_max: config.backoff_max.max(Duration::from_secs(60)),
        ..DeliverySpec::default()
    };
    let plain = match (config.broker_url.scheme(), PlainPoster::unless_proxied()) {
        ("http", Some(poster)) => {
            (config.broker_url.as_str().parse::<http::Uri>().ok()).map(|uri| (poster, uri))
        }
        _ => None,
    };
    let shared = Arc::new(Shared {
        outbox: outbox.clone(),
        stats,
        client,
        url: config.broker_url,
        plain,
        authorization: config.authorization,
        spec,
        timeout: config.timeout,
        stop: stop.clone(),
        queues: Mutex::new(HashMap::new()),
    });
    let window = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let subscription = outbox.subscription();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        // One permit to wait for, then every free one, so a read fills the window.
        let mut permits = tokio::select! {
            p = window.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let free = window.available_permits();
        if free > 0 {
            if let Ok(more) = window.clone().try_acquire_many_owned(free as u32) {
                permits.merge(more);
            }
        }
        let records = tokio::select! {
            r = subscription.next(permits.num_permits()) => r,
            () = stop.cancelled() => break,
        };
        let records = match records {
            Ok(r) => r,
            Err(ChannelError::Closed) => break,
            Err(e) => {
                tracing::error!(error = %e, "Reading the outbox failed; retrying in 1s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        for record in records {
            let Some(permit) = permits.split(1) else {
                // Cannot happen: `next` returns at most as many records as permits.
                break;
            };
            dispatch(&shared, &mut tasks, record, permit);
        }
    }
    // Stopping: give attempts in flight a moment, then abandon them (they stay in the
    // outbox and are sent again at the next start).
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

/// Hands a record to its key's worker (starting one if none runs), or to a task of
/// its own when it has no partition key.
fn dispatch(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    record: Record,
    permit: OwnedSemaphorePermit,
) {
    let key = record
        .event
        .attribute("partitionkey")
        .map(|v| v.to_canonical());
    let Some(key) = key else {
        let shared = shared.clone();
        tasks.spawn(async move {
            forward(&shared, record, permit).await;
        });
        return;
    };
    {
        let mut queues = shared.queues();
        if let Some(queue) = queues.get_mut(&key) {
            queue.push_back((record, permit));
            return;
        }
        queues.insert(key.clone(), VecDeque::new());
    }
    let shared = shared.clone();
    tasks.spawn(async move {
        let mut next = Some((record, permit));
        while let Some((record, permit)) = next.take() {
            if !forward(&shared, record, permit).await {
                // Stopping: the rest of this key stays in the outbox, in order.
                shared.queues().remove(&key);
                return;
            }
            let mut queues = shared.queues();
            next = queues.get_mut(&key).and_then(VecDeque::pop_front);
            if next.is_none() {
                queues.remove(&key);
            }
        }
    });
}

/// Sends one event until the broker takes or refuses it. Returns false when the
/// sidecar stops first (the event stays in the outbox).
async fn forward(shared: &Shared, record: Record, permit: OwnedSemaphorePermit) -> bool {
    let _permit = permit;
    let event = &record.event;
    let mut attempts: VecDeque<Attempt> = VecDeque::new();
    let mut k = 0u32;
    loop {
        if shared.stop.is_cancelled() {
            return false;
        }
        k = k.saturating_add(1);
        let at = knative::now_rfc3339();
        let started = Instant::now();
        let result = attempt(shared, event).await;
        let failure = match result {
            Ok(()) => {
                inc(&shared.stats.forwarded);
                ack(shared, &record);
                if k > 1 {
                    tracing::info!(event.id = %event.id, attempts = k, "Forwarded after retries");
                }
                return true;
            }
            Err(f) => f,
        };
        inc(&shared.stats.forward_failures);
        if attempts.len() == ATTEMPTS_KEPT {
            attempts.pop_front();
        }
        attempts.push_back(Attempt {
            at,
            status: failure.status,
            error: failure.error.clone(),
            latency_ms: started.elapsed().as_millis() as u64,
            to: cemesh_channels::AttemptTarget::Subscriber,
            url: String::new(),
        });
        if verdict(failure.status) == Verdict::Refused {
            if dead_letter(shared, event, &failure, attempts.iter().cloned().collect()).await {
                ack(shared, &record);
                return true;
            }
        } else if k == 1 {
            tracing::warn!(event.id = %event.id, error = %failure.error, "Forwarding to the broker failed; retrying");
        } else {
            tracing::debug!(event.id = %event.id, attempt = k, error = %failure.error, "Forwarding failed again");
        }
        let wait = wait_before(&shared.spec, k.min(32), &failure);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop.cancelled() => return false,
        }
    }
}

/// One POST of the event to the broker in binary mode, with its trace context as
/// headers. A 2xx is success; anything else a [`Failure`] carrying the status, the
/// body and the `Retry-After` asked for.
async fn attempt(shared: &Shared, event: &Event) -> Result<(), Failure> {
    let mut headers = HeaderMap::with_capacity(12);
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = event.attribute(name).and_then(|v| v.as_str()) {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
    let failure = |error: String| Failure {
        status: None,
        error,
        body: bytes::Bytes::new(),
        retry_after: None,
    };
    let retry_after = |headers: &HeaderMap| {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
    };
    let (status, retry_after, body) = match &shared.plain {
        Some((poster, uri)) => {
            if let Some(auth) = &shared.authorization {
                headers.insert(http::header::AUTHORIZATION, auth.clone());
            }
            // The pool writes the event's binary-mode headers itself.
            let answer = poster
                .post_binary(uri, event, &headers, shared.timeout, MAX_ANSWER)
                .await
                .map_err(failure)?;
            (answer.status, retry_after(&answer.headers), answer.body)
        }
        None => {
            let body = cemesh_proto::http::encode_binary(event, &mut headers).unwrap_or_default();
            let resp = shared
                .client
                .post(shared.url.clone())
                .headers(headers)
                .body(body)
                .timeout(shared.timeout)
                .send()
                .await
                .map_err(|e| failure(describe(&e, shared.timeout)))?;
            let status = resp.status().as_u16();
            let retry_after = retry_after(resp.headers());
            // Read the whole body, so the connection goes back to the pool.
            let body = resp
                .bytes()
                .await
                .map_err(|e| failure(describe(&e, shared.timeout)))?;
            (status, retry_after, body)
        }
    };
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(Failure {
        status: Some(status),
        error: format!("{} answered {status}", shared.url),
        body,
        retry_after,
    })
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within the {timeout:?} timeout");
    }
    let cause = root_cause(e);
    if e.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

fn ack(shared: &Shared, record: &Record) {
    if let Err(e) = shared.outbox.subscription().ack(record.position) {
        // The event was delivered; a lost ack only means it is sent again later.
        tracing::warn!(position = %record.position, error = %e, "Acknowledging in the outbox failed");
    }
}

/// Stores a refused event in the dead letters; false if that failed (the event is
/// then retried, so it is never dropped).
async fn dead_letter(
    shared: &Shared,
    event: &Event,
    failure: &Failure,
    attempts: Vec<Attempt>,
) -> bool {
    let mut event = event.clone();
    event.set_extension(
        knative::ERROR_DEST,
        AttributeValue::String(shared.url.to_string()),
    );
    if let Some(code) = failure.status {
        event.set_extension(
            knative::ERROR_CODE,
            AttributeValue::String(code.to_string()),
        );
    }
    if !failure.body.is_empty() {
        let kept = &failure.body[..failure.body.len().min(knative::ERROR_DATA_MAX)];
        event.set_extension(
            knative::ERROR_DATA,
            AttributeValue::String(base64::engine::general_purpose::STANDARD.encode(kept)),
        );
    }
    let body = String::from_utf8_lossy(&failure.body[..failure.body.len().min(512)]).into_owned();
    let reason = if body.trim().is_empty() {
        format!("the broker refused the event: {}", failure.error)
    } else {
        format!(
            "the broker refused the event: {}: {}",
            failure.error,
            body.trim()
        )
    };
    let id = event.id.clone();
    let letter = DeadLetter {
        id: 0,
        trigger: DEAD_LETTER_KEY.to_owned(),
        event,
        reason: reason.clone(),
        attempts,
        dead_at: knative::now_rfc3339(),
    };
    match shared.outbox.dead_letters().put(letter).await {
        Ok(letter_id) => {
            shared.stats.dead_lettered.fetch_add(1, Relaxed);
            tracing::warn!(event.id = %id, dead_letter = letter_id, %reason, "Event dead-lettered");
            true
        }
        Err(e) => {
            tracing::error!(event.id = %id, error = %e, "Storing a dead letter failed; the event stays in the outbox");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_back_off_and_honour_retry_after() {
        let spec = DeliverySpec {
            backoff_delay: Duration::from_millis(100),
            backoff_max: Some(Duration::from_secs(1)),
            jitter: false,
            retry_after_max: Duration::from_secs(60),
            ..DeliverySpec::default()
        };
        let f = |status, ra: Option<u64>| Failure {
            status,
            error: String::new(),
            body: bytes::Bytes::new(),
            retry_after: ra.map(Duration::from_secs),
        };
        assert_eq!(
            wait_before(&spec, 1, &f(None, None)),
            Duration::from_millis(100)
        );
        assert_eq!(
            wait_before(&spec, 3, &f(Some(500), None)),
            Duration::from_millis(400)
        );
        assert_eq!(
            wait_before(&spec, 30, &f(None, None)),
            Duration::from_secs(1)
        );
        assert_eq!(
            wait_before(&spec, 1, &f(Some(503), Some(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            wait_before(&spec, 1, &f(Some(500), Some(5))),
            Duration::from_millis(100)
        );
        let jittered = DeliverySpec {
            jitter: true,
            ..spec
        };
        assert!(wait_before(&jittered, 4, &f(None, None)) <= Duration::from_millis(800));
    }

    #[test]
    fn verdicts() {
        for s in [200, 201, 202, 204] {
            assert_eq!(verdict(Some(s)), Verdict::Accepted, "{s}");
        }
        for s in [400, 401, 403, 404, 405, 409, 413, 415, 422] {
            assert_eq!(verdict(Some(s)), Verdict::Refused, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(verdict(Some(s)), Verdict::Retry, "{s}");
        }
        assert_eq!(verdict(None), Verdict::Retry);
        assert_eq!(verdict(Some(302)), Verdict::Retry);
    }
}
