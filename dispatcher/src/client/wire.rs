//! One HTTP/1.1 exchange on a plain connection: the request written from its head
//! and body in one `writev`, the answer read and parsed with `httparse`.
//!
//! Written by hand rather than with hyper's client connection: hyper drives each
//! connection from a task of its own, so every delivery crossed two task hand-offs
//! (the request into the connection's channel, the answer back through a oneshot)
//! and built an `http::Request` whose header map hyper then wrote out again; about
//! a quarter of the broker's instructions for one trigger went to the exchange
//! (`bench/README.md`, "Deliveries written and read in their own task"). A delivery
//! needs much less of HTTP/1.1 than hyper serves: one POST with a known length, one
//! answer read whole (by `Content-Length`, chunks, or to the connection's end), and
//! whether the connection may be used again (RFC 9112 §6.3, §9.3).

use std::io::{ErrorKind, IoSlice};
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{too_long, Answer};

/// Headers an answer may have.
const MAX_ANSWER_HEADERS: usize = 100;
/// Bytes an answer's head (status line and headers) may take: hyper's client's
/// default read buffer, which sent deliveries before.
const MAX_ANSWER_HEAD: usize = 8192 + 4096 * 100;
/// Read at least this much room at a time.
const READ_CHUNK: usize = 8 << 10;

