//! Manifests are handled the same way everywhere: the config dir, `cemesh apply`,
//! `cemesh validate` and the admin API report a kind cemesh does not run, an unknown
//! `cemesh.dev/` annotation and a trigger on an invalid broker in the same words; the
//! broker class and `spec.config` are shown in the status, not ignored; `/readyz`
//! fails while no broker runs.
use cemesh_tests::*;
use serde_json::Value;

/// A kind cemesh does not run.
const NOT_RUN: &str = "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: orders\n";
const NOT_RUN_PROBLEM: &str = "kind: kind CronJob (batch/v1) is not run by cemesh; supported kinds: eventing.knative.dev/v1 Broker, eventing.knative.dev/v1 Trigger, eventing.knative.dev/v1alpha1 EventPolicy, messaging.knative.dev/v1 Channel, messaging.knative.dev/v1 InMemoryChannel, messaging.knative.dev/v1beta1 KafkaChannel, messaging.knative.dev/v1 Subscription, flows.knative.dev/v1 Sequence, flows.knative.dev/v1 Parallel, sources.knative.dev/v1 PingSource, sources.knative.dev/v1 ContainerSource, sources.knative.dev/v1 SinkBinding, sources.knative.dev/v1beta1 KafkaSource, eventing.knative.dev/v1beta2 EventType";
const OLD_TRIGGER: &str = "apiVersion: eventing.knative.dev/v1beta1\nkind: Trigger\nmetadata:\n  name: old\nspec:\n  broker: default\n";
const OLD_TRIGGER_PROBLEM: &str = "Trigger eventing.knative.dev/v1beta1 is not supported: cemesh runs Trigger as apiVersion eventing.knative.dev/v1";

fn kafka_class_broker() -> String {
    "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    eventing.knative.dev/broker.class: Kafka\nspec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: kafka-broker-config\n".to_owned()
}

fn typo_trigger(sub: &str) -> String {
    format!("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: typo\n  annotations:\n    cemesh.dev/paralelism: \"4\"\nspec:\n  broker: default\n  subscriber:\n    uri: {sub}\n")
}

async fn json(url: String) -> (u16, Value) {
    let r = client().get(url).send().await.expect("GET");
    let code = r.status().as_u16();
    (code, r.json().await.expect("JSON"))
}

