//! The Kafka channel: a broker's log is a Kafka topic, a trigger's cursor is a
//! consumer group. This is how cemesh scales past one machine: any number of
//! stateless `cemesh serve` replicas point at the same Kafka cluster and the same
//! manifests; every replica's ingress appends to any broker's topic, and the
//! replicas share each trigger's partitions through consumer-group rebalancing, so an
//! event is delivered once per trigger across them (at-least-once around a
//! rebalance or a crash).
//!
//! The contract, mapped onto Kafka (see `DESIGN.md`, "The channel contract"):
//! - `append` answers only after Kafka acknowledged every record with `acks=all`
//!   from an idempotent producer. Records use the CloudEvents Kafka binding's
//!   binary mode ([`codec`]), so Knative's Kafka broker and plain Kafka tools read
//!   the topics. A batch is not atomic in Kafka: when one record of a batch fails,
//!   the call fails and the caller's retry may duplicate the others
//!   (at-least-once, like every other failure path).
//! - `subscribe` joins the trigger's consumer group. A group with no committed
//!   offsets is new: its offsets are written before it joins (latest, earliest,
//!   the given offset, or the first record of a time, per partition; module
//!   `offsets`), as Knative's controller does before a trigger turns ready, so
//!   nothing appended after `subscribe` returns is missed.
//! - Acks arrive out of order; per partition an [`AckTracker`](crate::AckTracker) keeps the contiguous
//!   prefix of finished records and only that prefix is committed (every
//!   `commit_interval`, and synchronously when a partition is revoked or the
//!   subscription closes). Unlike Knative's Kafka broker, a record whose dead-letter
//!   send failed is simply not acked, so the offset never passes it.
//! - `lag` is the sum over partitions of high watermark minus committed offset,
//!   using this replica's exact in-memory watermark for the partitions it owns;
//!   `committed` answers those cursors.
//! - `seek` commits new offsets from a client outside the group, which Kafka
//!   accepts only while the group has no members: the trigger must be stopped on
//!   every replica. A subscription still open in this process is refused; one no
//!   longer read (its trigger stopped) is closed first.
//! - A crashed replica's partitions go to the survivors after the session timeout;
//!   a subscription that finds partitions assigned to no live member (a coordinator
//!   keeping a dead member's assignment, as tansu 0.6 does) leaves and rejoins its
//!   group (module `orphans`).
//! - `KafkaChannelConfig::max_backlog` refuses appends (`Full`) while the slowest
//!   subscription of the process lags past it; passive ones (replays) not counted.
//! - Retention is Kafka's (`retention.ms` / `retention.bytes` of the topic), not
//!   "removed once every subscription passed": a new subscription starting at
//!   `Earliest` sees everything Kafka still keeps.
//! - Ordering: the `partitionkey` extension is the record key, hashed with
//!   `murmur2` like the Java client, so one key lives in one partition and is read
//!   in append order; the dispatcher's ordered mode does the rest.
//!
//! Modules, lowest first (each uses only modules above it): `options` (settings,
//! naming templates), [`codec`], `orphans` (the group watchdog's verdicts),
//! `client` (the shared producer and admin client), `topic` (a broker's topic),
//! `offsets` (where a start falls, by offset or time), `subscription`, `channel`,
//! `deadletters`, and `store` ([`KafkaStore`]).

mod channel;
mod client;
pub mod codec;
mod deadletters;
mod offsets;
mod options;
mod orphans;
mod store;
mod subscription;
#[doc(hidden)]
pub mod testing;
mod topic;

pub use channel::KafkaChannel;
pub use deadletters::KafkaDeadLetters;
pub use options::{
    ForeignTopic, KafkaChannelConfig, KafkaOptions, KeyType, DEFAULT_DEAD_LETTER_TEMPLATE,
    DEFAULT_GROUP_TEMPLATE, DEFAULT_TOPIC_TEMPLATE, KNATIVE_GROUP_TEMPLATE, KNATIVE_TOPIC_TEMPLATE,
};
/// The Kafka client, for tools and tests that talk to the topics directly.
pub use rdkafka;
pub use store::KafkaStore;