/// A kept-alive connection to one destination.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why an exchange ended without an answer.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The connection ended (or was reset) before one byte of the answer: on a
    /// connection taken from the pool, the destination most likely closed it while
    /// it was idle, as the request went out, and another connection may take it.
    Unanswered(String),
    /// Anything else (a malformed answer, the connection ending mid-answer).
    Broken(String),
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Whether the destination closed the connection (or sent something unasked)
    /// while it was idle. Costs no system call unless the connection became readable.
    pub(crate) fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock)
    }

    /// Writes `head` and `body`, reads the answer (its body kept only within
    /// `max_body`), and says whether the connection may be used again.
    pub(crate) async fn exchange(
        &mut self,
        head: &[u8],
        body: &[u8],
        max_body: usize,
    ) -> Result<(Answer, bool), Failed> {
        self.buf.clear();
        self.write(head, body).await?;
        let (status, headers, framing, keep_alive) = self.read_head().await?;
        let read = match framing {
            Framing::None => Ok(Some(Bytes::new())),
            Framing::Length(n) if n > max_body as u64 => Ok(None),
            Framing::Length(n) => self.read_length(n as usize).await.map(Some),
            Framing::Chunked => self.read_chunked(max_body).await,
            Framing::UntilClose => self.read_to_end(max_body).await,
        };
        let Some(body) = read? else {
            return Ok((too_long(status, headers), false));
        };
        let reusable = keep_alive && !matches!(framing, Framing::UntilClose) && self.buf.is_empty();
        let answer = Answer {
            status,
            headers,
            body,
            over_limit: false,
        };
        Ok((answer, reusable))
    }

    async fn write(&mut self, head: &[u8], body: &[u8]) -> Result<(), Failed> {
        let mut slices = [IoSlice::new(head), IoSlice::new(body)];
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match self.stream.write_vectored(slices).await {
                Ok(0) => return Err(Failed::Unanswered("the connection closed".into())),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failed::Unanswered(e.to_string())),
            }
        }
        Ok(())
    }

    /// Reads more of the answer; `Ok(false)` at the connection's end.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// The answer's status line and headers (interim `1xx` answers skipped), how
    /// its body is framed, and whether the connection stays open after it.
    async fn read_head(&mut self) -> Result<(u16, HeaderMap, Framing, bool), Failed> {
        let mut answered = false;
        loop {
            if let Some((len, head)) = parse_head(&self.buf)? {
                self.buf.advance(len);
                match head.status {
                    101 => return Err(Failed::Broken("the destination switched protocols".into())),
                    100..=199 => continue,
                    _ => return Ok((head.status, head.headers, head.framing, head.keep_alive)),
                }
            }
            if self.buf.len() > MAX_ANSWER_HEAD {
                return Err(Failed::Broken(format!(
                    "the answer's head is longer than {MAX_ANSWER_HEAD} bytes"
                )));
            }
            answered |= !self.buf.is_empty();
            match self.fill().await {
                Ok(true) => {}
                Ok(false) if !answered => {
                    return Err(Failed::Unanswered(
                        "the connection closed before an answer".into(),
                    ))
                }
                Ok(false) => return Err(Failed::Broken("the connection closed mid-answer".into())),
                Err(e) if !answered => return Err(Failed::Unanswered(e.to_string())),
                Err(e) => return Err(Failed::Broken(e.to_string())),
            }
        }
    }

    async fn read_length(&mut self, len: usize) -> Result<Bytes, Failed> {
        while self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
            if !self.fill().await.map_err(broken)? {
                return Err(closed_mid_body());
            }
        }
        Ok(self.buf.split_to(len).freeze())
    }

    /// A chunked body within `max_body` (`None` past it); trailers are read and
    /// dropped.
    async fn read_chunked(&mut self, max_body: usize) -> Result<Option<Bytes>, Failed> {
        let mut body = BytesMut::new();
        loop {
            let (skip, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) => self.more().await?,
                    Err(_) => return Err(Failed::Broken("a malformed chunk size".into())),
                }
            };
            self.buf.advance(skip);
            if size == 0 {
                return self.skip_trailers().await.map(|()| Some(body.freeze()));
            }
            if body.len() as u64 + size > max_body as u64 {
                return Ok(None);
            }
            let size = size as usize;
            while self.buf.len() < size + 2 {
                self.more().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(Failed::Broken("a chunk not ended by CRLF".into()));
            }
            self.buf.advance(size + 2);
        }
    }

    /// Trailer lines up to the empty line that ends a chunked body.
    async fn skip_trailers(&mut self) -> Result<(), Failed> {
        loop {
            match self.buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.buf.advance(2);
                    return Ok(());
                }
                Some(end) => self.buf.advance(end + 2),
                None if self.buf.len() > MAX_ANSWER_HEAD => {
                    return Err(Failed::Broken("trailers too long".into()))
                }
                None => self.more().await?,
            }
        }
    }

    /// A body that ends with the connection, within `max_body` (`None` past it).
    async fn read_to_end(&mut self, max_body: usize) -> Result<Option<Bytes>, Failed> {
        loop {
            if self.buf.len() > max_body {
                return Ok(None);
            }
            if !self.fill().await.map_err(broken)? {
                return Ok(Some(self.buf.split().freeze()));
            }
        }
    }

    /// Reads more of a body that is not complete yet.
    async fn more(&mut self) -> Result<(), Failed> {
        match self.fill().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(closed_mid_body()),
            Err(e) => Err(broken(e)),
        }
    }
}

fn broken(e: std::io::Error) -> Failed {
    Failed::Broken(e.to_string())
}

fn closed_mid_body() -> Failed {
    Failed::Broken("the connection closed before the answer's body was complete".into())
}

/// How an answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// The answer head at the start of `buf` and its length, if it is all there.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, Failed> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_ANSWER_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failed::Broken(format!("a malformed answer: {e}"))),
    };
    let status = parsed.code.unwrap_or_default();
    let http11 = parsed.version == Some(1);
    let keep = headers_read(status, parsed.headers);
    let mut headers = match keep {
        true => HeaderMap::with_capacity(parsed.headers.len()),
        false => HeaderMap::new(),
    };
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = !http11;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Failed::Broken(format!("an answer header named {:?}", h.name)))?;
        if !super::is_header_value(h.value) {
            return Err(Failed::Broken(format!(
                "an answer header {:?} of bad value",
                h.name
            )));
        }
        if name == http::header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Failed::Broken("an answer with a bad Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failed::Broken("an answer with two Content-Lengths".into()));
            }
            length = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            // Chunked only when it is the last coding.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::CONNECTION {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    close = false;
                }
            }
        }
        if keep {
            headers.append(
                name,
                HeaderValue::from_bytes(h.value).expect("checked above"),
            );
        }
    }
    let framing = match (status, chunked, length) {
        (100..=199 | 204 | 304, ..) => Framing::None,
        (_, Some(true), _) => Framing::Chunked,
        (_, Some(false), _) => Framing::UntilClose,
        (_, None, Some(0)) => Framing::None,
        (_, None, Some(n)) => Framing::Length(n),
        (_, None, None) => Framing::UntilClose,
    };
    Ok(Some((
        len,
        Head {
            status,
            headers,
            framing,
            keep_alive: !close,
        },
    )))
}

