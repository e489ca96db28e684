//! The protobuf format end to end: gRPC publishing (`cemesh.v1.Publisher`: unary,
//! batch, stream) received over HTTP by a subscriber, structured protobuf over HTTP
//! both ways, the gRPC status codes of refusals, and `cemesh.v1.Admin`.
//!
//! The gRPC client here is deliberately hand-made (HTTP/2 with prior knowledge,
//! length-prefixed protobuf frames, `grpc-status` in the headers of a trailers-only
//! answer): it shows that nothing cemesh-specific is needed on the wire, and the test
//! crate needs no gRPC library. The `Admin` test uses tonic's generated client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use cemesh_proto::pb::cemesh::v1::{
    PublishAck, PublishBatchRequest, PublishRequest, PublishResponse,
};
use cemesh_proto::pb::cloudevents::CloudEventBatch;
use cemesh_proto::prost::Message;
use cemesh_proto::protobuf::{to_proto, BATCH_PROTOBUF, STRUCTURED_PROTOBUF};
use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;
use http::header::CONTENT_TYPE;

const WAIT: Duration = Duration::from_secs(20);

fn sample(id: &str) -> Event {
    let mut e = Event::new(
        id,
        "https://shop.example/orders",
        "com.example.order.created",
    );
    e.subject = Some("order 42".into());
    // The offset and the digits must survive protobuf's UTC Timestamp.
    e.time = Some("2026-11-24T10:00:00.120+05:30".into());
    e.dataschema = Some("https://schema.example/order/v1".into());
    e.datacontenttype = Some("application/json".into());
    e.data = Some(Bytes::from_static(
        br#"{"total": 12.50, "items": ["a", "b"]}"#,
    ));
    e.set_extension("region", AttributeValue::String("eu-west".into()));
    e.set_extension("priority", AttributeValue::Integer(-3));
    e.set_extension("urgent", AttributeValue::Boolean(true));
    e.set_extension("sig", AttributeValue::Binary(Bytes::from_static(&[0, 255])));
    e
}

/// What a subscriber sees in binary mode: typed extensions arrive as strings.
fn as_delivered(e: &Event) -> Event {
    let mut e = e.clone();
    for (_, v) in e.extensions.iter_mut() {
        *v = AttributeValue::String(v.to_canonical());
    }
    e
}

/// Without the arrival time the ingress adds.
fn unstamped(e: &Event) -> Event {
    let mut e = e.clone();
    e.remove_extension("knativearrivaltime");
    e
}

async fn mesh_with(manifests: &[String], extra: &[&str]) -> Cemesh {
    let mut b = Cemesh::builder()
        .manifest("mesh.yaml", &docs(manifests))
        .arg("--grpc-addr")
        .arg("127.0.0.1:0");
    for a in extra {
        b = b.arg(a);
    }
    tokio::task::spawn_blocking(move || b.start())
        .await
        .expect("start")
}

/// A gRPC answer: the status code (0 = OK) and message, and the response frames.
struct Answer<R> {
    code: i32,
    message: String,
    metadata: http::HeaderMap,
    messages: Vec<R>,
}

/// A minimal gRPC client over HTTP/2 with prior knowledge.
struct RawGrpc {
    client: reqwest::Client,
    base: String,
}

