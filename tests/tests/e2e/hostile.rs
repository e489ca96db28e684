//! Clients that hold connections without finishing requests (issue 17 §3): a head
//! or body that never arrives, a keep-alive connection left idle, more connections
//! than a listener takes. Raw TCP, so nothing in between completes or closes
//! anything for us; every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cemesh_proto::Event;
use cemesh_tests::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Longest any test waits for the broker to act on a timeout.
const BOUND: Duration = Duration::from_secs(5);

fn broker() -> String {
    broker_yaml("default")
}

fn event(id: &str) -> Event {
    Event::new(id, "/hostile", "com.example.hostile")
}

/// Reads until the broker closes the connection (EOF or reset); answers what was
/// read and when the close came. Fails if it does not close within [`BOUND`].
async fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(BOUND, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Ok(at) => (got, at),
        Err(_) => panic!(
            "the broker kept the connection open for {BOUND:?}; read so far: {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

/// Posts one event on `stream` and expects 202.
async fn post_on(stream: &mut TcpStream, id: &str) {
    stream.write_all(post_request(id).as_bytes()).await.unwrap();
    assert_eq!(read_answer(stream).await.status, 202);
}

/// When the broker closed `stream`, having sent nothing more.
async fn closed_quietly(stream: &mut TcpStream) -> Instant {
    let (rest, closed) = until_closed(stream).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    closed
}

/// One HTTP/1.1 answer: status, head (lower-cased), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads one answer (with a `content-length`) off a keep-alive connection.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(BOUND, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
                if got.len() >= end + 4 + len {
                    let status = head[9..12].parse().expect("status");
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                    return Answer { status, head, body };
                }
            }
            let n = stream.read(&mut buf).await.expect("read answer");
            assert!(
                n > 0,
                "connection closed before a whole answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer within the bound")
}

fn post_request(id: &str) -> String {
    format!(
        "POST /default/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /hostile\r\nce-type: com.example.hostile\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nhi"
    )
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// (a) A request head that never ends is cut at the header read timeout, on the
/// ingress and on the admin listener alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_partial_request_head_is_closed_at_the_header_read_timeout() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker())
        .arg("--header-read-timeout")
        .arg("300ms")
        .start();
    for (listener, addr, partial) in [
        (
            "ingress",
            mesh.ingress,
            "POST /default/default HTTP/1.1\r\nhost: x\r\nce-id: 1",
        ),
        ("admin", mesh.admin, "GET /healthz HT"),
    ] {
        let mut stream = connect(addr).await;
        let sent = Instant::now();
        stream.write_all(partial.as_bytes()).await.unwrap();
        let (_, closed) = until_closed(&mut stream).await;
        let after = closed - sent;
        assert!(
            after >= Duration::from_millis(200),
            "{listener}: closed after {after:?}, before the timeout"
        );
        // A connection that sends nothing at all is cut too.
        let mut silent = connect(addr).await;
        until_closed(&mut silent).await;
    }
    // Well-behaved clients are still served.
    let resp = post_binary(
        &client(),
        &mesh.broker_url("default", "default"),
        &event("ok"),
    )
    .await;
    assert_eq!(resp.status(), 202);
}

/// (b) A body shorter than its `Content-Length` is answered 408 with the JSON body
/// every refusal has, at the body read timeout; other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_arrives_is_answered_408() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker())
        .arg("--body-read-timeout")
        .arg("500ms")
        .start();
    let mut slow = connect(mesh.ingress).await;
    let head = "POST /default/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: slow\r\nce-source: /hostile\r\nce-type: com.example.hostile\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n0123456789";
    let sent = Instant::now();
    slow.write_all(head.as_bytes()).await.unwrap();

    // The broker answers everyone else while that body is pending.
    let c = client();
    let url = mesh.broker_url("default", "default");
    for i in 0..3 {
        let started = Instant::now();
        let resp = post_binary(&c, &url, &event(&format!("fast-{i}"))).await;
        assert_eq!(resp.status(), 202);
        assert!(started.elapsed() < Duration::from_millis(400));
    }

    let answer = read_answer(&mut slow).await;
    let after = sent.elapsed();
    assert_eq!(answer.status, 408, "head: {}", answer.head);
    assert!(
        after >= Duration::from_millis(400),
        "answered after {after:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON body");
    let error = body["error"].as_str().expect("error field");
    assert!(error.contains("body read timeout"), "{error}");
    // Then the connection is closed: the rest of that body is not awaited.
    until_closed(&mut slow).await;
}

