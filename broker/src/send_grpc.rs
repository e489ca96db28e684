//! `cemesh send --grpc ADDR`: publish through `cemesh.v1.Publisher` instead of HTTP.
//! Also a small typed client ([`GrpcPublisher`]) for tools and tests.

use anyhow::Context as _;
use cemesh_proto::pb::cemesh::v1::publisher_client::PublisherClient;
use cemesh_proto::pb::cemesh::v1::{PublishAck, PublishBatchRequest, PublishRequest};
use cemesh_proto::pb::cloudevents::CloudEventBatch;
use cemesh_proto::protobuf::to_proto;
use cemesh_proto::Event;
use tonic::transport::{Channel, Endpoint};

/// A connection to a cemesh gRPC ingress.
#[derive(Debug, Clone)]
pub struct GrpcPublisher {
    client: PublisherClient<Channel>,
}

impl GrpcPublisher {
    /// Connects to `addr`: `HOST:PORT`, or a URL (`http://HOST:PORT`).
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("--grpc {addr:?}: not HOST:PORT or a URL"))?
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gRPC ingress at {url}"))?;
        Ok(GrpcPublisher {
            client: PublisherClient::new(channel)
                .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES),
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

/// The broker named by `--to` when sending over gRPC: `NAMESPACE/BROKER`, or an
/// ingress URL whose path is `/NAMESPACE/BROKER` (so the same `--to` works for both).
pub fn parse_broker(to: &str) -> anyhow::Result<(String, String)> {
    let path = match to.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => to,
    };
    let path = path.trim_matches('/');
    match path.split('/').collect::<Vec<_>>()[..] {
        [ns, name] if !ns.is_empty() && !name.is_empty() => Ok((ns.to_owned(), name.to_owned())),
        _ => anyhow::bail!(
            "--to {to:?}: with --grpc, name the broker as NAMESPACE/BROKER \
             (or an ingress URL ending in /NAMESPACE/BROKER)"
        ),
    }
}

/// `cemesh send --grpc ADDR`: publishes `event` to the broker `to` names, prints the
/// outcome like the HTTP path does, and fails with the gRPC code and message.
pub async fn run(addr: &str, to: &str, event: &Event) -> anyhow::Result<()> {
    let (namespace, broker) = parse_broker(to)?;
    let mut publisher = GrpcPublisher::connect(addr).await?;
    match publisher.publish(&namespace, &broker, event).await {
        Ok(_) => {
            println!("OK (id {})", event.id);
            Ok(())
        }
        Err(status) => {
            let attribute = status
                .metadata()
                .get(crate::grpc::ATTRIBUTE_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(|a| format!(" (attribute {a})"))
                .unwrap_or_default();
            anyhow::bail!("{:?}: {}{attribute}", status.code(), status.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_names() {
        let ok = |s: &str| parse_broker(s).unwrap();
        assert_eq!(ok("default/orders"), ("default".into(), "orders".into()));
        assert_eq!(ok("/default/orders/"), ("default".into(), "orders".into()));
        assert_eq!(
            ok("http://127.0.0.1:8080/default/orders"),
            ("default".into(), "orders".into())
        );
        for bad in ["orders", "a/b/c", "http://127.0.0.1:8080", "/x//"] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
    }
}
