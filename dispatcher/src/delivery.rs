//! How one event reaches one HTTP destination: the resolved delivery policy
//! ([`DeliverySpec`]), the wait before each retry ([`DeliverySpec::wait_before`]) and a
//! single attempt ([`Deliverer::attempt`]). Retry loops, dead letters and replies are
//! composed from these in [`crate::pipeline`].

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cemesh_proto::Event;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};

/// How retries are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackoffPolicy {
    /// Wait before retry k is `delay · 2^(k−1)`.
    #[default]
    Exponential,
    /// Wait before retry k is `delay · k`.
    Linear,
}

/// How events are written to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `ce-*` headers and the data as the body.
    #[default]
    Binary,
    /// `application/cloudevents+json`.
    Structured,
    /// `application/cloudevents+protobuf` (annotation
    /// `cemesh.dev/delivery-format: protobuf`).
    Protobuf,
}

/// Order in which a trigger's events are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Up to `parallelism` at once, in any order.
    #[default]
    Unordered,
    /// Events with the same `partitionkey` one at a time, in channel order.
    PerPartitionKey,
}

/// Knative's `spec.delivery` resolved (the broker's defaults merged in field by
/// field), plus cemesh's own controls from annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySpec {
    /// Extra attempts after the first.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    /// Cap on any single backoff wait (`cemesh.dev/backoff-max`).
    pub backoff_max: Option<Duration>,
    /// Full jitter: each wait is drawn uniformly from `[0, wait]`.
    pub jitter: bool,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// Cap on an honoured `Retry-After` (429 and 503); zero ignores the header.
    pub retry_after_max: Duration,
    pub format: Format,
    /// Where events go once retries are exhausted; `None`: the built-in store.
    pub dead_letter_sink: Option<reqwest::Url>,
    pub ordering: Ordering,
    /// First attempts per second at most (`cemesh.dev/max-rate`).
    pub max_rate: Option<f64>,
    /// While a subscriber starts from zero, connection refused, 502, 503 and 504 are
    /// retried for this long without counting as attempts
    /// (`cemesh.dev/cold-start-grace`).
    pub cold_start_grace: Option<Duration>,
    /// The subscriber's circuit breaker (`cemesh.dev/breaker-*`).
    pub breaker: crate::breaker::BreakerSpec,
    /// The largest answer body read: the broker's (or channel's) own body limit,
    /// `cemesh.dev/max-body-size`, so a reply is held to what its ingress takes.
    pub max_answer_bytes: usize,
}

