//! TLS on the listeners (issue 19 §1): with `--tls-cert`/`--tls-key` the ingress, the
//! admin API and gRPC speak TLS only, with certificates made here by a test CA, and
//! a certificate rewritten in place is taken by new connections without failing a
//! request.

use std::path::Path;
use std::time::{Duration, Instant};

use cemesh_proto::Event;
use cemesh_tests::pki::{ca, leaf, Ca};
use cemesh_tests::*;

fn trusting(ca: &Ca) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A broker serving `manifests` with the pair in `cert` and `key`.
fn tls_mesh(manifests: &str, cert: &Path, key: &Path) -> Cemesh {
    Cemesh::builder()
        .manifest("mesh.yaml", manifests)
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .start()
}

fn https(url: String) -> String {
    url.replacen("http://", "https://", 1)
}

fn peer_der(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("the server's certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listener_speaks_tls_and_a_rotated_certificate_is_taken_without_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = ca();
    let first = leaf(&ca, 1, &cert_file, &key_file);
    let sub = Subscriber::start().await;
    let forwarded = Subscriber::start().await;
    // A trigger whose subscriber is another broker of this process: delivered to its
    // own ingress, over TLS, trusting its own certificate's issuer.
    let to_broker = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: fwd\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: other\n".to_owned();
    let mesh = tls_mesh(
        &docs(&[
            broker_yaml("default"),
            broker_yaml("other"),
            trigger_yaml("t", "default", &sub.url(), &[]),
            to_broker,
            trigger_yaml("t2", "other", &forwarded.url(), &[]),
        ]),
        &cert_file,
        &key_file,
    );
    let url = https(mesh.broker_url("default", "default"));
    let client = trusting(&ca);

    // The ingress: accepted over TLS, delivered.
    let resp = post_binary(&client, &url, &Event::new("tls-1", "/tls", "t")).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(peer_der(&resp), first);
    sub.wait_for(1, Duration::from_secs(30)).await;
    let got = forwarded.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(
        got[0].event.as_ref().map(|e| e.id.as_str()),
        Some("tls-1"),
        "through the other broker's TLS ingress: {}",
        mesh.logs()
    );
    // The admin API.
    let ready = client
        .get(https(mesh.admin_url("/readyz")))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Plaintext and an untrusting client get nothing.
    let plain = cemesh_tests::client()
        .post(mesh.broker_url("default", "default"))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plaintext HTTP is not served"
    );
    let stranger = reqwest::Client::new();
    assert!(stranger
        .get(https(mesh.admin_url("/readyz")))
        .send()
        .await
        .is_err());
    // gRPC over TLS (HTTP/2 by ALPN): the health check answers SERVING.
    let h2 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let health = h2
        .post(format!("https://{}/grpc.health.v1.Health/Check", mesh.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("gRPC over TLS");
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.headers().get("grpc-status").map(|v| v.as_bytes()),
        None,
        "a successful unary call has its status in the trailers"
    );
    let body = health.bytes().await.unwrap();
    // HealthCheckResponse { status: SERVING (1) }, gRPC-framed.
    assert_eq!(&body[..], &[0, 0, 0, 0, 2, 8, 1]);

    // The CLI: --cacert trusts the CA, --insecure-skip-verify trusts anything,
    // neither refuses the unknown issuer.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let ca_path = ca_file.to_str().unwrap();
    let send = |extra: &[&str]| {
        let mut args = vec!["send", "--to", &url, "--type", "t", "--source", "/cli"];
        args.extend_from_slice(extra);
        cemesh_cli(&args)
    };
    let (ok, out, err) = send(&["--cacert", ca_path]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = send(&[]);
    assert!(!ok && err.contains(&url), "refused without the CA: {err}");
    let (ok, out, err) = send(&["--insecure-skip-verify"]);
    assert!(ok, "{out}{err}");
    let admin = https(mesh.admin_url(""));
    let (ok, out, err) = cemesh_cli(&["get", "triggers", "--admin", &admin, "--cacert", ca_path]);
    assert!(ok && out.contains("fwd"), "{out}{err}");
    let (ok, _, err) = cemesh_cli(&["get", "triggers", "--admin", &admin]);
    assert!(
        !ok && err.contains("--cacert"),
        "the admin API's certificate is not trusted without --cacert: {err}"
    );

    // Rotation: a producer keeps sending on its pooled connection while the files are
    // replaced; new connections see the new certificate; no request fails.
    let sending = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut statuses = Vec::new();
            for i in 0..60 {
                let r = post_binary(&client, &url, &Event::new(format!("r{i}"), "/tls", "t")).await;
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = leaf(&ca, 2, &cert_file, &key_file);
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = trusting(&ca);
        let r = fresh
            .get(https(mesh.admin_url("/healthz")))
            .send()
            .await
            .unwrap();
        if peer_der(&r) == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let statuses = sending.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert!(mesh.logs().contains("TLS certificate reloaded"));
}

#[test]
fn a_missing_or_mismatched_key_stops_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = ca();
    leaf(&ca, 1, &cert_file, &key_file);
    // A key of another certificate.
    std::fs::write(
        &key_file,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = Cemesh::builder()
        .manifest("mesh.yaml", &broker_yaml("default"))
        .arg("--tls-cert")
        .arg(cert_file.to_str().unwrap())
        .arg("--tls-key")
        .arg(key_file.to_str().unwrap())
        .start_expect_failure();
    assert!(
        err.contains("tls.key") && err.contains("does not match"),
        "{err}"
    );
    let (ok, _, err) = cemesh_cli(&["serve", "--tls-cert", cert_file.to_str().unwrap()]);
    assert!(!ok && err.contains("--tls-key"), "{err}");
}

/// Knative's `Destination.CACerts`: a trigger delivers to an https subscriber whose
/// certificate a private CA issued when the trigger names that CA; a trigger that
/// does not, fails the TLS handshake and dead-letters the event.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_s_ca_certs_are_trusted_for_its_deliveries_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = ca();
    leaf(&ca, 7, &cert_file, &key_file);
    let sub = Subscriber::start().await;
    // The https subscriber: another cemesh's TLS ingress, forwarding to `sub`.
    let receiver = tls_mesh(
        &docs(&[
            broker_yaml("default"),
            trigger_yaml("out", "default", &sub.url(), &[]),
        ]),
        &cert_file,
        &key_file,
    );
    let target = https(receiver.broker_url("default", "default"));
    let indent = |pem: String| {
        pem.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let trusting = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: trusting\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: for.trusting\n  subscriber:\n    uri: {target}\n    CACerts: |\n{}",
        indent(ca.cert.pem())
    );
    let untrusting = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: untrusting\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: for.untrusting\n  subscriber:\n    uri: {target}\n  delivery:\n    retry: 0\n"
    );
    let sender = Cemesh::start(&docs(&[broker_yaml("default"), trusting, untrusting]));
    let url = sender.broker_url("default", "default");
    let c = client();
    assert_eq!(
        post_binary(&c, &url, &Event::new("ca-1", "/ca", "for.trusting"))
            .await
            .status(),
        202
    );
    assert_eq!(
        post_binary(&c, &url, &Event::new("ca-2", "/ca", "for.untrusting"))
            .await
            .status(),
        202
    );
    let got = sub.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].event.as_ref().unwrap().id, "ca-1");
    // The untrusting trigger's event is a dead letter whose error names the
    // certificate; it never reached the receiver.
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let v = sender
            .admin_json("/v1/namespaces/default/triggers/untrusting/deadletters")
            .await;
        if v.to_string().contains("ca-2") {
            break v.to_string();
        }
        assert!(Instant::now() < deadline, "no dead letter: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(letters.to_lowercase().contains("certificate"), "{letters}");
    assert_eq!(sub.settle(Duration::from_millis(500)).await.len(), 1);

    // A CACerts that is not PEM is refused naming the field.
    let bad = tempfile::tempdir().unwrap();
    let file = bad.path().join("t.yaml");
    std::fs::write(
        &file,
        format!("{}---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: {target}\n    CACerts: not a certificate\n", broker_yaml("default")),
    )
    .unwrap();
    let (ok, out, err) = cemesh_cli(&["validate", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        format!("{out}{err}").contains("spec.subscriber.CACerts"),
        "{out}{err}"
    );
}

/// Publishing over https with what producers use: the official CloudEvents Python
/// SDK (binary and structured, through `requests` with the CA) and curl `--cacert`;
/// without the CA both are refused by their own TLS checks.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_and_curl_publish_over_https_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = ca();
    leaf(&ca, 11, &cert_file, &key_file);
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let sub = Subscriber::start().await;
    let mesh = tls_mesh(
        &docs(&[
            broker_yaml("default"),
            trigger_yaml("t", "default", &sub.url(), &[]),
        ]),
        &cert_file,
        &key_file,
    );
    let url = https(mesh.broker_url("default", "default"));
    let script = r#"
import sys, requests
try:  # cloudevents 2.x keeps the 1.x API under cloudevents.v1
    from cloudevents.v1.http import CloudEvent
    from cloudevents.v1.conversion import to_binary, to_structured
except ImportError:
    from cloudevents.http import CloudEvent
    from cloudevents.conversion import to_binary, to_structured
url, ca = sys.argv[1], sys.argv[2]
for ty, conv in (("sdk.binary", to_binary), ("sdk.structured", to_structured)):
    headers, body = conv(CloudEvent({"type": ty, "source": "/python", "id": "py-" + ty}, {"n": 1}))
    r = requests.post(url, headers=headers, data=body, verify=ca, timeout=10)
    assert r.status_code == 202, (ty, r.status_code, r.text)
try:
    requests.post(url, headers=headers, data=body, timeout=10)
    sys.exit("published without trusting the CA")
except requests.exceptions.SSLError:
    pass
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &url, ca_file.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let curl = |with_ca: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]);
        if with_ca {
            cmd.args(["--cacert", ca_file.to_str().unwrap()]);
        }
        cmd.args([
            "-H",
            "ce-specversion: 1.0",
            "-H",
            "ce-id: curl-1",
            "-H",
            "ce-source: /curl",
            "-H",
            "ce-type: curl.binary",
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &url,
        ]);
        cmd.output().expect("curl")
    };
    let ok = curl(true);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "202", "{ok:?}");
    assert!(!curl(false).status.success(), "curl without --cacert");
    let got = sub.wait_for(3, Duration::from_secs(30)).await;
    let mut types: Vec<String> = got
        .iter()
        .filter_map(|r| r.event.as_ref().map(|e| e.ty.clone()))
        .collect();
    types.sort();
    assert_eq!(types, ["curl.binary", "sdk.binary", "sdk.structured"]);
}
