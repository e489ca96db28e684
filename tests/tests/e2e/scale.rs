//! Scale-on-demand through the binary: local on-demand subscribers (a real Python
//! process cemesh starts, scales and stops), and the scaling signals KEDA reads (the
//! admin JSON for its `metrics-api` scaler, its external scaler over gRPC).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cemesh_proto::pb::externalscaler::external_scaler_client::ExternalScalerClient;
use cemesh_proto::pb::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use cemesh_proto::Event;
use cemesh_tests::*;

const WAIT: Duration = Duration::from_secs(30);

fn subscriber_script() -> PathBuf {
    example_path("ondemand/subscriber.py")
}

/// A server config with one on-demand service `thumbs` running the example
/// subscriber; `extra` is more YAML under the service (4-space indent).
fn on_demand_config(dir: &Path, env: &[(&str, String)], extra: &str) -> PathBuf {
    let mut yaml = format!(
        "services:\n  thumbs:\n    command: [\"python3\", \"{}\"]\n    readiness: /healthz\n{extra}    env:\n",
        subscriber_script().display()
    );
    for (k, v) in env {
        yaml.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    let path = dir.join("server.yaml");
    std::fs::write(&path, yaml).expect("write the server config");
    path
}

/// A trigger whose subscriber is the `thumbs` service. An attempt left unanswered by
/// a dying instance times out well within the tests' wait and is retried.
fn on_demand_trigger(annotations: &[(&str, &str)]) -> String {
    let mut s = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: thumbs\n  annotations:\n    cemesh.dev/backoff-jitter: \"false\"\n".to_owned();
    for (k, v) in annotations {
        s.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    s.push_str("spec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: v1\n      kind: Service\n      name: thumbs\n  delivery:\n    retry: 8\n    backoffDelay: PT0.1S\n    timeout: PT5S\n");
    s
}

fn event(id: &str, ty: &str) -> Event {
    let mut e = Event::new(id, "/scale-test", ty);
    e.datacontenttype = Some("application/json".into());
    e.data = Some(bytes::Bytes::from_static(br#"{"n":1}"#));
    e
}

async fn send(c: &reqwest::Client, mesh: &Cemesh, e: &Event) {
    let resp = post_binary(c, &mesh.broker_url("default", "default"), e).await;
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
}

/// `(instance, event id)` per event the subscriber took, from its record file.
fn recorded(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(i, id)| (i.to_owned(), id.to_owned()))
        .collect()
}

fn recorded_ids(path: &Path) -> BTreeSet<String> {
    recorded(path).into_iter().map(|(_, id)| id).collect()
}

async fn wait_recorded(path: &Path, want: &BTreeSet<String>, mesh: &Cemesh) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = recorded_ids(path);
        if want.is_subset(&got) {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.difference(&got).collect();
            panic!("never delivered: {missing:?}\nlogs:\n{}", mesh.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one sample of `/metrics` whose line starts with `name{` and
/// contains `label`.
async fn metric(c: &reqwest::Client, mesh: &Cemesh, name: &str, label: &str) -> Option<f64> {
    let text = c
        .get(mesh.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn wait_metric(
    c: &reqwest::Client,
    mesh: &Cemesh,
    name: &str,
    label: &str,
    want: f64,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if metric(c, mesh, name, label).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

const INSTANCES: &str = "cemesh_ondemand_instances";
const THUMBS: &str = "service=\"thumbs\"";

#[tokio::test(flavor = "multi_thread")]
async fn an_on_demand_subscriber_starts_cold_scales_out_and_stops_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("record.txt");
    let config = on_demand_config(
        tmp.path(),
        &[
            ("RECORD_FILE", record.display().to_string()),
            ("STARTUP_DELAY", "0.3".into()),
            ("WORK_DELAY", "0.15".into()),
        ],
        "    concurrency: 2\n    max: 3\n    idle: 2s\n",
    );
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[broker_yaml("default"), on_demand_trigger(&[])]),
        )
        .arg("--config")
        .arg(&config.display().to_string())
        .start();
    let c = client();

    // Nothing runs before there is work.
    assert_eq!(metric(&c, &mesh, INSTANCES, THUMBS).await, Some(0.0));
    assert!(!mesh.logs().contains("Starting an instance"));

    // Events sent while the service is cold all arrive.
    let started = Instant::now();
    let cold: BTreeSet<String> = (0..5).map(|i| format!("cold-{i}")).collect();
    for id in &cold {
        send(&c, &mesh, &event(id, "t")).await;
    }
    assert!(
        recorded_ids(&record).is_empty(),
        "the instance answered before it was ready"
    );
    wait_recorded(&record, &cold, &mesh).await;
    println!(
        "cold start: 5 events delivered {} ms after the first was sent",
        started.elapsed().as_millis()
    );
    // The cold instance may become ready after a scale-up sibling took the events.
    assert!(
        mesh.wait_for_log("cold_start=true", Duration::from_secs(20)),
        "{}",
        mesh.logs()
    );
    assert_eq!(
        metric(&c, &mesh, "cemesh_ondemand_cold_starts_total", THUMBS).await,
        Some(1.0)
    );

    // A burst scales out, never above max.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (c, url, watching) = (c.clone(), mesh.admin_url("/metrics"), watching.clone());
        tokio::spawn(async move {
            let mut most = 0.0f64;
            while watching.load(Ordering::SeqCst) {
                if let Ok(r) = c.get(&url).send().await {
                    if let Ok(text) = r.text().await {
                        for l in text.lines() {
                            if l.starts_with(&format!("{INSTANCES}{{")) && l.contains(THUMBS) {
                                if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse().ok()) {
                                    most = most.max(v);
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let burst: BTreeSet<String> = (0..60).map(|i| format!("burst-{i}")).collect();
    let started = Instant::now();
    futures::future::join_all(burst.iter().map(|id| {
        let (c, e) = (c.clone(), event(id, "t"));
        let mesh = &mesh;
        async move { send(&c, mesh, &e).await }
    }))
    .await;
    wait_recorded(&record, &burst, &mesh).await;
    watching.store(false, Ordering::SeqCst);
    let most = watcher.await.unwrap();
    let per_instance: BTreeMap<String, usize> =
        recorded(&record)
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (i, _)| {
                *m.entry(i).or_default() += 1;
                m
            });
    println!(
        "burst of 60: delivered in {} ms, at most {most} instances, events per instance {per_instance:?}",
        started.elapsed().as_millis()
    );
    assert!(most <= 3.0, "more instances than max: {most}");
    assert!(most >= 2.0, "the burst did not scale out: {most}");
    assert!(per_instance.len() >= 2, "one instance took everything");

    // Idle: scaled back to zero.
    let idle_from = Instant::now();
    assert!(
        wait_metric(&c, &mesh, INSTANCES, THUMBS, 0.0, WAIT).await,
        "instances still running after idle:\n{}",
        mesh.logs()
    );
    println!(
        "scaled to zero {} ms after the burst ended (idle 2s)",
        idle_from.elapsed().as_millis()
    );
    let logs = mesh.logs();
    assert!(logs.contains("Instance idle; stopping"), "{logs}");
    // Instance output reaches cemesh's log, tagged.
    assert!(
        logs.contains("listening on 127.0.0.1") && logs.contains("service=\"thumbs\"")
            || logs.contains("service=thumbs"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_burst_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("record.txt");
    let crash = tmp.path().join("crash-now");
    let config = on_demand_config(
        tmp.path(),
        &[
            ("RECORD_FILE", record.display().to_string()),
            ("CRASH_FILE", crash.display().to_string()),
            ("WORK_DELAY", "0.05".into()),
        ],
        "    concurrency: 4\n    max: 2\n    idle: 30s\n",
    );
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                on_demand_trigger(&[("cemesh.dev/cold-start-grace", "30s")]),
            ]),
        )
        .arg("--config")
        .arg(&config.display().to_string())
        .start();
    let c = client();
    let all: BTreeSet<String> = (0..80).map(|i| format!("e-{i}")).collect();
    let ids: Vec<String> = all.iter().cloned().collect();
    for id in &ids[..40] {
        send(&c, &mesh, &event(id, "t")).await;
    }
    let deadline = Instant::now() + WAIT;
    while recorded(&record).len() < 10 {
        assert!(Instant::now() < deadline, "slow start:\n{}", mesh.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&crash, b"").unwrap();
    for id in &ids[40..] {
        send(&c, &mesh, &event(id, "t")).await;
    }
    wait_recorded(&record, &all, &mesh).await;
    let logs = mesh.logs();
    assert!(
        logs.contains("Instance exited unexpectedly"),
        "no crash seen:\n{logs}"
    );
    assert!(!crash.exists(), "the crash file was never used");
    let dead: serde_json::Value = c
        .get(mesh.admin_url("/v1/namespaces/default/triggers/thumbs/deadletters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead["total"], 0, "{dead}");
    let total = recorded(&record).len();
    println!(
        "crash mid-burst: 80 events, {} deliveries recorded ({} duplicates), nothing lost",
        total,
        total - all.len()
    );
}

async fn scale_json(c: &reqwest::Client, mesh: &Cemesh, trigger: &str) -> serde_json::Value {
    c.get(mesh.admin_url(&format!("/v1/namespaces/default/triggers/{trigger}/scale")))
        .send()
        .await
        .expect("GET scale")
        .json()
        .await
        .expect("scale JSON")
}

/// One trigger held at one delivery in flight (parallelism 1, a subscriber that
/// answers only after the attempt timed out), so the lag is exactly what was sent.
fn held_trigger(name: &str, url: &str, filter_type: Option<&str>) -> String {
    let mut s = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/parallelism: \"1\"\n    cemesh.dev/backoff-jitter: \"false\"\nspec:\n  broker: default\n  subscriber:\n    uri: {url}\n  delivery:\n    retry: 100\n    backoffDelay: PT0.05S\n    backoffPolicy: linear\n    timeout: PT0.5S\n"
    );
    if let Some(t) = filter_type {
        s.push_str(&format!("  filter:\n    attributes:\n      type: {t}\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scale_endpoint_reports_the_real_lag() {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_secs(30), Duration::ZERO);
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        held_trigger("held", &sub.url(), None),
    ]));
    let c = client();
    let idle = scale_json(&c, &mesh, "held").await;
    assert_eq!(idle["lag"], 0, "{idle}");
    assert_eq!(idle["active"], false, "{idle}");

    for i in 0..10 {
        send(&c, &mesh, &event(&format!("h-{i}"), "t")).await;
    }
    sub.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = scale_json(&c, &mesh, "held").await;
    println!("held: {busy}");
    assert_eq!(busy["lag"], 10, "{busy}");
    assert_eq!(busy["inFlight"], 1, "{busy}");
    assert_eq!(busy["active"], true, "{busy}");
    assert!(
        busy["oldestWaitingAgeSeconds"].as_f64().unwrap() > 0.2,
        "{busy}"
    );
    // Prometheus says the same.
    assert_eq!(
        metric(&c, &mesh, "cemesh_trigger_lag", "trigger_name=\"held\"").await,
        Some(10.0)
    );
    assert!(
        metric(
            &c,
            &mesh,
            "cemesh_trigger_oldest_waiting_age_seconds",
            "trigger_name=\"held\""
        )
        .await
        .unwrap()
            > 0.2
    );

    // Let it drain: the lag counts down to zero with the deliveries.
    sub.set_delay(Duration::ZERO, Duration::ZERO);
    let deadline = Instant::now() + WAIT;
    loop {
        // Events the subscriber has seen (it records a request as it starts).
        let seen = || {
            sub.received()
                .iter()
                .filter_map(|r| r.event.as_ref().map(|e| e.id.clone()))
                .collect::<BTreeSet<_>>()
                .len() as u64
        };
        let before = seen();
        let s = scale_json(&c, &mesh, "held").await;
        let after = seen();
        let lag = s["lag"].as_u64().unwrap();
        // Every event acked was seen; every event seen is acked or the one in flight.
        assert!(
            lag + after >= 10 && lag + before <= 11,
            "lag {lag} with {before}..{after} seen: {s}"
        );
        if lag == 0 {
            assert_eq!(s["inFlight"], 0, "{s}");
            assert_eq!(s["active"], false, "{s}");
            assert_eq!(s["oldestWaitingAgeSeconds"], 0.0, "{s}");
            assert!(s["deliveryRate"].as_f64().unwrap() > 0.0, "{s}");
            println!("drained: {s}");
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing = scale_json(&c, &mesh, "nope").await;
    assert!(missing["error"]
        .as_str()
        .unwrap_or("")
        .contains("not running"));
}

fn scaled_ref(trigger: &str, metric: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "subscriber".into(),
        namespace: "default".into(),
        scaler_metadata: [
            ("trigger".to_owned(), trigger.to_owned()),
            ("metric".to_owned(), metric.to_owned()),
            ("target".to_owned(), "5".to_owned()),
        ]
        .into_iter()
        .collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keda_external_scaler_pushes_active_on_the_first_append() {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_secs(30), Duration::ZERO);
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                held_trigger("wake", &sub.url(), Some("wanted")),
            ]),
        )
        .arg("--grpc-addr")
        .arg("127.0.0.1:0")
        .start();
    let addr = mesh.grpc;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC listener");
    let mut scaler = ExternalScalerClient::new(channel);
    let r = scaled_ref("default/wake", "lag");

    let idle = scaler.is_active(r.clone()).await.unwrap().into_inner();
    assert!(!idle.result, "active while idle");
    let spec = scaler
        .get_metric_spec(r.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].target_size_float, 5.0);
    let bad = scaler
        .is_active(scaled_ref("default/none", "lag"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);

    let mut stream = scaler
        .stream_is_active(r.clone())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("first answer");
    assert!(!first.result, "the stream starts active while idle");

    // An event the trigger's filter refuses does not wake it.
    let c = client();
    send(&c, &mesh, &event("other", "unwanted")).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "pushed for a filtered-out event: {quiet:?}");

    let sent = Instant::now();
    send(&c, &mesh, &event("wanted-1", "wanted")).await;
    let pushed = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no push within 5 s")
        .unwrap()
        .expect("stream open");
    let latency = sent.elapsed();
    println!(
        "StreamIsActive pushed active {:.1} ms after the append was sent",
        latency.as_secs_f64() * 1e3
    );
    assert!(pushed.result);
    // The issue asks for 100 ms; the push itself takes a few. Generous margin for a
    // loaded CI machine; the number is printed above.
    assert!(latency < Duration::from_millis(500), "{latency:?}");

    let metrics = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: spec.metric_specs[0].metric_name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let json = scale_json(&c, &mesh, "wake").await;
    assert_eq!(
        metrics.metric_values[0].metric_value_float,
        json["lag"].as_f64().unwrap()
    );
    assert_eq!(metrics.metric_values[0].metric_value, 1);

    // Delivered: the stream goes back to idle on its own.
    sub.set_delay(Duration::ZERO, Duration::ZERO);
    let back = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("never went idle")
        .unwrap()
        .expect("stream open");
    assert!(!back.result);
}
