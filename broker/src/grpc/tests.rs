//! The gRPC ingress in process: a server on 127.0.0.1:0 over memory channels, the
//! typed client from `send_grpc`, and raw tonic clients for health and reflection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cemesh_channels::{Channel, MemoryChannel, MemoryConfig, StartAt, Subscription};
use cemesh_ingress::{BrokerEndpoint, BrokerKey, Routes};
use cemesh_proto::pb::cemesh::v1::publisher_client::PublisherClient;
use cemesh_proto::pb::cemesh::v1::PublishRequest;
use cemesh_proto::{knative, AttributeValue, Event};
use tokio::net::TcpListener;
use tonic::Code;

use crate::send_grpc::GrpcPublisher;

struct Harness {
    addr: SocketAddr,
    channel: Arc<dyn Channel>,
    subscription: Arc<dyn Subscription>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    /// One broker `default/orders` on a memory channel of `max_records`, limit
    /// `max_body_bytes`.
    async fn start(max_records: usize, max_body_bytes: usize) -> Harness {
        let channel: Arc<dyn Channel> = Arc::new(MemoryChannel::new(MemoryConfig {
            max_records,
            ..MemoryConfig::default()
        }));
        let subscription = channel
            .subscribe("test", StartAt::Earliest)
            .await
            .expect("subscribe");
        let key = BrokerKey::new("default", "orders");
        let routes = Routes::default();
        routes.replace(HashMap::from([(
            key.clone(),
            Arc::new(BrokerEndpoint {
                key,
                channel: channel.clone(),
                max_body_bytes,
            }),
        )]));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let keda = crate::keda::service(Default::default(), Default::default());
        let server = tokio::spawn(super::serve(listener, routes, keda, async move {
            let _ = stopped.await;
        }));
        Harness {
            addr,
            channel,
            subscription,
            stop: Some(stop),
            server,
        }
    }

    async fn client(&self) -> GrpcPublisher {
        GrpcPublisher::connect(&self.addr.to_string())
            .await
            .expect("connect")
    }

    /// The next `n` stored events.
    async fn stored(&self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let records = tokio::time::timeout(
                Duration::from_secs(5),
                self.subscription.next(n - out.len()),
            )
            .await
            .expect("events were stored")
            .expect("next");
            out.extend(records.into_iter().map(|r| (*r.event).clone()));
        }
        out
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("server stopped")
            .expect("join")
            .expect("served");
    }
}

fn event(id: &str) -> Event {
    let mut e = Event::new(id, "/tests", "com.example.grpc");
    e.time = Some("2026-01-01T10:00:00.5+02:00".into());
    e.datacontenttype = Some("application/json".into());
    e.data = Some(Bytes::from_static(br#"{"n": 1.50}"#));
    e.extensions.push((
        "bin".into(),
        AttributeValue::Binary(Bytes::from_static(&[0, 1])),
    ));
    e
}

/// What the ingress adds; everything else must arrive as sent.
fn without_stamps(mut e: Event) -> Event {
    assert!(e.remove_extension(knative::ARRIVAL_TIME).is_some());
    assert_eq!(
        e.remove_extension(knative::BROKER_TTL),
        Some(AttributeValue::Integer(knative::DEFAULT_TTL))
    );
    e
}

#[tokio::test]
async fn unary_batch_and_stream_store_events_as_sent() {
    let h = Harness::start(10_000, 1 << 20).await;
    let mut c = h.client().await;
    assert_eq!(
        c.publish("default", "orders", &event("u1")).await.unwrap(),
        1
    );
    let batch = vec![event("b1"), event("b2"), event("b3")];
    assert_eq!(
        c.publish_batch("default", "orders", &batch).await.unwrap(),
        3
    );
    let stream: Vec<Event> = (0..50).map(|i| event(&format!("s{i}"))).collect();
    let acks = c
        .publish_stream("default", "orders", stream.clone())
        .await
        .unwrap();
    assert_eq!(acks.len(), 50);
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.sequence, i as u64);
        assert_eq!(ack.id, format!("s{i}"));
        assert_eq!(ack.code, 0, "{ack:?}");
    }
    let stored: Vec<Event> = h.stored(54).await.into_iter().map(without_stamps).collect();
    let mut expected = vec![event("u1")];
    expected.extend(batch);
    expected.extend(stream);
    assert_eq!(stored, expected);
    h.shutdown().await;
}

#[tokio::test]
async fn refusals_map_to_grpc_codes() {
    let h = Harness::start(2, 2048).await;
    let mut c = h.client().await;

    let err = c.publish("default", "nope", &event("1")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("default/nope"), "{err:?}");

    let mut bad = event("1");
    bad.source.clear();
    let err = c.publish("default", "orders", &bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.metadata()
            .get(super::ATTRIBUTE_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("source")
    );

    let mut looped = event("1");
    knative::set_ttl(&mut looped, 0);
    let err = c.publish("default", "orders", &looped).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let mut big = event("1");
    big.data = Some(Bytes::from(vec![b'x'; 4096]));
    let err = c.publish("default", "orders", &big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let err = c
        .publish_batch("default", "orders", &[event("1"), bad.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("event 1 of the batch"), "{err:?}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = PublisherClient::new(channel);
    let err = raw
        .publish(PublishRequest {
            namespace: "default".into(),
            broker: "orders".into(),
            event: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The channel holds 2 records for its subscription: the third push is refused.
    c.publish("default", "orders", &event("1")).await.unwrap();
    c.publish("default", "orders", &event("2")).await.unwrap();
    let err = c
        .publish("default", "orders", &event("3"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.metadata().get(super::RETRY_AFTER_METADATA).is_some());
    assert_eq!(h.channel.lag("test").await.unwrap(), 2);
    h.shutdown().await;
}

#[tokio::test]
async fn a_stream_acks_refusals_in_order_and_goes_on() {
    let h = Harness::start(10_000, 1 << 20).await;
    let mut c = h.client().await;
    let mut bad = event("bad");
    bad.ty.clear();
    let events = vec![event("a"), bad, event("c")];
    let acks = c.publish_stream("default", "orders", events).await.unwrap();
    let codes: Vec<(u64, &str, i32)> = acks
        .iter()
        .map(|a| (a.sequence, a.id.as_str(), a.code))
        .collect();
    assert_eq!(
        codes,
        vec![
            (0, "a", 0),
            (1, "bad", Code::InvalidArgument as i32),
            (2, "c", 0)
        ]
    );
    assert_eq!(acks[1].attribute, "type");
    let stored: Vec<String> = h.stored(2).await.into_iter().map(|e| e.id).collect();
    assert_eq!(stored, ["a", "c"]);

    // A stream whose first message names no broker.
    let acks = c.publish_stream("", "", vec![event("x")]).await.unwrap();
    assert_eq!(acks[0].code, Code::InvalidArgument as i32);
    h.shutdown().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let h = Harness::start(10, 1 << 20).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "cemesh.v1.Publisher"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, 1, "{service:?} is SERVING");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"cemesh.v1.Publisher".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    h.shutdown().await;
}
