//! kubectl habits of the client commands, through the binary.

use std::process::{Command, Stdio};

use cemesh_tests::*;

/// `--admin HOST:PORT` without a scheme works, as kubectl's `--server` does.
#[tokio::test(flavor = "multi_thread")]
async fn admin_address_without_scheme() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("orders", "default", &sub.url(), &[]),
    ]));
    let addr = mesh.admin.to_string();
    let (ok, out, err) = cemesh_cli(&["get", "triggers", "--admin", &addr]);
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("orders"), "{out}");
}

/// An admin API that does not answer is one line naming the address and what to
/// check, not an error chain.
#[test]
fn unreachable_admin_is_one_line_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound then dropped: nothing listens there now
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["get", "triggers"],
        vec!["describe", "trigger", "orders"],
        vec!["deadletters", "list", "orders"],
        vec!["tail", "default"],
    ] {
        let mut args = args.clone();
        args.extend(["--admin", &addr]);
        let (ok, out, err) = cemesh_cli(&args);
        assert!(!ok, "{args:?} succeeded: {out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].contains(&format!("cannot reach the admin API at http://{addr}"))
                && lines[0].contains("is `cemesh serve` running?"),
            "{args:?}: {err}"
        );
    }
}

const TRIGGERS: &str = "apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: api1
spec:
  broker: default
  subscriber:
    uri: http://127.0.0.1:1/a
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: api2
spec:
  broker: default
  filter:
    attributes:
      type: com.example.x
  subscriber:
    uri: http://127.0.0.1:1/b
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: team
";

/// `get -o yaml|json` output goes back through `apply -f` and `delete -f`; `get`
/// lists one namespace (`-n`, default `default`) unless `-A`; short names work.
#[tokio::test(flavor = "multi_thread")]
async fn get_output_round_trips_through_apply_and_delete() {
    let mesh = Cemesh::start(&broker_yaml("default"));
    let admin = mesh.admin.to_string();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", &admin]);
        cemesh_cli(&all)
    };
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let manifests = file("triggers.yaml", TRIGGERS);
    let (ok, out, err) = run(&["apply", "-f", &manifests]);
    assert!(ok, "{out}{err}");

    // One named resource: one document, not a list.
    let (ok, one, err) = run(&["get", "tr", "api2", "-o", "yaml"]);
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_saphyr::from_str(&one).unwrap();
    assert_eq!(doc["kind"].as_str(), Some("Trigger"), "{one}");
    assert_eq!(doc["metadata"]["name"].as_str(), Some("api2"), "{one}");
    let (ok, one_json, _) = run(&["get", "tr", "api2", "-o", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&one_json).unwrap();
    assert_eq!(v["kind"], "Trigger", "{one_json}");

    // A listing: a List in JSON, a document stream in YAML; the default namespace only.
    let (ok, list, _) = run(&["get", "triggers", "-o", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["kind"], "List", "{list}");
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{list}");
    let (ok, stream, _) = run(&["get", "triggers", "-o", "yaml"]);
    assert!(ok);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stream).unwrap();
    assert_eq!(docs.len(), 2, "{stream}");
    let (ok, brokers, _) = run(&["get", "br"]);
    assert!(ok && !brokers.contains("team"), "{brokers}");
    let (ok, brokers, _) = run(&["get", "br", "-A"]);
    assert!(
        ok && brokers.starts_with("NAMESPACE") && brokers.contains("team"),
        "{brokers}"
    );

    // delete -f of the JSON List, then apply -f of the same file and of the YAML.
    let list_file = file("list.json", &list);
    let (ok, out, err) = run(&["delete", "-f", &list_file]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("api1 deleted") && out.contains("api2 deleted"),
        "{out}"
    );
    let (ok, out, err) = run(&["get", "tr"]);
    assert!(ok && !out.contains("api"), "{out}{err}");
    assert!(
        err.contains("No triggers found in namespace default"),
        "{err}"
    );
    let (ok, out, err) = run(&["apply", "-f", &list_file]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("api1 created") && out.contains("api2 created"),
        "{out}"
    );
    let (ok, out, err) = run(&["apply", "-f", &file("one.yaml", &one)]);
    assert!(ok && out.contains("api2"), "{out}{err}");

    // -o wide adds the filter and counters; describe is for people.
    let (ok, wide, _) = run(&["get", "tr", "-o", "wide"]);
    assert!(ok, "{wide}");
    let header = wide.lines().next().unwrap();
    assert!(
        header.contains("FILTER") && header.contains("LAG"),
        "{wide}"
    );
    assert!(wide.contains("type=com.example.x"), "{wide}");
    let (ok, described, err) = run(&["describe", "tr", "api2"]);
    assert!(ok, "{err}");
    for needle in [
        "Name:         api2",
        "Broker:       default",
        "Subscriber:   http://127.0.0.1:1/b",
        "Filter:       type=com.example.x",
        "Conditions:",
        "Stats:",
        "Recent dead letters:",
    ] {
        assert!(described.contains(needle), "{needle:?} in\n{described}");
    }
    assert!(!described.contains("apiVersion"), "{described}");
    let (ok, out, err) = run(&["dl", "list", "api2"]);
    assert!(ok && out.starts_with("ID"), "{out}{err}");
}

/// `cemesh get ... | head` stops quietly when the reader goes away.
#[tokio::test(flavor = "multi_thread")]
async fn closed_stdout_is_not_a_panic() {
    let mesh = Cemesh::start(&broker_yaml("default"));
    let mut child = Command::new(cemesh_bin())
        .args([
            "get",
            "brokers",
            "-o",
            "yaml",
            "--admin",
            &mesh.admin.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is printed
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
