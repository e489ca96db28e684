//! `cemesh bench` smoke tests: the harness runs end to end and its counts add up. No
//! timing is asserted — the numbers belong to `bench/README.md`, not to CI — only
//! that every accepted event reached every trigger exactly once on the memory channel.

use std::process::Command;

use cemesh_tests::cemesh_bin;
use serde_json::Value;

/// Runs `cemesh bench ARGS --json` and returns its report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(cemesh_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("NO_COLOR", "1")
        .output()
        .expect("run cemesh bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cemesh bench failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench printed no JSON report ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not a whole number"))
}

/// Every event sent was accepted and delivered exactly once to each trigger.
fn assert_exact(run: &Value, events: u64, triggers: u64) {
    let label = format!("{} run {}", run["target"], run["round"]);
    assert_eq!(u(&run["sent"]), events, "{label}: sent\n{run:#}");
    assert_eq!(u(&run["accepted"]), events, "{label}: accepted\n{run:#}");
    assert_eq!(u(&run["errors"]), 0, "{label}: errors\n{run:#}");
    assert_eq!(
        u(&run["expected_deliveries"]),
        events * triggers,
        "{label}: expected deliveries"
    );
    assert_eq!(
        u(&run["delivered"]),
        events * triggers,
        "{label}: delivered"
    );
    assert_eq!(u(&run["duplicates"]), 0, "{label}: duplicates");
    assert_eq!(u(&run["lost"]), 0, "{label}: lost");
    assert_eq!(run["drained"], true, "{label}: drained");
    let per_trigger = run["per_trigger"].as_array().expect("per_trigger");
    assert_eq!(per_trigger.len() as u64, triggers, "{label}: triggers");
    for t in per_trigger {
        assert_eq!(u(&t["expected"]), events, "{label}: {t}");
        assert_eq!(u(&t["delivered"]), events, "{label}: {t}");
        assert_eq!(u(&t["duplicates"]), 0, "{label}: {t}");
        assert_eq!(u(&t["lost"]), 0, "{label}: {t}");
    }
    assert_eq!(
        u(&run["latency"]["samples"]),
        events * triggers,
        "{label}: one latency sample per first delivery"
    );
}

#[test]
fn memory_channel_counts_add_up() {
    let report = bench(&[
        "--channel",
        "memory",
        "--events",
        "3000",
        "--triggers",
        "2",
        "--connections",
        "16",
    ]);
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{report:#}");
    assert_eq!(runs[0]["target"], "broker");
    assert_exact(&runs[0], 3000, 2);
    assert!(
        runs[0]["target_cpu_seconds"].is_f64(),
        "the broker's CPU time is measured (Linux)"
    );
    assert_eq!(report["summary"]["anomalies"], false);
}

#[test]
fn baseline_alternates_with_the_broker() {
    let report = bench(&[
        "--channel",
        "memory",
        "--events",
        "2000",
        "--connections",
        "8",
        "--baseline",
    ]);
    let runs = report["runs"].as_array().expect("runs");
    let targets: Vec<&str> = runs.iter().filter_map(|r| r["target"].as_str()).collect();
    assert_eq!(targets, ["broker", "baseline"], "{report:#}");
    for run in runs {
        assert_exact(run, 2000, 1);
    }
    assert!(
        report["summary"]["ratio_to_baseline"].as_f64().is_some(),
        "{report:#}"
    );
}

#[test]
fn match_ratio_delivers_the_tagged_fraction() {
    let report = bench(&[
        "--events",
        "2000",
        "--triggers",
        "3",
        "--match-ratio",
        "0.25",
        "--connections",
        "8",
    ]);
    let run = &report["runs"][0];
    assert_eq!(u(&run["accepted"]), 2000);
    assert_eq!(u(&run["expected_deliveries"]), 500 * 3, "{run:#}");
    assert_eq!(u(&run["delivered"]), 500 * 3, "{run:#}");
    assert_eq!(u(&run["lost"]), 0);
    assert_eq!(u(&run["duplicates"]), 0);
}

#[test]
fn unavailable_channel_fails_with_a_clear_message() {
    let out = Command::new(cemesh_bin())
        .args(["bench", "--channel", "kafka", "--events", "10"])
        .output()
        .expect("run cemesh bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kafka is not in this build yet");
    assert!(stderr.contains("kafka"), "{stderr}");
}

/// `bench --target-url` against a running broker over https (issue 19 §1): trusting
/// the broker's CA with --cacert, sending --token-file's token to a broker an
/// EventPolicy guards; every event arrives once. Refused without the CA.
#[test]
fn target_url_over_https_with_a_token() {
    use cemesh_tests::{docs, Cemesh};
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let ca = cemesh_tests::pki::ca();
    cemesh_tests::pki::leaf(
        &ca,
        1,
        dir.path().join("tls.crt").as_path(),
        dir.path().join("tls.key").as_path(),
    );
    std::fs::write(path("ca.pem"), ca.cert.pem()).unwrap();
    let token = "bench-token-00112233445566778899";
    std::fs::write(path("token"), token).unwrap();
    std::fs::write(
        path("cemesh.yaml"),
        format!(
            "auth:\n  tokens:\n    - name: loadgen\n      file: {}\n",
            path("token")
        ),
    )
    .unwrap();
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap().to_string();
    drop(sink);
    let out = Command::new(cemesh_bin())
        .args([
            "bench",
            "--print-manifests",
            "--triggers",
            "2",
            "--sink-addr",
            &sink_addr,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let manifests = String::from_utf8(out.stdout).unwrap();
    let policy = "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: loadgen\n  namespace: default\nspec:\n  to:\n    - ref:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        name: bench\n  from:\n    - sub: loadgen\n";
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &docs(&[manifests, policy.to_owned()]))
        .arg("--tls-cert")
        .arg(&path("tls.crt"))
        .arg("--tls-key")
        .arg(&path("tls.key"))
        .arg("--config")
        .arg(&path("cemesh.yaml"))
        .start();
    let target = mesh
        .broker_url("default", "bench")
        .replacen("http://", "https://", 1);
    let common = [
        "--target-url",
        &target,
        "--sink-addr",
        &sink_addr,
        "--triggers",
        "2",
        "--events",
        "600",
        "--connections",
        "4",
    ];
    let (ca_file, token_file) = (path("ca.pem"), path("token"));
    let mut args = common.to_vec();
    args.extend(["--cacert", &ca_file, "--token-file", &token_file]);
    let report = bench(&args);
    let runs = report["runs"].as_array().expect("runs");
    assert_exact(&runs[0], 600, 2);
    // Without the CA the handshake fails and the bench says so.
    let out = Command::new(cemesh_bin())
        .arg("bench")
        .args(common)
        .args(["--token-file", &token_file])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("TLS") || err.contains("certificate"), "{err}");
}