impl RawGrpc {
    fn new(addr: SocketAddr) -> Self {
        RawGrpc {
            client: reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .expect("client"),
            base: format!("http://{addr}"),
        }
    }

    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        requests: &[Req],
    ) -> Answer<Resp> {
        let mut body = BytesMut::new();
        for r in requests {
            let msg = r.encode_to_vec();
            body.put_u8(0);
            body.put_u32(u32::try_from(msg.len()).expect("small message"));
            body.put_slice(&msg);
        }
        let resp = self
            .client
            .post(format!("{}/cemesh.v1.Publisher/{method}", self.base))
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(body.freeze())
            .send()
            .await
            .expect("gRPC call");
        assert_eq!(resp.status(), 200, "gRPC answers HTTP 200");
        let headers = resp.headers().clone();
        let mut body = resp.bytes().await.expect("body");
        let mut messages = Vec::new();
        while body.remaining() >= 5 {
            let _compressed = body.get_u8();
            let len = body.get_u32() as usize;
            let frame = body.split_to(len);
            messages.push(Resp::decode(frame).expect("response message"));
        }
        // A refusal is a trailers-only answer: the status is in the headers. A success
        // puts it in trailers, which this client does not read; its frames decoded.
        let code = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Answer {
            code,
            message,
            metadata: headers,
            messages,
        }
    }

    async fn publish(&self, ns: &str, broker: &str, event: &Event) -> Answer<PublishResponse> {
        let req = PublishRequest {
            namespace: ns.into(),
            broker: broker.into(),
            event: Some(to_proto(event)),
        };
        self.call("Publish", &[req]).await
    }
}

