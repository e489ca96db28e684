//! "Where is my event?": `cemesh trace` and the journey endpoint, through the
//! binary: acceptance, a failed then successful attempt, a trigger that filtered it
//! out, a reply followed to its own journey, a dead letter, a journey found again
//! after a restart, and a broker that keeps no journal.

use std::time::Duration;

use cemesh_proto::Event;
use cemesh_tests::*;

fn trigger(name: &str, ty: &str, url: &str) -> String {
    format!(
        "{}  delivery:\n    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT0.3S\n",
        trigger_yaml(name, "default", url, &[("type", ty)])
    )
}

fn trace(mesh: &Cemesh, args: &[&str]) -> (bool, String, String) {
    let admin = format!("http://{}", mesh.admin);
    let mut all = vec!["trace", "--admin", &admin];
    all.extend_from_slice(args);
    cemesh_cli(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_s_journey_shows_attempts_filters_replies_and_outcomes() {
    let (flaky, replier, dead) = (
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
    );
    flaky.set_status(503);
    dead.set_status(422);
    replier.set_reply(Some(Event::new("the-reply", "/replier", "test.replied")));
    let mut mesh = Cemesh::builder()
        .channel("sled")
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                trigger("flaky", "test.order", &flaky.url()),
                trigger("replier", "test.order", &replier.url()),
                trigger("other", "test.other", &dead.url()),
                trigger("dead", "test.doomed", &dead.url()),
            ]),
        )
        .start();
    let url = mesh.broker_url("default", "default");
    let c = client();
    assert_eq!(
        post_binary(&c, &url, &Event::new("o-1", "/shop", "test.order"))
            .await
            .status(),
        202
    );
    flaky.wait_for(1, Duration::from_secs(10)).await;
    flaky.set_status(200);
    flaky.wait_for(2, Duration::from_secs(10)).await;
    replier.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        post_binary(&c, &url, &Event::new("d-1", "/shop", "test.doomed"))
            .await
            .status(),
        202
    );
    dead.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (ok, out, err) = trace(&mesh, &["default", "o-1"]);
    assert!(ok, "{out}{err}");
    for want in [
        "event o-1 (source /shop, type test.order) in default/default",
        "accepted (http-binary)",
        "trigger default/flaky: delivered",
        "-> 503 in",
        "-> 200 in",
        "trigger default/other: filtered out",
        "trigger default/replier: delivered",
        "reply the-reply (type test.replied) to default/default",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    // The reply has a journey of its own, saying where it came from.
    let j = mesh
        .admin_json("/v1/namespaces/default/brokers/default/journey/the-reply")
        .await;
    assert!(
        j["accepted"]["via"]
            .as_str()
            .unwrap()
            .contains("reply from default/replier to o-1"),
        "{j}"
    );
    // A dead letter: attempts, then the store, with its id.
    let j = mesh
        .admin_json("/v1/namespaces/default/brokers/default/journey/d-1")
        .await;
    let dead_part = j["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trigger"] == "default/dead")
        .unwrap()
        .clone();
    assert_eq!(dead_part["outcome"], "dead-lettered", "{j}");
    assert!(dead_part["deadLetter"].is_u64(), "{j}");
    assert_eq!(dead_part["attempts"][0]["status"], 422, "{j}");

    // Unknown: 404 naming the id.
    let (ok, _, err) = trace(&mesh, &["default", "nope"]);
    assert!(
        !ok && err.contains("404") && err.contains("no event nope"),
        "{err}"
    );

    // The journal is on disk: a restart finds the journey again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mesh.kill9();
    mesh.restart();
    let (ok, out, err) = trace(&mesh, &["default", "o-1"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("-> 503 in") && out.contains("trigger default/flaky: delivered"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_with_its_journal_off_keeps_no_journey() {
    let sub = Subscriber::start().await;
    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: quiet\n  annotations:\n    cemesh.dev/journal: \"off\"\n";
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker.to_owned(),
                trigger_yaml("t", "quiet", &sub.url(), &[]),
            ]),
        )
        .start();
    let url = mesh.broker_url("default", "quiet");
    assert_eq!(
        post_binary(&client(), &url, &Event::new("q-1", "/s", "t"))
            .await
            .status(),
        202
    );
    sub.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, _, err) = trace(&mesh, &["quiet", "q-1"]);
    assert!(
        !ok && err.contains("404") && err.contains("cemesh.dev/journal: off"),
        "{err}"
    );
}
