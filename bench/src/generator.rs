//! The load generator: N workers, each with its own HTTP/1.1 keep-alive connection
//! (hyper's bare client connection: no pool, no per-request lookup), POSTing
//! binary-mode CloudEvents one after the other, as fast as the target answers or on a
//! fixed global schedule.
//!
//! Sequence numbers come from one counter, so the events of a run are exactly
//! `0..sent` whatever the interleaving; the ids carry the run's tag so the sink can
//! tell runs apart. At a fixed rate, event `n` is due at `start + n / rate`, and its
//! timestamp is that due time, not the moment it left: when the system falls behind,
//! the waiting counts as latency instead of being hidden (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::bitset::Bitset;
use crate::{event_matches, MATCH_HEADER, TS_HEADER};

/// The first wait before an event refused with 429 is sent again; it doubles up to
/// [`THROTTLE_MAX_WAIT`].
const THROTTLE_FIRST_WAIT: Duration = Duration::from_millis(10);
const THROTTLE_MAX_WAIT: Duration = Duration::from_millis(250);

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// The ingress's socket address and the request's authority and path.
    pub addr: SocketAddr,
    pub authority: String,
    pub path: http::Uri,
    /// https to the ingress.
    pub tls: Option<crate::tls::Secure>,
    /// Sent as `Authorization` with every event.
    pub authorization: Option<HeaderValue>,
    pub connections: usize,
    pub max_events: u64,
    pub duration: Duration,
    /// Events per second over all connections; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// The events' data: opaque bytes, or JSON (`payload` says which).
    pub payload: Payload,
    pub match_ratio: f64,
    pub run_id: String,
    /// The clock the sink measures latency against.
    pub base: Instant,
    /// Live counts for whoever watches a long run (the soak's sampler).
    pub progress: Option<Arc<Progress>>,
}

/// What every event carries as data.
#[derive(Debug, Clone)]
pub struct Payload {
    pub bytes: Bytes,
    pub content_type: HeaderValue,
}

/// `size` bytes of data: `x`s, or a JSON order (what `--filter data` tests) padded
/// to `size` when `json`.
pub fn payload(size: usize, json: bool) -> Payload {
    if !json {
        return Payload {
            bytes: Bytes::from(vec![b'x'; size]),
            content_type: HeaderValue::from_static("application/octet-stream"),
        };
    }
    let head = r#"{"order":{"kind":"bench","total":42,"items":[{"sku":"A-1","qty":1},{"sku":"B-2","qty":3}]},"pad":""#;
    let mut text = head.to_owned();
    text.push_str(&"x".repeat(size.saturating_sub(head.len() + 2)));
    text.push_str("\"}");
    Payload {
        bytes: Bytes::from(text),
        content_type: HeaderValue::from_static("application/json"),
    }
}

/// The generator's counts so far, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Answered 2xx.
    pub accepted: AtomicU64,
    /// Answered otherwise, or not at all.
    pub failed: AtomicU64,
}

/// What the generator did.
#[derive(Debug)]
pub struct GenResult {
    /// When the first event was sent.
    pub start: Instant,
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Answered 2xx: accepted by the ingress.
    pub accepted: Bitset,
    /// Other answers, by status code.
    pub rejected: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection failures).
    pub errors: u64,
    /// 429 answers (backpressure) retried, as a producer honouring them does.
    pub throttled: u64,
    pub first_error: Option<String>,
    /// From the first send to the last answer.
    pub elapsed: Duration,
}

struct Shared {
    cfg: GenConfig,
    next: AtomicU64,
    start: Instant,
    deadline: Instant,
    accepted: Mutex<Bitset>,
    outcome: Mutex<(BTreeMap<u16, u64>, u64, Option<String>)>,
    sent: AtomicU64,
    throttled: AtomicU64,
}

/// Opens every connection, then sends until the event count or the duration is
/// reached; returns when every answer is in.
pub async fn run(cfg: GenConfig) -> anyhow::Result<GenResult> {
    let mut senders = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        senders.push(
            connect(&cfg)
                .await
                .with_context(|| format!("cannot connect to the ingress at {}", cfg.addr))?,
        );
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: start + cfg.duration,
        cfg,
        next: AtomicU64::new(0),
        start,
        accepted: Mutex::default(),
        outcome: Mutex::default(),
        sent: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
    });
    let workers: Vec<_> = senders
        .into_iter()
        .map(|s| tokio::spawn(worker(shared.clone(), s)))
        .collect();
    for w in workers {
        w.await.context("a load generator worker panicked")?;
    }
    let elapsed = start.elapsed();
    let (rejected, errors, first_error) =
        std::mem::take(&mut *shared.outcome.lock().unwrap_or_else(|p| p.into_inner()));
    let accepted = std::mem::take(&mut *shared.accepted.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(GenResult {
        sent: shared.sent.load(Ordering::Relaxed),
        throttled: shared.throttled.load(Ordering::Relaxed),
        accepted,
        rejected,
        errors,
        first_error,
        start,
        elapsed,
    })
}

