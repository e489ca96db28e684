//! The common request served without hyper: a keep-alive HTTP/1.1 `POST` whose
//! whole head and body have arrived. That is nearly every request a producer
//! sends, and hyper's connection machinery around it (its dispatch state machine,
//! the channel that streams the body to the service, room for 256 headers
//! allocated and filled twice per request, the service wrappers) cost about a
//! sixth of the broker's instructions per event (`bench/README.md`, "The common
//! request without hyper").
//!
//! Everything else is handed to hyper, with every byte read so far, for the rest
//! of the connection's life: another method or HTTP version, `Transfer-Encoding`,
//! `Expect`, `Upgrade`, `Connection` other than `keep-alive`, a `Content-Length`
//! that is not one plain number, a body not all in hand, a head over
//! [`MAX_HEAD`] or with more than [`MAX_HEADERS`] headers, anything `httparse`
//! refuses. hyper then answers exactly as it always has (a 400, its bare 431, a
//! body read with its timeout), so this path only has to be right about the
//! requests it takes, and what it takes it serves as hyper would: the same
//! request (method, URI, version, headers, the body as one frame), the same
//! answer (status line with the canonical reason, the service's headers, `date`,
//! `content-length` or chunks). Written by hand because no crate serves HTTP/1.1
//! with a fallback to hyper mid-connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{Activity, App};
use crate::tls::PeerIdentity;

/// The most headers a request on this path may have (a CloudEvent in binary mode
/// has a dozen or two); one with more goes to hyper, which refuses past 256 and
/// lets the ingress refuse past 100 with its JSON 431.
pub(super) const MAX_HEADERS: usize = 64;
/// The largest head (request line and headers) this path reads.
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// The largest request (head and body) this path takes; the connection's buffer
/// never grows past it.
const MAX_REQUEST: usize = 64 * 1024;
/// The connection buffer's first size (hyper's too).
const INITIAL_BUFFER: usize = 8 * 1024;

/// How [`serve`] ended.
pub(super) enum Ended<IO> {
    /// The connection is done (closed by the client, failed, or drained).
    Closed,
    /// A request this path does not take: hyper serves the connection from here,
    /// starting with `read`, the bytes already read from `io`.
    HandOff { read: Bytes, io: IO },
}

/// Serves `io`'s requests with `app` while they are ones this path takes; `peer`
/// goes into each request's extensions. Once `draining` is set, the request in
/// progress is answered with `connection: close` and the connection ends.
pub(super) async fn serve<IO, A>(
    mut io: IO,
    mut app: A,
    peer: Option<PeerIdentity>,
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: App,
{
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
    let mut scratch = Scratch::default();
    loop {
        let head = match read_head(&mut io, &mut buf, &mut scratch.spans).await {
            Some(Ok(head)) => head,
            Some(Err(())) => return hand_off(buf, io),
            None => return Ended::Closed,
        };
        if !take_rest(&mut io, &mut buf, head.len + head.body).await {
            return hand_off(buf, io);
        }
        let bytes = buf.split_to(head.len + head.body).freeze();
        let Some(mut req) = request(&bytes, &head, &mut scratch) else {
            // What httparse took but `http` would not: hyper refuses it.
            let mut read = BytesMut::from(&bytes[..]);
            read.extend_from_slice(&buf);
            return hand_off(read, io);
        };
        drop(bytes);
        if let Some(peer) = &peer {
            req.extensions_mut().insert(peer.clone());
        }
        let _in_flight = activity.begin();
        let resp = match std::future::poll_fn(|cx| app.poll_ready(cx)).await {
            Ok(()) => app.call(req).await,
            Err(never) => match never {},
        };
        let Ok(resp) = resp;
        let close = resp
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if write_answer(&mut io, &mut scratch.out, resp, &draining)
            .await
            .is_err()
        {
            return Ended::Closed;
        }
        if close || draining.load(Ordering::Relaxed) {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
    }
}

fn hand_off<IO>(buf: BytesMut, io: IO) -> Ended<IO> {
    Ended::HandOff {
        read: buf.freeze(),
        io,
    }
}

/// A head this path takes, parsed from the start of the buffer: where its parts
/// are, so that the request can share the buffer's bytes once they are frozen.
struct Head {
    /// Its length in bytes.
    len: usize,
    /// The body's length (`Content-Length`, or none).
    body: usize,
    path: (u16, u16),
}

/// What a connection keeps from one request to the next.
#[derive(Default)]
struct Scratch {
    /// Each header's name and value of the head just parsed, as offsets into it.
    spans: Vec<[u16; 4]>,
    /// The header names of the last request, by position: a client sends the same
    /// headers in the same order request after request, and a name found here is
    /// not parsed (and, for a custom name, allocated) again.
    names: Vec<HeaderName>,
    out: Vec<u8>,
}

/// Reads until the buffer starts with a whole head and parses it: `None` when the
/// connection ended (or failed) first, `Some(Err)` for a request to hand off.
async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    spans: &mut Vec<[u16; 4]>,
) -> Option<Result<Head, ()>> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf, spans) {
                Ok(Some(head)) => return Some(Ok(head)),
                Ok(None) if buf.len() < MAX_HEAD => {}
                _ => return Some(Err(())),
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(INITIAL_BUFFER);
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// `Ok(None)`: not all of the head yet; `Err`: one to hand off.
fn parse_head(buf: &[u8], spans: &mut Vec<[u16; 4]>) -> Result<Option<Head>, ()> {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    if req.method != Some("POST") || req.version != Some(1) || len > MAX_HEAD {
        return Err(());
    }
    // Within MAX_HEAD, so every offset fits.
    let at = |part: &[u8]| (part.as_ptr() as usize - buf.as_ptr() as usize) as u16;
    let span = |part: &[u8]| (at(part), at(part) + part.len() as u16);
    let path = span(req.path.ok_or(())?.as_bytes());
    let mut length = None;
    spans.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(());
            }
            length = Some(plain_number(h.value).ok_or(())?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
            || (name.eq_ignore_ascii_case(b"connection")
                && !h.value.eq_ignore_ascii_case(b"keep-alive"))
        {
            return Err(());
        }
        let (n, v) = (span(name), span(h.value));
        spans.push([n.0, n.1, v.0, v.1]);
    }
    let body = length.unwrap_or(0);
    if len + body > MAX_REQUEST {
        return Err(());
    }
    Ok(Some(Head { len, body, path }))
}