fn problems(ready: &Value) -> Vec<String> {
    ready["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_dir_reports_what_it_does_not_run_and_runs_the_rest() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        kafka_class_broker(),
        NOT_RUN.to_owned(),
        OLD_TRIGGER.to_owned(),
        typo_trigger(&sub.url()),
        trigger_yaml("good", "default", &sub.url(), &[]),
    ]));
    let (code, ready) = json(mesh.admin_url("/readyz")).await;
    // Problems of single resources are informational: the broker runs.
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["triggers"], serde_json::json!(["default/good"]));
    let problems = problems(&ready);
    assert!(
        problems.iter().any(|p| p.ends_with(NOT_RUN_PROBLEM)),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.ends_with(OLD_TRIGGER_PROBLEM)),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.ends_with("(Trigger default/typo): metadata.annotations.cemesh.dev/paralelism: unknown cemesh annotation; did you mean cemesh.dev/parallelism?")),
        "{problems:#?}"
    );
    assert!(mesh.logs().contains(NOT_RUN_PROBLEM), "{}", mesh.logs());

    // The dead letters of a trigger that is defined but invalid: not running, and why.
    let r = client()
        .get(mesh.admin_url("/v1/namespaces/default/triggers/typo/deadletters"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("trigger default/typo is defined but not running: ")
            && body["error"].as_str().unwrap().contains("paralelism"),
        "{body}"
    );

    // The broker's status says who runs it and that spec.config is not read.
    let (code, broker) = json(mesh.admin_url("/v1/namespaces/default/brokers/default")).await;
    assert_eq!(code, 200, "{broker}");
    let conditions = broker["status"]["conditions"]
        .as_array()
        .expect("conditions");
    let condition = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .unwrap_or_else(|| panic!("no {t} condition: {broker}"))
            .clone()
    };
    assert_eq!(condition("Ready")["status"], "True");
    let class = condition("BrokerClass");
    assert_eq!(class["severity"], "Warning");
    assert!(
        class["message"].as_str().unwrap().contains(
            "eventing.knative.dev/broker.class is \"Kafka\"; cemesh runs this broker itself"
        ),
        "{class}"
    );
    let config = condition("ConfigNotRead");
    assert!(
        config["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.config (ConfigMap kafka-broker-config) is not read"),
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_and_apply_refuse_what_the_config_dir_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("mesh.yaml");
    std::fs::write(
        &file,
        docs(&[
            broker_yaml("default"),
            NOT_RUN.to_owned(),
            OLD_TRIGGER.to_owned(),
        ]),
    )
    .unwrap();
    let file = file.display().to_string();

    let (ok, out, err) = cemesh_cli(&["validate", &file]);
    assert!(!ok, "validate must fail:\n{out}\n{err}");
    // File, document, resource and the line of its kind.
    assert!(
        out.contains(&format!(
            "mesh.yaml: document 2 (CronJob default/orders), line 7: {NOT_RUN_PROBLEM}"
        )),
        "{out}"
    );
    assert!(out.contains(OLD_TRIGGER_PROBLEM), "{out}");

    // The same file through `apply`: refused before anything is sent.
    let mesh = Cemesh::start(&broker_yaml("other"));
    let admin = mesh.admin.to_string();
    let (ok, out, err) = cemesh_cli(&["apply", "-f", &file, "--admin", &admin]);
    assert!(!ok, "apply must fail:\n{out}\n{err}");
    assert!(err.contains(NOT_RUN_PROBLEM), "{err}");
    assert!(err.contains("nothing applied"), "{err}");
    let (_, brokers) = json(mesh.admin_url("/v1/namespaces/default/brokers")).await;
    assert_eq!(
        brokers["items"].as_array().map(Vec::len),
        Some(1),
        "{brokers}"
    );

    // The admin API, asked directly.
    let put = |path: &str, body: &str| {
        client()
            .put(mesh.admin_url(path))
            .header("content-type", "application/yaml")
            .body(body.to_owned())
            .send()
    };
    let r = put("/v1/namespaces/default/triggers/orders", NOT_RUN)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body.to_string().contains("kind CronJob (batch/v1) is not run by cemesh; supported kinds: eventing.knative.dev/v1 Broker, eventing.knative.dev/v1 Trigger, eventing.knative.dev/v1alpha1 EventPolicy"),
        "{body}"
    );
    let r = put("/v1/namespaces/default/cronjobs/orders", NOT_RUN)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains(
            "cemesh runs eventing.knative.dev/v1 Broker, eventing.knative.dev/v1 Trigger"
        ),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_on_an_invalid_broker_says_the_broker_is_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, _) = validate_docs(
        &tmp.path().join("mesh.yaml"),
        &[
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    cemesh.dev/retension: 7d\n".to_owned(),
            trigger_yaml("orders", "default", "http://127.0.0.1:1/", &[]),
        ],
    );
    assert!(!ok);
    assert!(out.contains("(Trigger default/orders): spec.broker: broker default/default is invalid: metadata.annotations.cemesh.dev/retension: unknown cemesh annotation; did you mean cemesh.dev/retention?"), "{out}");
    assert!(!out.contains("is not defined"), "{out}");
}

