//! The one HTTP/1.1 server every cemesh listener runs (the ingress, the admin API,
//! the sidecar's two ports), so a client gets the same limits everywhere:
//!
//! - **header read timeout**: a request's head (request line and headers) must arrive
//!   within [`Limits::header_read_timeout`], counted from the accept for the first
//!   request and from its first byte for the next ones; past it the connection is
//!   closed.
//! - **body read timeout**: a request's body must arrive within
//!   [`Limits::body_read_timeout`] of the server starting to read it (a request held
//!   for backpressure has not started); past it reading the body fails with
//!   [`BodyTimeout`], which the ingress answers 408 (`IngressError::BodyTimeout`).
//! - **idle timeout**: a keep-alive connection with no request in flight (and no
//!   response still streaming) is closed after [`Limits::idle_timeout`].
//! - **connection limit**: at most [`Limits::max_connections`] connections at once;
//!   past it a connection is answered `503` with `Retry-After` and the JSON body
//!   every refusal has, then closed — never left waiting in the backlog.
//!
//! A connection's requests are served by `h1` (the common request, a keep-alive
//! HTTP/1.1 `POST` that has arrived whole, without hyper's machinery) until one it
//! does not take; hyper serves the rest of the connection from the bytes already
//! read, with the same limits.
//!
//! The gRPC listener (HTTP/2, served by tonic) shares the connection limit through
//! [`ConnectionGate`].

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod h1;

/// Default [`Limits::header_read_timeout`]: generous for any client on any network
/// (a request head is a few hundred bytes), short enough that a client trickling
/// headers holds a connection for seconds, not forever.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::body_read_timeout`]: a whole body of the default 1 MiB limit
/// at 35 KB/s, the slowest link a producer plausibly has.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Limits::idle_timeout`]: longer than the 90 s common HTTP clients
/// (reqwest/hyper-util, Go's `net/http`) keep an idle pooled connection, so a client
/// closes its idle connection before the broker does and never sends a request into
/// a connection being closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default [`Limits::max_connections`], per listener: far above what a broker serves
/// in practice (clients keep pooled connections), low enough to stay under a
/// container's file descriptor limit and to bound the memory idle connections take.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Refusals answered at once past the connection limit; past these a connection is
/// closed without an answer (a flood gets no more work than it must).
const REFUSALS_AT_ONCE: usize = 256;
/// The longest a refusal may take (reading the request, answering, closing).
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// The limits a listener holds its clients to; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A request body that did not arrive within [`Limits::body_read_timeout`]. Reading
/// the body fails with it (as the source of the body error).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {}", humane(*.0))]
pub struct BodyTimeout(pub Duration);

/// Whether `err` (or an error it wraps) is a [`BodyTimeout`].
pub fn body_timeout(err: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(*t);
        }
        cur = e.source();
    }
    None
}

/// `1.5s`, `300ms`: a duration as the flags take it.
pub fn humane(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Admits at most `max` connections at once (the permit a connection holds until it
/// ends), and logs refusals past it, at most once per ten seconds.
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    what: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
    last_warned: Arc<Mutex<Option<Instant>>>,
}

impl ConnectionGate {
    /// A gate for the listener `what` (`ingress`, `admin`, ...).
    pub fn new(what: &'static str, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        ConnectionGate {
            what,
            max,
            permits: Arc::new(Semaphore::new(max)),
            refused: Arc::new(AtomicU64::new(0)),
            last_warned: Arc::new(Mutex::new(None)),
        }
    }

    /// A permit for one more connection, or `None` (and a note of the refusal) at
    /// the limit.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.note_refusal();
                None
            }
        }
    }

    fn note_refusal(&self) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self.last_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            *last = Some(now);
            tracing::warn!(
                listener = self.what,
                max_connections = self.max,
                refused_total = refused,
                "Connection limit reached; refusing new connections (raise --max-connections if this is expected load)"
            );
        }
    }

    /// The message a refused client reads.
    pub fn refusal_message(&self) -> String {
        format!(
            "too many connections: this {} listener serves at most {} at once; retry shortly",
            self.what, self.max
        )
    }

    /// Resolves once every admitted connection has ended.
    pub async fn closed(&self) {
        let _ = self.permits.acquire_many(self.max as u32).await;
    }
}

