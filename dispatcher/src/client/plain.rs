//! Plain `http://` deliveries over HTTP/1.1 connections this module pools itself,
//! each exchange written and read in the delivery's own task ([`super::wire`]).
//!
//! Why not hyper-util's pooled client, which still sends `https://` deliveries (TLS,
//! HTTP/2 by ALPN): for each exchange it races the pool's checkout against a lazily
//! built connect future, hashes the pool key with SipHash at the checkout and again
//! when the connection comes back, and spawns a task that waits for the connection
//! to be ready before it returns it to the pool: about 10 000 instructions a
//! delivery, a sixth of one when a broker fans out (`bench/README.md`, "Plain
//! deliveries over connections of our own"). A delivery needs a connection to its
//! destination, the request written and the answer read. This is that, with the
//! pool's promises kept: a request that finds its pooled connection closed goes out
//! on another (once, when the connection ends with no byte of an answer after the
//! request was written: most likely the destination closed it while idle as the
//! request went out, a keep-alive race that Node.js servers, closing idle
//! connections after 5 s, make common; the destination may then, rarely, see the
//! request twice, which at-least-once delivery allows); connections idle longer than
//! [`IDLE_TIMEOUT`] are closed, and at most [`MAX_IDLE_PER_HOST`] wait per
//! destination; an exchange that found none idle connects, but takes a connection
//! that comes back first (its connect then ends for the pool), and past
//! [`MAX_CONNECTING_PER_HOST`] connects at once it waits for either.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Uri};
use tokio::sync::oneshot;

use super::wire::{request_head, Conn, Failed};
use super::{Answer, KnativeHeaders, SendError};

/// Idle keep-alive connections kept per destination.
pub(crate) const MAX_IDLE_PER_HOST: usize = 1024;
/// How long an idle connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// New connections being made to one destination at once. Past it an exchange
/// waits for a connection to come back or a connect to end: a burst of deliveries
/// (ten triggers starting at once) that each opened a connection overflowed the
/// destination's listen queue (128 entries for the bench's sink here), and a SYN
/// dropped there is sent again a second later.
const MAX_CONNECTING_PER_HOST: usize = 16;

type Sender = Conn;

/// The connections of every plain destination.
#[derive(Debug, Default)]
pub(crate) struct PlainPool {
    /// Shared with the connects that finish after their exchange went elsewhere.
    state: Arc<Mutex<Idle>>,
}

#[derive(Debug, Default)]
struct Idle {
    /// By the authority as the destination's URL spells it, hashed as one string
    /// with foldhash (`Authority`'s own hash feeds the hasher a byte at a time;
    /// SipHash cost 0.5 % of the broker here): looked up twice for every delivery.
    by_host: HashMap<Box<str>, Host, foldhash::fast::RandomState>,
    /// When every destination's list was last rid of expired connections.
    swept: Option<Instant>,
}

/// One destination's idle connections (newest last), how many are being made, and
/// the exchanges that found none idle, first come first served: `waiting` for a
/// connection to come back (`Some`) or a connect to end (`None`: then they may make
/// one), and `racing`, connecting and taking whichever comes first, their own
/// connection or one that came back (a connect can take a second or more: a SYN
/// dropped by a full listen queue is sent again a second later).
#[derive(Debug, Default)]
struct Host {
    idle: Vec<(Sender, Instant)>,
    connecting: usize,
    waiting: VecDeque<oneshot::Sender<Option<Sender>>>,
    racing: VecDeque<oneshot::Sender<Sender>>,
    /// The queues' length at which those that gave up are next dropped.
    prune_at: usize,
}

/// What an exchange gets from the pool.
enum Take {
    Idle(Sender),
    /// A place among the connects in progress, and the turn of a connection that
    /// comes back meanwhile.
    Connect(Connecting, oneshot::Receiver<Sender>),
    Wait(oneshot::Receiver<Option<Sender>>),
}

/// A connect in progress to `host`; ended (successful or not, or abandoned) when
/// dropped.
struct Connecting {
    state: Arc<Mutex<Idle>>,
    host: Box<str>,
}

