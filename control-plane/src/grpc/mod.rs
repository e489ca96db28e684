//! The gRPC listener: `cemesh.v1.Publisher` on its own address, beside the HTTP
//! ingress, and `cemesh.v1.Admin`, the admin REST API's operations ([`admin`]).
//!
//! Producers that already speak gRPC (or want a typed client, HTTP/2 multiplexing
//! and a stream with per-event acks) publish here; the events land in the same
//! channels, through the same route table, with the same validation, stamping and
//! durability promise as `POST /{namespace}/{broker}` (the service is the ingress
//! crate's, `cemesh_ingress::grpc`). Refusals carry the HTTP ingress's messages under
//! gRPC codes. The server also answers gRPC
//! health checks (`grpc.health.v1.Health`, for load balancers and Kubernetes probes)
//! and reflection (`grpc.reflection.v1` and `v1alpha`, so `grpcurl` works without
//! the `.proto` files).

mod admin;
mod guard;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cemesh_ingress::server::{ConnectionGate, Limits};
use cemesh_ingress::tls::TlsAcceptor;
use cemesh_ingress::Routes;
use cemesh_proto::pb::cemesh::v1::admin_server::AdminServer;
use cemesh_proto::pb::cemesh::v1::publisher_server::PublisherServer;
use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::either::Either;

pub use admin::{AdminContext, AdminService, OWNER_FILE_METADATA};
pub use cemesh_ingress::grpc::{
    PublisherService, ATTRIBUTE_METADATA, MAX_MESSAGE_BYTES, RETRY_AFTER_METADATA,
};

/// How long open streams may go on after shutdown starts before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `cemesh.v1.Publisher`, `cemesh.v1.Admin` (on `admin`), KEDA's external
/// scaler, health and reflection on `listener` until `shutdown` resolves; then stops taking calls, lets calls in flight finish for up to
/// [`SHUTDOWN_GRACE`], and returns.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    keda: cemesh_proto::pb::externalscaler::external_scaler_server::ExternalScalerServer<
        crate::keda::Scaler,
    >,
    admin: AdminContext,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::error::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PublisherServer<PublisherService>>()
        .await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cemesh_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(crate::Error::Reflection)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cemesh_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(crate::Error::Reflection)?;
    let publisher = PublisherServer::new(PublisherService::new(routes))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let guard = admin.guard.clone();
    let admin = guard::Guarded::new(AdminServer::new(AdminService::new(admin)), guard);

    let shutdown = async move {
        shutdown.await;
        health
            .set_not_serving::<PublisherServer<PublisherService>>()
            .await;
        health.set_not_serving::<AdminServer<AdminService>>().await;
    }
    .shared();
    let (incoming, accepting) = incoming(listener, limits, tls);
    let server = tonic::transport::Server::builder()
        // A unary call must be read, handled and answered within this (a client's
        // shorter `grpc-timeout` wins); a stream only until its response starts.
        .timeout(limits.header_read_timeout + limits.body_read_timeout + CALL_ALLOWANCE)
        // Pings find peers that went away without closing.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(publisher)
        .add_service(admin)
        .add_service(keda)
        .serve_with_incoming_shutdown(incoming, shutdown.clone());
    // Stops taking connections when the server returns.
    let _accepting = AbortOnDrop(accepting.abort_handle());
    let cut_off = async move {
        shutdown.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.map_err(crate::Error::Grpc),
        () = cut_off => {
            tracing::warn!("gRPC calls still open after the shutdown grace period; closing them");
            Ok(())
        }
    }
}

/// Time a unary gRPC call gets to be handled beyond the header and body read
/// timeouts (see `serve`): an append waits for the channel's durability.
pub const CALL_ALLOWANCE: Duration = Duration::from_secs(60);
/// How often an HTTP/2 ping checks a gRPC connection, and how long its answer may take.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts connections for tonic: past the connection limit a connection is closed
/// at once (HTTP/2 has no answer before its handshake, and a client sees UNAVAILABLE
/// and retries); with TLS each handshake runs in its own task, bounded by the header
/// read timeout, so a slow client never holds up the others.
fn incoming(
    listener: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
) -> (
    tokio_stream::wrappers::ReceiverStream<std::io::Result<Admitted>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let gate = ConnectionGate::new("gRPC", limits.max_connections);
    let first_bytes = limits.header_read_timeout;
    let accepting = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(listener = "gRPC", error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(permit) = gate.admit() else { continue };
            // Small acks and unary answers should not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let admitted = move |stream, identity| Admitted {
                stream,
                info: Peer { identity },
                _permit: permit,
                first_byte: Some(Box::pin(tokio::time::sleep(first_bytes))),
            };
            match &tls {
                None => {
                    if tx
                        .send(Ok(admitted(Either::Left(stream), None)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(acceptor) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        let handshake =
                            cemesh_ingress::tls::handshake(&acceptor, stream, first_bytes, "gRPC");
                        if let Some(tls) = handshake.await {
                            let identity = cemesh_ingress::tls::peer_identity(tls.get_ref().1);
                            let admitted = admitted(Either::Right(Box::new(tls)), identity);
                            let _ = tx.send(Ok(admitted)).await;
                        }
                    });
                }
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), accepting)
}

/// Ends the accept loop when the server is done.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type GrpcIo =
    Either<tokio::net::TcpStream, Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;

/// An admitted gRPC connection (plain or TLS): holds its place under the connection
/// limit, and is closed if its first bytes (the HTTP/2 preface) do not arrive within
/// the header read timeout.
struct Admitted {
    stream: GrpcIo,
    info: Peer,
    _permit: tokio::sync::OwnedSemaphorePermit,
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Who is on the other end of a gRPC connection: in each request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The verified client certificate's name (with `--tls-client-ca`).
    pub identity: Option<cemesh_ingress::tls::PeerIdentity>,
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
            Poll::Pending => {
                if let Some(deadline) = self.first_byte.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no HTTP/2 preface within the header read timeout",
                        )));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
