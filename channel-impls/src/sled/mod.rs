//! The durable channel: one [sled] database per process, one append-only log per
//! broker, committed cursors per subscription.
//!
//! Why it looks like this:
//! - **One database, one tree per broker.** sled keeps a single write-ahead log per
//!   database, so one `flush` makes every broker's writes durable at once. A broker's
//!   tree holds its records under `l` + big-endian offset (so key order is log order and
//!   the next offset is recovered from the last key), its cursors under `c` + name,
//!   coarse time marks under `t` + offset (for time-based retention and starts by time) and the offset
//!   below which everything was trimmed (so offsets never go back after a restart, even
//!   with an empty log). Records are stored with [`cemesh_proto::codec::encode`] and
//!   nothing else, so the format can change in one place (module `layout`).
//! - **Group commit.** `append` encodes its events and hands them to the store's one
//!   writer thread (`flusher`), then awaits the answer. Each round the thread takes
//!   every append that arrived, writes each broker's share as one atomic batch, runs
//!   one `flush` for all of them and answers: concurrent producers share fsyncs and
//!   tree operations instead of paying one each, and no producer blocks a runtime
//!   worker. [`Durability`] lets a broker trade that for latency.
//! - **Cursors are persisted lazily** (every [`MAINTENANCE_INTERVAL`], when a
//!   subscription handle is dropped, on `unsubscribe`, [`SledStore::flush`] and when the
//!   store is closed). Delivery is at-least-once, so a cursor lost in a crash only means
//!   re-delivery; a cursor written on every ack would cost a write per event.
//! - **Bounded memory.** `next` reads at most `max` records from disk per call; the only
//!   per-record state kept in RAM is the size of each record in the slowest
//!   subscription's backlog (4 bytes each, only when a byte cap is set), which the
//!   backlog caps bound.
//! - **Retention and backpressure.** A maintenance thread deletes records every
//!   subscription has passed once they are older than [`SledConfig::retention`];
//!   `append` answers [`ChannelError::Full`](crate::ChannelError::Full) when the slowest backlog passes its caps.
//! - **Corruption** never stops a subscription: a record that does not decode is logged
//!   with its offset and length, counted ([`SledChannel::corrupt_records`]) and skipped
//!   (acknowledged on the subscription's behalf).
//! - **Dead letters** live in the same database (tree `deadletters`) and share the
//!   group commit, so they are as durable as the events they came from.
//!
//! Records become visible to subscriptions as soon as they are inserted, before the
//! flush: if the flush then fails the producer gets an error and may send again, so a
//! subscriber can see such an event twice (at-least-once, never lost).
//!
//! Modules, lowest first (each uses only modules above it):
//! - `util`, `layout`, `config`: helpers, the on-disk key layout, settings;
//! - `flusher`: the writer and group-commit thread;
//! - `log`: one broker's in-memory state, loaded from its tree;
//! - `maintenance`: the thread persisting cursors and enforcing retention;
//! - `db`: the open database shared by every handle, closed by the last one;
//! - `subscription`, `channel`, `deadletters`: the handles;
//! - `store`: [`SledStore`], which opens all of the above.

mod channel;
mod config;
mod db;
mod deadletters;
mod flusher;
#[doc(hidden)]
pub mod layout;
mod log;
mod maintenance;
mod space;
mod store;
mod subscription;
mod util;

pub use channel::SledChannel;
pub use config::{
    Durability, SledConfig, SledStoreOptions, DEFAULT_COMMIT_DELAY, DEFAULT_MIN_FREE_BYTES,
};
pub use deadletters::SledDeadLetters;
pub use maintenance::MAINTENANCE_INTERVAL;
pub use store::{open_sled, SledStore};