impl PlainPool {
    /// POSTs `body` with `binary`'s event's binary-mode headers (when given),
    /// Knative's delivery headers (when given) and `headers` to `uri` (scheme
    /// `http`) on an idle connection to its authority, or a new one, and reads the
    /// answer (its body kept within `max_body`); the connection goes back to the
    /// pool if it may be used again.
    pub(crate) async fn send(
        &self,
        uri: &Uri,
        binary: Option<(&cemesh_proto::Event, Option<&str>)>,
        knative: Option<KnativeHeaders<'_>>,
        headers: &HeaderMap,
        body: &Bytes,
        max_body: usize,
    ) -> Result<Answer, SendError> {
        let host = uri
            .authority()
            .ok_or_else(|| SendError::Other(format!("{uri} names no host")))?;
        let head = request_head(
            origin_form(uri),
            host_header(host),
            binary,
            knative,
            headers,
            body.len(),
        );
        let mut sent_again = false;
        loop {
            let (mut conn, reused) = match self.take(host.as_str()) {
                Take::Idle(conn) => (conn, true),
                Take::Connect(connecting, returned) => {
                    self.race(host, connecting, returned).await?
                }
                Take::Wait(turn) => match turn.await {
                    Ok(Some(conn)) => (conn, true),
                    _ => continue,
                },
            };
            match conn.exchange(&head, body, max_body).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        put(&self.state, host.as_str(), conn);
                    }
                    return Ok(answer);
                }
                // Closed while idle: another connection takes the request.
                Err(Failed::Unanswered(_)) if reused && !sent_again => sent_again = true,
                Err(Failed::Unanswered(cause) | Failed::Broken(cause)) => {
                    return Err(SendError::Other(cause))
                }
            }
        }
    }

    /// A new connection, or one that comes back first: then the connect goes on
    /// without the exchange and its connection joins the idle ones.
    async fn race(
        &self,
        host: &Authority,
        connecting: Connecting,
        mut returned: oneshot::Receiver<Sender>,
    ) -> Result<(Sender, bool), SendError> {
        let mut making = Box::pin(connect(host.clone()));
        tokio::select! {
            biased;
            made = &mut making => {
                drop(connecting);
                // One may have come back at the same moment: it stays in the pool.
                returned.close();
                if let Ok(sender) = returned.try_recv() {
                    put(&self.state, host.as_str(), sender);
                }
                Ok((made?, false))
            }
            Ok(sender) = &mut returned => {
                let (state, host) = (self.state.clone(), host.clone());
                tokio::spawn(async move {
                    let made = making.await;
                    drop(connecting);
                    if let Ok(made) = made {
                        put(&state, host.as_str(), made);
                    }
                });
                Ok((sender, true))
            }
        }
    }

    /// The newest idle connection to `host` that is still open and not expired, else
    /// a place among the connects in progress, else a place in the queue.
    fn take(&self, host: &str) -> Take {
        let mut idle = lock(&self.state);
        // One lookup, and the key made only for a destination not seen yet (as `put`).
        match idle.by_host.get_mut(host) {
            Some(h) => match h.pop_idle() {
                Some(sender) => Take::Idle(sender),
                None => h.queue(&self.state, host),
            },
            None => idle
                .by_host
                .entry(host.into())
                .or_default()
                .queue(&self.state, host),
        }
    }
}

/// Returns `sender` to `host`'s connections, expiring idle ones every
/// [`IDLE_TIMEOUT`].
fn put(state: &Mutex<Idle>, host: &str, sender: Sender) {
    if sender.is_closed() {
        return;
    }
    let now = Instant::now();
    let mut idle = lock(state);
    if idle
        .swept
        .is_none_or(|at| now.duration_since(at) >= IDLE_TIMEOUT)
    {
        idle.swept = Some(now);
        idle.by_host.retain(|_, h| {
            h.idle
                .retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
            h.forget_given_up();
            !h.idle.is_empty() || h.queued() > 0 || h.connecting > 0
        });
    }
    match idle.by_host.get_mut(host) {
        Some(h) => h.keep(sender, now),
        None => idle
            .by_host
            .entry(host.into())
            .or_default()
            .keep(sender, now),
    }
}