impl Default for DeliverySpec {
    /// Knative's broker defaults: retry 10, exponential from 0.2 s, one minute per
    /// attempt; `Retry-After` honoured up to a minute.
    fn default() -> Self {
        DeliverySpec {
            retry: 10,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::from_millis(200),
            backoff_max: None,
            jitter: true,
            timeout: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(60),
            format: Format::Binary,
            dead_letter_sink: None,
            ordering: Ordering::Unordered,
            max_rate: None,
            cold_start_grace: None,
            breaker: crate::breaker::BreakerSpec::default(),
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// [`DeliverySpec::max_answer_bytes`] when nothing sets it: the ingress's default
/// body limit.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 1 << 20;

impl DeliverySpec {
    /// The backoff before retry `k` (1-based), before jitter and `Retry-After`.
    pub fn backoff(&self, k: u32) -> Duration {
        let d = self.backoff_delay;
        let wait = match self.backoff_policy {
            BackoffPolicy::Exponential => 2u32
                .checked_pow(k.saturating_sub(1))
                .and_then(|factor| d.checked_mul(factor))
                .unwrap_or(Duration::MAX),
            BackoffPolicy::Linear => d.checked_mul(k).unwrap_or(Duration::MAX),
        };
        match self.backoff_max {
            Some(max) => wait.min(max),
            None => wait,
        }
    }

    /// The wait before retry `k` after `failure`: the (jittered) backoff, stretched
    /// to an honoured `Retry-After` on 429 and 503:
    /// `max(backoff, min(Retry-After, retryAfterMax))`.
    pub fn wait_before(&self, k: u32, failure: &Failure) -> Duration {
        let mut wait = self.backoff(k);
        if self.jitter && !wait.is_zero() {
            wait = wait.mul_f64(fastrand::f64());
        }
        if let (Some(429 | 503), Some(ra)) = (failure.status, failure.retry_after) {
            if !self.retry_after_max.is_zero() {
                wait = wait.max(ra.min(self.retry_after_max));
            }
        }
        wait
    }
}

/// Whether a failure may succeed on another attempt: no response, 404, 408, 409,
/// 429 and 5xx.
pub fn is_retryable(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(s) => matches!(s, 404 | 408 | 409 | 429) || (500..600).contains(&s),
    }
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Success {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body was longer than the attempt's `max_answer` and was not kept
    /// (`body` is empty).
    pub body_over_limit: bool,
}

/// A failed attempt; `status` is absent when there was no response.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: Option<u16>,
    pub error: String,
    pub body: Bytes,
    /// The `Retry-After` the destination asked for.
    pub retry_after: Option<Duration>,
    /// No connection could be made (refused, unreachable, no instance).
    pub connect_failed: bool,
}

impl Failure {
    /// What a subscriber starting from zero answers: connection refused, 502, 503,
    /// 504.
    pub fn looks_cold(&self) -> bool {
        self.connect_failed || matches!(self.status, Some(502..=504))
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date. Unparseable values are
/// ignored, as Knative does.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at = SystemTime::from(at.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How one attempt is sent: everything but the destination and the event.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpec<'a> {
    /// Sent as `Kn-Namespace`.
    pub namespace: &'a str,
    pub format: Format,
    /// Time allowed for the whole exchange.
    pub timeout: Duration,
    pub auth: &'a crate::signing::DeliveryAuth,
    /// The JWT's subject, when `auth` has an audience.
    pub subject: &'a str,
    /// The longest answer body kept ([`DeliverySpec::max_answer_bytes`]).
    pub max_answer: usize,
    /// Leave out `knativebrokerttl`: a broker's hop count is not the subscriber's
    /// to see (Knative strips it too), only a reply's.
    pub hide_broker_ttl: bool,
}

/// `event` without `knativebrokerttl`: what a subscriber or a dead-letter sink is
/// given.
pub fn without_broker_ttl(event: &Event) -> Event {
    let mut e = event.clone();
    e.remove_extension(cemesh_proto::knative::BROKER_TTL);
    e
}

/// Sends events over a shared pool of keep-alive connections.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: crate::client::HttpClient,
    /// The CA certificates every client trusts besides the system's (DER).
    roots: std::sync::Arc<Vec<Vec<u8>>>,
    /// A client per destination `CACerts` bundle, built at its first use.
    with_ca: std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<crate::signing::CaCerts, crate::client::HttpClient>,
        >,
    >,
    /// Mints the JWTs of deliveries with an audience.
    tokens: Option<std::sync::Arc<dyn crate::signing::TokenSource>>,
}

impl Default for Deliverer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deliverer {
    pub fn new() -> Self {
        Self::trusting(&[])
    }

    /// A deliverer that also trusts these CA certificates (DER) besides the system's:
    /// the issuers of this process's own TLS certificate, so deliveries to its own
    /// ingress (a subscriber that is a Broker) verify.
    pub fn trusting(roots: &[Vec<u8>]) -> Self {
        Deliverer {
            client: crate::client::HttpClient::new(roots, None),
            roots: std::sync::Arc::new(roots.to_vec()),
            with_ca: std::sync::Arc::default(),
            tokens: None,
        }
    }

    /// The client for a destination: the shared one, or one that also trusts the
    /// destination's `CACerts`.
    fn client_for(&self, ca: Option<&crate::signing::CaCerts>) -> crate::client::HttpClient {
        let Some(ca) = ca else {
            return self.client.clone();
        };
        let mut clients = self.with_ca.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(ca.clone())
            .or_insert_with(|| crate::client::HttpClient::new(&self.roots, Some(ca)))
            .clone()
    }

    /// Deliveries to a destination with an audience carry a JWT from `tokens`.
    pub fn with_tokens(mut self, tokens: std::sync::Arc<dyn crate::signing::TokenSource>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// One POST of `event` to `url`, with Knative's headers (`Prefer: reply`,
    /// `Kn-Namespace`, the event's `traceparent`) and what `how.auth` asks for (a JWT
    /// whose subject is `how.subject`, a webhook signature). `uri` is `url` already
    /// parsed, when the caller keeps it (a trigger parses its subscriber's once).
    /// `started`: when the caller began timing the attempt (for a failure's message).
    pub async fn attempt(
        &self,
        url: &reqwest::Url,
        uri: Option<&http::Uri>,
        event: &Event,
        how: &AttemptSpec<'_>,
        started: Instant,
    ) -> Result<Success, Failure> {
        let AttemptSpec {
            namespace,
            format,
            timeout,
            auth,
            subject,
            max_answer,
            hide_broker_ttl,
        } = *how;
        // Empty (unallocated) unless the format, the trace or a signature adds to it.
        let mut headers = HeaderMap::new();
        let stripped;
        let event = match (hide_broker_ttl, format) {
            // The attribute is left out of the encoding instead: no copy of the event.
            (_, Format::Binary) | (false, _) => event,
            (true, _) => {
                stripped = without_broker_ttl(event);
                &stripped
            }
        };
        // Binary mode: the client writes the event's headers (a plain connection
        // straight into the request, the others through a header map).
        let mut binary = None;
        let body = match format {
            Format::Binary => {
                let skip = hide_broker_ttl.then_some(cemesh_proto::knative::BROKER_TTL);
                binary = Some((event, skip));
                event.data.clone().unwrap_or_default()
            }
            Format::Structured => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(cemesh_proto::http::STRUCTURED_JSON),
                );
                Bytes::from(cemesh_proto::json::encode_event(event))
            }
            Format::Protobuf => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(cemesh_proto::http::STRUCTURED_PROTOBUF),
                );
                Bytes::from(cemesh_proto::protobuf::encode_event(event))
            }
        };
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = event.attribute(name).and_then(|v| v.as_str()) {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            }
        }
        if !auth.is_none() {
            crate::signing::sign(
                auth,
                self.tokens.as_deref(),
                subject,
                &event.id,
                &body,
                &mut headers,
            );
        }
        let knative = crate::client::KnativeHeaders { namespace };
        let answer = self
            .client_for(auth.ca_certs.as_ref())
            .post(
                url, uri, binary, knative, headers, body, timeout, max_answer,
            )
            .await;
        let crate::client::Answer {
            status,
            headers,
            body,
            over_limit,
        } = match answer {
            Ok(answer) => answer,
            Err(e) => {
                return Err(Failure {
                    status: None,
                    error: e.describe(timeout, started),
                    body: Bytes::new(),
                    retry_after: None,
                    connect_failed: matches!(e, crate::client::SendError::Connect(_)),
                })
            }
        };
        if (200..300).contains(&status) {
            Ok(Success {
                status,
                headers,
                body,
                body_over_limit: over_limit,
            })
        } else {
            let retry_after = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            Err(Failure {
                status: Some(status),
                error: format!("{url} answered {status}"),
                body,
                retry_after,
                connect_failed: false,
            })
        }
    }
}

