//! The baseline: a bare forwarder that receives each POST and, before answering,
//! POSTs it on to the sink (once per trigger it matches), with no parsing and no
//! storage. Same generator, same sink, same process isolation as the broker: what is
//! left is the cost of two HTTP hops, the ceiling of any broker on this machine.
//!
//! It runs as a child process (`cemesh bench --internal-forwarder SINK_URL`) so its CPU
//! and memory are measured exactly like the broker's. It prints `listening ADDR` on
//! stdout and exits when its stdin closes, so it never outlives the bench.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::MATCH_HEADER;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Forward {
    client: HttpClient,
    /// One destination per trigger.
    targets: Vec<Uri>,
    /// Forward only events tagged as matching (when the run filters).
    filter: bool,
}

/// Runs the forwarder until stdin closes.
pub async fn serve_child(sink_base: &str, triggers: usize, filter: bool) -> anyhow::Result<()> {
    let targets = (0..triggers)
        .map(|i| {
            format!("{sink_base}/t/{i}")
                .parse::<Uri>()
                .with_context(|| format!("bad sink URL {sink_base:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let fwd = Arc::new(Forward {
        client,
        targets,
        filter,
    });
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("forwarder: cannot listen")?;
    let addr = listener.local_addr()?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr}")
            .and_then(|()| out.flush())
            .context("forwarder: cannot write to stdout")?;
    }
    let accept = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Forwarder accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let fwd = fwd.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, fwd.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    // The parent holds our stdin; EOF means it is gone (or done with us).
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = gone_tx.send(());
    });
    tokio::select! {
        () = accept => {}
        _ = gone_rx => {}
    }
    Ok(())
}

async fn handle(
    req: Request<Incoming>,
    fwd: Arc<Forward>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let status = match body.collect().await {
        Err(_) => StatusCode::BAD_REQUEST,
        Ok(body) => {
            let body = body.to_bytes();
            let pass = !fwd.filter
                || parts
                    .headers
                    .get(MATCH_HEADER)
                    .is_some_and(|v| v.as_bytes() == b"yes");
            let mut headers = parts.headers;
            headers.remove(HOST);
            headers.remove(CONNECTION);
            let client = &fwd.client;
            let sends = fwd.targets.iter().filter(|_| pass).map(|uri| {
                let mut out = Request::new(Full::new(body.clone()));
                *out.method_mut() = parts.method.clone();
                *out.uri_mut() = uri.clone();
                *out.headers_mut() = headers.clone();
                async move {
                    match client.request(out).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            resp.into_body().collect().await.is_ok() && ok
                        }
                        Err(_) => false,
                    }
                }
            });
            let all_ok = futures::future::join_all(sends)
                .await
                .into_iter()
                .all(|ok| ok);
            if all_ok {
                StatusCode::ACCEPTED
            } else {
                StatusCode::BAD_GATEWAY
            }
        }
    };
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = status;
    Ok(resp)
}
