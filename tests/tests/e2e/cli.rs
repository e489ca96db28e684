//! kubectl habits of the client commands, through the binary.

use std::process::{Command, Stdio};

use cemesh_tests::*;

fn cemesh(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cemesh_bin())
        .args(args)
        .env_remove("CEMESH_ADMIN")
        .stdin(Stdio::null())
        .output()
        .expect("run cemesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--admin HOST:PORT` without a scheme works, as kubectl's `--server` does.
#[tokio::test(flavor = "multi_thread")]
async fn admin_address_without_scheme() {
    let sub = Subscriber::start().await;
    let mesh = Cemesh::start(&docs(&[
        broker_yaml("default"),
        trigger_yaml("orders", "default", &sub.url(), &[]),
    ]));
    let addr = mesh.admin.to_string();
    let (ok, out, err) = cemesh(&["get", "triggers", "--admin", &addr]);
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
        let (ok, out, err) = cemesh(&args);
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
