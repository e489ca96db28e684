//! The gRPC ingress in process: a server on 127.0.0.1:0 over memory channels, the
//! typed client from `send_grpc`, and raw tonic clients for health, reflection and
//! `Admin` (over a control plane on a temporary directory).

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

use cemesh_ingress::grpc::GrpcPublisher;

struct Harness {
    addr: SocketAddr,
    channel: Arc<dyn Channel>,
    subscription: Arc<dyn Subscription>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<crate::error::Result<()>>,
    control: Arc<crate::control::ControlPlane>,
    dir: tempfile::TempDir,
}

/// A control plane on `dir` (`config/` for files, `data/` for the rest), on memory
/// channels, with `files` written into `config/` first.
async fn admin_context(dir: &std::path::Path, files: &[(&str, &str)]) -> super::AdminContext {
    use crate::config::{ChannelKind, LogFormat, Settings};
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    for (name, text) in files {
        std::fs::write(config_dir.join(name), text).expect("write manifest");
    }
    let settings = Settings {
        config_dir,
        data_dir: dir.join("data"),
        ingress_addr: ([127, 0, 0, 1], 0).into(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        channel: ChannelKind::Memory,
        max_body_bytes: crate::config::DEFAULT_MAX_BODY,
        service_url_template: crate::config::DEFAULT_SERVICE_TEMPLATE.to_owned(),
        services: Default::default(),
        images: Default::default(),
        log_format: LogFormat::Text,
        log_level: None,
        shutdown_grace: Duration::from_secs(1),
        api_writes: true,
        min_free_disk: 0,
        sled_cache_bytes: crate::mesh::DEFAULT_SLED_CACHE_BYTES,
        sled_commit_delay: cemesh_channels::sled::DEFAULT_COMMIT_DELAY,
        journal: Default::default(),
        max_pending_bytes: cemesh_ingress::DEFAULT_MAX_PENDING_BYTES,
        header_budget: Default::default(),
        tls: None,
        limits: Default::default(),
        auth: Default::default(),
        tls_client_ca: None,
        insecure_admin: false,
        oidc_issuer: None,
        #[cfg(feature = "kafka")]
        kafka: None,
    };
    let mesh = crate::mesh::Mesh::new(
        Routes::default(),
        crate::mesh::Channels::new(settings.data_dir.clone()),
    );
    let (registry, background) = (mesh.registry(), mesh.background());
    let replays =
        crate::replay::Replays::new(&settings.data_dir, registry.clone(), background.clone());
    let control = crate::control::ControlPlane::start(mesh, settings, "http://127.0.0.1:1".into())
        .await
        .expect("control plane");
    super::AdminContext {
        control,
        registry,
        background,
        guard: Default::default(),
        replays,
    }
}

impl Harness {
    /// One broker `default/orders` on a memory channel of `max_records`, limit
    /// `max_body_bytes`.
    async fn start(max_records: usize, max_body_bytes: usize) -> Harness {
        Self::start_with(max_records, max_body_bytes, &[]).await
    }

    /// As [`Harness::start`], with `files` in the control plane's config dir.
    async fn start_with(
        max_records: usize,
        max_body_bytes: usize,
        files: &[(&str, &str)],
    ) -> Harness {
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
                binary: Arc::new(cemesh_ingress::AnyBinary),
                access: Arc::default(),
                stamps: true,
                event_types: Arc::default(),
                dedup: None,
                journal: None,
                metrics: Default::default(),
            }),
        )]));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let keda = crate::keda::service(Default::default(), Default::default());
        let dir = tempfile::tempdir().expect("temp dir");
        let admin = admin_context(dir.path(), files).await;
        let control = admin.control.clone();
        let server = tokio::spawn(super::serve(
            listener,
            routes,
            keda,
            admin,
            Default::default(),
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        Harness {
            addr,
            channel,
            subscription,
            stop: Some(stop),
            server,
            control,
            dir,
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
        self.control.shutdown(Duration::from_secs(1)).await;
        drop(self.dir);
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
    assert!(
        err.message().starts_with("batch event at index 1 (from 0"),
        "{err:?}"
    );

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
    for service in ["", "cemesh.v1.Publisher", "cemesh.v1.Admin"] {
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
    assert!(names.contains(&"cemesh.v1.Admin".to_owned()), "{names:?}");
    h.shutdown().await;
}

const TRIGGER: &str = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:9/\n";

#[tokio::test]
async fn admin_applies_lists_gets_and_deletes_resources() {
    use cemesh_proto::pb::cemesh::v1::admin_client::AdminClient;
    use cemesh_proto::pb::cemesh::v1::{
        ApplyOutcome, ApplyResourceRequest, DeleteResourceRequest, GetResourceRequest,
        ListDeadLettersRequest, ListResourcesRequest, ResourceKind,
    };

    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n";
    let h = Harness::start_with(10, 1 << 20, &[("mesh.yaml", broker)]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminClient::new(channel);
    let apply = |manifest: &str| ApplyResourceRequest {
        kind: ResourceKind::Trigger as i32,
        namespace: String::new(),
        name: "t".into(),
        manifest: manifest.into(),
    };

    let a = admin
        .apply_resource(apply(TRIGGER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.applied, ApplyOutcome::Created as i32);
    let r = a.resource.unwrap();
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("default", "t"));
    assert_eq!(r.owner_file, "");
    let json: serde_json::Value = serde_json::from_str(&r.json).unwrap();
    assert_eq!(json["status"]["applied"], "created", "{json}");
    let a = admin
        .apply_resource(apply(TRIGGER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.applied, ApplyOutcome::Unchanged as i32);

    let got = admin
        .get_resource(GetResourceRequest {
            kind: ResourceKind::Trigger as i32,
            namespace: "default".into(),
            name: "t".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_str(&got.json).unwrap();
    assert_eq!(json["spec"]["broker"], "default", "{json}");

    let list = admin
        .list_resources(ListResourcesRequest {
            kind: ResourceKind::Broker as i32,
            namespace: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items.len(), 1);
    assert!(list.items[0].owner_file.ends_with("mesh.yaml"));

    let letters = admin
        .list_dead_letters(ListDeadLettersRequest {
            namespace: String::new(),
            trigger: "t".into(),
            after: None,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((letters.trigger.as_str(), letters.total), ("default/t", 0));

    let bad = admin
        .apply_resource(apply(&TRIGGER.replace("  broker: default\n", "")))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("broker"), "{bad:?}");

    let owned = admin
        .delete_resource(DeleteResourceRequest {
            kind: ResourceKind::Broker as i32,
            namespace: String::new(),
            name: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(owned.code(), Code::FailedPrecondition, "{owned:?}");
    assert!(owned.message().contains("mesh.yaml"), "{owned:?}");
    let file = owned.metadata().get(super::OWNER_FILE_METADATA).unwrap();
    assert!(file.to_str().unwrap().ends_with("mesh.yaml"));

    let unspecified = admin
        .get_resource(GetResourceRequest {
            kind: 0,
            namespace: String::new(),
            name: "t".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);

    admin
        .delete_resource(DeleteResourceRequest {
            kind: ResourceKind::Trigger as i32,
            namespace: String::new(),
            name: "t".into(),
        })
        .await
        .unwrap();
    let gone = admin
        .get_resource(GetResourceRequest {
            kind: ResourceKind::Trigger as i32,
            namespace: String::new(),
            name: "t".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    h.shutdown().await;
}

#[test]
fn control_plane_refusals_map_to_grpc_codes() {
    use crate::control::ApplyError;
    let s = super::admin::apply_status(ApplyError::Invalid(vec![
        "request body: spec.broker: missing".into(),
        "request body: spec.subscriber: missing".into(),
    ]));
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(
        s.message(),
        "request body: spec.broker: missing\nrequest body: spec.subscriber: missing"
    );
    let s = super::admin::apply_status(ApplyError::OwnedByFile("/etc/cemesh/mesh.yaml".into()));
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("/etc/cemesh/mesh.yaml"), "{s:?}");
    assert_eq!(
        s.metadata().get(super::OWNER_FILE_METADATA).unwrap(),
        "/etc/cemesh/mesh.yaml"
    );
    let s = super::admin::apply_status(ApplyError::NotFound("trigger default/t".into()));
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "trigger default/t not found")
    );
    let s = super::admin::apply_status(ApplyError::Storage("disk full".into()));
    assert_eq!(s.code(), Code::Internal);
}
