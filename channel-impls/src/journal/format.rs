//! The journal's record format: a length, then the entry's fields in a fixed order,
//! strings as a length and their bytes. Written by hand because the writer of a
//! record is the hot path (the ingress and each delivery encode straight from the
//! borrowed event into the journal's buffer: no copy of the event, no allocation),
//! and a general format would need an owned value to serialize or a schema compiler.
//!
//! ```text
//! record  = u32 length, body
//! body    = u8 kind, i64 at_ms, str broker, str id, str source, kind's fields
//! kind 1  = accepted: str via, u8 specversion, str type, opt datacontenttype,
//!           opt dataschema, opt subject, opt time, u32 count, count × (str name, value)
//! kind 2  = attempt: str trigger, str destination, u16 status (0: none),
//!           u64 latency µs, opt error
//! kind 3  = outcome: str trigger, str outcome, opt reason, u64 dead letter (MAX: none),
//!           u8 has last attempt, [opt destination, u16 status, u64 latency µs],
//!           opt replies' broker, u32 count, count × (str id, str source, str type)
//! str     = u32 length, bytes;  opt = str, or u32 MAX for none
//! value   = u8 tag (0 bool, 1 int, 2 string, 3 binary, 4 uri, 5 uri-ref, 6 timestamp),
//!           u8 | i32 | str
//! ```
//! Integers are big-endian. A segment file starts with [`MAGIC`].

use cemesh_proto::{AttributeValue, Event, SpecVersion};

use super::{Accepted, AttemptEntry, Entry, LastAttempt, OutcomeEntry, ReplyRef};

/// The first bytes of a segment file of this format.
pub(super) const MAGIC: &[u8; 8] = b"CEMJRN2\n";

const ACCEPTED: u8 = 1;
const ATTEMPT: u8 = 2;
const OUTCOME: u8 = 3;
const NONE: u32 = u32::MAX;

/// `namespace/name` of a broker, channel or trigger, written without formatting it.
#[derive(Debug, Clone, Copy)]
pub struct Name<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> Name<'a> {
    pub fn new(namespace: &'a str, name: &'a str) -> Self {
        Name { namespace, name }
    }

    /// A name already written `namespace/name`.
    pub fn parse(joined: &'a str) -> Self {
        match joined.split_once('/') {
            Some((namespace, name)) => Name { namespace, name },
            None => Name {
                namespace: "",
                name: joined,
            },
        }
    }

    fn len(&self) -> usize {
        if self.namespace.is_empty() {
            self.name.len()
        } else {
            self.namespace.len() + 1 + self.name.len()
        }
    }
}

/// An entry as it is recorded: borrowed from the event and the trigger.
#[derive(Debug, Clone, Copy)]
pub enum EntryRef<'a> {
    /// Events offered for storing in `broker`.
    Accepted {
        broker: Name<'a>,
        /// How they came in: `http-binary`, `grpc`, `reply from ...`.
        via: &'a str,
        at_ms: i64,
        events: &'a [Event],
    },
    Attempt(&'a AttemptRef<'a>),
    Outcome(&'a OutcomeRef<'a>),
}

impl EntryRef<'_> {
    /// How many records it makes.
    pub fn count(&self) -> usize {
        match self {
            EntryRef::Accepted { events, .. } => events.len(),
            _ => 1,
        }
    }
}

/// One delivery attempt of a trigger.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRef<'a> {
    pub broker: Name<'a>,
    pub trigger: Name<'a>,
    pub id: &'a str,
    pub source: &'a str,
    pub at_ms: i64,
    pub destination: &'a str,
    pub status: Option<u16>,
    pub latency_us: u64,
    pub error: Option<&'a str>,
}

