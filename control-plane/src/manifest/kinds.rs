//! The one table of resource kinds cemesh runs. Reading a document, naming a kind in
//! a path or on the command line, the gRPC enum and a resource's identity all go
//! through [`KINDS`], so a new kind is a row here, its typed manifest, and its place
//! in `compile` and status.

use std::fmt;

use super::channel::{MESSAGING_V1, MESSAGING_V1BETA1};
use super::flows::FLOWS_V1;
use super::sources::{SOURCES_V1, SOURCES_V1BETA1};
use super::{Metadata, Resource};

/// A kind cemesh runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Broker,
    Trigger,
    EventPolicy,
    Channel,
    InMemoryChannel,
    KafkaChannel,
    Subscription,
    Sequence,
    Parallel,
    PingSource,
    ContainerSource,
    SinkBinding,
    KafkaSource,
    EventType,
}

/// What every layer needs to know of a kind.
pub struct KindInfo {
    pub kind: Kind,
    pub api_version: &'static str,
    /// Other versions read the same way (Knative serves KafkaSource as v1 too).
    pub also: &'static [&'static str],
    /// `Broker`, as manifests write it.
    pub name: &'static str,
    /// `brokers`, as paths and the CLI write it.
    pub plural: &'static str,
    /// kubectl's short name (`br`), if it has one.
    pub short: Option<&'static str>,
    /// The `cemesh.v1.ResourceKind` number.
    pub grpc: i32,
    /// Reads a document of this kind into its typed manifest.
    pub(super) parse: fn(&str) -> Result<Resource, super::TypedError>,
}

/// Every kind, in the order listings and messages use.
pub const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: Kind::Broker,
        api_version: super::EVENTING_V1,
        also: &[],
        name: "Broker",
        plural: "brokers",
        short: Some("br"),
        grpc: 1,
        parse: |t| super::typed(t).map(Resource::Broker),
    },
    KindInfo {
        kind: Kind::Trigger,
        api_version: super::EVENTING_V1,
        also: &[],
        name: "Trigger",
        plural: "triggers",
        short: Some("tr"),
        grpc: 2,
        parse: |t| super::typed(t).map(Resource::Trigger),
    },
    KindInfo {
        kind: Kind::EventPolicy,
        api_version: super::EVENTING_V1ALPHA1,
        also: &[],
        name: "EventPolicy",
        plural: "eventpolicies",
        short: Some("ep"),
        grpc: 3,
        parse: |t| super::typed(t).map(Resource::EventPolicy),
    },
    KindInfo {
        kind: Kind::Channel,
        api_version: MESSAGING_V1,
        also: &[],
        name: "Channel",
        plural: "channels",
        short: Some("ch"),
        grpc: 4,
        parse: |t| super::typed(t).map(Resource::Channel),
    },
    KindInfo {
        kind: Kind::InMemoryChannel,
        api_version: MESSAGING_V1,
        also: &[],
        name: "InMemoryChannel",
        plural: "inmemorychannels",
        short: Some("imc"),
        grpc: 5,
        parse: |t| super::typed(t).map(Resource::Channel),
    },
    KindInfo {
        kind: Kind::KafkaChannel,
        api_version: MESSAGING_V1BETA1,
        also: &[],
        name: "KafkaChannel",
        plural: "kafkachannels",
        short: Some("kc"),
        grpc: 6,
        parse: |t| super::typed(t).map(Resource::Channel),
    },
    KindInfo {
        kind: Kind::Subscription,
        api_version: MESSAGING_V1,
        also: &[],
        name: "Subscription",
        plural: "subscriptions",
        short: Some("sub"),
        grpc: 7,
        parse: |t| super::typed(t).map(|s| Resource::Subscription(Box::new(s))),
    },
    KindInfo {
        kind: Kind::Sequence,
        api_version: FLOWS_V1,
        also: &[],
        name: "Sequence",
        plural: "sequences",
        short: None,
        grpc: 8,
        parse: |t| super::typed(t).map(Resource::Sequence),
    },
    KindInfo {
        kind: Kind::Parallel,
        api_version: FLOWS_V1,
        also: &[],
        name: "Parallel",
        plural: "parallels",
        short: None,
        grpc: 9,
        parse: |t| super::typed(t).map(Resource::Parallel),
    },
    KindInfo {
        kind: Kind::PingSource,
        api_version: SOURCES_V1,
        also: &[],
        name: "PingSource",
        plural: "pingsources",
        short: None,
        grpc: 10,
        parse: |t| super::typed(t).map(Resource::PingSource),
    },
    KindInfo {
        kind: Kind::ContainerSource,
        api_version: SOURCES_V1,
        also: &[],
        name: "ContainerSource",
        plural: "containersources",
        short: None,
        grpc: 11,
        parse: |t| super::typed(t).map(Resource::ContainerSource),
    },
    KindInfo {
        kind: Kind::SinkBinding,
        api_version: SOURCES_V1,
        also: &[],
        name: "SinkBinding",
        plural: "sinkbindings",
        short: None,
        grpc: 13,
        parse: |t| super::typed(t).map(Resource::SinkBinding),
    },
    KindInfo {
        kind: Kind::KafkaSource,
        api_version: SOURCES_V1BETA1,
        also: &[SOURCES_V1],
        name: "KafkaSource",
        plural: "kafkasources",
        short: None,
        grpc: 14,
        parse: |t| super::typed(t).map(Resource::KafkaSource),
    },
    KindInfo {
        kind: Kind::EventType,
        api_version: super::eventtype::EVENTING_V1BETA2,
        also: &[],
        name: "EventType",
        plural: "eventtypes",
        short: Some("et"),
        grpc: 12,
        parse: |t| super::typed(t).map(Resource::EventType),
    },
];