fn lock(state: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Host {
    /// The newest idle connection still open and not expired; the others go.
    fn pop_idle(&mut self) -> Option<Sender> {
        while let Some((sender, since)) = self.idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// With no connection idle: a place among the connects in progress to `host`,
    /// else a place in the queue.
    fn queue(&mut self, state: &Arc<Mutex<Idle>>, host: &str) -> Take {
        // Exchanges that gave up are skipped when their turn comes; this bounds how
        // many pile up meanwhile (each time the queues have doubled: a broker with
        // thousands of deliveries in flight to one destination queues thousands).
        if self.queued() >= self.prune_at.max(MAX_IDLE_PER_HOST) {
            self.forget_given_up();
            self.prune_at = 2 * self.queued();
        }
        if self.connecting < MAX_CONNECTING_PER_HOST {
            self.connecting += 1;
            let (tx, rx) = oneshot::channel();
            self.racing.push_back(tx);
            let connecting = Connecting {
                state: state.clone(),
                host: host.into(),
            };
            return Take::Connect(connecting, rx);
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.push_back(tx);
        Take::Wait(rx)
    }

    /// Exchanges queued for a connection, including those that gave up.
    fn queued(&self) -> usize {
        self.waiting.len() + self.racing.len()
    }

    /// Drops the queued exchanges that gave up (their turn would be skipped anyway).
    fn forget_given_up(&mut self) {
        self.waiting.retain(|w| !w.is_closed());
        self.racing.retain(|w| !w.is_closed());
    }

    /// Hands `sender` to the first exchange still connecting (they came first: the
    /// others queued only once every place among the connects was taken), then to
    /// the first still waiting, or keeps it idle.
    fn keep(&mut self, mut sender: Sender, now: Instant) {
        while let Some(racer) = self.racing.pop_front() {
            match racer.send(sender) {
                Ok(()) => return,
                Err(back) => sender = back,
            }
        }
        let mut sender = Some(sender);
        while let Some(waiter) = self.waiting.pop_front() {
            match waiter.send(sender) {
                Ok(()) => return,
                Err(back) => sender = back,
            }
        }
        if let Some(sender) = sender {
            if self.idle.len() < MAX_IDLE_PER_HOST {
                self.idle.push((sender, now));
            }
        }
    }
}

impl Drop for Connecting {
    /// The first exchange waiting may now connect (or take what came back).
    fn drop(&mut self) {
        let mut idle = lock(&self.state);
        if let Some(h) = idle.by_host.get_mut(&*self.host) {
            h.connecting -= 1;
            while let Some(waiter) = h.waiting.pop_front() {
                if waiter.send(None).is_ok() {
                    break;
                }
            }
        }
    }
}

/// A new connection to `host` (port 80 unless it names one).
async fn connect(host: Authority) -> Result<Sender, SendError> {
    let name = host.host().trim_start_matches('[').trim_end_matches(']');
    let port = host.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((name, port))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(Conn::new(stream))
}

/// `Host` as a browser sends it: the port only when it is not 80. (An authority's
/// characters are all header-value characters: `http` checked them parsing the URI.)
fn host_header(host: &Authority) -> &str {
    match host.port_u16() {
        Some(80) => host.host(),
        _ => host.as_str(),
    }
}

/// The request target an origin server expects: path and query only.
fn origin_form(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", PathAndQuery::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::mpsc;

    /// A server answering every request `200` with its request line and `Host`,
    /// keeping connections open unless `close` (then it closes each after its first
    /// answer, without saying so); reports each new connection on the channel.
    async fn server(close: bool) -> (Uri, mpsc::UnboundedReceiver<()>) {
        let answering = Arc::new(AtomicBool::new(true));
        server_with(close, answering, Arc::default()).await
    }

    /// [`server`], closing each connection without a word after reading a request
    /// while `answering` is false (counting those requests in `dropped`).
    async fn server_with(
        close: bool,
        answering: Arc<AtomicBool>,
        dropped: Arc<AtomicUsize>,
    ) -> (Uri, mpsc::UnboundedReceiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/hook?x=1", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = tx.send(());
                let (answering, dropped) = (answering.clone(), dropped.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).to_string();
                            seen.drain(..end + 4);
                            if !answering.load(SeqCst) {
                                dropped.fetch_add(1, SeqCst);
                                return;
                            }
                            let line = head.lines().next().unwrap_or_default().to_string();
                            let host = head
                                .lines()
                                .find_map(|l| l.strip_prefix("host: "))
                                .unwrap_or_default()
                                .to_string();
                            let body = format!("{line}|{host}");
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.write_all(answer.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        (uri, rx)
    }

    async fn send(pool: &PlainPool, uri: &Uri, max_body: usize) -> Result<Answer, SendError> {
        let knative = KnativeHeaders { namespace: "ns" };
        pool.send(
            uri,
            None,
            Some(knative),
            &HeaderMap::new(),
            &Bytes::new(),
            max_body,
        )
        .await
    }

    async fn exchange(pool: &PlainPool, uri: &Uri) -> String {
        let answer = send(pool, uri, 1 << 20).await.unwrap();
        String::from_utf8(answer.body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn requests_go_in_origin_form_with_host_on_one_kept_connection() {
        let (uri, mut connections) = server(false).await;
        let pool = PlainPool::default();
        for _ in 0..5 {
            let seen = exchange(&pool, &uri).await;
            assert_eq!(
                seen,
                format!("POST /hook?x=1 HTTP/1.1|{}", uri.authority().unwrap())
            );
        }
        connections.recv().await.unwrap();
        assert!(
            connections.try_recv().is_err(),
            "one connection for five requests"
        );
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_not_used_again() {
        let (uri, mut connections) = server(true).await;
        let pool = PlainPool::default();
        for i in 0..20 {
            exchange(&pool, &uri).await;
            // Sometimes found closed when taken, sometimes only when written to.
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for _ in 0..20 {
            connections.recv().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_request_unanswered_on_a_pooled_connection_is_sent_once_more_only() {
        let answering = Arc::new(AtomicBool::new(true));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (uri, _connections) = server_with(false, answering.clone(), dropped.clone()).await;
        let pool = Arc::new(PlainPool::default());
        // Three connections idle in the pool.
        let warm: Vec<_> = (0..3)
            .map(|_| {
                let (pool, uri) = (pool.clone(), uri.clone());
                tokio::spawn(async move { send(&pool, &uri, 1 << 20).await.map(|a| a.status) })
            })
            .collect();
        for w in warm {
            assert_eq!(w.await.unwrap().unwrap(), 200);
        }
        answering.store(false, SeqCst);
        let sent = send(&pool, &uri, 0).await;
        assert!(
            matches!(sent, Err(SendError::Other(_))),
            "{:?}",
            sent.map(|a| a.status)
        );
        assert_eq!(
            dropped.load(SeqCst),
            2,
            "the request went out twice, not once per idle connection"
        );
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_not_read_is_not_kept() {
        let (uri, mut connections) = server(false).await;
        let pool = PlainPool::default();
        // The answer past the limit, not read: the connection is dropped, not kept.
        let answer = send(&pool, &uri, 4).await.unwrap();
        assert!(answer.over_limit);
        exchange(&pool, &uri).await;
        connections.recv().await.unwrap();
        connections.recv().await.unwrap();
        let host = uri.authority().unwrap().clone();
        let idle = lock(&pool.state)
            .by_host
            .get(host.as_str())
            .map_or(0, |h| h.idle.len());
        assert_eq!(idle, 1, "only the connection whose answer was read is kept");
    }

    /// A destination that serves one connection and then accepts no more: its listen
    /// queue filled, a new connection's SYN is dropped and sent again, for ever.
    /// Returns its pool with that one connection taken out of it, the requests
    /// served, and the connections filling its queue.
    async fn one_connection_destination() -> (
        Uri,
        std::sync::Arc<PlainPool>,
        Sender,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        Vec<tokio::net::TcpStream>,
    ) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(1).unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |_req| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<
                        Bytes,
                    >::default(
                    )))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            std::future::pending::<()>().await;
        });
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let pool = std::sync::Arc::new(PlainPool::default());
        exchange(&pool, &uri).await;
        let Take::Idle(held) = pool.take(uri.authority().unwrap().as_str()) else {
            panic!("the connection is idle");
        };
        let mut queued = Vec::new();
        for _ in 0..4 {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(300), connect).await {
                Ok(Ok(stream)) => queued.push(stream),
                _ => break,
            }
        }
        (uri, pool, held, served, queued)
    }

    fn spawn_exchange(
        pool: &std::sync::Arc<PlainPool>,
        uri: &Uri,
    ) -> tokio::task::JoinHandle<String> {
        let (pool, uri) = (pool.clone(), uri.clone());
        tokio::spawn(async move { exchange(&pool, &uri).await })
    }

    #[tokio::test]
    async fn an_exchange_still_connecting_takes_a_connection_returned_meanwhile() {
        let (uri, pool, held, served, _queued) = one_connection_destination().await;
        let connecting = spawn_exchange(&pool, &uri);
        tokio::time::sleep(Duration::from_millis(100)).await;
        put(&pool.state, uri.authority().unwrap().as_str(), held);
        tokio::time::timeout(Duration::from_secs(20), connecting)
            .await
            .expect("the returned connection serves the exchange still connecting")
            .unwrap();
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Its connect goes on, without it.
        assert_eq!(
            lock(&pool.state)
                .by_host
                .values()
                .next()
                .unwrap()
                .connecting,
            1
        );
    }

    #[tokio::test]
    async fn one_connection_coming_back_serves_every_exchange_in_turn() {
        let (uri, pool, held, served, _queued) = one_connection_destination().await;
        // These take every place among the connects, and hang there; the last ones
        // wait behind them.
        let exchanges: Vec<_> = (0..MAX_CONNECTING_PER_HOST + 4)
            .map(|_| spawn_exchange(&pool, &uri))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        put(&pool.state, uri.authority().unwrap().as_str(), held);
        for exchange in exchanges {
            tokio::time::timeout(Duration::from_secs(20), exchange)
                .await
                .expect("the returned connection serves every exchange in turn")
                .unwrap();
        }
        assert_eq!(
            served.load(std::sync::atomic::Ordering::SeqCst),
            1 + MAX_CONNECTING_PER_HOST + 4
        );
        let host = lock(&pool.state);
        let host = host.by_host.values().next().unwrap();
        assert_eq!(
            host.connecting, MAX_CONNECTING_PER_HOST,
            "no more connects than that"
        );
    }

    /// An address on this machine nothing listens on.
    fn refused_uri() -> Uri {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        uri.parse().unwrap()
    }

    #[tokio::test]
    async fn when_connects_fail_the_exchanges_waiting_behind_them_fail_too() {
        let uri = refused_uri();
        let pool = std::sync::Arc::new(PlainPool::default());
        let tries: Vec<_> = (0..3 * MAX_CONNECTING_PER_HOST)
            .map(|_| {
                let (pool, uri) = (pool.clone(), uri.clone());
                tokio::spawn(async move {
                    let sent = send(&pool, &uri, 0).await;
                    matches!(sent, Err(SendError::Connect(_)))
                })
            })
            .collect();
        for t in tries {
            let refused = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("no exchange waits for ever")
                .unwrap();
            assert!(refused);
        }
    }

    #[test]
    fn exchanges_that_gave_up_are_dropped_from_the_queue_each_time_it_doubles() {
        let pool = PlainPool::default();
        let gave_up = |n: usize| {
            (0..n)
                .map(|_| oneshot::channel::<Option<Sender>>().0)
                .collect::<VecDeque<_>>()
        };
        {
            let mut idle = lock(&pool.state);
            let h = idle.by_host.entry("h:1".into()).or_default();
            h.connecting = MAX_CONNECTING_PER_HOST;
            h.waiting = gave_up(MAX_IDLE_PER_HOST - 1);
        }
        let queued = |pool: &PlainPool| lock(&pool.state).by_host["h:1"].waiting.len();
        let mut live = Vec::new();
        let Take::Wait(turn) = pool.take("h:1") else {
            panic!("connects are full")
        };
        live.push(turn);
        assert_eq!(queued(&pool), MAX_IDLE_PER_HOST, "not yet at the bound");
        let Take::Wait(turn) = pool.take("h:1") else {
            panic!("connects are full")
        };
        live.push(turn);
        assert_eq!(
            queued(&pool),
            2,
            "the ones that gave up are gone, the live ones kept"
        );
        assert_eq!(lock(&pool.state).by_host["h:1"].prune_at, 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let uri = refused_uri();
        let pool = PlainPool::default();
        match send(&pool, &uri, 0).await {
            Err(SendError::Connect(cause)) => assert!(cause.contains("refused"), "{cause}"),
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn host_and_target_as_an_origin_server_expects_them() {
        let host = |s: &str| host_header(&s.parse().unwrap()).to_string();
        assert_eq!(host("example.com:80"), "example.com");
        assert_eq!(host("example.com:8080"), "example.com:8080");
        assert_eq!(host("example.com"), "example.com");
        assert_eq!(host("[::1]:9000"), "[::1]:9000");
        let target = |s: &str| origin_form(&s.parse().unwrap()).to_string();
        assert_eq!(target("http://h:1/a/b?c=d"), "/a/b?c=d");
        assert_eq!(target("http://h:1"), "/");
    }
}
