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

/// A client of `ca`'s servers presenting the certificate in `cert`/`key` (if any).
fn presenting(ca: &Ca, cert_and_key: Option<(&Path, &Path)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = cert_and_key {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// A gRPC Admin client over TLS presenting `identity` (if any).
async fn grpc_admin(
    ca: &Ca,
    addr: std::net::SocketAddr,
    identity: Option<(&Path, &Path)>,
) -> cemesh_proto::pb::cemesh::v1::admin_client::AdminClient<tonic::transport::Channel> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("gRPC over TLS");
    cemesh_proto::pb::cemesh::v1::admin_client::AdminClient::new(channel)
}

/// `--tls-client-ca` (mTLS): the admin API and gRPC admin take only callers with a
/// certificate that CA issued, whose name (URI SAN or CN) holds the role; health,
/// the OIDC keys, the ingress and the gRPC Publisher stay open to clients without one;
/// a certificate from another CA fails the handshake; the CLI presents its
/// certificate with --client-cert/--client-key.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_client_ca_the_admin_api_takes_verified_client_certificates_by_role() {
    use cemesh_proto::pb::cemesh::v1::{ListResourcesRequest, ResourceKind};

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let ca = ca();
    leaf(&ca, 1, &path("tls.crt"), &path("tls.key"));
    let clients = cemesh_tests::pki::ca();
    std::fs::write(path("clients.pem"), clients.cert.pem()).unwrap();
    let ops = "spiffe://cemesh.test/ops";
    cemesh_tests::pki::client_leaf(&clients, ops, &path("ops.crt"), &path("ops.key"));
    cemesh_tests::pki::client_leaf(&clients, "viewer", &path("viewer.crt"), &path("viewer.key"));
    let stranger = cemesh_tests::pki::ca();
    cemesh_tests::pki::client_leaf(&stranger, ops, &path("forged.crt"), &path("forged.key"));
    std::fs::write(
        path("cemesh.yaml"),
        format!("auth:\n  admin:\n    admin: [\"{ops}\"]\n    read: [viewer]\n"),
    )
    .unwrap();
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker_yaml("default"))
        .arg("--tls-cert")
        .arg(path("tls.crt").to_str().unwrap())
        .arg("--tls-key")
        .arg(path("tls.key").to_str().unwrap())
        .arg("--tls-client-ca")
        .arg(path("clients.pem").to_str().unwrap())
        .arg("--config")
        .arg(path("cemesh.yaml").to_str().unwrap())
        .start();
    let brokers = https(mesh.admin_url("/v1/namespaces/default/brokers"));
    let apply = https(mesh.admin_url("/v1/namespaces/default/triggers/t"));
    let trigger = trigger_yaml("t", "default", "http://127.0.0.1:1/", &[]);
    let (ops_id, viewer_id) = (
        (path("ops.crt"), path("ops.key")),
        (path("viewer.crt"), path("viewer.key")),
    );
    let as_ops = presenting(&ca, Some((&ops_id.0, &ops_id.1)));
    let as_viewer = presenting(&ca, Some((&viewer_id.0, &viewer_id.1)));
    let anonymous = presenting(&ca, None);

    // No certificate: 401 naming what is missing; health and the OIDC keys stay open.
    let r = anonymous.get(&brokers).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    assert!(body.contains("client certificate"), "{body}");
    for open in ["/healthz", "/readyz", "/.well-known/jwks.json"] {
        let r = anonymous
            .get(https(mesh.admin_url(open)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    // A certificate another CA issued (with the same name) fails the handshake.
    let forged = presenting(&ca, Some((&path("forged.crt"), &path("forged.key"))));
    assert!(forged.get(&brokers).send().await.is_err());
    // Roles by the certificate's name: the viewer (CN) reads, the SPIFFE ID changes.
    let r = as_viewer.get(&brokers).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let post = |c: &reqwest::Client| {
        c.put(&apply)
            .header("content-type", "application/yaml")
            .body(trigger.clone())
            .send()
    };
    let r = post(&as_viewer).await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("viewer") && body.contains("admin"), "{body}");
    let r = post(&as_ops).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // The ingress does not ask for one.
    let url = https(mesh.broker_url("default", "default"));
    let r = post_binary(&anonymous, &url, &Event::new("m-1", "/mtls", "t")).await;
    assert_eq!(r.status(), 202);

    // gRPC: the Admin service needs the certificate; the Publisher and health do not.
    let list = || {
        tonic::Request::new(ListResourcesRequest {
            kind: ResourceKind::Broker as i32,
            ..Default::default()
        })
    };
    let denied = grpc_admin(&ca, mesh.grpc, None)
        .await
        .list_resources(list())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");
    assert!(
        denied.message().contains("client certificate"),
        "{denied:?}"
    );
    let listed = grpc_admin(&ca, mesh.grpc, Some((&ops_id.0, &ops_id.1)))
        .await
        .list_resources(list())
        .await
        .expect("a verified admin lists");
    assert!(format!("{:?}", listed.into_inner()).contains("default"));
    {
        use cemesh_proto::pb::cemesh::v1::publisher_client::PublisherClient;
        use cemesh_proto::pb::cemesh::v1::PublishRequest;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert.pem()))
            .domain_name("localhost");
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", mesh.grpc))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let event = cemesh_proto::protobuf::to_proto(&Event::new("g-1", "/mtls", "t"));
        PublisherClient::new(channel)
            .publish(PublishRequest {
                namespace: "default".into(),
                broker: "default".into(),
                event: Some(event),
            })
            .await
            .expect("publishing needs no client certificate");
    }

    // The CLI presents its certificate with --client-cert/--client-key.
    std::fs::write(path("ca.pem"), ca.cert.pem()).unwrap();
    let admin = https(mesh.admin_url(""));
    let ca_file = path("ca.pem");
    let common = ["--admin", &admin, "--cacert", ca_file.to_str().unwrap()];
    let mut args = vec!["get", "triggers"];
    args.extend(common);
    let (ok, _, err) = cemesh_cli(&args);
    assert!(!ok && err.contains("client certificate"), "{err}");
    args.extend([
        "--client-cert",
        ops_id.0.to_str().unwrap(),
        "--client-key",
        ops_id.1.to_str().unwrap(),
    ]);
    let (ok, out, err) = cemesh_cli(&args);
    assert!(ok && out.contains('t'), "{out}{err}");
    let (ok, _, err) = cemesh_cli(&["get", "triggers", "--client-cert", "x.pem"]);
    assert!(!ok && err.contains("--client-key"), "{err}");

    // Without TLS there is nothing to ask certificates with: refused at start.
    let err = Cemesh::builder()
        .manifest("mesh.yaml", &broker_yaml("default"))
        .arg("--tls-client-ca")
        .arg(path("clients.pem").to_str().unwrap())
        .start_expect_failure();
    assert!(err.contains("--tls-client-ca needs TLS"), "{err}");
}