/// How a trigger finished with an event (or what its delivery replied).
#[derive(Debug, Clone, Copy)]
pub struct OutcomeRef<'a> {
    pub broker: Name<'a>,
    pub trigger: Name<'a>,
    pub id: &'a str,
    pub source: &'a str,
    pub at_ms: i64,
    /// `delivered`, `dead-lettered`, `replied` or `refused`.
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub dead_letter: Option<u64>,
    /// The successful attempt: destination, status, latency in µs.
    pub last_attempt: Option<(&'a str, u16, u64)>,
    /// The reply events, and the broker they were appended to.
    pub replies: &'a [Event],
    pub replies_to: Option<Name<'a>>,
}

/// Appends `entry`'s records to `out`.
pub(super) fn encode(out: &mut Vec<u8>, entry: &EntryRef<'_>) {
    match entry {
        EntryRef::Accepted {
            broker,
            via,
            at_ms,
            events,
        } => {
            for e in *events {
                let start = begin(out, ACCEPTED, *at_ms, *broker, &e.id, &e.source);
                put_str(out, via);
                out.push(match e.specversion {
                    SpecVersion::V03 => 3,
                    SpecVersion::V10 => 10,
                });
                put_str(out, &e.ty);
                put_opt(out, e.datacontenttype.as_deref());
                put_opt(out, e.dataschema.as_deref());
                put_opt(out, e.subject.as_deref());
                put_opt(out, e.time.as_deref());
                put_u32(out, e.extensions.len() as u32);
                for (name, value) in &e.extensions {
                    put_str(out, name);
                    put_value(out, value);
                }
                end(out, start);
            }
        }
        EntryRef::Attempt(a) => {
            let start = begin(out, ATTEMPT, a.at_ms, a.broker, a.id, a.source);
            put_name(out, a.trigger);
            put_str(out, a.destination);
            out.extend_from_slice(&a.status.unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&a.latency_us.to_be_bytes());
            put_opt(out, a.error);
            end(out, start);
        }
        EntryRef::Outcome(o) => {
            let start = begin(out, OUTCOME, o.at_ms, o.broker, o.id, o.source);
            put_name(out, o.trigger);
            put_str(out, o.outcome);
            put_opt(out, o.reason);
            out.extend_from_slice(&o.dead_letter.unwrap_or(u64::MAX).to_be_bytes());
            match o.last_attempt {
                None => out.push(0),
                Some((destination, status, latency_us)) => {
                    out.push(1);
                    put_str(out, destination);
                    out.extend_from_slice(&status.to_be_bytes());
                    out.extend_from_slice(&latency_us.to_be_bytes());
                }
            }
            match o.replies_to {
                Some(to) => put_name(out, to),
                None => put_u32(out, NONE),
            }
            put_u32(out, o.replies.len() as u32);
            for r in o.replies {
                put_str(out, &r.id);
                put_str(out, &r.source);
                put_str(out, &r.ty);
            }
            end(out, start);
        }
    }
}

/// Starts a record: its length (filled by [`end`]) and the common fields.
fn begin(
    out: &mut Vec<u8>,
    kind: u8,
    at_ms: i64,
    broker: Name<'_>,
    id: &str,
    source: &str,
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&at_ms.to_be_bytes());
    put_name(out, broker);
    put_str(out, id);
    put_str(out, source);
    start
}

fn end(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => put_u32(out, NONE),
    }
}