async fn connect(cfg: &GenConfig) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(cfg.addr).await?;
    stream.set_nodelay(true)?;
    let sender = match &cfg.tls {
        None => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
        Some(tls) => {
            let stream = tls.connect(stream).await.context("TLS handshake")?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(sender)
}

async fn worker(shared: Arc<Shared>, sender: SendRequest<Full<Bytes>>) {
    let cfg = &shared.cfg;
    let mut sender = Some(sender);
    let host = HeaderValue::from_str(&cfg.authority).ok();
    loop {
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        if seq >= cfg.max_events {
            return;
        }
        let stamp = match cfg.rate {
            Some(rate) => {
                let due = shared.start + Duration::from_secs_f64(seq as f64 / rate);
                if due >= shared.deadline {
                    return;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= shared.deadline {
                    return;
                }
                now
            }
        };
        let s = match sender.take() {
            Some(s) => s,
            None => match connect(cfg).await {
                Ok(s) => s,
                Err(e) => {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                    shared.failed(format!("connect: {e}"));
                    // Do not spin on a dead target; the deadline still bounds the run.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let ts = stamp.saturating_duration_since(cfg.base).as_nanos() as u64;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        // 429 is the ingress holding producers to the delivery rate: send the same
        // event again after a short wait that doubles (a producer honouring it), as
        // long as the run lasts. The latency clock keeps the first send time.
        let mut held = THROTTLE_FIRST_WAIT;
        let mut s = s;
        let answer = loop {
            match send(s, cfg, host.as_ref(), seq, ts).await {
                Ok((again, 429)) if Instant::now() + held < shared.deadline => {
                    shared.throttled.fetch_add(1, Ordering::Relaxed);
                    s = again;
                    tokio::time::sleep(held).await;
                    held = (held * 2).min(THROTTLE_MAX_WAIT);
                }
                other => break other,
            }
        };
        match answer {
            Ok((s, status)) => {
                sender = Some(s);
                if (200..300).contains(&status) {
                    shared
                        .accepted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(seq);
                    if let Some(p) = &cfg.progress {
                        p.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    if let Some(p) = &cfg.progress {
                        p.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut o = shared.outcome.lock().unwrap_or_else(|p| p.into_inner());
                    *o.0.entry(status).or_default() += 1;
                }
            }
            Err(e) => shared.failed(format!("{e:#}")),
        }
    }
}

impl Shared {
    fn failed(&self, e: String) {
        if let Some(p) = &self.cfg.progress {
            p.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        o.1 += 1;
        o.2.get_or_insert(e);
    }
}

/// One request on a keep-alive connection; gives the connection back if it is still
/// usable.
async fn send(
    mut s: SendRequest<Full<Bytes>>,
    cfg: &GenConfig,
    host: Option<&HeaderValue>,
    seq: u64,
    ts: u64,
) -> anyhow::Result<(SendRequest<Full<Bytes>>, u16)> {
    s.ready().await.context("connection closed")?;
    let mut id = String::with_capacity(cfg.run_id.len() + 21);
    id.push_str(&cfg.run_id);
    id.push('-');
    id.push_str(itoa::Buffer::new().format(seq));
    let mut req = Request::new(Full::new(cfg.payload.bytes.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = cfg.path.clone();
    let h = req.headers_mut();
    if let Some(host) = host {
        h.insert(HOST, host.clone());
    }
    if let Some(auth) = &cfg.authorization {
        h.insert(http::header::AUTHORIZATION, auth.clone());
    }
    h.insert(CONTENT_TYPE, cfg.payload.content_type.clone());
    h.insert("ce-specversion", HeaderValue::from_static("1.0"));
    h.insert("ce-type", HeaderValue::from_static("dev.cemesh.bench"));
    h.insert("ce-source", HeaderValue::from_static("/cemesh/bench"));
    h.insert("ce-id", HeaderValue::try_from(id).context("event id")?);
    h.insert(
        TS_HEADER,
        HeaderValue::from_str(itoa::Buffer::new().format(ts)).context("timestamp")?,
    );
    h.insert(
        MATCH_HEADER,
        HeaderValue::from_static(if event_matches(seq, cfg.match_ratio) {
            "yes"
        } else {
            "no"
        }),
    );
    let resp = s.send_request(req).await.context("request failed")?;
    let status = resp.status().as_u16();
    // Drain the answer so the connection can carry the next request.
    resp.into_body()
        .collect()
        .await
        .context("reading the answer failed")?;
    Ok((s, status))
}
