//! The HTTP client deliveries are sent with: `http://` destinations over HTTP/1.1
//! connections pooled here (`plain`), `https://` ones through hyper-util's pooled
//! client over rustls, trusting the system's web roots, the process's own issuers
//! and a destination's `CACerts`.
//!
//! Why not reqwest, which sent deliveries before: its per-request layers (the URL
//! converted to a URI again, redirect and retry policies, boxed futures, a body
//! wrapper with its own timer) took about 8 % of the broker's CPU at saturation
//! (`bench/README.md`, "The delivery client"), and a delivery needs none of them: the
//! pipeline counts, times and retries every attempt itself. One exception keeps
//! reqwest: when the environment names a proxy (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY`, any case), deliveries go through reqwest, which honours them and
//! `NO_PROXY` as Knative's dispatcher (Go's `net/http`) does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

mod plain;
mod wire;

use plain::{
    PlainPool, IDLE_TIMEOUT as POOL_IDLE_TIMEOUT, MAX_IDLE_PER_HOST as POOL_MAX_IDLE_PER_HOST,
};

/// A destination's answer, body read whole (so the connection goes back to the pool)
/// unless it is longer than the caller takes.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// Empty when `over_limit`.
    pub body: Bytes,
    /// The body was longer than `max_body`: not kept (and the connection, whose
    /// body was not read to its end, not reused).
    pub over_limit: bool,
}

/// The headers Knative's dispatcher puts on every delivery: `Prefer: reply` and the
/// trigger's namespace. The plain pool writes them straight into the request (no
/// header map made for them), the other clients take them in the map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KnativeHeaders<'a> {
    pub(crate) namespace: &'a str,
}

impl KnativeHeaders<'_> {
    /// Each header, name and value; a namespace that could not be a header value
    /// is left out.
    fn for_each(self, mut f: impl FnMut(&'static str, &str)) {
        f("prefer", "reply");
        if is_header_value(self.namespace.as_bytes()) {
            f("kn-namespace", self.namespace);
        }
    }

    fn put(self, headers: &mut HeaderMap) {
        self.for_each(|name, value| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        });
    }
}

/// What `http`'s `HeaderValue` takes: visible ASCII, spaces, tabs and obs-text.
fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Why no answer came.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing within the attempt's time.
    Timeout,
    /// No connection could be made; the innermost cause.
    Connect(String),
    /// The exchange failed after connecting; the innermost cause.
    Other(String),
}

impl SendError {
    /// The message a user sees in the attempt's record.
    pub(crate) fn describe(&self, timeout: Duration, started: Instant) -> String {
        match self {
            SendError::Timeout => format!("no answer within the {timeout:?} timeout"),
            SendError::Connect(cause) => format!("cannot connect: {cause}"),
            SendError::Other(cause) => {
                format!("request failed after {:?}: {cause}", started.elapsed())
            }
        }
    }
}

type Tls = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Both pools of a direct client.
#[derive(Debug)]
pub(crate) struct Direct {
    plain: PlainPool,
    tls: Tls,
}

/// A pooled client; cheap to clone (one reference count: the pool is shared).
#[derive(Clone, Debug)]
pub(crate) enum HttpClient {
    Direct(Arc<Direct>),
    /// The environment names a proxy: reqwest, which uses it.
    Proxied(reqwest::Client),
}

impl HttpClient {
    /// A client trusting the system's web roots, `roots` (DER) and the PEM `ca`.
    pub(crate) fn new(roots: &[Vec<u8>], ca: Option<&crate::signing::CaCerts>) -> Self {
        if proxy_in_env() {
            return HttpClient::Proxied(proxied(roots, ca));
        }
        let mut store = rustls::RootCertStore::empty();
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let extra = roots
            .iter()
            .map(|der| rustls::pki_types::CertificateDer::from(der.clone()))
            .chain(ca.map(|c| c.certificate_ders()).unwrap_or_default());
        for cert in extra {
            if let Err(e) = store.add(cert) {
                tracing::warn!(error = %e, "A CA certificate was not usable; deliveries do not trust it");
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(store)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        HttpClient::Direct(Arc::new(Direct {
            plain: PlainPool::default(),
            tls: client,
        }))
    }

    /// POSTs `body` to `url` with `knative`'s headers and `headers`, and `binary`'s
    /// event's binary-mode headers (leaving out the attribute named with it) when
    /// given, and reads the answer, all within `timeout`; an answer body longer than
    /// `max_body` is not kept.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn post(
        &self,
        url: &reqwest::Url,
        uri: Option<&Uri>,
        binary: Option<(&cemesh_proto::Event, Option<&str>)>,
        knative: KnativeHeaders<'_>,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, SendError> {
        let exchange = async {
            // The plain pool writes the event's headers itself; the others take a map.
            let all_headers = |headers: HeaderMap| {
                let mut all = match binary {
                    Some((event, skip)) => {
                        let mut all = HeaderMap::with_capacity(headers.len() + 14);
                        cemesh_proto::http::encode_binary_except(event, &mut all, skip);
                        all.extend(headers);
                        all
                    }
                    None => headers,
                };
                knative.put(&mut all);
                all
            };
            match self {
                HttpClient::Direct(client) => {
                    let parsed;
                    let uri = match uri {
                        Some(uri) => uri,
                        None => {
                            parsed = parse_uri(url)?;
                            &parsed
                        }
                    };
                    if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
                        return client
                            .plain
                            .send(uri, binary, Some(knative), &headers, &body, max_body)
                            .await;
                    }
                    let mut request = Request::new(Full::new(body));
                    *request.method_mut() = Method::POST;
                    *request.headers_mut() = all_headers(headers);
                    *request.uri_mut() = uri.clone();
                    let resp = client
                        .tls
                        .request(request)
                        .await
                        .map_err(|e| failed(&e, e.is_connect()))?;
                    read_answer(resp, max_body).await
                }
                HttpClient::Proxied(client) => {
                    let resp = client
                        .post(url.clone())
                        .headers(all_headers(headers))
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| failed(&e, e.is_connect()))?;
                    read_answer(http::Response::from(resp), max_body).await
                }
            }
        };
        within(timeout, exchange).await
    }
}

