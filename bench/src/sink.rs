//! The subscriber sink: a bare hyper HTTP/1.1 server that every trigger delivers to,
//! at `/t/{index}`. It answers `200` with no body at once (so the sink never limits
//! the broker), counts each delivery per trigger, detects duplicates by event id, and
//! records end-to-end latency from the generator's `ce-benchts` timestamp.
//!
//! One sink serves a whole invocation; each run installs a fresh [`RunTally`], and a
//! delivery whose id carries another run's tag (a late retry of an earlier run, or
//! traffic from elsewhere) is counted as foreign rather than mixed in.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bitset::Bitset;
use crate::histogram::Histogram;
use crate::{parse_event_id, TS_HEADER};

/// What one trigger received during one run.
#[derive(Default)]
pub struct TriggerTally {
    seen: Mutex<Bitset>,
    pub deliveries: AtomicU64,
    pub duplicates: AtomicU64,
}

impl TriggerTally {
    /// The distinct events delivered.
    pub fn seen(&self) -> Bitset {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Everything the sink counts during one run.
pub struct RunTally {
    run_id: String,
    base: Instant,
    pub triggers: Vec<TriggerTally>,
    /// End-to-end latency (ns) of each first delivery of an event to a trigger.
    pub latency: Histogram,
    /// Deliveries of all triggers, duplicates included.
    pub deliveries: AtomicU64,
    /// Deliveries that belong to no trigger of this run (unknown path, another run's
    /// id, no `ce-id`).
    pub foreign: AtomicU64,
    /// When the last delivery of this run arrived, in ns after `base`.
    pub last_delivery_ns: AtomicU64,
}

impl RunTally {
    pub fn new(run_id: String, base: Instant, triggers: usize) -> Self {
        RunTally {
            run_id,
            base,
            triggers: (0..triggers).map(|_| TriggerTally::default()).collect(),
            latency: Histogram::default(),
            deliveries: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
        }
    }

    /// Distinct (event, trigger) deliveries so far.
    pub fn unique(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
            - self
                .triggers
                .iter()
                .map(|t| t.duplicates.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    fn record(&self, path: &str, id: Option<&str>, ts: Option<u64>) {
        let now = self.base.elapsed().as_nanos() as u64;
        let trigger = path
            .strip_prefix("/t/")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.triggers.get(i));
        let seq = id.and_then(|id| parse_event_id(id, &self.run_id));
        let (Some(trigger), Some(seq)) = (trigger, seq) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        trigger.deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        let first = trigger
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq);
        if !first {
            trigger.duplicates.fetch_add(1, Ordering::Relaxed);
        } else if let Some(ts) = ts {
            self.latency.record(now.saturating_sub(ts));
        }
    }
}

/// A running sink.
pub struct Sink {
    pub addr: SocketAddr,
    tally: Arc<ArcSwap<RunTally>>,
    stop: CancellationToken,
}

impl Sink {
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on sink address {addr}"))?;
        let addr = listener.local_addr()?;
        let tally = Arc::new(ArcSwap::from_pointee(RunTally::new(
            String::new(),
            Instant::now(),
            0,
        )));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, tally.clone(), stop.clone()));
        Ok(Sink { addr, tally, stop })
    }

    /// Starts counting a new run; deliveries for earlier runs become foreign.
    pub fn begin(&self, tally: Arc<RunTally>) {
        self.tally.store(tally);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tally: Arc<ArcSwap<RunTally>>,
    stop: CancellationToken,
) {
    serve(listener, stop, move |req| {
        let tally = tally.load_full();
        handle(req, tally)
    })
    .await;
}

/// Serves HTTP/1.1 on `listener` with `handler` until `stop` (shared by the bench's
/// sink and the soak's).
pub(crate) async fn serve<F, Fut>(listener: TcpListener, stop: CancellationToken, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Empty<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "Sink accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handler);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// A delivery's event id and `benchts` send time, from its headers.
pub(crate) fn delivery(headers: &http::HeaderMap) -> (Option<&str>, Option<u64>) {
    let id = headers.get("ce-id").and_then(|v| v.to_str().ok());
    let ts = headers
        .get(TS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (id, ts)
}

async fn handle(
    req: Request<Incoming>,
    tally: Arc<RunTally>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the whole body, as a real subscriber would.
    let _ = body.collect().await;
    let (id, ts) = delivery(&parts.headers);
    tally.record(parts.uri.path(), id, ts);
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