pub use crate::client::root_cause;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: BackoffPolicy, delay_ms: u64) -> DeliverySpec {
        DeliverySpec {
            backoff_policy: policy,
            backoff_delay: Duration::from_millis(delay_ms),
            jitter: false,
            ..DeliverySpec::default()
        }
    }

    fn failure(status: u16, retry_after: Option<u64>) -> Failure {
        Failure {
            status: Some(status),
            error: String::new(),
            body: Bytes::new(),
            retry_after: retry_after.map(Duration::from_secs),
            connect_failed: false,
        }
    }

    #[test]
    fn exponential_doubles_from_the_delay() {
        let s = spec(BackoffPolicy::Exponential, 200);
        let waits: Vec<u128> = (1..=4).map(|k| s.backoff(k).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600]);
        // Huge retry counts saturate instead of overflowing.
        assert_eq!(s.backoff(200), Duration::MAX);
    }

    #[test]
    fn linear_grows_by_the_delay() {
        let s = spec(BackoffPolicy::Linear, 150);
        let waits: Vec<u128> = (1..=4).map(|k| s.backoff(k).as_millis()).collect();
        assert_eq!(waits, [150, 300, 450, 600]);
    }

    #[test]
    fn backoff_max_caps_each_wait() {
        let s = DeliverySpec {
            backoff_max: Some(Duration::from_millis(500)),
            ..spec(BackoffPolicy::Exponential, 200)
        };
        assert_eq!(s.backoff(2), Duration::from_millis(400));
        assert_eq!(s.backoff(3), Duration::from_millis(500));
    }

    #[test]
    fn full_jitter_stays_within_the_backoff() {
        let s = DeliverySpec {
            jitter: true,
            ..spec(BackoffPolicy::Exponential, 1000)
        };
        let f = failure(500, None);
        let waits: Vec<Duration> = (0..200).map(|_| s.wait_before(1, &f)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
        assert!(
            waits.iter().any(|w| *w < Duration::from_millis(900)),
            "no jitter"
        );
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_and_capped() {
        let s = DeliverySpec {
            retry_after_max: Duration::from_secs(5),
            ..spec(BackoffPolicy::Exponential, 100)
        };
        assert_eq!(
            s.wait_before(1, &failure(429, Some(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            s.wait_before(1, &failure(503, Some(60))),
            Duration::from_secs(5)
        );
        // Only 429 and 503; and never shorter than the backoff.
        assert_eq!(
            s.wait_before(1, &failure(500, Some(2))),
            Duration::from_millis(100)
        );
        let long = spec(BackoffPolicy::Linear, 3000);
        let s = DeliverySpec {
            retry_after_max: Duration::from_secs(5),
            ..long
        };
        assert_eq!(
            s.wait_before(1, &failure(429, Some(1))),
            Duration::from_secs(3)
        );
        // PT0S turns the header off.
        let off = DeliverySpec {
            retry_after_max: Duration::ZERO,
            ..spec(BackoffPolicy::Linear, 100)
        };
        assert_eq!(
            off.wait_before(1, &failure(429, Some(9))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retryable_statuses() {
        for s in [404, 408, 409, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(Some(s)), "{s}");
        }
        for s in [100, 301, 400, 401, 403, 405, 410, 413, 415, 422] {
            assert!(!is_retryable(Some(s)), "{s}");
        }
        assert!(is_retryable(None));
    }
}