fn put_name(out: &mut Vec<u8>, n: Name<'_>) {
    put_u32(out, n.len() as u32);
    if !n.namespace.is_empty() {
        out.extend_from_slice(n.namespace.as_bytes());
        out.push(b'/');
    }
    out.extend_from_slice(n.name.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &AttributeValue) {
    let (tag, text) = match v {
        AttributeValue::Boolean(b) => return out.extend_from_slice(&[0, u8::from(*b)]),
        AttributeValue::Integer(i) => {
            out.push(1);
            return out.extend_from_slice(&i.to_be_bytes());
        }
        AttributeValue::Binary(b) => {
            out.push(3);
            return put_bytes(out, b);
        }
        AttributeValue::String(s) => (2, s),
        AttributeValue::Uri(s) => (4, s),
        AttributeValue::UriRef(s) => (5, s),
        AttributeValue::Timestamp(s) => (6, s),
    };
    out.push(tag);
    put_str(out, text);
}

/// What the index needs of a record's body: when, and its broker and id.
pub(super) fn peek(body: &[u8]) -> Option<(i64, &str, &str)> {
    let mut r = Reader(body);
    r.u8()?;
    let at = r.i64()?;
    Some((at, r.str()?, r.str()?))
}

/// Decodes a record's body (what follows its length).
pub(super) fn decode(body: &[u8]) -> Option<(i64, Entry)> {
    let mut r = Reader(body);
    let kind = r.u8()?;
    let at_ms = r.i64()?;
    let broker = r.string()?;
    let id = r.string()?;
    let source = r.string()?;
    let entry = match kind {
        ACCEPTED => {
            let via = r.string()?;
            let specversion = match r.u8()? {
                3 => SpecVersion::V03,
                _ => SpecVersion::V10,
            };
            let mut event = Event::new(id, source, r.string()?);
            event.specversion = specversion;
            event.datacontenttype = r.opt()?;
            event.dataschema = r.opt()?;
            event.subject = r.opt()?;
            event.time = r.opt()?;
            let n = r.u32()? as usize;
            event.extensions = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let name = r.string()?;
                let value = r.value()?;
                event.extensions.push((name, value));
            }
            Entry::Accepted(Box::new(Accepted {
                broker,
                via,
                at_ms,
                event,
            }))
        }
        ATTEMPT => Entry::Attempt(Box::new(AttemptEntry {
            broker,
            trigger: r.string()?,
            id,
            source,
            at_ms,
            destination: r.string()?,
            status: Some(r.u16()?).filter(|s| *s != 0),
            latency_us: r.u64()?,
            error: r.opt()?,
        })),
        OUTCOME => {
            let trigger = r.string()?;
            let outcome = r.string()?;
            let reason = r.opt()?;
            let dead_letter = Some(r.u64()?).filter(|d| *d != u64::MAX);
            let last_attempt = match r.u8()? {
                0 => None,
                _ => Some(LastAttempt {
                    destination: r.string()?,
                    status: r.u16()?,
                    latency_us: r.u64()?,
                }),
            };
            let to = r.opt()?;
            let n = r.u32()? as usize;
            let mut replies = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                replies.push(ReplyRef {
                    id: r.string()?,
                    source: r.string()?,
                    ty: r.string()?,
                    broker: to.clone(),
                });
            }
            Entry::Outcome(Box::new(OutcomeEntry {
                broker,
                trigger,
                id,
                source,
                at_ms,
                outcome,
                reason,
                dead_letter,
                replies,
                last_attempt,
            }))
        }
        _ => return None,
    };
    Some((at_ms, entry))
}