/// Knative's own ISO 8601 forms are taken; a negative one is refused with the form
/// expected.
#[tokio::test(flavor = "multi_thread")]
async fn every_iso_8601_form_knative_takes_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let trigger = |name: &str, delay: &str| {
        format!("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:1/\n  delivery:\n    retry: 1\n    backoffDelay: \"{delay}\"\n")
    };
    let good: Vec<String> = ["PT0,5S", "P0", "+PT1S", "PT1S1M", "P1W", "P1DT2H"]
        .iter()
        .enumerate()
        .map(|(i, d)| trigger(&format!("t{i}"), d))
        .collect();
    let mut all = vec![broker_yaml("default")];
    all.extend(good);
    let (ok, out, err) = validate_docs(&tmp.path().join("good.yaml"), &all);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("valid: 1 broker(s), 6 trigger(s)"), "{out}");

    let (ok, out, _) = validate_docs(
        &tmp.path().join("bad.yaml"),
        &[
            broker_yaml("default"),
            trigger("neg", "-PT1S"),
            trigger("sec", "1s"),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains("spec.delivery.backoffDelay: \"-PT1S\" is negative"),
        "{out}"
    );
    assert!(out.contains("spec.delivery.backoffDelay: \"1s\" is not an ISO 8601 duration: expected PnYnMnWnDTnHnMnS"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_no_broker_runs() {
    let mesh = Cemesh::start("");
    let (code, ready) = json(mesh.admin_url("/readyz")).await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        problems(&ready)
            .iter()
            .any(|p| p.starts_with("no broker is running")),
        "{ready}"
    );
    let r = client()
        .put(mesh.admin_url("/v1/namespaces/default/brokers/default"))
        .header("content-type", "application/yaml")
        .body(broker_yaml("default"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let (code, ready) = json(mesh.admin_url("/readyz")).await;
    assert_eq!(code, 200, "{ready}");
}

/// With `--api-writes false` (the default on Kafka) the config dir is the only
/// source: PUT and DELETE are refused with what to do instead, reads still work.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_admin_api_refuses_writes_and_says_why() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker_yaml("default"))
        .arg("--api-writes")
        .arg("false")
        .start();
    let r = client()
        .put(mesh.admin_url("/v1/namespaces/default/triggers/t"))
        .header("content-type", "application/yaml")
        .body(trigger_yaml("t", "default", "http://127.0.0.1:1/", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("takes its resources from its config dir only"),
        "{body}"
    );
    let r = client()
        .delete(mesh.admin_url("/v1/namespaces/default/brokers/default"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let (code, _) = json(mesh.admin_url("/v1/namespaces/default/brokers/default")).await;
    assert_eq!(code, 200);

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("t.yaml");
    std::fs::write(
        &file,
        trigger_yaml("t", "default", "http://127.0.0.1:1/", &[]),
    )
    .unwrap();
    let admin = mesh.admin.to_string();
    let (ok, out, err) = cemesh_cli(&[
        "apply",
        "-f",
        &file.display().to_string(),
        "--admin",
        &admin,
    ]);
    assert!(!ok, "{out}\n{err}");
    assert!(err.contains("--api-writes"), "{err}");
}

/// A broker's backpressure hold is a duration up to 30 s: longer, or not a
/// duration, is refused naming the file, the document and the annotation.
#[tokio::test(flavor = "multi_thread")]
async fn a_backpressure_hold_past_30s_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = |name: &str, hold: &str| {
        format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  annotations:\n    cemesh.dev/backpressure-hold: {hold}\n")
    };
    let (ok, out, _) = validate_docs(
        &tmp.path().join("mesh.yaml"),
        &[
            broker("long", "2m"),
            broker("odd", "soon"),
            broker("fine", "250ms"),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains(
            "metadata.annotations.cemesh.dev/backpressure-hold: \"2m\" is longer than 30s"
        ),
        "{out}"
    );
    assert!(
        out.contains("mesh.yaml: document 1 (Broker default/long)"),
        "{out}"
    );
    assert!(out.contains("(Broker default/odd): metadata.annotations.cemesh.dev/backpressure-hold: \"soon\" is not a duration"), "{out}");
    assert!(!out.contains("default/fine"), "{out}");
}

/// Writes `documents` to `file` and runs `cemesh validate` on it: whether it passed,
/// its stdout and its stderr.
fn validate_docs(file: &std::path::Path, documents: &[String]) -> (bool, String, String) {
    std::fs::write(file, docs(documents)).unwrap();
    cemesh_cli(&["validate", &file.display().to_string()])
}
