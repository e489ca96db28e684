//! Event sources: PingSource and ContainerSource, through the binary, with real
//! HTTP sinks.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cemesh_proto::AttributeValue;
use cemesh_tests::*;

const WAIT: Duration = Duration::from_secs(20);

fn ping(name: &str, sink: &str, extra_meta: &str) -> String {
    format!("apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: {name}\n{extra_meta}spec:\n  schedule: \"@every 1s\"\n  contentType: application/json\n  data: '{{\"message\": \"Hello world!\"}}'\n  ceOverrides:\n    extensions:\n      team: platform\n  sink:\n    uri: {sink}\n")
}

fn times(s: &Subscriber) -> Vec<String> {
    s.received()
        .into_iter()
        .filter_map(|r| r.event)
        .filter_map(|e| e.time)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pingsource_fires_knative_s_event_and_a_restart_fires_a_missed_tick_once() {
    let sink = Subscriber::start().await;
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest("ping.yaml", &ping("tick", &sink.url(), ""))
        .start();
    let got = sink.wait_for(2, WAIT).await;
    let e = got[0].event.clone().expect("a CloudEvent");
    assert_eq!(e.ty, "dev.knative.sources.ping");
    assert_eq!(e.source, "/apis/v1/namespaces/default/pingsources/tick");
    assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(
        e.data.as_deref(),
        Some(&b"{\"message\": \"Hello world!\"}"[..])
    );
    assert_eq!(
        e.extension("team"),
        Some(&AttributeValue::String("platform".into()))
    );
    assert!(uuid::Uuid::parse_str(&e.id).is_ok(), "{}", e.id);
    let status = mesh
        .ready_resource("/v1/namespaces/default/pingsources/tick")
        .await;
    assert_eq!(status["status"]["sinkUri"], sink.url().as_str(), "{status}");
    // Not routed: only the ticker appends to a PingSource's channel.
    let resp = post_binary(
        &client(),
        &mesh.broker_url("default", "tick-kn-pingsource"),
        &cemesh_proto::Event::new("x", "/s", "t"),
    )
    .await;
    assert_eq!(resp.status(), 404);

    // Down for 3.5 s: the three ticks due meanwhile fire once, as the latest of
    // them, not as a burst, and no tick fires twice.
    sink.settle(Duration::from_millis(100)).await;
    mesh.kill9();
    let before = sink.received().len();
    let last_before = times(&sink).into_iter().max().unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let restarted_at = chrono::Utc::now();
    mesh.restart();
    let deadline = Instant::now() + WAIT;
    while sink.received().len() < before + 3 {
        assert!(Instant::now() < deadline, "{:?}", times(&sink));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = times(&sink);
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a tick fired twice: {all:?}");
    let restarted = restarted_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let missed = all
        .iter()
        .filter(|t| **t > last_before && **t < restarted)
        .count();
    assert!(
        missed <= 1,
        "missed ticks fire once: {all:?} (down after {last_before}, back at {restarted})"
    );
    assert!(
        mesh.logs()
            .contains("A tick fell due while cemesh was down; firing it once"),
        "{}",
        mesh.logs()
    );
    // The catch-up tick may come just before the next regular one; a replay of the
    // three missed ticks would be a burst of three or more.
    let after: Vec<Instant> = sink.received()[before..].iter().map(|r| r.at).collect();
    for three in after.windows(3) {
        assert!(
            three[2] - three[0] > Duration::from_millis(500),
            "ticks fired in a burst after the restart: {all:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pingsource_whose_sink_fails_is_retried_then_dead_lettered() {
    let sink = Subscriber::start().await;
    sink.set_status(500);
    let meta = "  annotations:\n    cemesh.dev/backoff-max: 20ms\n    cemesh.dev/backoff-jitter: \"false\"\n    cemesh.dev/breaker-failures: \"off\"\n";
    let mesh = Cemesh::start(&ping("failing", &sink.url(), meta));
    // Knative's default delivery: 1 attempt and 10 retries, then the dead letters.
    let path = "/v1/namespaces/default/triggers/pingsource.failing/deadletters";
    let deadline = Instant::now() + WAIT;
    let page = loop {
        let page = mesh.admin_json(path).await;
        if page["total"].as_u64().unwrap_or(0) >= 1 {
            break page;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let letter = &page["items"][0];
    assert_eq!(
        letter["event"]["type"], "dev.knative.sources.ping",
        "{letter}"
    );
    assert_eq!(
        letter["attempts"].as_array().map(Vec::len),
        Some(11),
        "{letter}"
    );
    let id = letter["event"]["id"].as_str().unwrap();
    assert_eq!(sink.ids().iter().filter(|i| *i == id).count(), 11);
}

/// A ContainerSource runs its command with `K_SINK` and `K_CE_OVERRIDES`, and starts
/// it again after it exits.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_source_runs_its_program_with_k_sink_and_restarts_it() {
    let sink = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("heartbeat.py");
    std::fs::write(
        &script,
        r#"import json, os, sys, urllib.request
runs = os.path.join(os.environ["STATE_DIR"], "runs")
n = len(open(runs).read().splitlines()) if os.path.exists(runs) else 0
open(runs, "a").write("run\n")
overrides = json.loads(os.environ.get("K_CE_OVERRIDES", "{}"))
headers = {"ce-specversion": "1.0", "ce-id": "beat-%d" % n, "ce-source": "/heartbeats",
           "ce-type": "dev.knative.eventing.samples.heartbeat", "content-type": "application/json"}
for k, v in overrides.get("extensions", {}).items():
    headers["ce-" + k] = v
req = urllib.request.Request(os.environ["K_SINK"], data=b'{"beat": %d}' % n, headers=headers)
urllib.request.urlopen(req).read()
sys.exit(1)  # crash: cemesh starts it again
"#,
    )
    .unwrap();
    let manifest = format!(
        "apiVersion: sources.knative.dev/v1\nkind: ContainerSource\nmetadata:\n  name: heartbeats\nspec:\n  template:\n    spec:\n      containers:\n        - image: gcr.io/knative-nightly/knative.dev/eventing/cmd/heartbeats\n          name: heartbeats\n          command: [python3, {}]\n          env:\n            - name: STATE_DIR\n              value: {}\n  ceOverrides:\n    extensions:\n      origin: container\n  sink:\n    uri: {}\n",
        script.display(),
        dir.path().display(),
        sink.url()
    );
    let mesh = Cemesh::start(&manifest);
    let got = sink.wait_for(2, WAIT).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|r| r.event.as_ref())
        .map(|e| e.id.clone())
        .collect();
    assert!(ids.contains("beat-0") && ids.contains("beat-1"), "{ids:?}");
    for r in &got {
        let e = r.event.as_ref().unwrap();
        assert_eq!(
            e.extension("origin"),
            Some(&AttributeValue::String("container".into()))
        );
    }
    mesh.ready_resource("/v1/namespaces/default/containersources/heartbeats")
        .await;
    assert!(mesh.logs().contains("Source process exited; restarting it"));
}

#[tokio::test(flavor = "multi_thread")]
async fn api_server_source_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("s.yaml");
    std::fs::write(
        &file,
        "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: k8s\nspec:\n  mode: Resource\n",
    )
    .unwrap();
    let (ok, out, _) = cemesh_cli(&["validate", &file.display().to_string()]);
    assert!(!ok);
    assert!(
        out.contains("kind ApiServerSource (sources.knative.dev/v1) is not run by cemesh: it watches a Kubernetes API server"),
        "{out}"
    );
}

fn event_types(mesh: &Cemesh, ns: &str) -> (bool, String, String) {
    let admin = format!("http://{}", mesh.admin);
    cemesh_cli(&[
        "get",
        "eventtypes",
        "-n",
        ns,
        "--admin",
        &admin,
        "-o",
        "json",
    ])
}

/// Brokers and channels record the (type, source) pairs they accept: listed with
/// hand-written EventTypes, counted, bounded under a flood, kept across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn event_types_are_recorded_bounded_and_kept_across_restart() {
    let manifests = docs(&[
        broker_yaml("default"),
        "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: audit\n".to_owned(),
        "apiVersion: eventing.knative.dev/v1beta2\nkind: EventType\nmetadata:\n  name: order-created\nspec:\n  type: com.example.order.created\n  source: /shop\n  reference:\n    apiVersion: eventing.knative.dev/v1\n    kind: Broker\n    name: default\n  description: An order was placed\n".to_owned(),
    ]);
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest("mesh.yaml", &manifests)
        .start();
    let c = client();
    let broker = mesh.broker_url("default", "default");
    for i in 0..3 {
        let mut e = cemesh_proto::Event::new(format!("o{i}"), "/shop", "com.example.order.created");
        e.dataschema = Some("https://schemas.example/order.json".into());
        assert_eq!(post_binary(&c, &broker, &e).await.status(), 202);
    }
    let e = cemesh_proto::Event::new("p1", "/billing", "com.example.paid");
    assert_eq!(post_binary(&c, &broker, &e).await.status(), 202);
    let channel = mesh.broker_url("default", "audit-kn-channel");
    assert_eq!(post_binary(&c, &channel, &e).await.status(), 202);
    let (ok, out, err) = event_types(&mesh, "default");
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let items = list["items"].as_array().unwrap();
    let discovered: Vec<&serde_json::Value> = items
        .iter()
        .filter(|i| i["metadata"]["annotations"]["cemesh.dev/owner"] == "discovered")
        .collect();
    assert_eq!(discovered.len(), 3, "{list}");
    let created = discovered
        .iter()
        .find(|i| i["spec"]["type"] == "com.example.order.created")
        .unwrap();
    assert_eq!(created["status"]["count"], 3);
    assert_eq!(
        created["spec"]["schema"],
        "https://schemas.example/order.json"
    );
    assert_eq!(created["spec"]["reference"]["kind"], "Broker");
    assert!(discovered
        .iter()
        .any(|i| i["spec"]["reference"]["kind"] == "Channel"
            && i["spec"]["reference"]["name"] == "audit"));
    // The hand-written one is listed too.
    assert!(
        items
            .iter()
            .any(|i| i["metadata"]["name"] == "order-created"),
        "{list}"
    );

    // Bounded: past 1000 pairs per address, new pairs are not stored.
    let mut bodies = Vec::new();
    for i in 0..1100 {
        bodies.push(serde_json::json!({"specversion": "1.0", "id": format!("f{i}"), "source": "/flood", "type": format!("flood.t{i}")}));
    }
    for chunk in bodies.chunks(100) {
        let resp = c
            .post(&broker)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(chunk).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let page = mesh.admin_json("/v1/namespaces/default/eventtypes").await;
    let on_broker = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["spec"]["reference"]["name"] == "default"
                && i["metadata"]["annotations"]["cemesh.dev/owner"] == "discovered"
        })
        .count();
    assert_eq!(on_broker, 1000);

    // Kept across a restart (written every few seconds and at shutdown).
    let status = mesh.terminate();
    assert!(status.success());
    mesh.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let page = mesh.admin_json("/v1/namespaces/default/eventtypes").await;
        let n = page["items"].as_array().map_or(0, Vec::len);
        // 1000 on the broker, 1 on the channel, the hand-written one.
        if n == 1000 + 1 + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} after restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A SinkBinding gives a `services:` command's processes `K_SINK` and
/// `K_CE_OVERRIDES`; a changed sink reaches them through a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_binding_gives_a_service_k_sink_and_a_new_sink_restarts_it() {
    let (first, second) = (Subscriber::start().await, Subscriber::start().await);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("adapter.py");
    // A source adapter as Knative users write them: it reads K_SINK at start and
    // posts to it; it also serves $PORT, which tells cemesh it is up.
    std::fs::write(
        &script,
        r#"import http.server, json, os, threading, time, urllib.request
srv = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.BaseHTTPRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
sink = os.environ.get("K_SINK")
ext = json.loads(os.environ.get("K_CE_OVERRIDES", "{}")).get("extensions", {})
parent = os.getppid()
n = 0
while os.getppid() == parent:  # exits once cemesh is gone
    time.sleep(0.2)
    if not sink:
        continue
    headers = {"ce-specversion": "1.0", "ce-id": "%d-%d" % (os.getpid(), n), "ce-source": "/adapter",
               "ce-type": "com.example.adapter", "content-type": "application/json"}
    for k, v in ext.items():
        headers["ce-" + k] = v
    try:
        urllib.request.urlopen(urllib.request.Request(sink, data=b"{}", headers=headers)).read()
    except Exception:
        pass
    n += 1
"#,
    )
    .unwrap();
    let server = dir.path().join("server.yaml");
    std::fs::write(
        &server,
        format!(
            "services:\n  adapter:\n    command: [\"python3\", \"{}\"]\n    min: 1\n",
            script.display()
        ),
    )
    .unwrap();
    let binding = |sink: &str| {
        format!("apiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata:\n  name: bind-adapter\nspec:\n  subject:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: adapter\n  ceOverrides:\n    extensions:\n      bound: \"yes\"\n  sink:\n    uri: {sink}\n")
    };
    let mesh = Cemesh::builder()
        .arg("--config")
        .arg(server.to_str().unwrap())
        .manifest("binding.yaml", &binding(&first.url()))
        .start();
    let got = first.wait_for(2, WAIT).await;
    let e = got[0].event.clone().expect("a CloudEvent");
    assert_eq!(
        e.extension("bound"),
        Some(&AttributeValue::String("yes".into()))
    );
    let status = mesh
        .ready_resource("/v1/namespaces/default/sinkbindings/bind-adapter")
        .await;
    assert_eq!(status["status"]["sinkUri"], first.url().as_str());

    // A new sink: the running process is restarted with it.
    std::fs::write(
        mesh.dir().join("config/binding.yaml"),
        binding(&second.url()),
    )
    .unwrap();
    assert!(mesh.wait_for_log("Configuration reloaded", WAIT));
    let got = second.wait_for(2, WAIT).await;
    let pid_first = first.ids()[0].split('-').next().unwrap().to_owned();
    let pid_second = got[0]
        .event
        .as_ref()
        .unwrap()
        .id
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(pid_first, pid_second, "the process was not restarted");
    assert!(mesh
        .logs()
        .contains("Restarting the instance for its SinkBinding"));

    // A binding naming no command service is refused, saying why.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("b.yaml");
    std::fs::write(
        &file,
        binding(&first.url()).replace("name: adapter", "name: nowhere"),
    )
    .unwrap();
    let (ok, out, _) = cemesh_cli(&[
        "validate",
        &file.display().to_string(),
        "--config",
        server.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        out.contains("spec.subject.name: no services: entry named \"nowhere\""),
        "{out}"
    );
}

/// Knative's PingSource example (`examples/sources`) runs unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn knative_s_pingsource_example_runs_unchanged() {
    let display = Subscriber::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let server = event_display_config(tmp.path(), &display.url());
    let example = example_path("sources/config/pingsource.yaml");
    assert_validates(&example, &server);
    let mesh = Cemesh::builder()
        .arg("--config")
        .arg(server.to_str().unwrap())
        .manifest("ping.yaml", &std::fs::read_to_string(&example).unwrap())
        .start();
    let status = mesh
        .ready_resource("/v1/namespaces/default/pingsources/test-ping-source")
        .await;
    assert_eq!(
        status["status"]["sinkUri"],
        display.url().as_str(),
        "{status}"
    );
    assert_eq!(
        status["status"]["ceAttributes"][0]["source"],
        "/apis/v1/namespaces/default/pingsources/test-ping-source"
    );
}