impl Kind {
    pub fn info(self) -> &'static KindInfo {
        KINDS
            .iter()
            .find(|i| i.kind == self)
            .expect("every kind has a row in KINDS")
    }

    /// `Broker`.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// `brokers`.
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// A kind as paths and the CLI name it: plural, singular or short name, any case.
    pub fn parse_plural(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        KINDS
            .iter()
            .find(|i| i.plural == s || i.name.to_ascii_lowercase() == s || i.short == Some(&s))
            .map(|i| i.kind)
    }

    /// The kind of a `cemesh.v1.ResourceKind` number.
    pub fn from_grpc(n: i32) -> Option<Kind> {
        KINDS.iter().find(|i| i.grpc == n).map(|i| i.kind)
    }

    /// The kind of a channel manifest's `kind` (`Channel`, `InMemoryChannel` or
    /// `KafkaChannel`).
    pub fn of_channel(kind: &str) -> Kind {
        match kind {
            "InMemoryChannel" => Kind::InMemoryChannel,
            "KafkaChannel" => Kind::KafkaChannel,
            _ => Kind::Channel,
        }
    }

    /// `brokers (br), triggers (tr), ...` for messages.
    pub fn plurals() -> String {
        KINDS
            .iter()
            .map(|i| match i.short {
                Some(s) => format!("{} ({s})", i.plural),
                None => i.plural.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Broker(_) => Kind::Broker,
            Resource::Trigger(_) => Kind::Trigger,
            Resource::EventPolicy(_) => Kind::EventPolicy,
            Resource::Channel(c) => Kind::of_channel(&c.kind),
            Resource::Subscription(_) => Kind::Subscription,
            Resource::Sequence(_) => Kind::Sequence,
            Resource::Parallel(_) => Kind::Parallel,
            Resource::PingSource(_) => Kind::PingSource,
            Resource::ContainerSource(_) => Kind::ContainerSource,
            Resource::SinkBinding(_) => Kind::SinkBinding,
            Resource::KafkaSource(_) => Kind::KafkaSource,
            Resource::EventType(_) => Kind::EventType,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Broker(r) => &r.metadata,
            Resource::Trigger(r) => &r.metadata,
            Resource::EventPolicy(r) => &r.metadata,
            Resource::Channel(r) => &r.metadata,
            Resource::Subscription(r) => &r.metadata,
            Resource::Sequence(r) => &r.metadata,
            Resource::Parallel(r) => &r.metadata,
            Resource::PingSource(r) => &r.metadata,
            Resource::ContainerSource(r) => &r.metadata,
            Resource::SinkBinding(r) => &r.metadata,
            Resource::KafkaSource(r) => &r.metadata,
            Resource::EventType(r) => &r.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_one_row_and_distinct_names() {
        for (i, a) in KINDS.iter().enumerate() {
            assert_eq!(a.kind.info().name, a.name);
            assert_eq!(Kind::parse_plural(a.plural), Some(a.kind));
            assert_eq!(Kind::parse_plural(a.name), Some(a.kind));
            assert_eq!(Kind::from_grpc(a.grpc), Some(a.kind));
            for b in &KINDS[i + 1..] {
                assert_ne!(a.plural, b.plural);
                assert_ne!(a.grpc, b.grpc);
                assert!(a.short.is_none() || a.short != b.short);
            }
        }
    }
}
