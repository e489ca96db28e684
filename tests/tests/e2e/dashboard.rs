//! The dashboard (`/ui/` on the admin port) in a real browser: headless Chromium,
//! driven by Selenium from `tests/browser/dashboard.py`, against the real binary
//! with the admin API behind a token. The script checks the page (no console
//! errors, the topology, counters that move, resources, event types, the live tail,
//! a journey's attempts, the phone layout) and redrives a dead letter from the UI;
//! this test then checks that the subscriber got it. Screenshots of the main views
//! are kept under `$CARGO_TARGET_DIR/artefacts/dashboard/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cemesh_proto::Event;
use cemesh_tests::*;

const OPS_TOKEN: &str = "dashboard-ops-token-0123456789";

fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artefacts").join("dashboard");
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_a_real_browser_and_redrives_a_dead_letter() {
    let (orders, failing) = (Subscriber::start().await, Subscriber::start().await);
    failing.set_status(422);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cemesh.yaml");
    std::fs::write(
        &config,
        "auth:\n  tokens:\n    - name: ops\n      env: CEMESH_TEST_OPS\n  admin:\n    admin: [ops]\n",
    )
    .unwrap();
    let mesh = Cemesh::builder()
        .channel("sled")
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                trigger_yaml("orders", "default", &orders.url(), &[]),
                trigger_yaml(
                    "failing",
                    "default",
                    &failing.url(),
                    &[("type", "test.fail")],
                ),
            ]),
        )
        .arg("--config")
        .arg(&config.display().to_string())
        .env("CEMESH_TEST_OPS", OPS_TOKEN)
        .start();
    let url = mesh.broker_url("default", "default");
    let status = post_binary(&client(), &url, &Event::new("dl-1", "/shop", "test.fail"))
        .await
        .status();
    assert_eq!(status, 202);
    failing.wait_for(1, Duration::from_secs(10)).await;
    // The page must be served without credentials; the API behind it not.
    let page = client().get(mesh.admin_url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let api = client()
        .get(mesh.admin_url("/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    failing.set_status(200);

    let out = artefacts();
    let marker = dir.path().join("redriven.json");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.py");
    let run = Command::new("python3")
        .arg(&script)
        .args(["--admin", &format!("http://{}", mesh.admin)])
        .args(["--ingress", &format!("http://{}", mesh.ingress)])
        .args(["--out", &out.display().to_string()])
        .args(["--token", OPS_TOKEN])
        .args(["--broker", "default", "--expect-trigger", "orders"])
        .arg("--check-delivered")
        .args([
            "--deadletter-trigger",
            "failing",
            "--deadletter-event-id",
            "dl-1",
        ])
        .args(["--redrive-marker", &marker.display().to_string()])
        .output()
        .expect("python3 runs (scripts/test.sh installs selenium, chromium and chromium-driver)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(
        run.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}\n{}",
        mesh.logs()
    );
    // The redrive done in the page reached the subscriber.
    let got = failing.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[1].event.as_ref().unwrap().id, "dl-1");
    assert_eq!(got[1].status_sent, 200);
    let redriven: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(redriven["eventId"], "dl-1", "{redriven}");
    for shot in ["topology-light.png", "topology-dark.png"] {
        assert!(out.join(shot).exists(), "{shot} not saved: {stdout}");
    }
}
