//! A run of consecutive events held in RAM, with their offsets and their total
//! size (each event's `approx_size`): the memory channel's whole log, and the
//! newest records of a sled channel (its tail).

use std::collections::VecDeque;
use std::sync::Arc;

use cemesh_proto::Event;

use crate::{Position, Record};

#[derive(Debug, Default)]
pub(crate) struct EventRun {
    /// Offset of the first event.
    base: u64,
    /// Each event with its `approx_size`, measured once (by the caller, outside any
    /// lock the run sits behind).
    events: VecDeque<(Arc<Event>, u32)>,
    bytes: u64,
}

impl EventRun {
    /// Offset of the first event held.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Offset after the last event held.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The size of every event held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Empties the run; the next event pushed gets offset `base`.
    pub(crate) fn reset(&mut self, base: u64) {
        self.events.clear();
        self.bytes = 0;
        self.base = base;
    }

    /// Adds an event at offset `end()`, with its size already measured
    /// ([`size_of_event`]).
    pub(crate) fn push_sized(&mut self, event: Arc<Event>, size: u32) {
        self.bytes += u64::from(size);
        self.events.push_back((event, size));
    }

    /// Removes the first event and hands it back (for the caller to drop, outside
    /// its lock: it may be the last reference).
    pub(crate) fn pop_front(&mut self) -> Option<Arc<Event>> {
        let (e, size) = self.events.pop_front()?;
        self.bytes = self.bytes.saturating_sub(u64::from(size));
        self.base += 1;
        Some(e)
    }

    /// The first offset held whose event arrived at or after `ms` (events without
    /// an arrival time count as arrived at once), else `end()`.
    pub(crate) fn first_since(&self, ms: u64) -> u64 {
        let at = self.events.partition_point(|(e, _)| {
            cemesh_proto::knative::arrival_ms(e).is_some_and(|t| t < ms as i64)
        });
        self.base + at as u64
    }

    /// Records `from..to`, if every one of them is held.
    pub(crate) fn records(&self, from: u64, to: u64) -> Option<Vec<Record>> {
        if from < self.base || to > self.end() || from >= to {
            return None;
        }
        Some(
            (from..to)
                .map(|o| Record {
                    position: Position::new(0, o),
                    event: self.events[(o - self.base) as usize].0.clone(),
                })
                .collect(),
        )
    }
}

/// An event's size as a run counts it ([`Event::approx_size`]).
pub(crate) fn size_of_event(event: &Event) -> u32 {
    u32::try_from(event.approx_size()).unwrap_or(u32::MAX)
}

/// `event` shared, with its size measured: what [`EventRun::push_sized`] takes,
/// made before the lock a run sits behind.
pub(crate) fn sized(event: Event) -> (Arc<Event>, u32) {
    let size = size_of_event(&event);
    (Arc::new(event), size)
}