/// `exchange`'s outcome, or [`SendError::Timeout`] when it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    exchange: impl std::future::Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(SendError::Timeout))
}

/// POSTs events in binary mode to `http://` destinations over the plain pool,
/// outside a trigger and without Knative's delivery headers: the sidecar's forwarder
/// sending its outbox to the broker, which with reqwest spent about half of the
/// sidecar's CPU in the client (`bench/README.md`, "The sidecar's forwarder").
#[derive(Debug, Default)]
pub struct PlainPoster {
    pool: PlainPool,
}

impl PlainPoster {
    /// A poster, unless the environment names a proxy: then the caller's reqwest
    /// client, which honours it (and `NO_PROXY`), sends instead.
    pub fn unless_proxied() -> Option<Self> {
        (!proxy_in_env()).then(Self::default)
    }

    /// POSTs `event` in binary mode, with `headers`, to `uri` (scheme `http`) and
    /// reads the answer (its body kept up to `max_body`), all within `timeout`.
    /// Err: why no answer came, as a user reads it.
    pub async fn post_binary(
        &self,
        uri: &Uri,
        event: &cemesh_proto::Event,
        headers: &HeaderMap,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, String> {
        let started = Instant::now();
        let body = event.data.clone().unwrap_or_default();
        let exchange = self
            .pool
            .send(uri, Some((event, None)), None, headers, &body, max_body);
        within(timeout, exchange)
            .await
            .map_err(|e| e.describe(timeout, started))
    }
}

/// `url` as the `Uri` hyper sends to.
pub(crate) fn parse_uri(url: &reqwest::Url) -> Result<Uri, SendError> {
    url.as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| SendError::Other(e.to_string()))
}

/// An exchange that failed before an answer came, by its innermost cause.
fn failed(e: &(dyn std::error::Error + 'static), connect: bool) -> SendError {
    if connect {
        SendError::Connect(root_cause(e))
    } else {
        SendError::Other(root_cause(e))
    }
}

/// Reads an answer's body whole, unless it is (or declares itself) longer than
/// `max_body`: then it is not kept.
async fn read_answer<B>(resp: http::Response<B>, max_body: usize) -> Result<Answer, SendError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    if declared_len(&parts.headers).is_some_and(|n| n > max_body as u64) {
        return Ok(too_long(status, parts.headers));
    }
    match http_body_util::Limited::new(body, max_body).collect().await {
        Ok(body) => Ok(Answer {
            status,
            headers: parts.headers,
            body: body.to_bytes(),
            over_limit: false,
        }),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(too_long(status, parts.headers)),
        Err(e) => Err(SendError::Other(root_cause(&*e))),
    }
}

/// The `Content-Length` an answer declares.
fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// An answer whose body was longer than the caller takes.
fn too_long(status: u16, headers: HeaderMap) -> Answer {
    Answer {
        status,
        headers,
        body: Bytes::new(),
        over_limit: true,
    }
}

/// Whether the environment names a proxy for outgoing requests.
fn proxy_in_env() -> bool {
    ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"]
        .iter()
        .any(|name| {
            [name.to_string(), name.to_lowercase()]
                .iter()
                .any(|n| std::env::var_os(n).is_some_and(|v| !v.is_empty()))
        })
}

/// reqwest with the same roots and pool, for proxied deliveries.
fn proxied(roots: &[Vec<u8>], ca: Option<&crate::signing::CaCerts>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        // Every attempt is the pipeline's to count and retry.
        .retry(reqwest::retry::never().max_retries_per_request(0));
    for der in roots {
        match reqwest::Certificate::from_der(der) {
            Ok(cert) => builder = builder.add_root_certificate(cert),
            Err(e) => {
                tracing::warn!(error = %e, "A CA certificate was not usable; deliveries do not trust it")
            }
        }
    }
    for cert in ca.map(|c| c.certificates()).unwrap_or_default() {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().unwrap_or_default()
}

/// The innermost error of a chain (a client's own message is often "error sending
/// request"; the cause, e.g. "Connection refused", is what a user needs).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that answers every connection's first request with `answer`.
    async fn answering(answer: &'static [u8]) -> reqwest::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        url.parse().unwrap()
    }

    async fn post(url: &reqwest::Url, max_body: usize) -> Answer {
        HttpClient::new(&[], None)
            .post(
                url,
                None,
                None,
                KnativeHeaders { namespace: "ns" },
                HeaderMap::new(),
                Bytes::new(),
                Duration::from_secs(5),
                max_body,
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_body_past_the_limit_is_not_kept_declared_or_chunked() {
        let declared = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
        let chunked = answering(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n",
        )
        .await;
        for url in [&declared, &chunked] {
            let whole = post(url, 10).await;
            assert_eq!((whole.status, whole.over_limit), (200, false));
            assert_eq!(&whole.body[..], b"0123456789");
            let cut = post(url, 9).await;
            assert_eq!((cut.status, cut.over_limit), (200, true));
            assert!(cut.body.is_empty());
        }
    }
}
