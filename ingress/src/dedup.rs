//! Deduplication at the ingress (`cemesh.dev/dedup-window`): an event whose
//! (`source`, `id`) pair the broker accepted within the window is answered as
//! accepted and not appended again, so a producer that retries a send it is unsure of
//! gets its event delivered once.
//!
//! A pair is reserved before the append and released if the append fails, so two
//! concurrent sends of one event append it once, and a failed one can be retried.
//! Keys are the first 16 bytes of SHA-256 over the pair (stable across versions, so
//! they can be kept on disk). Memory is bounded whatever the traffic: at most
//! `max_keys` pairs are kept; past that the oldest go first (counted in
//! `cemesh_ingress_dedup_evicted_total`), which shortens the window under a flood.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cemesh_proto::{metric_names as names, Event};

/// A (`source`, `id`) pair's key.
pub type Key = [u8; 16];

/// The default `cemesh.dev/dedup-max-keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// One broker's accepted pairs of the window.
#[derive(Debug)]
pub struct Dedup {
    window_ms: i64,
    max_keys: usize,
    state: Mutex<State>,
    /// Pairs changed since the last [`Dedup::take_dirty`].
    dirty: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Key to when it was accepted (Unix ms).
    seen: HashMap<Key, i64>,
    /// Keys in the order they were accepted; an entry whose time no longer matches
    /// `seen` is stale (released, or accepted again later).
    order: VecDeque<(i64, Key)>,
}

/// The keys an `admit` reserved, for [`Dedup::release`] if the append fails.
#[derive(Debug, Default)]
pub struct Reserved(Vec<(Key, i64)>);

impl Dedup {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Dedup {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            max_keys: max_keys.max(1),
            state: Mutex::default(),
            dirty: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a few map and queue operations: a panic cannot tear it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of an event's (`source`, `id`).
    pub fn key(event: &Event) -> Key {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(event.source.as_bytes());
        ctx.update(&[0]);
        ctx.update(event.id.as_bytes());
        let mut key = [0; 16];
        key.copy_from_slice(&ctx.finish().as_ref()[..16]);
        key
    }

    /// Keeps the events whose pair was not accepted within the window (nor earlier
    /// in `events`), reserving their pairs; returns them, the reservation and how
    /// many were duplicates.
    pub fn admit(&self, events: Vec<Event>, now_ms: i64) -> (Vec<Event>, Reserved, usize) {
        let offered = events.len();
        let keys: Vec<Key> = events.iter().map(Dedup::key).collect();
        let mut st = self.lock();
        self.expire(&mut st, now_ms);
        let mut reserved = Vec::with_capacity(keys.len());
        let mut fresh = Vec::with_capacity(events.len());
        for (event, key) in events.into_iter().zip(keys) {
            if st.seen.contains_key(&key) {
                continue;
            }
            st.seen.insert(key, now_ms);
            st.order.push_back((now_ms, key));
            reserved.push((key, now_ms));
            fresh.push(event);
        }
        self.bound(&mut st);
        drop(st);
        let dups = offered - reserved.len();
        if !reserved.is_empty() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        (fresh, Reserved(reserved), dups)
    }

