//! With the `otel` feature, `cemesh serve --otlp-endpoint` exports the ingress and
//! delivery spans over OTLP/HTTP: an in-process collector records what arrives.
//! Run: `cargo test -p cemesh-broker --features otel --test otel`.
#![cfg(feature = "otel")]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

type Bodies = Arc<Mutex<Vec<String>>>;

async fn collect(State(bodies): State<Bodies>, body: Bytes) -> &'static str {
    bodies
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    "{}"
}

async fn listen(app: axum::Router) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_an_otlp_collector() {
    let bodies: Bodies = Arc::default();
    let collector = listen(
        axum::Router::new()
            .route("/v1/traces", post(collect))
            .with_state(bodies.clone()),
    )
    .await;
    let subscriber = listen(axum::Router::new().fallback(|| async { "" })).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("mesh.yaml"),
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: http://{subscriber}/\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cemesh"))
        .args([
            "serve",
            "--channel",
            "memory",
            "--ingress-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--config-dir")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--otlp-endpoint", &format!("http://{collector}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ingress = loop {
        let line = lines.next().expect("cemesh exited").unwrap();
        if let Some(i) = line.find("ingress=") {
            break line[i + 8..].split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .post(format!("http://{ingress}/default/default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "otel-1")
        .header("ce-source", "/otel")
        .header("ce-type", "otel.test")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM: a clean exit flushes the batch exporter.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = bodies.lock().unwrap().join("\n");
        if all.contains("\"deliver\"") && all.contains("\"ingress\"") {
            assert!(
                all.contains("otel-1"),
                "the event id is a span attribute: {all}"
            );
            assert!(all.contains("cemesh"), "service name: {all}");
            // Both spans continue the producer's trace; the ingress span's parent is
            // the producer's span.
            let all: String = all.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(
                all.matches(&format!("\"traceId\":\"{trace}\"")).count() >= 2,
                "the spans are not in the producer's trace {trace}: {all}"
            );
            assert!(
                all.contains("\"parentSpanId\":\"00f067aa0ba902b7\""),
                "no span is a child of the producer's span: {all}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "spans not exported: {all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