/// A `Content-Length` value of digits only, short enough not to overflow.
fn plain_number(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// Makes sure the buffer holds `len` bytes, reading only what has already arrived
/// (never waiting for the rest of a body: hyper reads that, with its timeout).
async fn take_rest<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut BytesMut, len: usize) -> bool {
    while buf.len() < len {
        buf.reserve(len - buf.len());
        match io.read_buf(buf).now_or_never() {
            Some(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
    true
}

/// The request in `bytes` (its head, then its body), built as hyper builds it:
/// header values and the URI share `bytes`, the body is one frame. `None` for
/// what `http` refuses (hyper refuses it too).
fn request(bytes: &Bytes, head: &Head, scratch: &mut Scratch) -> Option<Request<Body>> {
    let part = |from: u16, to: u16| bytes.slice(from as usize..to as usize);
    let uri = http::Uri::from_maybe_shared(part(head.path.0, head.path.1)).ok()?;
    let mut headers = HeaderMap::with_capacity(scratch.spans.len());
    for (i, &[n0, n1, v0, v1]) in scratch.spans.iter().enumerate() {
        let raw = &bytes[n0 as usize..n1 as usize];
        let name = match scratch.names.get(i) {
            Some(known) if same_name(known, raw) => known.clone(),
            _ => {
                let name = HeaderName::from_bytes(raw).ok()?;
                scratch.names.truncate(i);
                scratch.names.push(name.clone());
                name
            }
        };
        let value = HeaderValue::from_maybe_shared(part(v0, v1)).ok()?;
        headers.append(name, value);
    }
    let body = if head.body == 0 {
        Body::empty()
    } else {
        Body::from(bytes.slice(head.len..head.len + head.body))
    };
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some(request)
}

/// Whether `raw` spells `known` (in any case; most clients send the same case
/// each time, compared first as it is).
fn same_name(known: &HeaderName, raw: &[u8]) -> bool {
    let known = known.as_str().as_bytes();
    known == raw || known.eq_ignore_ascii_case(raw)
}

/// Writes `resp`: its head, then its body as it comes (by length when the body
/// knows it, else in chunks), each part sent as soon as the body makes the next
/// one wait.
async fn write_answer<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    draining: &AtomicBool,
) -> std::io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact();
    let chunked = !bodiless && length.is_none();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !bodiless {
        match length {
            Some(n) => line(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            ),
            None => line(out, b"transfer-encoding", b"chunked"),
        }
    }
    if draining.load(Ordering::Relaxed) && !parts.headers.contains_key(header::CONNECTION) {
        line(out, b"connection", b"close");
    }
    if !parts.headers.contains_key(header::DATE) {
        DATE.with(|d| line(out, b"date", d.now().as_bytes()));
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        loop {
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    io.write_all(out).await?;
                    out.clear();
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    io.write_all(out).await?;
    io.flush().await
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    static DATE: CachedDate = const { CachedDate(std::cell::RefCell::new((0, String::new()))) };
}

/// The `date` header's value, formatted once a second per thread.
struct CachedDate(std::cell::RefCell<(u64, String)>);

impl CachedDate {
    fn now(&self) -> std::cell::Ref<'_, String> {
        let now = std::time::SystemTime::now();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.0.borrow().0 != secs {
            *self.0.borrow_mut() = (secs, httpdate::fmt_http_date(now));
        }
        std::cell::Ref::map(self.0.borrow(), |(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// Answers 202 with what it got: the URI, the header names and values in
    /// order, and the body.
    fn echo() -> axum::Router {
        axum::Router::new().fallback(|req: Request<Body>| async move {
            let seen: Vec<String> = req
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
                .collect();
            let uri = req.uri().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::builder()
                .status(202)
                .header("x-uri", uri)
                .header("x-seen", seen.join(","))
                .body(Body::from(body))
                .unwrap()
        })
    }

    /// Sends `input` on a new connection served by [`serve`] with `app`, closes the
    /// sending side, and answers how `serve` ended (the bytes handed off, if it
    /// did) and everything the client read.
    async fn exchange(app: axum::Router, input: &[u8]) -> (Option<Bytes>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let served = tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let draining = Arc::new(AtomicBool::new(false));
            match serve(server, app, None, activity, draining).await {
                Ended::Closed => None,
                Ended::HandOff { read, io } => {
                    drop(io);
                    Some(read)
                }
            }
        });
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        // A connection dropped with bytes unread is reset: what came before counts.
        let _ = client.read_to_end(&mut got).await;
        (served.await.unwrap(), String::from_utf8(got).unwrap())
    }

    const FIRST: &str =
        "POST /ns/broker HTTP/1.1\r\nhost: a\r\nce-id: 1\r\ncontent-length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn keep_alive_posts_are_served_one_after_the_other_without_hyper() {
        // Two requests in one write (pipelined), the second with its names in
        // another case and another order, and a third with no body.
        let input = format!(
            "{FIRST}POST /x?y=1 HTTP/1.1\r\nHost: b\r\nCE-ID: 2\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc\
             POST /z HTTP/1.1\r\nx-other: 3\r\n\r\n"
        );
        let (ended, got) = exchange(echo(), input.as_bytes()).await;
        assert!(ended.is_none(), "served to the end: {ended:?}");
        let answers: Vec<&str> = got.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 3, "{got}");
        assert!(answers[0].starts_with("202 Accepted\r\n"), "{got}");
        assert!(answers[0].contains("x-uri: /ns/broker\r\n"), "{got}");
        assert!(
            answers[0].contains("x-seen: host=a,ce-id=1,content-length=5\r\n"),
            "{got}"
        );
        assert!(answers[0].contains("content-length: 5\r\n"), "{got}");
        assert!(answers[0].contains("\r\ndate: "), "{got}");
        assert!(answers[0].ends_with("\r\n\r\nhello"), "{got}");
        // Names read anew where they differ from the last request's, lower-cased as
        // `http` has them.
        assert!(answers[1].contains("x-uri: /x?y=1\r\n"), "{got}");
        assert!(
            answers[1]
                .contains("x-seen: host=b,ce-id=2,connection=keep-alive,content-length=3\r\n"),
            "{got}"
        );
        assert!(answers[1].ends_with("\r\n\r\nabc"), "{got}");
        assert!(answers[2].contains("x-seen: x-other=3\r\n"), "{got}");
        assert!(
            answers[2].ends_with("content-length: 0\r\n\r\n")
                || answers[2].contains("content-length: 0\r\n"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn requests_it_does_not_take_are_handed_off_with_every_byte_read() {
        let others = [
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
            "POST / HTTP/1.0\r\ncontent-length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\n\r\n",
            "PUT / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\nabc",
            // The body not all there.
            "POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc",
            "POST / HTTP/1.1\r\ncontent-length: 100000\r\n\r\nabc",
            "POST /\x01 HTTP/1.1\r\n\r\n",
            "NOT HTTP AT ALL\r\n\r\n",
        ];
        for other in others {
            // After a request it takes, in the same write: that one is answered,
            // the rest handed off as it came.
            let input = format!("{FIRST}{other}");
            let (ended, got) = exchange(echo(), input.as_bytes()).await;
            assert_eq!(ended.as_deref(), Some(other.as_bytes()), "{other:?}");
            assert_eq!(got.matches("HTTP/1.1 202").count(), 1, "{other:?}: {got}");
        }
        // More headers than this path has room for.
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect();
        let input = format!("POST / HTTP/1.1\r\n{many}\r\n");
        let (ended, got) = exchange(echo(), input.as_bytes()).await;
        assert_eq!(ended.as_deref(), Some(input.as_bytes()));
        assert!(got.is_empty(), "{got}");
        // A head past MAX_HEAD: handed off once that much is read, unanswered.
        let long = format!(
            "POST / HTTP/1.1\r\nx-long: {}\r\n\r\n",
            "v".repeat(MAX_HEAD)
        );
        let (ended, got) = exchange(echo(), long.as_bytes()).await;
        let read = ended.expect("handed off");
        assert!(read.len() >= MAX_HEAD && long.as_bytes().starts_with(&read));
        assert!(got.is_empty(), "{got}");
    }

    #[tokio::test]
    async fn answers_are_written_by_length_in_chunks_or_without_a_body() {
        let app = axum::Router::new()
            .route(
                "/stream",
                axum::routing::post(|| async {
                    let parts = futures::stream::iter(["ab", "", "cde"].map(|s| {
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(s.as_bytes()))
                    }));
                    Body::from_stream(parts)
                }),
            )
            .route(
                "/none",
                axum::routing::post(|| async { StatusCode::NO_CONTENT }),
            )
            .route(
                "/close",
                axum::routing::post(|| async { ([(header::CONNECTION, "close")], "bye") }),
            );
        let input = "POST /stream HTTP/1.1\r\n\r\nPOST /none HTTP/1.1\r\n\r\nPOST /close HTTP/1.1\r\n\r\nPOST /never HTTP/1.1\r\n\r\n";
        let (ended, got) = exchange(app, input.as_bytes()).await;
        assert!(ended.is_none());
        let answers: Vec<&str> = got.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(
            answers.len(),
            3,
            "closed after the answer that said so: {got}"
        );
        assert!(answers[0].starts_with("200 OK\r\n"), "{got}");
        assert!(
            answers[0].contains("transfer-encoding: chunked\r\n"),
            "{got}"
        );
        assert!(!answers[0].contains("content-length"), "{got}");
        assert!(
            answers[0].ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{got}"
        );
        assert!(answers[1].starts_with("204 No Content\r\n"), "{got}");
        assert!(!answers[1].contains("content-length"), "{got}");
        assert!(answers[1].ends_with("\r\n\r\n"), "{got}");
        assert!(answers[2].contains("connection: close\r\n"), "{got}");
        assert!(
            answers[2].ends_with("content-length: 3\r\n") || answers[2].ends_with("\r\n\r\nbye"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn a_draining_connection_answers_with_connection_close_and_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let draining = Arc::new(AtomicBool::new(true));
        let served = tokio::spawn(serve(
            server,
            echo(),
            None,
            Arc::new(Activity::new()),
            draining,
        ));
        // Two requests sent; the first is answered, then the connection ends.
        client
            .write_all(format!("{FIRST}{FIRST}").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(matches!(served.await.unwrap(), Ended::Closed));
        assert_eq!(got.matches("HTTP/1.1 202").count(), 1, "{got}");
        assert!(got.contains("connection: close\r\n"), "{got}");
    }

    #[test]
    fn a_content_length_is_digits_only_and_fits() {
        assert_eq!(plain_number(b"0"), Some(0));
        assert_eq!(plain_number(b"1024"), Some(1024));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"0x10",
            b"1,1",
            b"9999999999999",
        ] {
            assert_eq!(plain_number(bad), None, "{bad:?}");
        }
    }
}
