//! Who may publish (issue 19 §2): static tokens and OIDC JWTs authenticate senders;
//! Knative `EventPolicy` resources and the default authorization mode decide which
//! sender may send which events to which broker. The answers are 401 (no or a bad
//! credential), 403 (a sender or an event not allowed, naming broker and policy) and
//! 202, over HTTP and gRPC; a policy applied at run time takes effect without a
//! restart; secrets appear in no log, status or error body.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cemesh_proto::{AttributeValue, Event};
use cemesh_tests::*;
use serde_json::{json, Value};

const ORDERS_TOKEN: &str = "orders-7f3c9a1e5b2d4f60a8e1c3b5";
const BILLING_TOKEN: &str = "billing-1d2e3f4a5b6c7d8e9f0a1b2c";
const JWT_ISSUER: &str = "https://issuer.test.example";

fn broker_in(ns: &str, name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
    );
    if !labels.is_empty() {
        s.push_str("  labels:\n");
        for (k, v) in labels {
            s.push_str(&format!("    {k}: {v}\n"));
        }
    }
    s
}

fn trigger_in(ns: &str, name: &str, broker: &str, url: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  broker: {broker}\n  subscriber:\n    uri: {url}\n"
    )
}

/// Writes a secret file and the server config naming it; returns the config path.
fn write_config(dir: &Path, extra: &str) -> String {
    std::fs::write(dir.join("orders.token"), format!("{ORDERS_TOKEN}\n")).unwrap();
    let config = dir.join("cemesh.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  default_authorization: allow-same-namespace\n  authcontext: true\n  tokens:\n    - name: orders\n      namespace: shop\n      file: {}\n    - name: billing\n      env: CEMESH_TEST_BILLING_TOKEN\n{extra}",
            dir.join("orders.token").display()
        ),
    )
    .unwrap();
    config.display().to_string()
}

async fn post(
    url: &str,
    token: Option<&str>,
    event: &Event,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", &event.id)
        .header("ce-source", &event.source)
        .header("ce-type", &event.ty)
        .header("content-type", "application/json")
        .body("{}");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}

const ORDERS_POLICY: &str = "apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata:
  name: orders-only
  namespace: shop
spec:
  to:
    - ref:
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        name: orders
    - selector:
        matchLabels:
          team: orders
  from:
    - sub: orders
  filters:
    - prefix:
        type: order.
";