/// Reads a record's fields; `None` for a short or malformed one.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array().map(u8::from_be_bytes)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_be_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    fn opt(&mut self) -> Option<Option<String>> {
        let n = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?);
        if n == NONE {
            self.take(4)?;
            return Some(None);
        }
        self.string().map(Some)
    }

    fn value(&mut self) -> Option<AttributeValue> {
        Some(match self.u8()? {
            0 => AttributeValue::Boolean(self.u8()? != 0),
            1 => AttributeValue::Integer(self.array().map(i32::from_be_bytes)?),
            2 => AttributeValue::String(self.string()?),
            3 => AttributeValue::Binary(bytes::Bytes::copy_from_slice(self.bytes()?)),
            4 => AttributeValue::Uri(self.string()?),
            5 => AttributeValue::UriRef(self.string()?),
            6 => AttributeValue::Timestamp(self.string()?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_entry_decodes_to_what_was_recorded() {
        let mut e = Event::new("id-1", "/src", "com.example.t");
        e.specversion = SpecVersion::V03;
        e.subject = Some("sub".into());
        e.time = Some("2026-12-04T10:00:00+01:00".into());
        e.extensions = vec![
            ("flag".into(), AttributeValue::Boolean(true)),
            ("n".into(), AttributeValue::Integer(-7)),
            ("s".into(), AttributeValue::String("x".into())),
            (
                "b".into(),
                AttributeValue::Binary(bytes::Bytes::from_static(b"\0\x01")),
            ),
            ("u".into(), AttributeValue::Uri("http://a/".into())),
            ("r".into(), AttributeValue::UriRef("/r".into())),
            (
                "ts".into(),
                AttributeValue::Timestamp("2026-01-01T00:00:00Z".into()),
            ),
        ];
        e.data = Some(bytes::Bytes::from_static(b"not journaled"));
        let broker = Name::new("ns", "b");
        let trigger = Name::new("ns", "t");
        let mut out = Vec::new();
        let events = [e.clone()];
        encode(
            &mut out,
            &EntryRef::Accepted {
                broker,
                via: "http-binary",
                at_ms: 5,
                events: &events,
            },
        );
        encode(
            &mut out,
            &EntryRef::Attempt(&AttemptRef {
                broker,
                trigger,
                id: "id-1",
                source: "/src",
                at_ms: 6,
                destination: "http://sub",
                status: None,
                latency_us: 1500,
                error: Some("connection refused"),
            }),
        );
        let reply = Event::new("r-1", "/replier", "com.example.reply");
        encode(
            &mut out,
            &EntryRef::Outcome(&OutcomeRef {
                broker,
                trigger,
                id: "id-1",
                source: "/src",
                at_ms: 7,
                outcome: "delivered",
                reason: None,
                dead_letter: Some(3),
                last_attempt: Some(("http://sub", 200, 900)),
                replies: std::slice::from_ref(&reply),
                replies_to: Some(Name::parse("ns/other")),
            }),
        );
        let mut records = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let len = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            let body = &out[at + 4..at + 4 + len];
            assert_eq!(peek(body).map(|(_, b, i)| (b, i)), Some(("ns/b", "id-1")));
            records.push(decode(body).unwrap());
            at += 4 + len;
        }
        assert_eq!(records.len(), 3);
        let Entry::Accepted(a) = &records[0].1 else {
            panic!()
        };
        e.data = None;
        assert_eq!(
            (a.broker.as_str(), a.via.as_str(), a.at_ms),
            ("ns/b", "http-binary", 5)
        );
        assert_eq!(a.event, e);
        let Entry::Attempt(t) = &records[1].1 else {
            panic!()
        };
        assert_eq!(t.trigger, "ns/t");
        assert_eq!(
            (t.status, t.latency_us, t.error.as_deref()),
            (None, 1500, Some("connection refused"))
        );
        let Entry::Outcome(o) = &records[2].1 else {
            panic!()
        };
        assert_eq!(
            (o.outcome.as_str(), o.dead_letter, o.reason.as_deref()),
            ("delivered", Some(3), None)
        );
        let last = o.last_attempt.as_ref().unwrap();
        assert_eq!(
            (last.destination.as_str(), last.status, last.latency_us),
            ("http://sub", 200, 900)
        );
        assert_eq!(o.replies.len(), 1);
        assert_eq!(o.replies[0].broker.as_deref(), Some("ns/other"));
        assert_eq!(o.replies[0].ty, "com.example.reply");
    }

    #[test]
    fn a_short_record_is_refused_not_misread() {
        let mut out = Vec::new();
        let t = AttemptRef {
            broker: Name::new("ns", "b"),
            trigger: Name::new("ns", "t"),
            id: "i",
            source: "s",
            at_ms: 1,
            destination: "d",
            status: Some(500),
            latency_us: 1,
            error: None,
        };
        encode(&mut out, &EntryRef::Attempt(&t));
        for cut in 4..out.len() - 1 {
            assert!(decode(&out[4..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode(&out[4..]).is_some());
    }
}