/// Events published over gRPC and waiting in the memory channel hold their own
/// data, not the buffer tonic decoded the call from: 10 000 events of 1 KiB, one
/// per call, behind a subscriber that never answers, grow the broker's RSS by less
/// than 3 KiB an event (the HTTP counterpart is in `durability.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn grpc_events_do_not_pin_the_buffers_they_were_decoded_from() {
    let (_sub, manifests) = broker_holding_everything().await;
    let mesh = mesh_with(&[manifests], &[]).await;
    let addr = mesh.grpc;
    let send = |tag: &'static str, count: usize| async move {
        let producers: Vec<_> = (0..8)
            .map(|p| {
                tokio::spawn(async move {
                    let grpc = RawGrpc::new(addr);
                    for i in 0..count {
                        let a = grpc
                            .publish("default", "default", &kib_event(tag, p, i))
                            .await;
                        assert_eq!(a.code, 0, "{tag}{p}-{i}: {}", a.message);
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.expect("producer");
        }
    };
    let per_event = rss_bytes_per_event(&mesh, send, 50, 1_250, 10_000).await;
    assert!(per_event < 3 * 1024, "{per_event} bytes of RSS an event");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_unary_batch_and_stream_reach_an_http_subscriber() {
    let sub = Subscriber::start().await;
    let mesh = mesh_with(
        &[
            broker_yaml("default"),
            trigger_yaml("t", "default", &sub.url(), &[]),
        ],
        &[],
    )
    .await;
    let grpc = RawGrpc::new(mesh.grpc);

    let a = grpc.publish("default", "default", &sample("unary")).await;
    assert_eq!(a.code, 0, "{}", a.message);
    assert_eq!(a.messages[0].accepted, 1);

    let batch = PublishBatchRequest {
        namespace: "default".into(),
        broker: "default".into(),
        batch: Some(CloudEventBatch {
            events: vec![to_proto(&sample("batch1")), to_proto(&sample("batch2"))],
        }),
    };
    let a: Answer<PublishResponse> = grpc.call("PublishBatch", &[batch]).await;
    assert_eq!(a.code, 0, "{}", a.message);
    assert_eq!(a.messages[0].accepted, 2);

    let stream: Vec<PublishRequest> = (0..3)
        .map(|i| PublishRequest {
            namespace: if i == 0 {
                "default".into()
            } else {
                String::new()
            },
            broker: if i == 0 {
                "default".into()
            } else {
                String::new()
            },
            event: Some(to_proto(&sample(&format!("stream{i}")))),
        })
        .collect();
    let a: Answer<PublishAck> = grpc.call("PublishStream", &stream).await;
    assert_eq!(a.code, 0, "{}", a.message);
    let acks: Vec<(u64, String, i32)> = a
        .messages
        .into_iter()
        .map(|ack| (ack.sequence, ack.id, ack.code))
        .collect();
    assert_eq!(
        acks,
        vec![
            (0, "stream0".into(), 0),
            (1, "stream1".into(), 0),
            (2, "stream2".into(), 0)
        ]
    );

    let got = sub.wait_for(6, WAIT).await;
    assert_eq!(got.len(), 6, "logs:\n{}", mesh.logs());
    let mut ids = Vec::new();
    for r in &got {
        let e = r.event.clone().expect("a CloudEvent");
        ids.push(e.id.clone());
        assert_eq!(unstamped(&e), as_delivered(&sample(&e.id)));
    }
    ids.sort();
    assert_eq!(
        ids,
        ["batch1", "batch2", "stream0", "stream1", "stream2", "unary"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_refusals_carry_grpc_codes() {
    let mesh = mesh_with(
        &[broker_yaml("default")],
        &["--max-body-size", "2KiB", "--max-header-line-bytes", "1KiB"],
    )
    .await;
    let grpc = RawGrpc::new(mesh.grpc);

    // An attribute no binary-mode header could carry: refused like an invalid one.
    let mut wide = sample("1");
    wide.set_extension(
        "wide",
        cemesh_proto::AttributeValue::String("w".repeat(1200)),
    );
    let a = grpc.publish("default", "default", &wide).await;
    assert_eq!(a.code, 3, "INVALID_ARGUMENT: {}", a.message);
    assert_eq!(
        a.metadata
            .get("cemesh-attribute")
            .and_then(|v| v.to_str().ok()),
        Some("wide")
    );

    let a = grpc.publish("default", "nope", &sample("1")).await;
    assert_eq!(a.code, 5, "NOT_FOUND: {}", a.message);

    let mut bad = sample("1");
    bad.ty.clear();
    let a = grpc.publish("default", "default", &bad).await;
    assert_eq!(a.code, 3, "INVALID_ARGUMENT: {}", a.message);
    assert_eq!(
        a.metadata
            .get("cemesh-attribute")
            .and_then(|v| v.to_str().ok()),
        Some("type")
    );

    let mut big = sample("1");
    big.data = Some(Bytes::from(vec![b'x'; 4096]));
    big.datacontenttype = Some("application/octet-stream".into());
    let a = grpc.publish("default", "default", &big).await;
    assert_eq!(a.code, 8, "RESOURCE_EXHAUSTED: {}", a.message);

    let a = grpc.publish("default", "default", &sample("ok")).await;
    assert_eq!(a.code, 0, "{}", a.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn cemesh_send_grpc_publishes() {
    let sub = Subscriber::start().await;
    let mesh = mesh_with(
        &[
            broker_yaml("default"),
            trigger_yaml("t", "default", &sub.url(), &[]),
        ],
        &[],
    )
    .await;
    let addr = mesh.grpc.to_string();
    let url = mesh.broker_url("default", "default");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cemesh_bin())
            .args([
                "send",
                "--grpc",
                &addr,
                "--to",
                &url,
                "--type",
                "com.example.cli",
                "--source",
                "/cli",
                "--id",
                "cli-1",
                "--data",
                r#"{"via": "grpc"}"#,
            ])
            .output()
            .expect("run cemesh send")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sub.wait_for(1, WAIT).await;
    let e = got[0].event.clone().expect("a CloudEvent");
    assert_eq!(e.id, "cli-1");
    assert_eq!(e.data.as_deref(), Some(&br#"{"via": "grpc"}"#[..]));

    let addr = mesh.grpc.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cemesh_bin())
            .args([
                "send",
                "--grpc",
                &addr,
                "--to",
                "default/nope",
                "--type",
                "t",
                "--source",
                "/s",
            ])
            .output()
            .expect("run cemesh send")
    })
    .await
    .expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_structured_and_batch_over_http() {
    let sub = Subscriber::start().await;
    // sled stores the protobuf encoding: one encode on ingress, one decode on dispatch.
    let manifests = docs(&[
        broker_yaml("default"),
        trigger_yaml("t", "default", &sub.url(), &[]),
    ]);
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &manifests)
        .channel("sled")
        .start();
    let url = mesh.broker_url("default", "default");
    let c = client();
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, STRUCTURED_PROTOBUF)
        .body(cemesh_proto::protobuf::encode_event(&sample("single")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, BATCH_PROTOBUF)
        .body(cemesh_proto::protobuf::encode_batch(&[
            sample("b1"),
            sample("b2"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let mut invalid = sample("bad");
    invalid.source.clear();
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, STRUCTURED_PROTOBUF)
        .body(cemesh_proto::protobuf::encode_event(&invalid))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["attribute"], "source");
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, STRUCTURED_PROTOBUF)
        .body(&b"\xff\xff\xff"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let got = sub.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "logs:\n{}", mesh.logs());
    for r in &got {
        let e = r.event.clone().expect("a CloudEvent");
        assert_eq!(unstamped(&e), as_delivered(&sample(&e.id)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_may_ask_for_protobuf() {
    let sub = Subscriber::start().await;
    let trigger = trigger_yaml("t", "default", &sub.url(), &[]).replace(
        "  name: t\n",
        "  name: t\n  annotations:\n    cemesh.dev/delivery-format: protobuf\n",
    );
    let mesh = Cemesh::start(&docs(&[broker_yaml("default"), trigger]));
    let resp = post_binary(
        &client(),
        &mesh.broker_url("default", "default"),
        &sample("p1"),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let got = sub.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "logs:\n{}", mesh.logs());
    assert_eq!(
        got[0]
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some(STRUCTURED_PROTOBUF)
    );
    let e = cemesh_proto::protobuf::decode_event(got[0].body.clone()).expect("protobuf body");
    // Binary mode typed nothing, so the extensions were strings from the start.
    assert_eq!(unstamped(&e), as_delivered(&sample("p1")));
}

/// `cemesh.v1.Admin` end to end, with tonic's client: a trigger applied, listed, got
/// and deleted; refusals as INVALID_ARGUMENT (every problem), FAILED_PRECONDITION
/// (file-owned, naming the file) and NOT_FOUND; dead letters listed page by page,
/// redriven by id and all, and purged.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_admin_manages_triggers_and_dead_letters() {
    use cemesh_proto::pb::cemesh::v1::admin_client::AdminClient;
    use cemesh_proto::pb::cemesh::v1::{
        ApplyOutcome, ApplyResourceRequest, DeleteResourceRequest, GetResourceRequest,
        ListDeadLettersRequest, ListResourcesRequest, PurgeDeadLettersRequest,
        RedriveDeadLettersRequest, ResourceKind,
    };

    let sub = Subscriber::start().await;
    // 422 is final: each event is a dead letter after one attempt.
    sub.set_status(422);
    let mesh = mesh_with(&[broker_yaml("default")], &[]).await;
    let grpc = RawGrpc::new(mesh.grpc);
    let channel = mesh.grpc_channel().await;
    let mut admin = AdminClient::new(channel);
    let apply = |kind: ResourceKind, name: &str, manifest: String| ApplyResourceRequest {
        kind: kind as i32,
        namespace: "default".into(),
        name: name.into(),
        manifest,
    };
    let trigger_ref = |name: &str| GetResourceRequest {
        kind: ResourceKind::Trigger as i32,
        namespace: "default".into(),
        name: name.into(),
    };

    // Apply, then the same again.
    let manifest = trigger_yaml("api", "default", &sub.url(), &[]);
    let a = admin
        .apply_resource(apply(ResourceKind::Trigger, "api", manifest.clone()))
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(a.applied, ApplyOutcome::Created as i32);
    let r = a.resource.expect("the resource");
    assert_eq!(r.kind, ResourceKind::Trigger as i32);
    assert_eq!(r.owner_file, "", "owned by the API");
    let json: serde_json::Value = serde_json::from_str(&r.json).unwrap();
    assert_eq!(json["status"]["applied"], "created", "{json}");
    let a = admin
        .apply_resource(apply(ResourceKind::Trigger, "api", manifest))
        .await
        .expect("apply again")
        .into_inner();
    assert_eq!(a.applied, ApplyOutcome::Unchanged as i32);

    // Listed and got, the same JSON the REST API shows.
    let list = admin
        .list_resources(ListResourcesRequest {
            kind: ResourceKind::Trigger as i32,
            namespace: Some("default".into()),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.items.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["api"]);
    let got = admin
        .get_resource(trigger_ref("api"))
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_str(&got.json).unwrap();
    assert_eq!(json["spec"]["subscriber"]["uri"], sub.url(), "{json}");
    let rest: serde_json::Value = client()
        .get(mesh.admin_url("/v1/namespaces/default/triggers/api"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["spec"], json["spec"]);
    assert_eq!(rest["metadata"], json["metadata"]);

    // Invalid: the control plane's problems in the message, and nothing applied.
    let bad = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\nspec:\n  broker: nope\n  subscriber:\n    uri: http://127.0.0.1:1/\n";
    let e = admin
        .apply_resource(apply(ResourceKind::Trigger, "bad", bad.into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("spec.broker: broker default/nope is not defined"),
        "{e:?}"
    );
    let e = admin.get_resource(trigger_ref("bad")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // The broker is declared by mesh.yaml: FAILED_PRECONDITION naming the file.
    let e = admin
        .apply_resource(apply(
            ResourceKind::Broker,
            "default",
            broker_yaml("default"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("mesh.yaml"), "{e:?}");
    let file = e
        .metadata()
        .get("cemesh-owner-file")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(file.ends_with("mesh.yaml"), "{e:?}");

    // Dead letters: three refused events, listed two and one.
    for i in 0..3 {
        let a = grpc
            .publish("default", "default", &sample(&format!("dl{i}")))
            .await;
        assert_eq!(a.code, 0, "{}", a.message);
    }
    let list_req = |after: Option<u64>, limit: u32| ListDeadLettersRequest {
        namespace: "default".into(),
        trigger: "api".into(),
        after,
        limit,
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut page = loop {
        let page = admin
            .list_dead_letters(list_req(None, 2))
            .await
            .expect("list dead letters")
            .into_inner();
        if page.total == 3 {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{page:?}\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(page.trigger, "default/api");
    assert_eq!(page.items.len(), 2);
    let next = page.next.expect("a next page");
    let rest = admin
        .list_dead_letters(list_req(Some(next), 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
    page.items.extend(rest.items);
    // Ids increase across pages; the store order is the order deliveries failed,
    // which parallel delivery does not fix: look at them by event id.
    assert!(page.items.windows(2).all(|w| w[0].id < w[1].id));
    let event_id = |l: &cemesh_proto::pb::cemesh::v1::DeadLetter| {
        serde_json::from_str::<serde_json::Value>(&l.json).unwrap()["event"]["id"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    page.items.sort_by_key(event_id);
    let mut ids = Vec::new();
    for (i, l) in page.items.iter().enumerate() {
        assert_eq!(l.trigger, "default/api");
        assert!(!l.reason.is_empty(), "{l:?}");
        assert_eq!(l.attempts, 1, "{l:?}");
        assert!(l.dead_at.is_some(), "{l:?}");
        let event = cemesh_proto::protobuf::from_proto(l.event.clone().expect("the event"))
            .expect("a valid event");
        assert_eq!(event.id, format!("dl{i}"));
        assert_eq!(
            event
                .extension("knativeerrorcode")
                .map(AttributeValue::to_canonical)
                .as_deref(),
            Some("422")
        );
        let json: serde_json::Value = serde_json::from_str(&l.json).unwrap();
        assert_eq!(json["id"], l.id);
        assert_eq!(json["event"]["id"], event.id);
        ids.push(l.id);
    }

    // An unknown id refuses the whole redrive.
    let redrive = |ids: Vec<u64>| RedriveDeadLettersRequest {
        namespace: "default".into(),
        trigger: "api".into(),
        all: ids.is_empty(),
        ids,
    };
    let e = admin
        .redrive_dead_letters(redrive(vec![ids[0], 999_999]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("999999"), "{e:?}");

    // Redrive one, then the rest.
    sub.set_status(200);
    let before = sub.count();
    let r = admin
        .redrive_dead_letters(redrive(vec![ids[0]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.redriving, 1);
    let got = sub.wait_for(before + 1, WAIT).await;
    let e = got[before].event.clone().expect("a CloudEvent");
    assert_eq!(e.id, "dl0");
    assert!(e.extension("knativeerrorcode").is_none(), "{e:?}");
    let poller = admin.clone();
    let wait_total = move |want: u64| {
        let mut admin = poller.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let page = admin
                    .list_dead_letters(list_req(None, 0))
                    .await
                    .unwrap()
                    .into_inner();
                if page.total == want {
                    return page;
                }
                assert!(tokio::time::Instant::now() < deadline, "{page:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let page = wait_total(2).await;
    // An empty list is not "all": it is refused, and nothing moves.
    let e = admin
        .redrive_dead_letters(RedriveDeadLettersRequest {
            namespace: "default".into(),
            trigger: "api".into(),
            ids: Vec::new(),
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("ids is empty"), "{e:?}");
    let mut left: Vec<u64> = ids[1..].to_vec();
    left.sort_unstable();
    assert_eq!(page.items.iter().map(|l| l.id).collect::<Vec<_>>(), left);
    let r = admin
        .redrive_dead_letters(redrive(Vec::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.redriving, 2);
    sub.wait_for(before + 3, WAIT).await;
    wait_total(0).await;

    // Purge.
    sub.set_status(422);
    let a = grpc.publish("default", "default", &sample("dl3")).await;
    assert_eq!(a.code, 0, "{}", a.message);
    wait_total(1).await;
    let purged = admin
        .purge_dead_letters(PurgeDeadLettersRequest {
            namespace: "default".into(),
            trigger: "api".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.deleted, 1);
    assert_eq!(wait_total(0).await.items.len(), 0);

    // Delete: gone from the API and its dead letters with it.
    admin
        .delete_resource(DeleteResourceRequest {
            kind: ResourceKind::Trigger as i32,
            namespace: "default".into(),
            name: "api".into(),
        })
        .await
        .expect("delete");
    let e = admin.get_resource(trigger_ref("api")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = admin
        .list_dead_letters(list_req(None, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = admin
        .delete_resource(DeleteResourceRequest {
            kind: ResourceKind::Trigger as i32,
            namespace: "default".into(),
            name: "api".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

/// The gRPC listener's limits: past `--max-connections` a connection is closed at
/// once; one that sends nothing is closed at the header read timeout; then a new
/// connection is served (the HTTP/2 handshake is answered).
#[tokio::test(flavor = "multi_thread")]
async fn grpc_connections_are_limited_and_silent_ones_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker_yaml("default"))
        .arg("--max-connections")
        .arg("2")
        .arg("--header-read-timeout")
        .arg("700ms")
        .start();
    let addr = mesh.grpc;
    // How long until the server closes `s`, reading whatever it sends.
    async fn closed_after(s: &mut TcpStream) -> Duration {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server closes the connection within 10 s");
        started.elapsed()
    }
    let started = std::time::Instant::now();
    let mut silent = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let refused = closed_after(&mut third).await;
    assert!(
        refused < Duration::from_millis(400),
        "third closed after {refused:?}"
    );
    for s in &mut silent {
        closed_after(s).await;
    }
    let silent_for = started.elapsed();
    assert!(
        silent_for >= Duration::from_millis(600),
        "silent connections closed after {silent_for:?}, before the 700ms timeout"
    );
    // The permits are back: a client's HTTP/2 preface gets the server's SETTINGS.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    fresh
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut head))
        .await
        .expect("an answer within 5 s")
        .expect("the server's first frame");
    assert_eq!(head[3], 0x04, "a SETTINGS frame: {head:?}");
}
