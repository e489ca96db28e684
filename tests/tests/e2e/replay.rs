//! Replays, cursor moves and where new triggers start, through the binary and the
//! CLI on a sled broker: a replay of a time range delivers exactly that range's
//! matches to one trigger while live traffic goes on, other triggers see nothing
//! twice, and a replay killed with -9 resumes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;

const BROKER: &str = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  annotations:\n    cemesh.dev/retention: 1h\n";

/// `n` events `{prefix}-{i}`, of types test.a and test.b in turn.
fn batch(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let ty = if i % 2 == 0 { "test.a" } else { "test.b" };
            Event::new(format!("{prefix}-{i}"), "/replay", ty)
        })
        .collect()
}

async fn send_all(url: &str, events: &[Event]) {
    let c = client();
    for e in events {
        assert_eq!(post_binary(&c, url, e).await.status(), 202, "{}", e.id);
    }
}

/// A sled broker (with retention) and `triggers`.
fn sled_mesh(triggers: &[String]) -> Cemesh {
    let mut parts = vec![BROKER.to_owned()];
    parts.extend_from_slice(triggers);
    Cemesh::builder()
        .channel("sled")
        .manifest("mesh.yaml", &docs(&parts))
        .start()
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339_ms(chrono::Utc::now())
}

/// The end of a window that holds everything accepted so far: the next millisecond
/// (`--to` is exclusive at millisecond precision, and the last event may have
/// arrived within the millisecond `now_rfc3339` would name).
pub(crate) fn window_end() -> String {
    rfc3339_ms(chrono::Utc::now() + chrono::Duration::milliseconds(1))
}

