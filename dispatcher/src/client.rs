//! The HTTP client deliveries are sent with: hyper-util's pooled client over rustls,
//! trusting the system's web roots, the process's own issuers and a destination's
//! `CACerts`.
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
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Idle keep-alive connections kept per destination.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// How long an idle connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A destination's answer, body read whole (so the connection goes back to the pool).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
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

type Direct = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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
        HttpClient::Direct(Arc::new(client))
    }

    /// POSTs `body` to `url` and reads the whole answer, all within `timeout`.
    pub(crate) async fn post(
        &self,
        url: &reqwest::Url,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        match self {
            HttpClient::Direct(client) => {
                let uri: Uri = url
                    .as_str()
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| SendError::Other(e.to_string()))?;
                let mut request = Request::new(Full::new(body));
                *request.method_mut() = Method::POST;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                let exchange = async {
                    let resp = client.request(request).await.map_err(|e| {
                        if e.is_connect() {
                            SendError::Connect(root_cause(&e))
                        } else {
                            SendError::Other(root_cause(&e))
                        }
                    })?;
                    let (parts, body) = resp.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map_err(|e| SendError::Other(root_cause(&e)))?
                        .to_bytes();
                    Ok(Answer {
                        status: parts.status.as_u16(),
                        headers: parts.headers,
                        body,
                    })
                };
                tokio::time::timeout(timeout, exchange)
                    .await
                    .unwrap_or(Err(SendError::Timeout))
            }
            HttpClient::Proxied(client) => {
                let classify = |e: reqwest::Error| {
                    if e.is_timeout() {
                        SendError::Timeout
                    } else if e.is_connect() {
                        SendError::Connect(root_cause(&e))
                    } else {
                        SendError::Other(root_cause(&e))
                    }
                };
                let resp = client
                    .post(url.clone())
                    .headers(headers)
                    .body(body)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(classify)?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.map_err(classify)?;
                Ok(Answer {
                    status,
                    headers,
                    body,
                })
            }
        }
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
