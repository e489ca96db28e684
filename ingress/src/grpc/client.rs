//! A small typed client of `cemesh.v1.Publisher`, for `cemesh send --grpc`, tools
//! and tests.

use cemesh_proto::pb::cemesh::v1::publisher_client::PublisherClient;
use cemesh_proto::pb::cemesh::v1::{PublishAck, PublishBatchRequest, PublishRequest};
use cemesh_proto::pb::cloudevents::CloudEventBatch;
use cemesh_proto::protobuf::to_proto;
use cemesh_proto::Event;
use tonic::transport::{Channel, Endpoint};

/// Why [`GrpcPublisher::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("--grpc {0:?}: not HOST:PORT or a URL")]
    BadAddress(String),
    #[error("cannot connect to the gRPC ingress at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A connection to a cemesh gRPC ingress.
#[derive(Debug, Clone)]
pub struct GrpcPublisher {
    client: PublisherClient<Channel>,
}

impl GrpcPublisher {
    /// Connects to `addr`: `HOST:PORT`, or a URL (`http://HOST:PORT`).
    pub async fn connect(addr: &str) -> Result<Self, ConnectError> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| ConnectError::BadAddress(addr.to_owned()))?
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ConnectError::Unreachable { url, source })?;
        Ok(GrpcPublisher {
            client: PublisherClient::new(channel)
                .max_decoding_message_size(super::MAX_MESSAGE_BYTES),
        })
    }

    /// `Publish`: one event, answered once it is durable.
    pub async fn publish(
        &mut self,
        namespace: &str,
        broker: &str,
        event: &Event,
    ) -> Result<u32, tonic::Status> {
        let resp = self
            .client
            .publish(PublishRequest {
                namespace: namespace.to_owned(),
                broker: broker.to_owned(),
                event: Some(to_proto(event)),
            })
            .await?;
        Ok(resp.into_inner().accepted)
    }

    /// `PublishBatch`: all events or none.
    pub async fn publish_batch(
        &mut self,
        namespace: &str,
        broker: &str,
        events: &[Event],
    ) -> Result<u32, tonic::Status> {
        let resp = self
            .client
            .publish_batch(PublishBatchRequest {
                namespace: namespace.to_owned(),
                broker: broker.to_owned(),
                batch: Some(CloudEventBatch {
                    events: events.iter().map(to_proto).collect(),
                }),
            })
            .await?;
        Ok(resp.into_inner().accepted)
    }

    /// `PublishStream`: sends every event on one stream (naming the broker once) and
    /// collects one ack per event, in order.
    pub async fn publish_stream(
        &mut self,
        namespace: &str,
        broker: &str,
        events: Vec<Event>,
    ) -> Result<Vec<PublishAck>, tonic::Status> {
        let (namespace, broker) = (namespace.to_owned(), broker.to_owned());
        let requests = futures::stream::iter(events.into_iter().enumerate().map(move |(i, e)| {
            let first = i == 0;
            PublishRequest {
                namespace: if first {
                    namespace.clone()
                } else {
                    String::new()
                },
                broker: if first { broker.clone() } else { String::new() },
                event: Some(to_proto(&e)),
            }
        }));
        let mut acks = self.client.publish_stream(requests).await?.into_inner();
        let mut out = Vec::new();
        while let Some(ack) = acks.message().await? {
            out.push(ack);
        }
        Ok(out)
    }
}