#[tokio::test(flavor = "multi_thread")]
async fn static_tokens_and_event_policies_decide_who_may_send_what() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let sub = Subscriber::start().await;
    let manifests = docs(&[
        broker_in("shop", "orders", &[]),
        broker_in("shop", "labelled", &[("team", "orders")]),
        broker_in("shop", "open", &[]),
        trigger_in("shop", "all", "orders", &sub.url()),
        ORDERS_POLICY.to_owned(),
    ]);
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &manifests)
        .arg("--config")
        .arg(&config)
        .env("CEMESH_TEST_BILLING_TOKEN", BILLING_TOKEN)
        .start();
    let orders = mesh.broker_url("shop", "orders");
    let created = Event::new("ok-1", "/shop", "order.created");

    // No credential where a policy applies: 401 with a Bearer challenge.
    let (status, body, headers) = post(&orders, None, &created).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(error_of(&body).contains("Authorization: Bearer"), "{body}");
    // A bad credential: 401, whatever the broker allows.
    let (status, body, _) = post(&orders, Some("not-a-token-we-know"), &created).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        error_of(&body),
        "the bearer token is not one this server knows"
    );
    let (status, _, _) = post(&mesh.broker_url("shop", "open"), Some("nope"), &created).await;
    assert_eq!(status, 401);
    // A sender the policy does not name: 403 naming broker and policy.
    let (status, body, _) = post(&orders, Some(BILLING_TOKEN), &created).await;
    assert_eq!(status, 403, "{body}");
    let why = error_of(&body);
    assert!(
        why.contains("billing") && why.contains("shop/orders") && why.contains("shop/orders-only"),
        "{why}"
    );
    // The named sender, an event the filters allow: 202.
    let (status, body, _) = post(&orders, Some(ORDERS_TOKEN), &created).await;
    assert_eq!(status, 202, "{body}");
    // An event the filters do not allow: 403 naming the event.
    let other = Event::new("no-1", "/shop", "invoice.paid");
    let (status, body, _) = post(&orders, Some(ORDERS_TOKEN), &other).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("invoice.paid"), "{body}");
    // A batch with one event the filters refuse is refused whole.
    let batch = json!([
        {"specversion": "1.0", "id": "b-1", "source": "/shop", "type": "order.created"},
        {"specversion": "1.0", "id": "b-2", "source": "/shop", "type": "invoice.paid"},
    ]);
    let resp = client()
        .post(&orders)
        .bearer_auth(ORDERS_TOKEN)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(error_of(&body).contains("event 1 of the batch"), "{body}");
    // The selector picks the labelled broker too.
    let (status, _, _) = post(
        &mesh.broker_url("shop", "labelled"),
        Some(BILLING_TOKEN),
        &created,
    )
    .await;
    assert_eq!(status, 403);

    // No policy selects `open`: allow-same-namespace lets orders (namespace shop) in,
    // not billing (no namespace), and asks anonymous senders to authenticate.
    let open = mesh.broker_url("shop", "open");
    assert_eq!(post(&open, Some(ORDERS_TOKEN), &created).await.0, 202);
    let (status, body, _) = post(&open, Some(BILLING_TOKEN), &created).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("allow-same-namespace"), "{body}");
    assert_eq!(post(&open, None, &created).await.0, 401);

    // The subscriber got only the accepted event, with its sender stamped over what
    // the producer claimed.
    let received = sub.wait_for(1, Duration::from_secs(10)).await;
    let forged = {
        let mut e = Event::new("ok-2", "/shop", "order.created");
        e.set_extension("authid", AttributeValue::String("admin".into()));
        e
    };
    let resp = client()
        .post(&orders)
        .bearer_auth(ORDERS_TOKEN)
        .header("ce-specversion", "1.0")
        .header("ce-id", &forged.id)
        .header("ce-source", &forged.source)
        .header("ce-type", &forged.ty)
        .header("ce-authid", "admin")
        .header("ce-authtype", "system")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let received = sub
        .wait_for(received.len() + 1, Duration::from_secs(10))
        .await;
    let ids: Vec<&str> = received
        .iter()
        .filter_map(|r| r.event.as_ref().map(|e| e.id.as_str()))
        .collect();
    assert_eq!(ids, ["ok-1", "ok-2"]);
    for r in &received {
        let e = r.event.as_ref().unwrap();
        assert_eq!(
            e.extension("authid"),
            Some(&AttributeValue::String("orders".into()))
        );
        assert_eq!(
            e.extension("authtype"),
            Some(&AttributeValue::String("api_key".into()))
        );
    }

    // Status: the broker's audience and the policies that apply; the policy's subjects.
    let status: Value = mesh.admin_json("/v1/namespaces/shop/brokers/orders").await;
    assert_eq!(
        status["status"]["address"]["audience"],
        "eventing.knative.dev/broker/shop/orders"
    );
    assert_eq!(
        status["status"]["policies"],
        json!([{"apiVersion": "eventing.knative.dev/v1alpha1", "name": "orders-only"}])
    );
    let policy: Value = mesh
        .admin_json("/v1/namespaces/shop/eventpolicies/orders-only")
        .await;
    assert_eq!(policy["status"]["from"], json!(["orders"]));
    assert_eq!(policy["status"]["brokers"], json!(["labelled", "orders"]));

    // A policy applied at run time lets billing in, without a restart.
    let billing_policy = "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: billing\n  namespace: shop\nspec:\n  to:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}\n  from:\n    - sub: bill*\n";
    let resp = client()
        .put(mesh.admin_url("/v1/namespaces/shop/eventpolicies/billing"))
        .header("content-type", "application/yaml")
        .body(billing_policy)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let other = Event::new("bill-1", "/billing", "invoice.paid");
    assert_eq!(post(&orders, Some(BILLING_TOKEN), &other).await.0, 202);

    // Secrets never show: not in logs, statuses or error bodies.
    let everything = format!(
        "{}{}{}",
        mesh.logs(),
        status,
        client()
            .get(mesh.admin_url("/v1/eventpolicies"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    );
    for secret in [ORDERS_TOKEN, BILLING_TOKEN] {
        assert!(!everything.contains(secret), "a secret leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policies_name_their_field_and_bad_auth_config_stops_start_up() {
    let bad = "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: p\nspec:\n  from:\n    - sub: \"a*b\"\n    - ref: {apiVersion: sources.knative.dev/v1, kind: PingSource, name: ping}\n  to:\n    - selector: {matchExpressions: [{key: a, operator: Near}]}\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, bad).unwrap();
    let (ok, out, err) = cemesh_cli(&["validate", file.to_str().unwrap()]);
    let text = format!("{out}{err}");
    assert!(!ok, "{text}");
    for expected in [
        "spec.from[0].sub: \"a*b\": '*' is only allowed as suffix",
        "spec.from[1].ref: cemesh identifies senders by subject",
        "spec.to[0].selector.matchExpressions[0].operator: \"Near\" is not an operator",
    ] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }

    let config = dir.path().join("cemesh.yaml");
    std::fs::write(
        &config,
        "auth:\n  tokens:\n    - name: a\n      file: /nonexistent/token\n",
    )
    .unwrap();
    let err = Cemesh::builder()
        .arg("--config")
        .arg(&config.display().to_string())
        .start_expect_failure();
    assert!(
        err.contains("auth.tokens[0] (a): file /nonexistent/token"),
        "{err}"
    );
}

/// An ES256 signer for the tests' OIDC issuer, with its JWKS.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
    jwks: Value,
    public_pem: String,
}

impl Issuer {
    fn new(kid: &str) -> Issuer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Issuer {
            key: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks: json!({"keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
            }]}),
            public_pem: pair.public_key_pem(),
        }
    }

    fn token(&self, kid: &str, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn jwts_from_a_configured_issuer_authenticate_senders() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks.to_string()).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "  jwt:\n    - issuer: {JWT_ISSUER}\n      jwks_file: {}\n      leeway: 5s\n",
            jwks.display()
        ),
    );
    let policy = "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: apps\n  namespace: shop\nspec:\n  to:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}\n  from:\n    - sub: \"system:serviceaccount:shop:*\"\n";
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_in("shop", "orders", &[]),
                broker_in("shop", "open", &[]),
                broker_in("other", "open", &[]),
                policy.to_owned(),
            ]),
        )
        .arg("--config")
        .arg(&config)
        .env("CEMESH_TEST_BILLING_TOKEN", BILLING_TOKEN)
        .start();
    let orders = mesh.broker_url("shop", "orders");
    let aud = "eventing.knative.dev/broker/shop/orders";
    let claims = |sub: &str, aud: &str, iss: &str, exp: i64| json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp, "iat": now()});
    let later = (now() + 300) as i64;
    let app = "system:serviceaccount:shop:checkout";
    let e = Event::new("j-1", "/shop", "order.created");

    let good = issuer.token("k1", claims(app, aud, JWT_ISSUER, later));
    let (status, body, _) = post(&orders, Some(&good), &e).await;
    assert_eq!(status, 202, "{body}");

    let refusals = [
        (
            "expired",
            issuer.token("k1", claims(app, aud, JWT_ISSUER, now() as i64 - 60)),
            "expired",
        ),
        (
            "another broker's audience",
            issuer.token(
                "k1",
                claims(
                    app,
                    "eventing.knative.dev/broker/shop/open",
                    JWT_ISSUER,
                    later,
                ),
            ),
            "audience",
        ),
        (
            "unknown issuer",
            issuer.token("k1", claims(app, aud, "https://evil.example", later)),
            "issuer",
        ),
        (
            "unknown key",
            issuer.token("k9", claims(app, aud, JWT_ISSUER, later)),
            "k9",
        ),
        (
            "alg none",
            {
                let b64 = |v: &Value| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
                };
                format!(
                    "{}.{}.",
                    b64(&json!({"alg": "none", "typ": "JWT"})),
                    b64(&claims(app, aud, JWT_ISSUER, later))
                )
            },
            "",
        ),
        (
            "HS256 keyed with the public key",
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims(app, aud, JWT_ISSUER, later),
                &jsonwebtoken::EncodingKey::from_secret(issuer.public_pem.as_bytes()),
            )
            .unwrap(),
            "HS256",
        ),
        (
            "a forged signature",
            {
                let other = Issuer::new("k1");
                other.token("k1", claims(app, aud, JWT_ISSUER, later))
            },
            "",
        ),
    ];
    for (what, token, says) in &refusals {
        let (status, body, _) = post(&orders, Some(token), &e).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(error_of(&body).contains(says), "{what}: {body}");
        assert!(
            !error_of(&body).contains(token.as_str()),
            "{what}: the token echoed"
        );
    }

    // The policy's wildcard names service accounts of shop only.
    let outsider = issuer.token(
        "k1",
        claims("system:serviceaccount:other:app", aud, JWT_ISSUER, later),
    );
    assert_eq!(post(&orders, Some(&outsider), &e).await.0, 403);
    // allow-same-namespace reads the service account's namespace.
    let shop_open = issuer.token(
        "k1",
        claims(
            app,
            "eventing.knative.dev/broker/shop/open",
            JWT_ISSUER,
            later,
        ),
    );
    assert_eq!(
        post(&mesh.broker_url("shop", "open"), Some(&shop_open), &e)
            .await
            .0,
        202
    );
    let other_open = issuer.token(
        "k1",
        claims(
            app,
            "eventing.knative.dev/broker/other/open",
            JWT_ISSUER,
            later,
        ),
    );
    assert_eq!(
        post(&mesh.broker_url("other", "open"), Some(&other_open), &e)
            .await
            .0,
        403
    );
    assert!(!mesh.logs().contains(&good));

    // A gRPC stream outlives its JWT: messages after the token expired (exp plus the
    // 5 s leeway) are refused UNAUTHENTICATED, as a new call with it would be.
    {
        use cemesh_proto::pb::cemesh::v1::publisher_client::PublisherClient;
        use cemesh_proto::pb::cemesh::v1::PublishRequest;
        let short = issuer.token("k1", claims(app, aud, JWT_ISSUER, now() as i64 - 2));
        let channel = mesh.grpc_channel().await;
        let (tx, rx) = futures::channel::mpsc::unbounded::<PublishRequest>();
        let mut request = tonic::Request::new(rx);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {short}").parse().unwrap());
        let message = |id: &str| PublishRequest {
            namespace: "shop".into(),
            broker: "orders".into(),
            event: Some(cemesh_proto::protobuf::to_proto(&Event::new(
                id,
                "/shop",
                "order.created",
            ))),
        };
        tx.unbounded_send(message("s-1")).unwrap();
        let mut acks = PublisherClient::new(channel)
            .publish_stream(request)
            .await
            .expect("the stream opens with a valid token")
            .into_inner();
        let first = acks.message().await.unwrap().unwrap();
        assert_eq!(first.code, 0, "{first:?}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.unbounded_send(message("s-2")).unwrap();
        let second = acks.message().await.unwrap().unwrap();
        assert_eq!(
            second.code,
            tonic::Code::Unauthenticated as i32,
            "{second:?}"
        );
        assert!(second.message.contains("expired"), "{second:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_publishers_authenticate_with_call_credentials() {
    use cemesh_proto::pb::cemesh::v1::publisher_client::PublisherClient;
    use cemesh_proto::pb::cemesh::v1::PublishRequest;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[broker_in("shop", "orders", &[]), ORDERS_POLICY.to_owned()]),
        )
        .arg("--config")
        .arg(&config)
        .env("CEMESH_TEST_BILLING_TOKEN", BILLING_TOKEN)
        .start();
    let addr = mesh.grpc;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PublisherClient::new(channel);
    let request = |token: Option<&str>, ty: &str| {
        let event = cemesh_proto::protobuf::to_proto(&Event::new("g-1", "/shop", ty));
        let mut r = tonic::Request::new(PublishRequest {
            namespace: "shop".into(),
            broker: "orders".into(),
            event: Some(event),
        });
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    // (token, event type, the answer's code)
    let cases = [
        (None, "order.created", tonic::Code::Unauthenticated),
        (
            Some("wrong-token-xyz"),
            "order.created",
            tonic::Code::Unauthenticated,
        ),
        (
            Some(BILLING_TOKEN),
            "order.created",
            tonic::Code::PermissionDenied,
        ),
        (
            Some(ORDERS_TOKEN),
            "invoice.paid",
            tonic::Code::PermissionDenied,
        ),
        (Some(ORDERS_TOKEN), "order.created", tonic::Code::Ok),
    ];
    for (token, ty, want) in cases {
        let got = match client.publish(request(token, ty)).await {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        assert_eq!(got, want, "token {token:?}, type {ty}");
    }
}

const OPS_TOKEN: &str = "ops-9a8b7c6d5e4f3a2b1c0d9e8f";
const VIEWER_TOKEN: &str = "viewer-0f1e2d3c4b5a69788796a5b4";

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_takes_roles_and_an_open_one_stays_on_loopback() {
    use cemesh_proto::pb::cemesh::v1::admin_client::AdminClient;
    use cemesh_proto::pb::cemesh::v1::{ApplyResourceRequest, ListResourcesRequest, ResourceKind};

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ops"), OPS_TOKEN).unwrap();
    let config = dir.path().join("cemesh.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  tokens:\n    - name: ops\n      file: {}\n    - name: viewer\n      env: CEMESH_TEST_VIEWER\n    - name: orders\n      env: CEMESH_TEST_ORDERS\n  admin:\n    admin: [ops]\n    read: [view*]\n",
            dir.path().join("ops").display()
        ),
    )
    .unwrap();
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker_yaml("default"))
        .arg("--config")
        .arg(&config.display().to_string())
        .env("CEMESH_TEST_VIEWER", VIEWER_TOKEN)
        .env("CEMESH_TEST_ORDERS", ORDERS_TOKEN)
        .start();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut req = client().request(method, mesh.admin_url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req
                .header("content-type", "application/yaml")
                .body(trigger_yaml("t", "default", "http://127.0.0.1:1/", &[]))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let challenge = resp.headers().get("www-authenticate").cloned();
            (status, challenge, resp.text().await.unwrap())
        }
    };
    use reqwest::Method;
    // Probes and scrapers stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call(Method::GET, path, None).await.0, 200, "{path}");
    }
    let (status, challenge, body) = call(Method::GET, "/v1/brokers", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge.unwrap(), "Bearer");
    assert_eq!(
        call(Method::GET, "/v1/brokers", Some(VIEWER_TOKEN)).await.0,
        200
    );
    assert_eq!(
        call(Method::GET, "/v1/brokers", Some(OPS_TOKEN)).await.0,
        200
    );
    let (status, _, body) = call(Method::GET, "/v1/brokers", Some(ORDERS_TOKEN)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("orders may not read the admin API"), "{body}");
    let put = "/v1/namespaces/default/triggers/t";
    let (status, _, body) = call(Method::PUT, put, Some(VIEWER_TOKEN)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs the admin role"), "{body}");
    let (status, _, body) = call(Method::PUT, put, Some(OPS_TOKEN)).await;
    assert!((200..300).contains(&status), "{status} {body}");
    let purge = "/v1/namespaces/default/triggers/t/deadletters";
    assert_eq!(call(Method::DELETE, purge, Some(VIEWER_TOKEN)).await.0, 403);
    assert_eq!(call(Method::DELETE, purge, None).await.0, 401);

    // gRPC Admin: the same roles.
    let channel = mesh.grpc_channel().await;
    let mut admin = AdminClient::new(channel);
    fn with<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }
    let list = ListResourcesRequest {
        kind: ResourceKind::Broker as i32,
        ..Default::default()
    };
    let err = admin
        .list_resources(with(None, list.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(admin
        .list_resources(with(Some(VIEWER_TOKEN), list))
        .await
        .is_ok());
    let apply = ApplyResourceRequest {
        kind: ResourceKind::Broker as i32,
        namespace: "default".into(),
        name: "other".into(),
        manifest: broker_yaml("other"),
    };
    let err = admin
        .apply_resource(with(Some(VIEWER_TOKEN), apply.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(admin
        .apply_resource(with(Some(OPS_TOKEN), apply))
        .await
        .is_ok());

    // The CLI: refused without a token (with the hint), fine with one.
    let admin_url = mesh.admin_url("");
    let (ok, _, err) = cemesh_cli(&["get", "brokers", "--admin", &admin_url]);
    assert!(!ok);
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    let token_file = dir.path().join("ops");
    let (ok, out, err) = cemesh_cli(&[
        "get",
        "brokers",
        "--admin",
        &admin_url,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("other"), "{out}");
    assert!(!mesh.logs().contains(OPS_TOKEN) && !mesh.logs().contains(VIEWER_TOKEN));

    // An open admin API beyond loopback does not start.
    let err = Cemesh::builder()
        .arg("--grpc-addr")
        .arg("0.0.0.0:0")
        .start_expect_failure();
    assert!(
        err.contains("refusing to serve the gRPC (its Admin service) API to anyone on 0.0.0.0:0"),
        "{err}"
    );
}

/// Verifies a Standard Webhooks signature with the reference verifier (the
/// `standardwebhooks` Python package the test script installs).
fn reference_webhook_verify(secret: &str, r: &Received) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, &r.body).unwrap();
    let header = |n: &str| r.headers[n].to_str().unwrap().to_owned();
    let script = "import sys\nfrom standardwebhooks.webhooks import Webhook\nbody = open(sys.argv[2], 'rb').read()\nWebhook(sys.argv[1]).verify(body, {'webhook-id': sys.argv[3], 'webhook-timestamp': sys.argv[4], 'webhook-signature': sys.argv[5]})\n";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            secret,
            body.to_str().unwrap(),
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
        ])
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_verify_deliveries_by_oidc_token_and_webhook_signature() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAbCdEf01";
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let (oidc_sub, hook_sub, plain_sub) = (
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
    );
    let oidc_trigger = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: verified\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n    audience: https://orders.example/receiver\n",
        oidc_sub.url()
    );
    let hook_trigger = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: hooked\n  annotations:\n    cemesh.dev/webhook-secret-file: {}\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        secret_file.display(),
        hook_sub.url()
    );
    // A dead-letter sink's own Destination names its own audience.
    let sink_sub = Subscriber::start().await;
    let sunk_trigger = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: sunk\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:1/\n    audience: https://never.example/\n  delivery:\n    retry: 0\n    deadLetterSink:\n      uri: {}\n      audience: https://orders.example/dead-letters\n",
        sink_sub.url()
    );
    let data_dir = tempfile::tempdir().unwrap();
    let mesh = Cemesh::builder()
        .manifest(
            "mesh.yaml",
            &docs(&[
                broker_yaml("default"),
                oidc_trigger,
                hook_trigger,
                sunk_trigger,
                trigger_yaml("plain", "default", &plain_sub.url(), &[]),
            ]),
        )
        .data_dir(data_dir.path())
        .start();
    let mut e = Event::new("v-1", "/verify", "order.created");
    // The reference verifier parses the body as JSON once it is verified.
    e.datacontenttype = Some("application/json".into());
    e.data = Some(bytes::Bytes::from_static(br#"{"order": 42}"#));
    let resp = post_binary(&client(), &mesh.broker_url("default", "default"), &e).await;
    assert_eq!(resp.status(), 202);
    let got = oidc_sub.wait_for(1, Duration::from_secs(10)).await;
    let hooked = hook_sub.wait_for(1, Duration::from_secs(10)).await;
    let plain = plain_sub.wait_for(1, Duration::from_secs(10)).await;

    // OIDC: discovery names the issuer and the JWKS; a stock JWT library verifies the
    // token against them.
    let discovery: Value = mesh.admin_json("/.well-known/openid-configuration").await;
    let issuer = discovery["issuer"].as_str().unwrap().to_owned();
    assert_eq!(issuer, mesh.admin_url(""));
    let jwks: jsonwebtoken::jwk::JwkSet = client()
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = got[0].headers["authorization"].to_str().unwrap();
    let token = auth.strip_prefix("Bearer ").expect("a bearer token");
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("the token's key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["https://orders.example/receiver"]);
    validation.set_issuer(&[&issuer]);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .expect("the delivery token verifies")
    .claims;
    assert_eq!(claims["sub"], "default/verified");
    assert!(claims["exp"].as_u64().unwrap() <= now() + 300);
    // The dead-letter sink's token is for its own audience.
    let sunk = sink_sub.wait_for(1, Duration::from_secs(10)).await;
    let auth = sunk[0].headers["authorization"].to_str().unwrap();
    let sink_token = auth.strip_prefix("Bearer ").expect("a bearer token");
    let mut sink_validation = validation.clone();
    sink_validation.set_audience(&["https://orders.example/dead-letters"]);
    let claims = jsonwebtoken::decode::<Value>(
        sink_token,
        &jsonwebtoken::DecodingKey::from_jwk(
            jwks.find(
                jsonwebtoken::decode_header(sink_token)
                    .unwrap()
                    .kid
                    .as_deref()
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap(),
        &sink_validation,
    )
    .expect("the dead-letter sink's token verifies for its audience")
    .claims;
    assert_eq!(claims["sub"], "default/sunk");
    // Another audience does not verify it.
    validation.set_audience(&["https://someone.else"]);
    assert!(jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation
    )
    .is_err());

    // Standard Webhooks: the reference verifier accepts the signature, and refuses
    // it for a changed body or another secret.
    reference_webhook_verify(secret, &hooked[0]).expect("the signature verifies");
    let mut tampered = Received {
        headers: hooked[0].headers.clone(),
        body: bytes::Bytes::from_static(b"{\"forged\":true}"),
        event: None,
        at: hooked[0].at,
        status_sent: 200,
    };
    assert!(reference_webhook_verify(secret, &tampered).is_err());
    tampered.body = hooked[0].body.clone();
    assert!(reference_webhook_verify("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY", &tampered).is_err());
    assert!(hooked[0].headers.get("authorization").is_none());

    // A trigger that asks for neither gets neither.
    for h in ["authorization", "webhook-signature"] {
        assert!(plain[0].headers.get(h).is_none(), "{h}");
    }
    // The secret and the private key stay out of logs, status and the JWKS.
    let status = client()
        .get(mesh.admin_url("/v1/namespaces/default/triggers/hooked"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let published = serde_json::to_string(&jwks).unwrap();
    assert!(
        !published.contains("\"d\""),
        "a private key part in the JWKS"
    );
    for text in [mesh.logs(), status] {
        assert!(!text.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    }

    // A restart keeps the key: the same JWKS.
    let mut mesh = mesh;
    mesh.restart();
    let again: Value = mesh.admin_json("/.well-known/jwks.json").await;
    assert_eq!(
        serde_json::to_value(&jwks).unwrap()["keys"][0]["kid"],
        again["keys"][0]["kid"]
    );
}

/// Channels and flows go through the same security layer as brokers: a policy on a
/// Sequence guards its address and its inner hops; one on a Channel its address;
/// hops inside the mesh (a step's reply into the next channel) need no credential.
#[tokio::test(flavor = "multi_thread")]
async fn event_policies_guard_channels_and_every_hop_of_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (step, last, sub) = (
        Subscriber::start().await,
        Subscriber::start().await,
        Subscriber::start().await,
    );
    step.set_echo(true);
    let manifests = docs(&[
        format!("apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: pipeline\n  namespace: shop\nspec:\n  steps:\n    - uri: {}\n    - uri: {}\n", step.url(), last.url()),
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: audit\n  namespace: shop\n  labels:\n    team: orders\n".to_owned(),
        format!("apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: audit\n  namespace: shop\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: audit\n  subscriber:\n    uri: {}\n", sub.url()),
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: billing-runs-the-pipeline\n  namespace: shop\nspec:\n  to:\n    - ref:\n        apiVersion: flows.knative.dev/v1\n        kind: Sequence\n        name: pipeline\n    - selector:\n        apiVersion: messaging.knative.dev/v1\n        kind: InMemoryChannel\n        matchLabels:\n          team: orders\n  from:\n    - sub: billing\n".to_owned(),
    ]);
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &manifests)
        .arg("--config")
        .arg(&config)
        .env("CEMESH_TEST_BILLING_TOKEN", BILLING_TOKEN)
        .start();
    let first = mesh.broker_url("shop", "pipeline-kn-sequence-0-kn-channel");
    let inner = mesh.broker_url("shop", "pipeline-kn-sequence-1-kn-channel");
    let audit = mesh.broker_url("shop", "audit-kn-channel");
    let e = Event::new("p1", "/auth", "com.example.p");
    for url in [&first, &inner, &audit] {
        let (status, body, _) = post(url, None, &e).await;
        assert_eq!(status, 401, "{url}: {body}");
        let (status, body, _) = post(url, Some(ORDERS_TOKEN), &e).await;
        assert_eq!(status, 403, "{url}: {body}");
        let address = url.rsplit('/').next().unwrap();
        assert_eq!(
            error_of(&body),
            format!("orders may not send to broker shop/{address}: no EventPolicy that selects it (shop/billing-runs-the-pipeline) names this subject in spec.from"),
        );
    }
    let (status, body, _) = post(&first, Some(BILLING_TOKEN), &e).await;
    assert_eq!(status, 202, "{body}");
    let (status, body, _) = post(&audit, Some(BILLING_TOKEN), &e).await;
    assert_eq!(status, 202, "{body}");
    // The step's reply reached the next hop inside the mesh.
    assert_eq!(last.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    assert_eq!(sub.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    let seq = mesh
        .admin_json("/v1/namespaces/shop/eventpolicies/billing-runs-the-pipeline")
        .await;
    let selected = seq["status"]["brokers"].as_array().unwrap();
    assert_eq!(selected.len(), 3, "{seq}");
}