/// What a listener answers its requests with: an axum `Router` (the admin API, the
/// sidecar), or any service of the same shape (the ingress's, which has one route and
/// so no router: `crate::Ingress`).
pub trait App:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> App for T where
    T: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `app` on `listener` (HTTP/1.1) within `limits` until `shutdown`
/// resolves, then lets the requests in progress finish and returns once every
/// connection has closed. `what` names the listener in logs and refusals.
///
/// hyper's own header limits are raised far above [`crate::accept::MAX_HEADERS`] and
/// [`crate::accept::MAX_HEADER_BYTES`], so a request past ours is refused by the
/// ingress with a JSON body naming the limit; only one past hyper's (256 headers,
/// 1 MiB) gets hyper's bare 431.
pub async fn serve(
    what: &'static str,
    listener: tokio::net::TcpListener,
    app: impl App,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(what, listener, app, limits, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given: the handshake must end within the header
/// read timeout, and a connection past the limit is closed without an answer (a
/// plaintext 503 means nothing to a TLS client).
pub async fn serve_tls(
    what: &'static str,
    listener: tokio::net::TcpListener,
    app: impl App,
    limits: Limits,
    tls: Option<crate::tls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_headers(HARD_MAX_HEADERS)
        .max_buf_size(HARD_MAX_HEADER_BYTES)
        // The head is timed by `Connection::run` (hyper's timer would also cut
        // idle keep-alive connections at the header read timeout).
        .header_read_timeout(None);
    let http = Arc::new(http);
    let gate = ConnectionGate::new(what, limits.max_connections);
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning.
                    tracing::warn!(listener = what, error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(permit) = gate.admit() else {
            if tls.is_some() {
                continue;
            }
            if let Ok(slot) = refusals.clone().try_acquire_owned() {
                let message = gate.refusal_message();
                tokio::spawn(async move {
                    refuse(stream, &message).await;
                    drop(slot);
                });
            }
            continue;
        };
        let conn = Connection {
            what,
            http: http.clone(),
            app: app.clone(),
            limits,
            stop: stop.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => conn.run(stream, None).await,
                Some(acceptor) => {
                    let timeout = limits.header_read_timeout;
                    if let Some(stream) =
                        crate::tls::handshake(&acceptor, stream, timeout, what).await
                    {
                        let peer = crate::tls::peer_identity(stream.get_ref().1);
                        conn.run(stream, peer).await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    gate.closed().await;
    Ok(())
}

/// hyper's limits, above the ingress's own (see [`serve`]). Not higher: hyper
/// allocates and fills room for this many headers twice for every request it
/// parses (at 1024, 2.4 % of the broker's CPU at 40 000 requests/s;
/// `bench/README.md`, "hyper's header room").
const HARD_MAX_HEADERS: usize = 256;
const HARD_MAX_HEADER_BYTES: usize = 1 << 20;

/// Answers a connection past the limit: reads what the client sent of its request
/// (so closing does not reset the connection before the client reads the answer),
/// answers 503 with `Retry-After` and a JSON body, and closes.
async fn refuse(mut stream: TcpStream, message: &str) {
    let body = serde_json::json!({ "error": message }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::retry_after_secs(crate::DEFAULT_RETRY_AFTER),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        let mut buf = [0u8; 4096];
        let mut head = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(250), async {
            while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Let the client read the answer and close first.
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One admitted connection.
struct Connection<A> {
    what: &'static str,
    http: Arc<hyper::server::conn::http1::Builder>,
    app: A,
    limits: Limits,
    stop: CancellationToken,
}

impl<A: App> Connection<A> {
    /// Serves `stream`; each request carries `peer` (a verified client certificate's
    /// identity) in its extensions.
    async fn run<IO>(self, stream: IO, peer: Option<crate::tls::PeerIdentity>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let watched = Watched {
            io: stream,
            activity: activity.clone(),
            unread: Bytes::new(),
        };
        // One timer and one shutdown wait for the connection's life: a request does
        // not wake this loop (see [`Activity::next_check`]).
        let mut stopped = relay_stop(self.stop.clone());
        let check = tokio::time::sleep_until(activity.next_check(&self.limits));
        tokio::pin!(check);
        let draining = Arc::new(AtomicBool::new(false));
        // The common request first, without hyper (`h1`); hyper from the first
        // request that path does not take.
        let (read, mut watched) = {
            let fast = h1::serve(
                watched,
                self.app.clone(),
                peer.clone(),
                activity.clone(),
                draining.clone(),
            );
            tokio::pin!(fast);
            loop {
                tokio::select! {
                    ended = fast.as_mut() => match ended {
                        h1::Ended::Closed => return,
                        h1::Ended::HandOff { read, io } => break (read, io),
                    },
                    () = check.as_mut() => {
                        if activity.lapsed(&self.limits, self.what, check.as_mut()) {
                            return;
                        }
                    }
                    _ = &mut stopped, if !draining.load(Ordering::Relaxed) => {
                        draining.store(true, Ordering::Relaxed);
                        // Between requests: close now; else after the answer.
                        if activity.is_idle() {
                            return;
                        }
                    }
                }
            }
        };
        watched.unread = read;
        let io = hyper_util::rt::TokioIo::new(watched);
        let service = {
            let activity = activity.clone();
            let to_hyper = hyper_util::service::TowerToHyperService::new(self.app);
            let body_timeout = self.limits.body_read_timeout;
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let guard = activity.begin();
                if let Some(peer) = &peer {
                    req.extensions_mut().insert(peer.clone());
                }
                let req = req.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
                let answer = hyper::service::Service::call(&to_hyper, req);
                async move {
                    let resp: Response<Body> = answer.await?;
                    Ok::<_, std::convert::Infallible>(resp.map(|body| {
                        Body::new(GuardedBody {
                            inner: body,
                            _guard: guard,
                        })
                    }))
                }
            })
        };
        let conn = self.http.serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = draining.load(Ordering::Relaxed);
        if draining {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(listener = self.what, error = %e, "Connection ended with an error");
                    }
                    return;
                }
                () = check.as_mut() => {
                    if activity.lapsed(&self.limits, self.what, check.as_mut()) {
                        return;
                    }
                }
                _ = &mut stopped, if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The server's stop, relayed to one connection by a task of its own. Every wake
/// of a connection's task polls its stop signal: a `CancellationToken` shared by
/// every connection locks two mutexes at each poll (its own and its `Notify`'s),
/// which both of the runtime's workers then take in turn for each request; a
/// oneshot's receiver is an atomic load. The relay ends with the connection.
fn relay_stop(stop: CancellationToken) -> tokio::sync::oneshot::Receiver<()> {
    let (mut tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let stopped = tokio::select! {
            () = stop.cancelled() => true,
            () = tx.closed() => false,
        };
        if stopped {
            let _ = tx.send(());
        }
    });
    rx
}

/// What a connection is doing, for its timeouts.
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    /// Requests whose answer has not been sent completely.
    in_flight: usize,
    /// Requests begun on this connection.
    requests: u64,
    /// Since when nothing has been in flight (the accept, at first).
    idle_since: Instant,
    /// The first byte of the next request's head, once read.
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                requests: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived.
    fn read(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.head_started.is_none() && s.requests > 0 {
            s.head_started = Some(Instant::now());
        }
    }

    /// A request's head has been read; the guard ends it once its answer is sent.
    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.state();
        s.in_flight += 1;
        s.requests += 1;
        s.head_started = None;
        InFlight(self.clone())
    }

    fn end(&self) {
        let mut s = self.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
    }

    /// Whether no request is in flight.
    fn is_idle(&self) -> bool {
        self.state().in_flight == 0
    }

    /// When the connection is to be closed if nothing happens; `None` while a request
    /// is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let s = self.state();
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.head_started {
            _ if s.requests == 0 => s.idle_since + limits.header_read_timeout,
            Some(started) => started + limits.header_read_timeout,
            None => s.idle_since + limits.idle_timeout,
        })
    }

    /// When the connection's watch next looks at its deadline: the deadline, but no
    /// later than the shorter of the two timeouts from now. Any deadline that appears
    /// after this call (a head starting, a request ending) is at least that far off,
    /// so no request has to wake the watch (waking it twice a request, with a new
    /// timer and shutdown wait each time, cost a few percent of the broker's CPU).
    fn next_check(&self, limits: &Limits) -> Instant {
        let cap = Instant::now() + limits.header_read_timeout.min(limits.idle_timeout);
        self.deadline(limits).map_or(cap, |d| d.min(cap))
    }

    /// At the connection's check: whether it is to be closed now (logged, for the
    /// listener `what`); if not, `check` is set to the next one.
    fn lapsed(&self, limits: &Limits, what: &str, check: Pin<&mut tokio::time::Sleep>) -> bool {
        if let Some(why) = self.expired(limits) {
            tracing::debug!(listener = what, "Closing the connection: {why}");
            return true;
        }
        check.reset(self.next_check(limits));
        false
    }

    /// Why the connection is to be closed now, if it is.
    fn expired(&self, limits: &Limits) -> Option<String> {
        let deadline = self.deadline(limits)?;
        if Instant::now() < deadline {
            return None;
        }
        let s = self.state();
        Some(if s.requests == 0 || s.head_started.is_some() {
            format!(
                "no complete request head within the header read timeout ({})",
                humane(limits.header_read_timeout)
            )
        } else {
            format!(
                "idle for the idle timeout ({})",
                humane(limits.idle_timeout)
            )
        })
    }
}

/// Held while a request is in flight (until its answer's body is sent or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The connection's socket, noting when bytes arrive.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
    /// Bytes read from `io` and put back, read again first: what the `h1` path
    /// had read when it handed the connection to hyper.
    unread: Bytes,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            let first = self.unread.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that fails with [`BodyTimeout`] if it has not all arrived within
/// its timeout of the first read that had to wait for it.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    /// Made the first time the body is not all there (that is when its timeout
    /// starts): most bodies arrive with their head, and their request then needs no
    /// timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            timeout,
            deadline: None,
            done: false,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let timeout = self.timeout;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.done = true;
                        Poll::Ready(Some(Err(BodyTimeout(self.timeout).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body, holding its request in flight until it is sent (or dropped).
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_body_timeout_inside_other_errors() {
        let inner: axum::BoxError = BodyTimeout(Duration::from_millis(300)).into();
        let wrapped = axum::Error::new(inner);
        let found = body_timeout(&wrapped).expect("found");
        assert_eq!(found.0, Duration::from_millis(300));
        assert_eq!(
            found.to_string(),
            "the request body did not arrive within 300ms"
        );
        let other = std::io::Error::other("nope");
        assert!(body_timeout(&other).is_none());
    }

    /// A connection served without hyper until a request that path does not take
    /// (chunked, here, sent in the same write as the requests around it): hyper
    /// serves that one from the bytes already read, and the rest of the
    /// connection.
    #[tokio::test]
    async fn hyper_takes_over_a_connection_mid_way_from_the_bytes_already_read() {
        let app = axum::Router::new().fallback(|req: Request<Body>| async move {
            use http_body_util::BodyExt as _;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::builder()
                .status(202)
                .body(Body::from(body))
                .unwrap()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            "test",
            listener,
            app,
            Limits::default(),
            std::future::pending(),
        ));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let input = "POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\none\
                     POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n\
                     POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nthree\
                     POST / HTTP/1.1\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfour";
        client.write_all(input.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
            .await
            .expect("every request answered, then closed")
            .unwrap();
        let got = String::from_utf8(got).unwrap();
        let bodies: Vec<&str> = got
            .split("HTTP/1.1 202 Accepted\r\n")
            .skip(1)
            .map(|answer| answer.split("\r\n\r\n").nth(1).unwrap())
            .collect();
        assert_eq!(bodies, ["one", "two", "three", "four"], "{got}");
    }

    #[test]
    fn durations_read_as_flags() {
        assert_eq!(humane(Duration::from_secs(10)), "10s");
        assert_eq!(humane(Duration::from_millis(300)), "300ms");
        assert_eq!(humane(Duration::from_millis(1500)), "1.5s");
    }
}