/// `t` as the replay command's `--from`/`--to` take it.
fn rfc3339_ms(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The replay id a delivery carries, if it is a replayed one.
fn replay_of(r: &Received) -> Option<String> {
    match r.event.as_ref()?.extension("cemeshreplay")? {
        AttributeValue::String(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

/// Ids delivered (live or replayed) and how often.
fn counts<'a>(received: impl Iterator<Item = &'a Received>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in received {
        if let Some(e) = &r.event {
            *m.entry(e.id.clone()).or_default() += 1;
        }
    }
    m
}

fn admin(mesh: &Cemesh) -> String {
    format!("http://{}", mesh.admin)
}

/// Runs `cemesh replay ...` and answers the replay's id.
fn start_replay(mesh: &Cemesh, args: &[&str]) -> String {
    let admin = admin(mesh);
    let mut all = vec!["replay", "--admin", &admin];
    all.extend_from_slice(args);
    let (ok, out, err) = cemesh_cli(&all);
    assert!(ok, "{out}{err}");
    out.split_whitespace()
        .nth(1)
        .expect("replay <id> started")
        .to_owned()
}

async fn wait_replay(mesh: &Cemesh, id: &str, timeout: Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let r = mesh
            .admin_json(&format!("/v1/namespaces/default/replays/{id}"))
            .await;
        if r["state"] != "Running" || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_of_a_time_range_delivers_exactly_its_matches_while_live_traffic_goes_on() {
    let (a, b) = (Subscriber::start().await, Subscriber::start().await);
    let mesh = sled_mesh(&[
        trigger_yaml("a", "default", &a.url(), &[("type", "test.a")]),
        trigger_yaml("b", "default", &b.url(), &[]),
    ]);
    let url = mesh.broker_url("default", "default");
    // Three stretches a little over a second apart: the range is the middle one.
    send_all(&url, &batch("before", 100)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let from = now_rfc3339();
    send_all(&url, &batch("inside", 100)).await;
    let to = window_end();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send_all(&url, &batch("after", 100)).await;
    a.wait_for(150, Duration::from_secs(20)).await;
    b.wait_for(300, Duration::from_secs(20)).await;

    // Live traffic goes on during the replay.
    let live = {
        let url = url.clone();
        tokio::spawn(async move {
            for chunk in batch("live", 200).chunks(10) {
                send_all(&url, chunk).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let id = start_replay(&mesh, &["a", "--from", &from, "--to", &to]);
    let done = wait_replay(&mesh, &id, Duration::from_secs(30)).await;
    live.await.unwrap();
    assert_eq!(done["state"], "Completed", "{done}");
    assert_eq!(done["counters"]["delivered"], 50, "{done}");
    let metrics = mesh.metrics_text().await;
    for (name, value) in [
        ("cemesh_replay_delivered", " 50"),
        ("cemesh_replay_progress_ratio", " 1"),
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("replay=\"{id}\"")))
            .unwrap_or_default();
        assert!(line.ends_with(value), "{name}: {line:?}");
    }

    a.wait_for(150 + 100 + 50, Duration::from_secs(20)).await;
    let got_a = a.settle(Duration::from_millis(800)).await;
    let got_b = b.settle(Duration::from_millis(300)).await;
    let (replayed, live_a): (Vec<&Received>, Vec<&Received>) =
        got_a.iter().partition(|r| replay_of(r).is_some());
    // The replayed set is exactly the range's matches, each once, marked with the id.
    let replayed_ids: HashSet<String> = counts(replayed.iter().copied()).into_keys().collect();
    let want: HashSet<String> = (0..100).step_by(2).map(|i| format!("inside-{i}")).collect();
    assert_eq!(replayed_ids, want);
    assert_eq!(replayed.len(), 50);
    assert!(replayed
        .iter()
        .all(|r| replay_of(r).as_deref() == Some(id.as_str())));
    // Live delivery was undisturbed: every type-a event once.
    let live_counts = counts(live_a.iter().copied());
    assert_eq!(live_counts.len(), 250, "live deliveries to a");
    assert!(live_counts.values().all(|n| *n == 1), "a live event twice");
    // The other trigger saw nothing twice and nothing replayed.
    let b_counts = counts(got_b.iter());
    assert_eq!(b_counts.len(), 500);
    assert!(b_counts.values().all(|n| *n == 1), "b got an event twice");
    assert!(got_b.iter().all(|r| replay_of(r).is_none()));

    // With an extra CESQL filter, by offset: only what both filters match.
    let id2 = start_replay(
        &mesh,
        &[
            "a",
            "--from",
            "earliest",
            "--to",
            "100",
            "--filter",
            "id LIKE 'before-1%'",
        ],
    );
    let done = wait_replay(&mesh, &id2, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "Completed", "{done}");
    // before-1, before-10..19 and before-100..: of those, the even ones (test.a).
    assert_eq!(done["counters"]["delivered"], 5, "{done}");
    assert_eq!(done["counters"]["unmatched"], 89, "{done}");
    let (ok, out, err) = cemesh_cli(&["replay", "--admin", &admin(&mesh), "status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && out.contains(&id2) && out.contains("Completed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_with_9_resumes_where_it_stopped_and_can_be_cancelled() {
    let sub = Subscriber::start().await;
    let slow = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    cemesh.dev/parallelism: \"4\"\n";
    let trigger = format!(
        "{slow}spec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        sub.url()
    );
    let mut mesh = sled_mesh(&[trigger]);
    let url = mesh.broker_url("default", "default");
    send_all(&url, &batch("e", 300)).await;
    sub.wait_for(300, Duration::from_secs(20)).await;
    sub.set_delay(Duration::from_millis(40), Duration::ZERO);
    let id = start_replay(&mesh, &["t", "--from", "earliest"]);
    // About 100 events a second: kill it a second in.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_kill = sub.count() - 300;
    assert!(
        before_kill > 0 && before_kill < 300,
        "{before_kill} replayed before the kill"
    );
    mesh.kill9();
    mesh.restart();
    let done = wait_replay(&mesh, &id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "Completed", "{done}");
    let got = sub.settle(Duration::from_millis(500)).await;
    let replayed = counts(got.iter().filter(|r| replay_of(r).is_some()));
    assert_eq!(replayed.len(), 300, "every event of the range replayed");
    // At least once: what was in flight at the kill (at most the parallelism, plus
    // what was acked but not yet persisted) comes again.
    let again: usize = replayed.values().map(|n| n - 1).sum();
    assert!(again <= 150, "{again} replayed twice");
    assert!(mesh.logs().contains("Replay resumed"), "{}", mesh.logs());

    // A cancelled replay stops and says so.
    let id = start_replay(&mesh, &["t", "--from", "earliest"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out, err) = cemesh_cli(&["replay", "--admin", &admin(&mesh), "cancel", &id]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Cancelled"), "{out}");
    let r = mesh
        .admin_json(&format!("/v1/namespaces/default/replays/{id}"))
        .await;
    let delivered = r["counters"]["delivered"].as_u64().unwrap();
    assert!(delivered < 300, "{r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = mesh
        .admin_json(&format!("/v1/namespaces/default/replays/{id}"))
        .await;
    assert_eq!(
        after["counters"]["delivered"], delivered,
        "delivers after cancel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_cursor_moves_back_and_refuses_to_skip_unless_forced_and_start_takes_a_time() {
    let sub = Subscriber::start().await;
    let late = Subscriber::start().await;
    let mesh = sled_mesh(&[format!(
        "{}  delivery:\n    retry: 20\n    backoffPolicy: linear\n    backoffDelay: PT0.5S\n",
        trigger_yaml("t", "default", &sub.url(), &[])
    )]);
    let url = mesh.broker_url("default", "default");
    send_all(&url, &batch("first", 50)).await;
    sub.wait_for(50, Duration::from_secs(20)).await;
    let admin = admin(&mesh);
    // Back to offset 10: 40 events come again.
    let (ok, out, err) = cemesh_cli(&["reset-cursor", "--admin", &admin, "t", "--to", "10"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("from 0:50 to 0:10") && out.contains("40 to be delivered again"),
        "{out}"
    );
    sub.wait_for(90, Duration::from_secs(20)).await;
    let got = sub.settle(Duration::from_millis(500)).await;
    assert_eq!(got.len(), 90);

    // Forward over undelivered events: refused, then forced.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let middle = now_rfc3339();
    sub.set_status(503);
    send_all(&url, &batch("stuck", 20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out, err) = cemesh_cli(&["reset-cursor", "--admin", &admin, "t", "--to", "latest"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("409") && err.contains("would skip 20 events"),
        "{err}"
    );
    let (ok, out, err) = cemesh_cli(&[
        "reset-cursor",
        "--admin",
        &admin,
        "t",
        "--to",
        "latest",
        "--force",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("20 events skipped"), "{out}");
    sub.set_status(200);
    send_all(&url, &batch("fresh", 5)).await;
    sub.wait_for(sub.count() + 1, Duration::from_secs(10)).await;
    let got = sub.settle(Duration::from_millis(800)).await;
    let taken: HashSet<String> = got
        .iter()
        .filter(|r| r.status_sent == 200)
        .filter_map(|r| r.event.as_ref().map(|e| e.id.clone()))
        .collect();
    assert!((0..5).all(|i| taken.contains(&format!("fresh-{i}"))));
    assert!(
        !taken.iter().any(|id| id.starts_with("stuck")),
        "a skipped event was delivered"
    );

    // A trigger created now with a start time gets what arrived since.
    let t2 = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: late\n  annotations:\n    cemesh.dev/start: \"{middle}\"\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        late.url()
    );
    let file = mesh.dir().join("late.yaml");
    std::fs::write(&file, t2).unwrap();
    let (ok, out, err) = cemesh_cli(&["apply", "--admin", &admin, "-f", file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    late.wait_for(25, Duration::from_secs(20)).await;
    let got = late.settle(Duration::from_millis(800)).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|r| r.event.as_ref().map(|e| e.id.clone()))
        .collect();
    assert_eq!(ids.len(), 25, "{ids:?}");
    assert!(
        ids.iter()
            .all(|id| id.starts_with("stuck") || id.starts_with("fresh")),
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_replay_requests_are_refused_naming_the_problem() {
    let sub = Subscriber::start().await;
    let mesh = sled_mesh(&[trigger_yaml("t", "default", &sub.url(), &[])]);
    let c = client();
    let post = |path: &str, body: &str| {
        c.post(mesh.admin_url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let cases = [
        (
            "/v1/namespaces/default/triggers/t/replays",
            r#"{"from":"soon"}"#,
            400,
            "from: \"soon\" is not earliest",
        ),
        (
            "/v1/namespaces/default/triggers/t/replays",
            r#"{"from":"earliest","filter":"type ="}"#,
            400,
            "filter",
        ),
        (
            "/v1/namespaces/default/triggers/t/replays",
            r#"{"form":"earliest"}"#,
            400,
            "unknown field `form`",
        ),
        (
            "/v1/namespaces/default/triggers/nope/replays",
            r#"{"from":"earliest"}"#,
            404,
            "trigger default/nope is not running",
        ),
        (
            "/v1/namespaces/default/triggers/t/cursor",
            r#"{"to":"yesterday"}"#,
            400,
            "to: \"yesterday\"",
        ),
    ];
    for (path, body, status, says) in cases {
        let resp = post(path, body).await.unwrap();
        assert_eq!(resp.status(), status, "{path} {body}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{path} {body}: {answer}");
    }
    let resp = c
        .delete(mesh.admin_url("/v1/namespaces/default/replays/none"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// The same over gRPC (`cemesh.v1.Admin`): start, follow, list, a bad range, and a
/// cursor moved back.
#[tokio::test(flavor = "multi_thread")]
async fn replays_and_cursor_moves_over_grpc() {
    use cemesh_proto::pb::cemesh::v1::admin_client::AdminClient;
    use cemesh_proto::pb::cemesh::v1::{
        GetReplayRequest, ListReplaysRequest, ResetCursorRequest, StartReplayRequest,
    };
    let sub = Subscriber::start().await;
    let mesh = sled_mesh(&[trigger_yaml("t", "default", &sub.url(), &[])]);
    send_all(&mesh.broker_url("default", "default"), &batch("g", 20)).await;
    sub.wait_for(20, Duration::from_secs(20)).await;
    let channel = mesh.grpc_channel().await;
    let mut admin = AdminClient::new(channel);
    let start = |from: &str| StartReplayRequest {
        namespace: String::new(),
        trigger: "t".into(),
        from: from.into(),
        to: None,
        filter: Some("type = 'test.b'".into()),
    };
    let bad = admin.start_replay(start("whenever")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let r = admin
        .start_replay(start("earliest"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.state.as_str(), r.total), ("Running", 20));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let got = admin
            .get_replay(GetReplayRequest {
                namespace: "default".into(),
                id: r.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if got.state != "Running" || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (done.state.as_str(), done.delivered, done.done),
        ("Completed", 10, 20)
    );
    let list = admin
        .list_replays(ListReplaysRequest { namespace: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items.len(), 1);
    let moved = admin
        .reset_cursor(ResetCursorRequest {
            namespace: String::new(),
            trigger: "t".into(),
            to: "earliest".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((moved.skipped, moved.again), (0, 20));
    sub.wait_for(20 + 10 + 20, Duration::from_secs(20)).await;
}
