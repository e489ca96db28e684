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
    events: VecDeque<Arc<Event>>,
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

    /// Adds an event at offset `end()`.
    pub(crate) fn push(&mut self, event: Arc<Event>) {
        self.bytes += event.approx_size() as u64;
        self.events.push_back(event);
    }

    /// Drops the first event; false if there was none.
    pub(crate) fn pop_front(&mut self) -> bool {
        let Some(e) = self.events.pop_front() else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(e.approx_size() as u64);
        self.base += 1;
        true
    }

    /// The first offset held whose event arrived at or after `ms` (events without
    /// an arrival time count as arrived at once), else `end()`.
    pub(crate) fn first_since(&self, ms: u64) -> u64 {
        let at = self.events.partition_point(|e| {
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
                    event: self.events[(o - self.base) as usize].clone(),
                })
                .collect(),
        )
    }
}