/// Whether the pipeline reads an answer's headers: a failure's (`Retry-After`), a
/// success's only when it is a CloudEvent (a reply). Most successes are not, and
/// their header map is not built.
fn headers_read(status: u16, headers: &[httparse::Header<'_>]) -> bool {
    if !(200..300).contains(&status) {
        return true;
    }
    let named = |n: &str| headers.iter().find(|h| h.name.eq_ignore_ascii_case(n));
    let content_type = named("content-type").and_then(|h| std::str::from_utf8(h.value).ok());
    cemesh_proto::http::is_cloudevent(content_type, named("ce-specversion").is_some())
}

/// The request head: `POST {target} HTTP/1.1`, `Host` (unless `headers` has one),
/// the binary-mode headers of `binary`'s event (leaving out the attribute named with
/// it), Knative's delivery headers (`knative`, when given), `headers` (any framing
/// headers among them left out), the body's length.
pub(crate) fn request_head(
    target: &str,
    host: &str,
    binary: Option<(&cemesh_proto::Event, Option<&str>)>,
    knative: Option<super::KnativeHeaders<'_>>,
    headers: &HeaderMap,
    body_len: usize,
) -> Vec<u8> {
    // Room for a CloudEvent's usual binary-mode headers without growing.
    let mut head = Vec::with_capacity(768 + 48 * headers.len());
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(http::header::HOST) {
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some((event, skip)) = binary {
        cemesh_proto::http::write_binary_head(event, skip, &mut head);
    }
    if let Some(knative) = knative {
        knative.for_each(|name, value| {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        });
    }
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Head {
        parse_head(raw).unwrap().expect("a whole head").1
    }

    #[test]
    fn framing_and_keep_alive_follow_rfc_9112() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head(b"HTTP/1.1 202 Accepted\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, true));
        let h = head(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(h.framing, Framing::None);
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::UntilClose);
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::None, false));
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
            .unwrap()
            .is_none());
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(Failed::Broken(_))
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(Failed::Broken(_))
        ));
    }

    #[test]
    fn the_request_head_carries_host_the_headers_and_the_length() {
        let mut headers = HeaderMap::new();
        headers.insert("ce-id", HeaderValue::from_static("1"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        let knative = super::super::KnativeHeaders {
            namespace: "team-a",
        };
        let head = request_head("/a?b=c", "h:8080", None, Some(knative), &headers, 3);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /a?b=c HTTP/1.1\r\nhost: h:8080\r\nprefer: reply\r\nkn-namespace: team-a\r\n\
             ce-id: 1\r\ncontent-length: 3\r\n\r\n"
        );
        let event = cemesh_proto::Event::new("e", "/s", "t");
        headers.clear();
        headers.insert("x-signed", HeaderValue::from_static("yes"));
        let knative = super::super::KnativeHeaders {
            namespace: "bad\nns",
        };
        let head = request_head(
            "/",
            "h:8080",
            Some((&event, None)),
            Some(knative),
            &headers,
            0,
        );
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("POST / HTTP/1.1\r\nhost: h:8080\r\nce-")
                && head.contains("\r\nce-id: e\r\n")
                && !head.contains("kn-namespace")
                && head
                    .ends_with("\r\nprefer: reply\r\nx-signed: yes\r\ncontent-length: 0\r\n\r\n"),
            "{head}"
        );
        // Not a delivery (the sidecar forwarding to its broker): no Knative headers.
        let head = request_head("/b", "h:8080", Some((&event, None)), None, &headers, 0);
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.contains("\r\nce-id: e\r\n")
                && !head.contains("prefer")
                && head.ends_with("\r\nx-signed: yes\r\ncontent-length: 0\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn an_answers_headers_are_kept_when_the_pipeline_reads_them() {
        let kept = |raw: &[u8]| head(raw).headers;
        // A plain success: framing read, no map built.
        let h = head(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nDate: x\r\n\r\n");
        assert_eq!((h.framing, h.headers.len()), (Framing::None, 0));
        assert!(kept(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n").is_empty());
        // A reply, binary or structured, and any failure: kept whole.
        let reply = kept(b"HTTP/1.1 200 OK\r\nCe-Specversion: 1.0\r\nCe-Id: r\r\n\r\n");
        assert_eq!(reply.get("ce-id").unwrap(), "r");
        let structured =
            kept(b"HTTP/1.1 200 OK\r\ncontent-type: application/cloudevents+json\r\n\r\n");
        assert_eq!(structured.len(), 1);
        let failed = kept(b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(failed.get("retry-after").unwrap(), "3");
        // A bad value is refused whether or not the map is built.
        assert!(matches!(
            parse_head(b"HTTP/1.1 202 Accepted\r\nX: a\x7fb\r\n\r\n"),
            Err(Failed::Broken(_))
        ));
    }

    /// Serves `answer` (raw bytes) to the first request on a connection and says
    /// what came in.
    async fn answering(answer: &'static [u8]) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            got
        });
        (Conn::new(TcpStream::connect(addr).await.unwrap()), served)
    }

    async fn exchange(answer: &'static [u8], max_body: usize) -> Result<(Answer, bool), Failed> {
        let (mut conn, _served) = answering(answer).await;
        conn.exchange(
            b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"",
            max_body,
        )
        .await
    }

    #[tokio::test]
    async fn answers_are_read_by_length_by_chunks_and_to_the_end() {
        let (a, reusable) = exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nce-specversion: 1.0\r\nce-id: r\r\n\r\nhello",
            100,
        )
        .await
        .unwrap();
        assert_eq!(
            (a.status, &a.body[..], reusable),
            (200, &b"hello"[..], true)
        );
        assert_eq!(a.headers["ce-id"], "r");
        let (a, reusable) = exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n",
            100,
        )
        .await
        .unwrap();
        assert_eq!((&a.body[..], reusable), (&b"hello world"[..], true));
        let (a, reusable) = exchange(b"HTTP/1.1 200 OK\r\n\r\nto the end", 100)
            .await
            .unwrap();
        assert_eq!((&a.body[..], reusable), (&b"to the end"[..], false));
        let (a, reusable) = exchange(
            b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
            100,
        )
        .await
        .unwrap();
        assert_eq!((a.status, reusable), (503, true));
        assert_eq!(a.headers["retry-after"], "7");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_not_kept_nor_the_connection() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nhello world",
        ] {
            let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
            let (a, reusable) = exchange(answer, 8).await.unwrap();
            assert!(a.over_limit && a.body.is_empty() && !reusable, "{a:?}");
        }
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_broken_and_none_at_all_unanswered() {
        let cut = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello", 100).await;
        assert!(matches!(cut, Err(Failed::Broken(_))), "{cut:?}");
        let none = exchange(b"", 100).await;
        assert!(matches!(none, Err(Failed::Unanswered(_))), "{none:?}");
        let bad = exchange(b"HTTP/1.1 2xx OK\r\n\r\n", 100).await;
        assert!(matches!(bad, Err(Failed::Broken(_))), "{bad:?}");
    }
}