    /// Forgets what an `admit` reserved: its append failed, so a retry must pass.
    pub fn release(&self, reserved: Reserved) {
        let mut st = self.lock();
        for (key, at) in reserved.0 {
            if st.seen.get(&key) == Some(&at) {
                st.seen.remove(&key);
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Drops pairs older than the window.
    fn expire(&self, st: &mut State, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        while st.order.front().is_some_and(|(at, _)| *at <= cutoff) {
            if let Some((at, key)) = st.order.pop_front() {
                if st.seen.get(&key) == Some(&at) {
                    st.seen.remove(&key);
                }
            }
        }
    }

    /// Drops the oldest pairs past `max_keys`.
    fn bound(&self, st: &mut State) {
        let mut evicted = 0u64;
        while st.seen.len() > self.max_keys {
            let Some((at, key)) = st.order.pop_front() else {
                break;
            };
            if st.seen.get(&key) == Some(&at) {
                st.seen.remove(&key);
                evicted += 1;
            }
        }
        // Stale entries would otherwise pile up behind a live one.
        if st.order.len() > 2 * self.max_keys {
            let seen = &st.seen;
            let keep: VecDeque<(i64, Key)> = st
                .order
                .iter()
                .filter(|(at, k)| seen.get(k) == Some(at))
                .copied()
                .collect();
            st.order = keep;
        }
        if evicted > 0 {
            metrics::counter!(names::INGRESS_DEDUP_EVICTED).increment(evicted);
        }
    }

    /// The pairs of the window, oldest first, for keeping them across restarts.
    pub fn entries(&self, now_ms: i64) -> Vec<(Key, i64)> {
        let mut st = self.lock();
        self.expire(&mut st, now_ms);
        let seen = &st.seen;
        st.order
            .iter()
            .filter(|(at, k)| seen.get(k) == Some(at))
            .map(|(at, k)| (*k, *at))
            .collect()
    }

    /// Takes back what [`Dedup::entries`] gave (an earlier run's pairs).
    pub fn restore(&self, entries: Vec<(Key, i64)>, now_ms: i64) {
        let mut st = self.lock();
        for (key, at) in entries {
            if st.seen.insert(key, at).is_none() {
                st.order.push_back((at, key));
            }
        }
        st.order.make_contiguous().sort_by_key(|(at, _)| *at);
        self.expire(&mut st, now_ms);
        self.bound(&mut st);
    }

    /// Pairs kept now.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether pairs changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> Event {
        Event::new(id, "/s", "t")
    }

    fn ids(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn a_pair_accepted_within_the_window_is_a_duplicate() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let (fresh, _, dups) = d.admit(vec![ev("a"), ev("b"), ev("a")], 1_000);
        assert_eq!((ids(&fresh), dups), (vec!["a", "b"], 1));
        let (fresh, _, dups) = d.admit(vec![ev("a"), ev("c")], 5_000);
        assert_eq!((ids(&fresh), dups), (vec!["c"], 1));
        // Another source with the same id is another event.
        let other = Event::new("a", "/other", "t");
        assert_eq!(d.admit(vec![other], 5_000).0.len(), 1);
        // Past the window, "a" is new again.
        let (fresh, _, _) = d.admit(vec![ev("a")], 11_001);
        assert_eq!(ids(&fresh), vec!["a"]);
    }

    #[test]
    fn a_failed_append_releases_its_pairs_for_the_retry() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let (_, reserved, _) = d.admit(vec![ev("a"), ev("b")], 1_000);
        d.release(reserved);
        let (fresh, _, dups) = d.admit(vec![ev("a"), ev("b")], 1_001);
        assert_eq!((fresh.len(), dups), (2, 0));
    }

    #[test]
    fn a_million_distinct_pairs_keep_at_most_max_keys() {
        let d = Dedup::new(Duration::from_secs(600), 10_000);
        for batch in 0..1_000 {
            let events = (0..1_000).map(|i| ev(&format!("{batch}-{i}"))).collect();
            let (fresh, _, dups) = d.admit(events, 1_000 + batch);
            assert_eq!((fresh.len(), dups), (1_000, 0));
            assert!(d.len() <= 10_000);
        }
        assert!(d.lock().order.len() <= 20_000);
        // The newest are kept: a retry of the last batch is still caught.
        let (_, _, dups) = d.admit(vec![ev("999-999")], 3_000);
        assert_eq!(dups, 1);
    }

    #[test]
    fn entries_restore_into_a_new_run() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        d.admit(vec![ev("old")], 1_000);
        d.admit(vec![ev("new")], 8_000);
        let kept = d.entries(9_000);
        let next = Dedup::new(Duration::from_secs(10), 100);
        next.restore(kept, 12_000);
        // "old" fell out of the window meanwhile; "new" is still a duplicate.
        let (fresh, _, dups) = next.admit(vec![ev("old"), ev("new")], 12_000);
        assert_eq!((ids(&fresh), dups), (vec!["old"], 1));
    }
}
