//! Wire details a subscriber sees, read from the raw HTTP request rather than through
//! our own decoder (a symmetric bug in encode and decode would hide from it).

use std::time::Duration;

use bytes::Bytes;
use cemesh_proto::Event;
use cemesh_tests::*;
use http::header::CONTENT_TYPE;

const WAIT: Duration = Duration::from_secs(20);

fn event(id: &str, content_type: &str) -> Event {
    let mut e = Event::new(id, "/wire", "com.example.wire");
    e.datacontenttype = Some(content_type.into());
    e.data = Some(Bytes::from_static(b"hello"));
    e
}

/// Binding §3.1.1: `Content-Type` is an ordinary header and carries
/// `datacontenttype` as it is; only `ce-` headers are percent-encoded. Checked for
/// each way in (binary, structured JSON, structured protobuf) and each way out
/// (the subscriber, and the dead-letter sink after a refused delivery).
#[tokio::test(flavor = "multi_thread")]
async fn content_type_reaches_subscribers_exactly_as_sent() {
    let sub = Subscriber::start().await;
    let refusing = Subscriber::start().await;
    refusing.set_status(400);
    let sink = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("ok", "default", &sub.url(), &[]),
        format!(
            "{}  delivery:\n    retry: 0\n    deadLetterSink:\n      uri: {}\n",
            trigger_yaml("refused", "default", &refusing.url(), &[]),
            sink.url()
        ),
    ]));
    let url = mesh.broker_url("default", "default");
    let c = client();
    let cases = [
        ("binary", "text/plain; charset=utf-8"),
        ("json", "application/json; charset=utf-8"),
        ("protobuf", "text/csv; header=present; charset=\"utf-8\""),
    ];

    let resp = post_binary(&c, &url, &event(cases[0].0, cases[0].1)).await;
    assert_eq!(resp.status(), 202);
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, "application/cloudevents+json")
        .body(cemesh_proto::json::encode_event(&event(
            cases[1].0, cases[1].1,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = c
        .post(&url)
        .header(CONTENT_TYPE, "application/cloudevents+protobuf")
        .body(cemesh_proto::protobuf::encode_event(&event(
            cases[2].0, cases[2].1,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    for (who, got) in [
        ("subscriber", sub.wait_for(3, WAIT).await),
        ("dead-letter sink", sink.wait_for(3, WAIT).await),
    ] {
        assert_eq!(got.len(), 3, "{who}; logs:\n{}", mesh.logs());
        for (id, ct) in cases {
            let r = got
                .iter()
                .find(|r| r.headers.get("ce-id").is_some_and(|v| v == id))
                .unwrap_or_else(|| panic!("{who} did not get event {id}"));
            assert_eq!(
                r.headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap()),
                Some(ct),
                "{who}, event {id}"
            );
            assert_eq!(&r.body[..], b"hello");
        }
    }
}