/// Knative's ContainerSource and SinkBinding examples (`examples/sources/config`) run
/// unchanged with the examples' server config (`examples/sources/server.yaml`: its
/// `images:` runs the heartbeats stand-in for the container's image, its `services:`
/// entry carries the label the binding selects), paths made absolute.
#[tokio::test(flavor = "multi_thread")]
async fn knative_s_containersource_and_sinkbinding_examples_run_unchanged() {
    let display = Subscriber::start().await;
    let root = example_path("sources");
    let heartbeats = root.join("heartbeats.py").canonicalize().unwrap();
    let server_text = std::fs::read_to_string(root.join("server.yaml"))
        .unwrap()
        .replace(
            "examples/sources/heartbeats.py",
            heartbeats.to_str().unwrap(),
        )
        .replace("http://127.0.0.1:8081/display", &display.url())
        .replace("--period=10", "--period=0.5")
        .replace("config_dir: examples/sources/config\n", "");
    let tmp = tempfile::tempdir().unwrap();
    let server = tmp.path().join("server.yaml");
    std::fs::write(&server, server_text).unwrap();
    let example = |f: &str| std::fs::read_to_string(root.join("config").join(f)).unwrap();
    assert_validates(&root.join("config"), &server);
    let mesh = Cemesh::builder()
        .arg("--config")
        .arg(server.to_str().unwrap())
        .manifest("containersource.yaml", &example("containersource.yaml"))
        .manifest("sinkbinding.yaml", &example("sinkbinding.yaml"))
        .start();
    let sources = || -> HashSet<String> {
        display
            .received()
            .into_iter()
            .filter_map(|r| r.event)
            .filter(|e| e.ty == "dev.knative.eventing.samples.heartbeat")
            .map(|e| e.source)
            .collect()
    };
    let want: HashSet<String> = [
        // The ContainerSource's process (no POD_NAME in the example).
        "https://knative.dev/eventing/cmd/heartbeats/#/".to_owned(),
        // The bound services: entry's.
        "https://knative.dev/eventing/cmd/heartbeats/#default/heartbeat-cron".to_owned(),
    ]
    .into();
    let deadline = Instant::now() + WAIT;
    while !sources().is_superset(&want) {
        assert!(
            Instant::now() < deadline,
            "heartbeats from {:?}; logs:\n{}",
            sources(),
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for path in [
        "/v1/namespaces/default/containersources/heartbeat-source",
        "/v1/namespaces/default/sinkbindings/bind-heartbeat",
    ] {
        let status = mesh.ready_resource(path).await;
        assert_eq!(status["status"]["sinkUri"], display.url().as_str());
    }
}

/// A SinkBinding selecting by labels that no services: entry carries, or by
/// expressions, is refused naming the field.
#[test]
fn a_sinkbinding_selector_that_selects_nothing_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = tmp.path().join("server.yaml");
    std::fs::write(
        &server,
        "services:\n  cron:\n    command: [\"true\"]\n    labels: {app: other}\n",
    )
    .unwrap();
    let file = tmp.path().join("b.yaml");
    std::fs::write(
        &file,
        "apiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata:\n  name: b\nspec:\n  subject:\n    apiVersion: batch/v1\n    kind: Job\n    selector:\n      matchLabels:\n        app: heartbeat-cron\n  sink:\n    uri: http://127.0.0.1:1/\n---\napiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata:\n  name: e\nspec:\n  subject:\n    apiVersion: batch/v1\n    kind: Job\n    selector:\n      matchExpressions:\n      - {key: app, operator: Exists}\n  sink:\n    uri: http://127.0.0.1:1/\n",
    )
    .unwrap();
    let (ok, out, err) = cemesh_cli(&[
        "validate",
        file.to_str().unwrap(),
        "--config",
        server.to_str().unwrap(),
    ]);
    let all = format!("{out}{err}");
    assert!(!ok, "{all}");
    assert!(
        all.contains("spec.subject.selector.matchLabels: no services: command entry of the server config has the labels {\"app\":\"heartbeat-cron\"}"),
        "{all}"
    );
    assert!(
        all.contains("spec.subject.selector.matchExpressions: not supported"),
        "{all}"
    );
}
