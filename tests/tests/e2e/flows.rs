//! Knative's Channels and Subscriptions, Sequence and Parallel, through the binary
//! with real HTTP subscribers.

use std::collections::HashSet;
use std::time::Duration;

use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;

const WAIT: Duration = Duration::from_secs(20);

fn event(id: &str, ty: &str) -> Event {
    let mut e = Event::new(id, "/flows/test", ty);
    e.datacontenttype = Some("application/json".into());
    e.data = Some(bytes::Bytes::from(format!("{{\"id\":\"{id}\"}}")));
    e
}

fn ext(e: &Event, name: &str) -> Option<String> {
    match e.extension(name) {
        Some(AttributeValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The `status.address.url` of a resource, once the admin API shows it ready.
async fn address(mesh: &Cemesh, path: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = mesh.admin_json(path).await;
        let ready = r["status"]["conditions"][0]["status"] == "True";
        if ready {
            return r["status"]["address"]["url"]
                .as_str()
                .unwrap_or_else(|| panic!("no address: {r}"))
                .to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "not ready: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(s: &Subscriber) -> Vec<String> {
    let mut v = s.ids();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_fans_out_to_three_subscriptions_and_one_failing_is_retried_and_dead_lettered() {
    let (a, b, bad, dls) = (
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
    );
    bad.set_status(500);
    let sub = |name: &str, url: &str, delivery: &str| {
        format!("apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: {name}\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: Channel\n    name: orders\n  subscriber:\n    uri: {url}\n{delivery}")
    };
    let manifests = docs(&[
        // The channel's delivery applies to subscriptions that set none.
        format!("apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: orders\nspec:\n  delivery:\n    retry: 2\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      uri: {}\n", dls.url()),
        sub("a", &a.url(), ""),
        sub("b", &b.url(), "  delivery:\n    retry: 0\n"),
        sub("bad", &bad.url(), ""),
    ]);
    let mesh = Cemesh::builder()
        .channel("sled")
        .manifest("mesh.yaml", &manifests)
        .start();
    let url = address(&mesh, "/v1/namespaces/default/channels/orders").await;
    assert_eq!(url, mesh.broker_url("default", "orders-kn-channel"));
    let c = client();
    let mut sent = Vec::new();
    for i in 0..20 {
        let id = format!("e{i:02}");
        let resp = post_binary(&c, &url, &event(&id, "com.example.order")).await;
        assert_eq!(resp.status(), 202);
        sent.push(id);
    }
    a.wait_for(20, WAIT).await;
    b.wait_for(20, WAIT).await;
    dls.wait_for(20, WAIT).await;
    // Every event once to each healthy subscription; 3 attempts each to the bad one.
    a.settle(Duration::from_millis(300)).await;
    assert_eq!(ids(&a), sent);
    assert_eq!(ids(&b), sent);
    assert_eq!(bad.count(), 60);
    let letters: HashSet<String> = dls.ids().into_iter().collect();
    assert_eq!(letters.len(), 20);
    for r in dls.received() {
        let e = r.event.expect("a CloudEvent");
        assert_eq!(ext(&e, "knativeerrorcode").as_deref(), Some("500"));
    }
    // A channel passes events on unaltered: no arrival time, no hop budget.
    for r in a.received() {
        let e = r.event.expect("a CloudEvent");
        assert!(e.extension("knativearrivaltime").is_none(), "{e:?}");
        assert!(e.extension("knativebrokerttl").is_none(), "{e:?}");
        assert_eq!(
            e.data.as_deref(),
            Some(format!("{{\"id\":\"{}\"}}", e.id).as_bytes())
        );
    }
    // Knative's status: the channel lists its subscribers, each subscription its URIs.
    let ch = mesh
        .admin_json("/v1/namespaces/default/channels/orders")
        .await;
    let subs = ch["status"]["subscribers"].as_array().expect("subscribers");
    assert_eq!(subs.len(), 3, "{ch}");
    assert!(subs.iter().all(|s| s["ready"] == "True"), "{ch}");
    let s = mesh
        .admin_json("/v1/namespaces/default/subscriptions/a")
        .await;
    let physical = &s["status"]["physicalSubscription"];
    assert_eq!(physical["subscriberUri"], a.url().as_str(), "{s}");
    assert_eq!(physical["deadLetterSinkUri"], dls.url().as_str(), "{s}");
    // The CLI lists them.
    let admin = format!("http://{}", mesh.admin);
    let (ok, out, err) = cemesh_cli(&["get", "subscriptions", "--admin", &admin]);
    assert!(ok, "{err}");
    assert!(out.contains("bad") && out.contains("orders"), "{out}");
    // Knative's channel data plane: 405 with Allow, 404 for an unknown channel.
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers().get("allow").is_some());
    let resp = post_binary(
        &c,
        &mesh.broker_url("default", "nope-kn-channel"),
        &event("x", "t"),
    )
    .await;
    assert_eq!(resp.status(), 404);
}

/// Sets extension `steps` to what it was plus `mark`.
fn mark(mut e: Event, mark: &str) -> Event {
    let steps = match ext(&e, "steps") {
        Some(s) => format!("{s},{mark}"),
        None => mark.to_owned(),
    };
    e.set_extension("steps", AttributeValue::String(steps));
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_reply_reaches_a_broker_and_one_without_reply_is_dropped_and_counted() {
    let (replier, echo, sink) = (
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
    );
    replier.set_transform(|mut e| {
        e.id = format!("{}-reply", e.id);
        e.ty = "com.example.reply".into();
        Some(e)
    });
    echo.set_echo(true);
    let manifests = docs(&[
        broker_yaml("default"),
        trigger_yaml("replies", "default", &sink.url(), &[("type", "com.example.reply")]),
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: scratch\n".to_owned(),
        format!("apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: with-reply\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: scratch\n  subscriber:\n    uri: {}\n  reply:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: default\n", replier.url()),
        format!("apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: no-reply\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: scratch\n  subscriber:\n    uri: {}\n", echo.url()),
    ]);
    let mesh = Cemesh::start(&manifests);
    let url = address(&mesh, "/v1/namespaces/default/inmemorychannels/scratch").await;
    let c = client();
    for i in 0..3 {
        let resp = post_binary(&c, &url, &event(&format!("r{i}"), "com.example.in")).await;
        assert_eq!(resp.status(), 202);
    }
    let got = sink.wait_for(3, WAIT).await;
    let mut ids: Vec<String> = got
        .iter()
        .filter_map(|r| r.event.as_ref())
        .map(|e| e.id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["r0-reply", "r1-reply", "r2-reply"]);
    echo.wait_for(3, WAIT).await;
    // The echo's replies went nowhere, and were counted.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let metrics = mesh.metrics_text().await;
        let dropped = metrics.lines().find(|l| {
            l.starts_with("cemesh_trigger_replies_dropped_total{")
                && l.contains("trigger_name=\"subscription.no-reply\"")
        });
        if dropped.is_some_and(|l| l.ends_with(" 3")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{dropped:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink.settle(Duration::from_millis(300)).await.len(), 3);
    // The in-memory channel says it is not durable.
    let imc = mesh
        .admin_json("/v1/namespaces/default/inmemorychannels/scratch")
        .await;
    let conditions = imc["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Durable" && c["status"] == "False"),
        "{imc}"
    );
    let s = mesh
        .admin_json("/v1/namespaces/default/subscriptions/with-reply")
        .await;
    assert_eq!(
        s["status"]["physicalSubscription"]["replyUri"],
        mesh.broker_url("default", "default").as_str(),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_step_sequence_transforms_each_event_and_a_kill_9_between_steps_loses_nothing() {
    let (s1, s2, s3, last) = (
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
    );
    s1.set_transform(|e| Some(mark(e, "1")));
    s2.set_transform(|e| Some(mark(e, "2")));
    s3.set_transform(|e| Some(mark(e, "3")));
    // Step 2 is down: step 1's replies wait, durable, on the second channel.
    s2.set_status(503);
    let manifest = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: pipeline\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: Channel\n  steps:\n    - uri: {}\n    - uri: {}\n      delivery:\n        retry: 1000\n        backoffDelay: PT0.05S\n    - uri: {}\n  reply:\n    uri: {}\n",
        s1.url(),
        s2.url(),
        s3.url(),
        last.url()
    );
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest("mesh.yaml", &manifest)
        .start();
    let url = address(&mesh, "/v1/namespaces/default/sequences/pipeline").await;
    assert_eq!(
        url,
        mesh.broker_url("default", "pipeline-kn-sequence-0-kn-channel")
    );
    let c = client();
    let sent: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for id in &sent {
        let resp = post_binary(&c, &url, &event(id, "com.example.step")).await;
        assert_eq!(resp.status(), 202);
    }
    // Step 1 took every event and step 2 has refused some: kill -9 between the steps.
    let deadline = std::time::Instant::now() + WAIT;
    while s1.taken_ids().len() < sent.len() || s2.count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "step 1 took {:?}",
            s1.taken_ids()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    mesh.kill9();
    assert_eq!(last.count(), 0);
    s2.set_status(200);
    mesh.restart();
    address(&mesh, "/v1/namespaces/default/sequences/pipeline").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let done: HashSet<String> = last.ids().into_iter().collect();
        if sent.iter().all(|id| done.contains(id)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{done:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each event went through every step, in order.
    for r in last.received() {
        let e = r.event.expect("a CloudEvent");
        assert_eq!(ext(&e, "steps").as_deref(), Some("1,2,3"), "{e:?}");
        assert_eq!(
            e.data.as_deref(),
            Some(format!("{{\"id\":\"{}\"}}", e.id).as_bytes())
        );
    }
    let seq = mesh
        .admin_json("/v1/namespaces/default/sequences/pipeline")
        .await;
    assert_eq!(
        seq["status"]["channelStatuses"].as_array().map(Vec::len),
        Some(3),
        "{seq}"
    );
    assert_eq!(
        seq["status"]["subscriptionStatuses"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "{seq}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parallel_behind_a_trigger_runs_every_branch_and_a_filter_branch_only_for_what_passes() {
    let (filter, b0, b1, sink) = (
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
    );
    // The filter lets through what it answers with an event.
    filter.set_transform(|e| (e.ty == "com.example.keep").then_some(e));
    b0.set_transform(|e| Some(mark(e, "b0")));
    b1.set_transform(|e| Some(mark(e, "b1")));
    let manifests = docs(&[
        broker_yaml("default"),
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-parallel\nspec:\n  broker: default\n  filter:\n    attributes:\n      source: /flows/test\n  subscriber:\n    ref:\n      apiVersion: flows.knative.dev/v1\n      kind: Parallel\n      name: fork\n".to_owned(),
        format!("apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata:\n  name: fork\nspec:\n  branches:\n    - filter:\n        uri: {}\n      subscriber:\n        uri: {}\n    - subscriber:\n        uri: {}\n  reply:\n    uri: {}\n", filter.url(), b0.url(), b1.url(), sink.url()),
    ]);
    let mesh = Cemesh::start(&manifests);
    let url = address(&mesh, "/v1/namespaces/default/parallels/fork").await;
    assert_eq!(
        url,
        mesh.broker_url("default", "fork-kn-parallel-kn-channel")
    );
    let c = client();
    for i in 0..4 {
        let ty = if i % 2 == 0 {
            "com.example.keep"
        } else {
            "com.example.skip"
        };
        let resp = post_binary(
            &c,
            &mesh.broker_url("default", "default"),
            &event(&format!("p{i}"), ty),
        )
        .await;
        assert_eq!(resp.status(), 202);
    }
    // 2 kept by branch 0's filter, 4 through branch 1: 6 replies.
    let got = sink.wait_for(6, WAIT).await;
    assert_eq!(
        sink.settle(Duration::from_millis(300)).await.len(),
        6,
        "{got:?}"
    );
    let mut seen: Vec<(String, String)> = sink
        .received()
        .into_iter()
        .filter_map(|r| r.event)
        .map(|e| (e.id.clone(), ext(&e, "steps").unwrap_or_default()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("p0".into(), "b0".into()),
            ("p0".into(), "b1".into()),
            ("p1".into(), "b1".into()),
            ("p2".into(), "b0".into()),
            ("p2".into(), "b1".into()),
            ("p3".into(), "b1".into()),
        ]
    );
    assert_eq!(filter.count(), 4);
    assert_eq!(b0.count(), 2);
}

/// Knative's own examples (`examples/flows/config`, as Knative's docs write them)
/// run unchanged, with the Knative Services they name mapped to local subscribers.
#[tokio::test(flavor = "multi_thread")]
async fn knative_s_sequence_parallel_and_subscription_examples_run_unchanged() {
    let names = [
        "first",
        "second",
        "third",
        "event-display",
        "even-filter",
        "odd-filter",
        "even-transformer",
        "odd-transformer",
    ];
    let mut subs = std::collections::HashMap::new();
    for n in names {
        subs.insert(n, Subscriber::start().await);
    }
    // The appender of Knative's examples: marks the event; the third also retypes it.
    for (n, m) in [("first", "0"), ("second", "1")] {
        subs[n].set_transform(move |e| Some(mark(e, m)));
    }
    subs["third"].set_transform(|e| {
        let mut e = mark(e, "2");
        e.ty = "samples.http.mod3".into();
        Some(e)
    });
    let parity = |e: &Event| {
        serde_json::from_slice::<serde_json::Value>(e.data.as_deref().unwrap_or(b"{}"))
            .ok()
            .and_then(|v| v["n"].as_u64())
            .map(|n| n % 2 == 0)
    };
    subs["even-filter"].set_transform(move |e| (parity(&e) == Some(true)).then_some(e));
    subs["odd-filter"].set_transform(move |e| (parity(&e) == Some(false)).then_some(e));
    subs["even-transformer"].set_transform(|e| Some(mark(e, "even")));
    subs["odd-transformer"].set_transform(|e| Some(mark(e, "odd")));

    let tmp = tempfile::tempdir().unwrap();
    let server = tmp.path().join("server.yaml");
    let mut services = String::from("services:\n");
    for n in names {
        services.push_str(&format!("  {n}: {{url: \"{}\"}}\n", subs[n].url()));
    }
    std::fs::write(&server, services).unwrap();
    let dir = example_path("flows/config");
    let mut builder = Cemesh::builder()
        .arg("--config")
        .arg(server.to_str().unwrap());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        builder = builder.manifest(&name, &std::fs::read_to_string(f).unwrap());
    }
    let mesh = builder.start();
    for (plural, name) in [
        ("sequences", "sequence"),
        ("parallels", "odd-even-parallel"),
        ("channels", "my-channel"),
        ("inmemorychannels", "replies"),
    ] {
        address(&mesh, &format!("/v1/namespaces/default/{plural}/{name}")).await;
    }
    mesh.ready_resource("/v1/namespaces/default/subscriptions/my-subscription")
        .await;

    let c = client();
    // Sequence: a ping event through the broker, three steps, back into the broker.
    let resp = post_binary(
        &c,
        &mesh.broker_url("default", "default"),
        &event("ping-1", "dev.knative.sources.ping"),
    )
    .await;
    assert_eq!(resp.status(), 202);
    // Parallel: n = 0..4 to its address; evens and odds each take their branch.
    let parallel = address(&mesh, "/v1/namespaces/default/parallels/odd-even-parallel").await;
    for n in 0..4 {
        let mut e = event(&format!("n{n}"), "com.example.number");
        e.data = Some(bytes::Bytes::from(format!("{{\"n\":{n}}}")));
        assert_eq!(post_binary(&c, &parallel, &e).await.status(), 202);
    }
    let display = &subs["event-display"];
    display.wait_for(5, WAIT).await;
    let mut seen: Vec<(String, String, String)> = display
        .settle(Duration::from_millis(300))
        .await
        .into_iter()
        .filter_map(|r| r.event)
        .map(|e| {
            (
                e.id.clone(),
                e.ty.clone(),
                ext(&e, "steps").unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String, String)> = [
        ("n0", "com.example.number", "even"),
        ("n1", "com.example.number", "odd"),
        ("n2", "com.example.number", "even"),
        ("n3", "com.example.number", "odd"),
        ("ping-1", "samples.http.mod3", "0,1,2"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into()))
    .collect();
    assert_eq!(seen, expected);
}
