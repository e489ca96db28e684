//! Event sources cemesh runs itself: the `PingSource` ticker ([`ping`]) and the
//! processes a `ContainerSource` keeps running ([`process`]).
//!
//! A source does not deliver: it appends what it makes to a channel of the mesh,
//! which a trigger-like loop delivers to the source's sink with the delivery
//! pipeline's retries and dead letters, so nothing a source emits is silently lost.

pub mod ping;
pub mod process;
pub mod schedule;

pub use ping::{spawn_ping, PingHandle, PingSpec};
pub use process::{spawn_process, ProcessHandle, ProcessSpec};
pub use schedule::{Schedule, ScheduleError};
