//! The event types a broker or channel has accepted: each distinct (`type`,
//! `source`) pair with its `dataschema`, first and last time seen and a count, as
//! Knative's EventType auto-creation records them. Bounded per address: past the
//! limit new pairs are counted as overflow, never stored, so a flood of random
//! types cannot grow memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use foldhash::fast::RandomState;

use cemesh_proto::knative::rfc3339_millis as rfc3339;
use cemesh_proto::Event;
use serde::{Deserialize, Serialize};

/// Pairs kept per address by default.
pub const DEFAULT_MAX_TYPES: usize = 1000;

/// One pair, as listed and persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenType {
    #[serde(rename = "type")]
    pub ty: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// RFC 3339.
    pub first_seen: String,
    pub last_seen: String,
    pub count: u64,
}

#[derive(Debug)]
struct Entry {
    dataschema: Option<String>,
    /// RFC 3339, written once.
    first: String,
    /// Milliseconds since the epoch: set on every request, so not formatted there.
    last_ms: i64,
    count: u64,
}

/// type → source → entry: lookups by `&str`, allocation only for a new pair.
#[derive(Debug, Default)]
struct Pairs {
    /// foldhash (randomly seeded, so producers cannot aim collisions at it): two
    /// lookups for every accepted event.
    by_type: HashMap<String, HashMap<String, Entry, RandomState>, RandomState>,
    len: usize,
}

/// The pairs of one address.
#[derive(Debug)]
pub struct EventTypes {
    max: usize,
    pairs: Mutex<Pairs>,
    overflow: AtomicU64,
    dirty: AtomicBool,
}

impl Default for EventTypes {
    fn default() -> Self {
        EventTypes::new(DEFAULT_MAX_TYPES)
    }
}

/// The pairs of one request, taken before its events go to the channel and
/// recorded once they are stored.
#[derive(Debug, Default)]
pub struct Captured(Vec<(String, String, Option<String>, u64)>);

impl EventTypes {
    pub fn new(max: usize) -> Self {
        EventTypes {
            max,
            pairs: Mutex::default(),
            overflow: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        }
    }

    /// The distinct pairs of `events`, with how many of each.
    pub fn capture(events: &[Event]) -> Captured {
        let mut out: Vec<(String, String, Option<String>, u64)> = Vec::new();
        for e in events {
            match out
                .iter_mut()
                .find(|(t, s, _, _)| *t == e.ty && *s == e.source)
            {
                Some(c) => c.3 += 1,
                None => out.push((e.ty.clone(), e.source.clone(), e.dataschema.clone(), 1)),
            }
        }
        Captured(out)
    }

    /// Records what was captured, at `now_ms` (milliseconds since the epoch).
    pub fn record(&self, captured: Captured, now_ms: i64) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        for (ty, source, dataschema, n) in captured.0 {
            if let Some(e) = pairs.by_type.get_mut(&ty).and_then(|m| m.get_mut(&source)) {
                e.count += n;
                e.last_ms = now_ms;
                if dataschema.is_some() {
                    e.dataschema = dataschema;
                }
                continue;
            }
            if pairs.len >= self.max {
                self.overflow.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            pairs.len += 1;
            pairs.by_type.entry(ty).or_default().insert(
                source,
                Entry {
                    dataschema,
                    first: rfc3339(now_ms),
                    last_ms: now_ms,
                    count: n,
                },
            );
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Every pair, sorted by type and source.
    pub fn list(&self) -> Vec<SeenType> {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SeenType> = pairs
            .by_type
            .iter()
            .flat_map(|(ty, sources)| {
                sources.iter().map(move |(source, e)| SeenType {
                    ty: ty.clone(),
                    source: source.clone(),
                    dataschema: e.dataschema.clone(),
                    first_seen: e.first.clone(),
                    last_seen: rfc3339(e.last_ms),
                    count: e.count,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.ty, &a.source).cmp(&(&b.ty, &b.source)));
        out
    }

    /// Events of pairs that did not fit.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Takes back what [`EventTypes::list`] gave (after a restart), within the bound.
    pub fn restore(&self, seen: Vec<SeenType>) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let Pairs { by_type, len } = &mut *pairs;
        for s in seen {
            if *len >= self.max {
                break;
            }
            let sources = by_type.entry(s.ty).or_default();
            if sources.contains_key(&s.source) {
                continue;
            }
            *len += 1;
            sources.insert(
                s.source,
                Entry {
                    last_ms: chrono::DateTime::parse_from_rfc3339(&s.last_seen)
                        .map_or(0, |t| t.timestamp_millis()),
                    dataschema: s.dataschema,
                    first: s.first_seen,
                    count: s.count,
                },
            );
        }
    }

    /// Whether anything was recorded since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_counted_and_bounded() {
        let t = EventTypes::new(2);
        let ev = |ty: &str, src: &str| Event::new("1", src, ty);
        let (t1, t2) = (1_796_000_000_000, 1_796_000_001_500);
        t.record(
            EventTypes::capture(&[ev("a", "/x"), ev("a", "/x"), ev("b", "/x")]),
            t1,
        );
        t.record(EventTypes::capture(&[ev("a", "/x")]), t2);
        t.record(EventTypes::capture(&[ev("c", "/y"), ev("c", "/z")]), t2);
        let list = t.list();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].ty.as_str(), list[0].count), ("a", 3));
        assert_eq!(
            (list[0].first_seen.as_str(), list[0].last_seen.as_str()),
            ("2026-11-30T00:53:20.000Z", "2026-11-30T00:53:21.500Z")
        );
        assert_eq!(t.overflow(), 2);
        let again = EventTypes::new(2);
        again.restore(list.clone());
        assert_eq!(again.list(), list);
    }
}
