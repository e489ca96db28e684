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

use std::future::Future;
use std::time::Duration;

use cemesh_ingress::Routes;
use cemesh_proto::pb::cemesh::v1::admin_server::AdminServer;
use cemesh_proto::pb::cemesh::v1::publisher_server::PublisherServer;
use futures::FutureExt as _;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

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
    let admin = AdminServer::new(AdminService::new(admin));

    let shutdown = async move {
        shutdown.await;
        health
            .set_not_serving::<PublisherServer<PublisherService>>()
            .await;
        health.set_not_serving::<AdminServer<AdminService>>().await;
    }
    .shared();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            // Small acks and unary answers should not wait for Nagle.
            let _ = stream.set_nodelay(true);
        })
    });
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(publisher)
        .add_service(admin)
        .add_service(keda)
        .serve_with_incoming_shutdown(incoming, shutdown.clone());
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

#[cfg(test)]
mod tests;