/// The admin API reads bodies the same way: a `PUT` whose manifest never arrives is
/// answered 408 with a JSON error (not axum's bare 400), and one over 2 MiB 413.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_answers_a_slow_body_408_and_a_huge_one_413() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker())
        .arg("--body-read-timeout")
        .arg("500ms")
        .start();
    let mut slow = connect(mesh.admin).await;
    let head = "PUT /v1/namespaces/default/brokers/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/yaml\r\ncontent-length: 100\r\n\r\nkind: Broker\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut slow).await;
    assert_eq!(answer.status, 408, "head: {}", answer.head);
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON body");
    let error = body["error"].as_str().expect("error field");
    assert!(error.contains("body read timeout"), "{error}");

    let resp = client()
        .put(format!(
            "http://{}/v1/namespaces/default/brokers/huge",
            mesh.admin
        ))
        .header("content-type", "application/yaml")
        .body(vec![b'#'; (2 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.expect("JSON body");
    assert!(body["error"].as_str().is_some(), "{body}");
}

/// (c) A keep-alive connection with nothing in flight is closed at the idle
/// timeout, not before.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker())
        .arg("--idle-timeout")
        .arg("800ms")
        .start();
    let mut stream = connect(mesh.ingress).await;
    post_on(&mut stream, "idle-1").await;
    // Reused within the timeout: still open, and the clock starts again after it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    post_on(&mut stream, "idle-2").await;
    let answered = Instant::now();
    let idle = closed_quietly(&mut stream).await - answered;
    assert!(
        idle >= Duration::from_millis(650),
        "closed after {idle:?} idle, before the timeout"
    );
}

/// A head that starts after a request on a keep-alive connection is held to the
/// header read timeout from its first byte, not to the (longer) idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_partial_head_after_a_request_is_cut_at_the_header_read_timeout() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker())
        .arg("--header-read-timeout")
        .arg("400ms")
        .arg("--idle-timeout")
        .arg("20s")
        .start();
    let mut stream = connect(mesh.ingress).await;
    post_on(&mut stream, "before").await;
    // Idle past the first head's deadline, so only the new head's can close it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sent = Instant::now();
    stream
        .write_all(b"POST /default/default HTTP/1.1\r\nhost: x\r\nce-id: 2")
        .await
        .unwrap();
    let after = closed_quietly(&mut stream).await - sent;
    // Within `until_closed`'s bound (5 s), far below the idle timeout (20 s).
    assert!(
        after >= Duration::from_millis(300),
        "closed {after:?} after the head started, before the header read timeout"
    );
}

/// Opens `n` connections and has each served once, so each holds a place.
async fn hold(addr: SocketAddr, n: usize, request: impl Fn(usize) -> String) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..n {
        let mut s = connect(addr).await;
        s.write_all(request(i).as_bytes()).await.unwrap();
        let status = read_answer(&mut s).await.status;
        assert!(
            (200..300).contains(&status),
            "held connection {i}: {status}"
        );
        held.push(s);
    }
    held
}

/// Asserts the connection to `addr` is refused with a clear 503.
async fn assert_refused(addr: SocketAddr, request: &str) {
    let mut s = connect(addr).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert_eq!(answer.status, 503, "head: {}", answer.head);
    assert!(
        answer.head.contains("\r\nretry-after: 1"),
        "head: {}",
        answer.head
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON body");
    let error = body["error"].as_str().expect("error field");
    assert!(error.contains("too many connections"), "{error}");
    until_closed(&mut s).await;
}

/// Polls until a new connection to `addr` is served again.
async fn served_again(addr: SocketAddr, request: &str) {
    let deadline = Instant::now() + BOUND;
    loop {
        let mut s = connect(addr).await;
        s.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut s).await;
        if (200..300).contains(&answer.status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the held connections closed: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (d) Past `--max-connections` a new connection is answered 503 with
/// `Retry-After` while the others are held; once they close, new ones are served.
#[tokio::test(flavor = "multi_thread")]
async fn past_max_connections_the_ingress_refuses_with_503() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker())
        .arg("--max-connections")
        .arg("5")
        .start();
    let held = hold(mesh.ingress, 5, |i| post_request(&format!("held-{i}"))).await;
    assert_refused(mesh.ingress, &post_request("sixth")).await;
    // Refusals are not counted against the limit: again.
    assert_refused(mesh.ingress, &post_request("seventh")).await;
    drop(held);
    served_again(mesh.ingress, &post_request("after")).await;
}

/// (e) The admin listener holds clients to the same limits.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_has_the_same_connection_limit() {
    let mesh = Cemesh::builder()
        .manifest("mesh.yaml", &broker())
        .arg("--max-connections")
        .arg("2")
        .start();
    let healthz = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let held = hold(mesh.admin, 2, |_| healthz.to_owned()).await;
    assert_refused(mesh.admin, healthz).await;
    // Each listener counts its own connections: the ingress still serves.
    let resp = post_binary(
        &client(),
        &mesh.broker_url("default", "default"),
        &event("ok"),
    )
    .await;
    assert_eq!(resp.status(), 202);
    drop(held);
    served_again(mesh.admin, healthz).await;
}

/// Zero timeouts are refused at start-up, naming the flag.
#[tokio::test(flavor = "multi_thread")]
async fn a_zero_timeout_is_refused() {
    let err = Cemesh::builder()
        .arg("--idle-timeout")
        .arg("0s")
        .start_expect_failure();
    assert!(
        err.contains("--idle-timeout") && err.contains("more than zero"),
        "{err}"
    );
}
