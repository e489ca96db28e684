//! Manifests to what the data plane runs: references resolved to URLs, filters
//! compiled, defaults merged. Validation is per resource: an invalid trigger is
//! reported and left out while every valid one runs.

use std::collections::BTreeMap;
use std::time::Duration;

use cemesh_channels::{Durability, SledConfig, StartAt};
use cemesh_dispatcher::{
    BackoffPolicy, CaCerts, DeliveryAuth, DeliverySpec, Format, MaxLag, Ordering, ReplyTo,
    TriggerKey, TriggerRuntime, WebhookSecret,
};
use cemesh_ingress::BrokerKey;

use super::broker::{
    BACKPRESSURE_HOLD_ANNOTATION, BACKPRESSURE_WINDOW_ANNOTATION, BROKER_ANNOTATIONS,
    CHANNEL_ANNOTATION, DURABILITY_ANNOTATION, JOURNAL_ANNOTATION, MAX_BACKLOG_ANNOTATION,
    MAX_BACKLOG_SIZE_ANNOTATION, MAX_BODY_ANNOTATION, RETAIN_WITHOUT_TRIGGERS_ANNOTATION,
    RETENTION_ANNOTATION, RETENTION_SIZE_ANNOTATION,
};
use super::trigger::{
    BACKOFF_MAX_ANNOTATION, BREAKER_FAILURES_ANNOTATION, BREAKER_PROBE_DELAY_ANNOTATION,
    BREAKER_PROBE_MAX_ANNOTATION, BREAKER_WINDOW_ANNOTATION, COLD_START_GRACE_ANNOTATION,
    DELIVERY_FORMAT_ANNOTATION, JITTER_ANNOTATION, MAX_LAG_ACTION_ANNOTATION, MAX_LAG_ANNOTATION,
    MAX_RATE_ANNOTATION, ORDER_ANNOTATION, PARALLELISM_ANNOTATION, START_ANNOTATION,
    TRIGGER_ANNOTATIONS, WEBHOOK_SECRET_ANNOTATION,
};
use super::{
    DeliveryManifest, Destination, Located, ManifestError, Metadata, Resource, TriggerManifest,
};
use crate::config::{ChannelKind, ServiceEntry};
use crate::duration::{parse_bytes, parse_humane, parse_iso8601};
use crate::ondemand::ServiceTarget;

/// What resolving references needs to know about the server.
#[derive(Debug, Clone)]
pub struct ResolveContext<'a> {
    /// Base URL of this process's ingress, for subscribers that are Brokers.
    pub ingress_base: String,
    pub service_url_template: &'a str,
    pub services: &'a BTreeMap<String, ServiceEntry>,
    /// Programs standing for container images (the server config's `images:`).
    pub images: &'a BTreeMap<String, Vec<String>>,
    pub default_channel: ChannelKind,
    pub default_max_body: u64,
}

/// Whether an address is a broker or a Knative channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressKind {
    /// Stamps arrival time, hop budget and trace context on what it accepts.
    #[default]
    Broker,
    /// Passes events on unaltered (a `Channel`, `InMemoryChannel`, `KafkaChannel`,
    /// or one of a flow's).
    Channel,
    /// Not reachable from the ingress: only cemesh appends to it (a PingSource's).
    Internal,
}

/// A broker (or channel) as it should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDesired {
    pub key: BrokerKey,
    pub kind: AddressKind,
    pub channel: ChannelKind,
    pub channel_options: ChannelOptions,
    /// The broker's annotations, for channel-specific settings (Kafka topics).
    pub annotations: BTreeMap<String, String>,
    pub max_body_bytes: u64,
    pub delivery: Option<DeliveryManifest>,
    /// A KafkaSource's channel: the existing topic it reads.
    pub source_topic: Option<super::sources::SourceTopic>,
    /// `cemesh.dev/dedup-window` and `cemesh.dev/dedup-max-keys`.
    pub dedup: Option<DedupSettings>,
    /// Whether its events are journaled (`cemesh.dev/journal`, default on).
    pub journal: bool,
}

/// A broker's dedup window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupSettings {
    pub window: Duration,
    pub max_keys: usize,
}

/// The longest `cemesh.dev/backpressure-hold`.
const MAX_BACKPRESSURE_HOLD: Duration = Duration::from_secs(30);

/// A broker's channel settings, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOptions {
    pub durability: Durability,
    pub retention: Duration,
    /// Cap on the records kept by retention, in bytes (`u64::MAX`: none).
    pub retention_bytes: u64,
    pub max_backlog_records: u64,
    pub max_backlog_bytes: u64,
    pub retain_without_triggers: u64,
    /// Ingress backpressure window in bytes; `None`: off.
    pub backpressure_window: Option<u64>,
    /// How long a request past the window is held for room before a 429.
    pub backpressure_hold: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        let sled = SledConfig::default();
        ChannelOptions {
            durability: sled.durability,
            retention: sled.retention,
            retention_bytes: sled.retention_bytes,
            max_backlog_records: sled.max_backlog_records,
            max_backlog_bytes: sled.max_backlog_bytes,
            retain_without_triggers: sled.retain_without_subscribers,
            backpressure_window: Some(cemesh_channels::flow::DEFAULT_WINDOW_BYTES),
            backpressure_hold: cemesh_channels::flow::DEFAULT_HOLD,
        }
    }
}

/// A trigger as it should run.
#[derive(Debug, Clone)]
pub struct TriggerDesired {
    pub runtime: TriggerRuntime,
    pub start: StartAt,
}

/// The whole desired state, and what was wrong with the rest.
#[derive(Debug, Default)]
pub struct Desired {
    pub brokers: BTreeMap<BrokerKey, BrokerDesired>,
    pub triggers: BTreeMap<TriggerKey, TriggerDesired>,
    /// `EventPolicy`s by `namespace/name`, with the brokers each selects.
    pub policies: BTreeMap<String, super::access::PolicyDesired>,
    pub problems: Vec<ManifestError>,
    /// What a resource's status says beyond Ready (addresses, a subscription's
    /// resolved URIs, a flow's parts), by `(kind, namespace, name)`.
    pub status: BTreeMap<(super::Kind, String, String), serde_json::Value>,
    /// Tickers and processes sources run, by `Kind ns/name`.
    pub sources: BTreeMap<String, super::sources::SourceDesired>,
}

/// Compiles every Broker and Trigger; brokers first, so triggers can check their
/// broker. The rest of `compile` (`super::compile`) builds on this.
pub(super) fn compile_brokers_and_triggers(
    resources: &[Located<Resource>],
    ctx: &ResolveContext<'_>,
) -> Desired {
    let mut desired = Desired::default();
    // Brokers defined but invalid, with their first problem, for their triggers.
    let mut invalid = BTreeMap::new();
    for located in resources {
        let Resource::Broker(b) = &located.value else {
            continue;
        };
        let label = format!("Broker {}/{}", b.metadata.namespace(), b.metadata.name);
        match compile_broker(&b.metadata, b.spec.delivery.clone(), ctx) {
            Ok(d) => {
                if desired.brokers.contains_key(&d.key) {
                    desired.problems.push(located.error(
                        label,
                        "metadata.name",
                        "defined more than once",
                    ));
                } else {
                    desired.brokers.insert(d.key.clone(), d);
                }
            }
            Err(problems) => {
                let key = BrokerKey::new(b.metadata.namespace(), &b.metadata.name);
                if let Some((path, msg)) = problems.first() {
                    invalid
                        .entry(key)
                        .or_insert_with(|| format!("{path}: {msg}"));
                }
                for (path, msg) in problems {
                    desired
                        .problems
                        .push(located.error(label.clone(), path, msg));
                }
            }
        }
    }
    for located in resources {
        let Resource::Trigger(t) = &located.value else {
            continue;
        };
        let label = format!("Trigger {}/{}", t.metadata.namespace(), t.metadata.name);
        match compile_trigger(t, &desired.brokers, &invalid, ctx) {
            Ok(d) => {
                if desired.triggers.contains_key(&d.runtime.key) {
                    desired.problems.push(located.error(
                        label,
                        "metadata.name",
                        "defined more than once",
                    ));
                } else {
                    desired.triggers.insert(d.runtime.key.clone(), d);
                }
            }
            Err(problems) => {
                for (path, msg) in problems {
                    desired
                        .problems
                        .push(located.error(label.clone(), path, msg));
                }
            }
        }
    }
    desired
}

impl Desired {
    /// The policies that select `broker`.
    pub fn policies_of(
        &self,
        broker: &BrokerKey,
    ) -> Vec<std::sync::Arc<cemesh_ingress::auth::Policy>> {
        self.policies
            .values()
            .filter(|p| p.brokers.contains(broker))
            .map(|p| p.policy.clone())
            .collect()
    }
}

pub(super) type FieldError = (String, String);

/// Every problem found in one resource, each with its field path: checks note what is
/// wrong and go on, so a user fixes all of it in one go (Knative's `FieldError.Also`).
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<FieldError>);

impl Problems {
    /// The problems of a resource's metadata and `cemesh.dev/` annotations (`known`
    /// are the ones its kind takes), to which its checks add the rest.
    pub(super) fn for_resource(meta: &Metadata, known: &[&str]) -> Problems {
        let mut problems = Problems::default();
        problems.note(meta.check());
        check_annotations(meta, known, &mut problems);
        problems
    }

    pub(super) fn add(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.push(field(path, msg));
    }

    /// One problem per field: the merged delivery is checked after the trigger's own.
    fn push(&mut self, problem: FieldError) {
        if !self.0.iter().any(|(path, _)| *path == problem.0) {
            self.0.push(problem);
        }
    }

    /// The value, or `None` after noting why there is none.
    pub(super) fn note<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// `value` if nothing was wrong, else every problem.
    pub(super) fn into_result<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

pub(super) fn field(path: &str, msg: impl std::fmt::Display) -> FieldError {
    (path.to_owned(), msg.to_string())
}

/// Refuses a `cemesh.dev/` annotation that is not in `known` (a typo would otherwise
/// be silently ignored), naming the closest known one.
pub(super) fn check_annotations(meta: &Metadata, known: &[&str], problems: &mut Problems) {
    for key in meta.annotations.keys() {
        if !key.starts_with("cemesh.dev/") || known.contains(&key.as_str()) {
            continue;
        }
        let closest = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(key, k), *k))
            .min()
            .filter(|(distance, _)| *distance <= 3);
        let hint = match closest {
            Some((_, k)) => format!("; did you mean {k}?"),
            None => format!(
                "; known: {}",
                known
                    .iter()
                    .filter(|k| **k != super::OWNER_ANNOTATION)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        problems.add(
            &format!("metadata.annotations.{key}"),
            format!("unknown cemesh annotation{hint}"),
        );
    }
}

fn compile_broker(
    meta: &Metadata,
    delivery: Option<DeliveryManifest>,
    ctx: &ResolveContext<'_>,
) -> Result<BrokerDesired, Vec<FieldError>> {
    let mut problems = Problems::default();
    problems.note(meta.check());
    if meta.name.ends_with(super::channel::CHANNEL_SUFFIX) {
        problems.add(
            "metadata.name",
            format!(
                "names ending in {} are channel addresses (channel x is at x{0}); choose another name",
                super::channel::CHANNEL_SUFFIX
            ),
        );
    }
    check_annotations(meta, BROKER_ANNOTATIONS, &mut problems);
    let channel = match meta.annotations.get(CHANNEL_ANNOTATION) {
        None => ctx.default_channel,
        Some(v) => match ChannelKind::parse(v) {
            Some(c) => c,
            None => {
                problems.add(
                    &format!("metadata.annotations.{CHANNEL_ANNOTATION}"),
                    format!("{v:?} is not a channel; expected memory, sled or kafka"),
                );
                ctx.default_channel
            }
        },
    };
    let key = BrokerKey::new(meta.namespace(), &meta.name);
    let d = broker_desired(
        key,
        AddressKind::Broker,
        channel,
        meta,
        delivery,
        ctx,
        &mut problems,
    );
    problems.into_result(d)
}

/// What runs a broker or a channel (at address `key`) on storage `channel`, with the
/// settings `meta`'s annotations ask for.
pub(super) fn broker_desired(
    key: BrokerKey,
    kind: AddressKind,
    channel: ChannelKind,
    meta: &Metadata,
    delivery: Option<DeliveryManifest>,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> BrokerDesired {
    let path = |a: &str| format!("metadata.annotations.{a}");
    let max_body_bytes = match meta.annotations.get(MAX_BODY_ANNOTATION) {
        None => ctx.default_max_body,
        Some(v) => problems
            .note(parse_bytes(v).map_err(|e| field(&path(MAX_BODY_ANNOTATION), e)))
            .unwrap_or(ctx.default_max_body),
    };
    if let Some(d) = &delivery {
        check_delivery(d, "spec.delivery", problems);
    }
    let channel_options = channel_options(meta, problems);
    let dedup = dedup_settings(meta, problems);
    let journal = match meta.annotations.get(JOURNAL_ANNOTATION).map(|v| v.trim()) {
        None | Some("on") => true,
        Some("off") => false,
        Some(v) => {
            problems.add(
                &format!("metadata.annotations.{JOURNAL_ANNOTATION}"),
                format!("{v:?} is not on or off"),
            );
            true
        }
    };
    #[cfg(feature = "kafka")]
    if channel == ChannelKind::Kafka {
        problems.note(crate::kafka::channel_config(&meta.annotations));
    }
    BrokerDesired {
        key,
        kind,
        channel,
        channel_options,
        annotations: meta.annotations.clone(),
        max_body_bytes,
        delivery,
        source_topic: None,
        dedup,
        journal,
    }
}

/// `cemesh.dev/dedup-window` (a duration, or `none`) and `cemesh.dev/dedup-max-keys`.
fn dedup_settings(meta: &Metadata, problems: &mut Problems) -> Option<DedupSettings> {
    use super::broker::{DEDUP_MAX_KEYS_ANNOTATION, DEDUP_WINDOW_ANNOTATION};
    let path = |a: &str| format!("metadata.annotations.{a}");
    let max_keys = match meta.annotations.get(DEDUP_MAX_KEYS_ANNOTATION) {
        None => cemesh_ingress::dedup::DEFAULT_MAX_KEYS,
        Some(v) => match v.trim().parse::<usize>().ok().filter(|n| *n > 0) {
            Some(n) => n,
            None => {
                problems.add(
                    &path(DEDUP_MAX_KEYS_ANNOTATION),
                    format!("{v:?} is not a positive whole number"),
                );
                return None;
            }
        },
    };
    let window = meta.annotations.get(DEDUP_WINDOW_ANNOTATION)?;
    if window.trim() == "none" {
        return None;
    }
    match parse_humane(window) {
        Ok(w) if !w.is_zero() => Some(DedupSettings {
            window: w,
            max_keys,
        }),
        Ok(_) => {
            problems.add(
                &path(DEDUP_WINDOW_ANNOTATION),
                "must be longer than zero (or none)",
            );
            None
        }
        Err(e) => {
            problems.add(&path(DEDUP_WINDOW_ANNOTATION), e);
            None
        }
    }
}

pub(super) fn channel_options(meta: &Metadata, problems: &mut Problems) -> ChannelOptions {
    let path = |a: &str| format!("metadata.annotations.{a}");
    let get = |a: &str| meta.annotations.get(a).map(String::as_str);
    let mut o = ChannelOptions::default();
    if let Some(v) = get(DURABILITY_ANNOTATION) {
        let r = parse_durability(v).map_err(|e| field(&path(DURABILITY_ANNOTATION), e));
        if let Some(d) = problems.note(r) {
            o.durability = d;
        }
    }
    if let Some(v) = get(RETENTION_ANNOTATION) {
        let r = parse_humane(v).map_err(|e| field(&path(RETENTION_ANNOTATION), e));
        if let Some(d) = problems.note(r) {
            o.retention = d;
        }
    }
    if let Some(v) = get(RETENTION_SIZE_ANNOTATION) {
        let r = parse_bytes(v).map_err(|e| field(&path(RETENTION_SIZE_ANNOTATION), e));
        if let Some(n) = problems.note(r) {
            o.retention_bytes = n;
        }
    }
    let count = |a: &str, v: &str| {
        v.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| field(&path(a), format!("{v:?} is not a positive whole number")))
    };
    if let Some(v) = get(MAX_BACKLOG_ANNOTATION) {
        if let Some(n) = problems.note(count(MAX_BACKLOG_ANNOTATION, v)) {
            o.max_backlog_records = n;
        }
    }
    if let Some(v) = get(MAX_BACKLOG_SIZE_ANNOTATION) {
        let r = parse_bytes(v).map_err(|e| field(&path(MAX_BACKLOG_SIZE_ANNOTATION), e));
        if let Some(n) = problems.note(r) {
            o.max_backlog_bytes = n;
        }
    }
    if let Some(v) = get(BACKPRESSURE_WINDOW_ANNOTATION) {
        if v.trim() == "none" {
            o.backpressure_window = None;
        } else {
            let r = parse_bytes(v).map_err(|e| {
                field(
                    &path(BACKPRESSURE_WINDOW_ANNOTATION),
                    format!("{e} (or none)"),
                )
            });
            if let Some(n) = problems.note(r) {
                o.backpressure_window = Some(n);
            }
        }
    }
    if let Some(v) = get(BACKPRESSURE_HOLD_ANNOTATION) {
        let r = parse_humane(v)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                if d > MAX_BACKPRESSURE_HOLD {
                    Err(format!(
                        "{v:?} is longer than {}s: a producer's client would time out first",
                        MAX_BACKPRESSURE_HOLD.as_secs()
                    ))
                } else {
                    Ok(d)
                }
            })
            .map_err(|e| field(&path(BACKPRESSURE_HOLD_ANNOTATION), e));
        if let Some(d) = problems.note(r) {
            o.backpressure_hold = d;
        }
    }
    if let Some(v) = get(RETAIN_WITHOUT_TRIGGERS_ANNOTATION) {
        let r = v.trim().parse::<u64>().map_err(|_| {
            field(
                &path(RETAIN_WITHOUT_TRIGGERS_ANNOTATION),
                format!("{v:?} is not a whole number of records"),
            )
        });
        if let Some(n) = problems.note(r) {
            o.retain_without_triggers = n;
        }
    }
    o
}

/// Why a `cemesh.dev/durability` value is refused.
#[derive(Debug, thiserror::Error)]
enum DurabilityError {
    #[error(transparent)]
    Interval(#[from] crate::duration::ParseError),
    #[error("the interval must be above zero")]
    ZeroInterval,
    #[error("{0:?} is not a durability; expected flush-per-batch, interval(10ms) or none")]
    Unknown(String),
}

/// `flush-per-batch`, `none` or `interval(10ms)`.
fn parse_durability(v: &str) -> Result<Durability, DurabilityError> {
    match v.trim() {
        "flush-per-batch" => Ok(Durability::FlushPerBatch),
        "none" => Ok(Durability::None),
        other => match other
            .strip_prefix("interval(")
            .and_then(|r| r.strip_suffix(')'))
        {
            Some(d) => match parse_humane(d)? {
                d if d.is_zero() => Err(DurabilityError::ZeroInterval),
                d => Ok(Durability::Interval(d)),
            },
            None => Err(DurabilityError::Unknown(v.to_owned())),
        },
    }
}

fn compile_trigger(
    t: &TriggerManifest,
    brokers: &BTreeMap<BrokerKey, BrokerDesired>,
    invalid: &BTreeMap<BrokerKey, String>,
    ctx: &ResolveContext<'_>,
) -> Result<TriggerDesired, Vec<FieldError>> {
    let mut problems = Problems::for_resource(&t.metadata, TRIGGER_ANNOTATIONS);
    let ns = t.metadata.namespace();
    let broker_key = BrokerKey::new(ns, &t.spec.broker);
    let broker = if t.spec.broker.is_empty() {
        problems.add(
            "spec.broker",
            "required: the name of the broker to subscribe to",
        );
        None
    } else {
        let broker = brokers.get(&broker_key);
        match (broker, invalid.get(&broker_key)) {
            (Some(_), _) => {}
            (None, Some(why)) => problems.add(
                "spec.broker",
                format!("broker {broker_key} is invalid: {why}"),
            ),
            (None, None) => {
                problems.add("spec.broker", format!("broker {broker_key} is not defined"))
            }
        }
        broker
    };
    let filter = problems.note(super::filters::compile_filter(&t.spec));
    if let Some(d) = &t.spec.delivery {
        check_delivery(d, "spec.delivery", &mut problems);
    }
    let merged = merge_delivery(
        broker.and_then(|b| b.delivery.as_ref()),
        t.spec.delivery.as_ref(),
    );
    let runtime = subscriber_runtime(
        Subscribing {
            meta: &t.metadata,
            key: TriggerKey::new(ns, &t.metadata.name),
            broker: t.spec.broker.clone(),
            broker_desired: broker,
            subscriber: &t.spec.subscriber,
            subscriber_path: "spec.subscriber",
            delivery: &merged,
            delivery_path: "spec.delivery",
            reply: ReplyTo::Broker,
        },
        ctx,
        &mut problems,
    );
    let (Some(runtime), Some(filter)) = (runtime, filter) else {
        return Err(problems.0);
    };
    let (runtime, start) = runtime;
    problems.into_result(TriggerDesired {
        runtime: TriggerRuntime { filter, ..runtime },
        start,
    })
}

/// What makes a trigger-like delivery loop: a Trigger, a Subscription, or one a
/// flow is made of.
pub(super) struct Subscribing<'a> {
    /// Its annotations (parallelism, ordering, max-lag, ...) and name.
    pub meta: &'a Metadata,
    pub key: TriggerKey,
    /// The address name of the broker or channel it reads.
    pub broker: String,
    pub broker_desired: Option<&'a BrokerDesired>,
    pub subscriber: &'a Destination,
    pub subscriber_path: &'a str,
    /// The delivery that applies, already merged with its defaults.
    pub delivery: &'a DeliveryManifest,
    pub delivery_path: &'a str,
    pub reply: ReplyTo,
}

/// The runtime (matching every event; the caller sets the filter) and start position
/// of `s`, or `None` with its problems noted.
pub(super) fn subscriber_runtime(
    s: Subscribing<'_>,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> Option<(TriggerRuntime, StartAt)> {
    let ns = s.key.namespace.clone();
    let meta = s.meta;
    let subscriber = problems.note(resolve(s.subscriber, &ns, s.subscriber_path, ctx));
    let mut delivery = delivery_spec(s.delivery, s.delivery_path, meta, ctx, problems);
    if let Some(b) = s.broker_desired {
        delivery.max_answer_bytes = usize::try_from(b.max_body_bytes).unwrap_or(usize::MAX);
    }
    let ann = |a: &str| format!("metadata.annotations.{a}");
    let parallelism = match meta.annotations.get(PARALLELISM_ANNOTATION) {
        None => 64,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                problems.add(
                    &ann(PARALLELISM_ANNOTATION),
                    format!("{v:?} is not a whole number from 1 to 10000"),
                );
                64
            }
        },
    };
    let start = match meta.annotations.get(START_ANNOTATION) {
        None => StartAt::Latest,
        Some(v) => match crate::point::Point::parse(v, None) {
            Ok(p) => p.start_at(),
            Err(e) => {
                problems.add(&ann(START_ANNOTATION), e);
                StartAt::Latest
            }
        },
    };
    let mut max_lag = match meta.annotations.get(MAX_LAG_ANNOTATION) {
        None => s.broker_desired.map(default_max_lag).unwrap_or_default(),
        Some(v) => problems
            .note(parse_max_lag(v).map_err(|e| field(&ann(MAX_LAG_ANNOTATION), e)))
            .unwrap_or_default(),
    };
    if let Some(v) = meta.annotations.get(MAX_LAG_ACTION_ANNOTATION) {
        match v.trim() {
            "dead-letter" => {}
            "pause" if max_lag.is_set() => max_lag.pause = true,
            "pause" => problems.add(
                &ann(MAX_LAG_ACTION_ANNOTATION),
                format!("pause needs a max-lag: set {MAX_LAG_ANNOTATION} (the trigger has none)"),
            ),
            other => problems.add(
                &ann(MAX_LAG_ACTION_ANNOTATION),
                format!("{other:?} is not dead-letter or pause"),
            ),
        }
    }
    let auth = delivery_auth(meta, s.subscriber, s.subscriber_path, problems);
    // The sink's own Destination: its audience and CACerts (Knative's
    // `deadLetterSinkAudience`/`deadLetterSinkCACerts` are these fields of it).
    let dead_letter_auth = match &s.delivery.dead_letter_sink {
        Some(sink) => delivery_auth(
            meta,
            sink,
            &format!("{}.deadLetterSink", s.delivery_path),
            problems,
        ),
        None => DeliveryAuth::default(),
    };
    let subscriber = subscriber?;
    Some((
        TriggerRuntime {
            key: s.key,
            broker: s.broker,
            filter: cemesh_dispatcher::Filter::All,
            subscriber,
            delivery,
            parallelism,
            borrows: !meta.annotations.contains_key(PARALLELISM_ANNOTATION),
            endpoints: on_demand_endpoints(s.subscriber, &ns, ctx),
            max_lag,
            auth,
            dead_letter_auth,
            reply: s.reply,
        },
        start,
    ))
}

/// How the trigger's deliveries to `dest` (its subscriber or its dead-letter sink,
/// at `at`) prove they come from cemesh: a JWT for the destination's `audience`, and
/// a Standard Webhooks signature with the secret in the file
/// `cemesh.dev/webhook-secret-file` names (read here, so a missing file is a problem
/// of the trigger, reported before it runs); and the CAs it trusts for it.
pub(super) fn delivery_auth(
    meta: &Metadata,
    dest: &Destination,
    at: &str,
    problems: &mut Problems,
) -> DeliveryAuth {
    let audience = dest.audience.clone().filter(|a| !a.is_empty());
    let webhook = meta
        .annotations
        .get(WEBHOOK_SECRET_ANNOTATION)
        .and_then(|path| {
            let at = format!("metadata.annotations.{WEBHOOK_SECRET_ANNOTATION}");
            let text = std::fs::read_to_string(path.trim())
                .map_err(|e| problems.add(&at, format!("{path}: {e}")))
                .ok()?;
            WebhookSecret::parse(&text)
                .map_err(|e| problems.add(&at, format!("{path}: {e}")))
                .ok()
        });
    let ca_certs = dest.ca_certs.as_deref().and_then(|pem| {
        CaCerts::parse(pem)
            .map_err(|e| problems.add(&format!("{at}.CACerts"), e))
            .ok()
    });
    DeliveryAuth {
        audience,
        webhook,
        ca_certs,
    }
}

/// A trigger without `cemesh.dev/max-lag` may fall 90 % of its broker's backlog cap
/// behind: one stuck trigger then moves its overflow to its dead letters before the
/// broker would refuse events for everyone. A Kafka broker has a cap only when its
/// `cemesh.dev/max-backlog` is set.
fn default_max_lag(broker: &BrokerDesired) -> MaxLag {
    let capped = broker.channel != ChannelKind::Kafka
        || broker.annotations.contains_key(MAX_BACKLOG_ANNOTATION);
    MaxLag {
        records: capped.then(|| (broker.channel_options.max_backlog_records / 10 * 9).max(1)),
        age: None,
        pause: false,
    }
}

/// `cemesh.dev/max-lag`: records, an age, both (comma-separated), or `none`.
fn parse_max_lag(v: &str) -> Result<MaxLag, String> {
    let v = v.trim();
    if v == "none" {
        return Ok(MaxLag::default());
    }
    let mut lag = MaxLag::default();
    for part in v.split(',').map(str::trim) {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            match part.parse::<u64>() {
                Ok(n) if n > 0 && lag.records.is_none() => lag.records = Some(n),
                _ => return Err(format!("{part:?} in {v:?} is not a positive number of records, or records were given twice")),
            }
        } else {
            match parse_humane(part) {
                Ok(d) if !d.is_zero() && lag.age.is_none() => lag.age = Some(d),
                _ => return Err(format!("{part:?} in {v:?} is not a number of records or an age (e.g. 5000, 10m, 5000,10m or none)")),
            }
        }
    }
    Ok(lag)
}

/// The merged `spec.delivery` and the trigger's delivery annotations, resolved. Every
/// field left unset takes its default on its own (Knative instead zeroes the waits
/// when only some fields are set).
fn delivery_spec(
    d: &DeliveryManifest,
    at: &str,
    meta: &Metadata,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> DeliverySpec {
    let mut spec = DeliverySpec::default();
    let p = |f: &str| format!("{at}.{f}");
    if let Some(r) = d.retry {
        let r = u32::try_from(r).map_err(|_| field(&p("retry"), "must not be negative"));
        if let Some(r) = problems.note(r) {
            spec.retry = r;
        }
    }
    if let Some(b) = &d.backoff_policy {
        spec.backoff_policy = match b.as_str() {
            "linear" => BackoffPolicy::Linear,
            _ => BackoffPolicy::Exponential,
        };
    }
    for (name, value, slot) in [
        ("backoffDelay", &d.backoff_delay, &mut spec.backoff_delay),
        ("timeout", &d.timeout, &mut spec.timeout),
        (
            "retryAfterMax",
            &d.retry_after_max,
            &mut spec.retry_after_max,
        ),
    ] {
        if let Some(v) = value {
            if let Some(dur) = problems.note(parse_iso8601(v).map_err(|e| field(&p(name), e))) {
                *slot = dur;
            }
        }
    }
    if let Some(f) = &d.format {
        spec.format = if f == "json" {
            Format::Structured
        } else {
            Format::Binary
        };
    }
    if let Some(sink) = &d.dead_letter_sink {
        spec.dead_letter_sink =
            problems.note(resolve(sink, meta.namespace(), &p("deadLetterSink"), ctx));
    }
    let ann = |a: &str| format!("metadata.annotations.{a}");
    let get = |a: &str| meta.annotations.get(a).map(|v| v.trim());
    if let Some(v) = get(JITTER_ANNOTATION) {
        match v {
            "true" | "on" => spec.jitter = true,
            "false" | "off" => spec.jitter = false,
            _ => problems.add(
                &ann(JITTER_ANNOTATION),
                format!("{v:?} is not true or false"),
            ),
        }
    }
    if let Some(v) = get(BACKOFF_MAX_ANNOTATION) {
        spec.backoff_max =
            problems.note(parse_humane(v).map_err(|e| field(&ann(BACKOFF_MAX_ANNOTATION), e)));
    }
    if let Some(v) = get(ORDER_ANNOTATION) {
        match v {
            "ordered" => spec.ordering = Ordering::PerPartitionKey,
            "unordered" => spec.ordering = Ordering::Unordered,
            _ => problems.add(
                &ann(ORDER_ANNOTATION),
                format!("{v:?} is not ordered or unordered"),
            ),
        }
    }
    if let Some(v) = get(COLD_START_GRACE_ANNOTATION) {
        spec.cold_start_grace =
            problems.note(parse_humane(v).map_err(|e| field(&ann(COLD_START_GRACE_ANNOTATION), e)));
    }
    if let Some(v) = get(DELIVERY_FORMAT_ANNOTATION) {
        match v {
            "protobuf" => spec.format = Format::Protobuf,
            "json" => spec.format = Format::Structured,
            "binary" => spec.format = Format::Binary,
            _ => problems.add(
                &ann(DELIVERY_FORMAT_ANNOTATION),
                format!("{v:?} is not binary, json or protobuf"),
            ),
        }
    }
    if let Some(v) = get(BREAKER_FAILURES_ANNOTATION) {
        match v {
            "off" | "false" => spec.breaker.failures = 0,
            _ => match v.parse::<u32>() {
                Ok(n) => spec.breaker.failures = n,
                Err(_) => problems.add(
                    &ann(BREAKER_FAILURES_ANNOTATION),
                    format!("{v:?} is not a whole number of consecutive failures, or off"),
                ),
            },
        }
    }
    if let Some(v) = get(BREAKER_WINDOW_ANNOTATION) {
        match parse_humane(v) {
            Ok(d) => spec.breaker.window = d,
            Err(e) => problems.add(&ann(BREAKER_WINDOW_ANNOTATION), e),
        }
    }
    for (a, slot) in [
        (
            BREAKER_PROBE_DELAY_ANNOTATION,
            &mut spec.breaker.probe_delay,
        ),
        (BREAKER_PROBE_MAX_ANNOTATION, &mut spec.breaker.probe_max),
    ] {
        if let Some(v) = get(a) {
            match parse_humane(v) {
                Ok(d) if !d.is_zero() => *slot = d,
                Ok(_) => problems.add(&ann(a), "must be longer than zero"),
                Err(e) => problems.add(&ann(a), e),
            }
        }
    }
    if spec.breaker.probe_max < spec.breaker.probe_delay {
        spec.breaker.probe_max = spec.breaker.probe_delay;
    }
    if let Some(v) = get(MAX_RATE_ANNOTATION) {
        match v.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => spec.max_rate = Some(r),
            _ => problems.add(
                &ann(MAX_RATE_ANNOTATION),
                format!("{v:?} is not a positive number of events per second"),
            ),
        }
    }
    spec
}

/// Field by field: what the trigger sets wins, the rest comes from the broker.
pub fn merge_delivery(
    broker: Option<&DeliveryManifest>,
    trigger: Option<&DeliveryManifest>,
) -> DeliveryManifest {
    let b = broker.cloned().unwrap_or_default();
    let Some(t) = trigger.cloned() else { return b };
    DeliveryManifest {
        dead_letter_sink: t.dead_letter_sink.or(b.dead_letter_sink),
        retry: t.retry.or(b.retry),
        backoff_policy: t.backoff_policy.or(b.backoff_policy),
        backoff_delay: t.backoff_delay.or(b.backoff_delay),
        timeout: t.timeout.or(b.timeout),
        retry_after_max: t.retry_after_max.or(b.retry_after_max),
        format: t.format.or(b.format),
    }
}

pub(super) fn check_delivery(d: &DeliveryManifest, path: &str, problems: &mut Problems) {
    if let Some(r) = d.retry.filter(|r| *r < 0) {
        problems.add(
            &format!("{path}.retry"),
            format!("{r} must not be negative"),
        );
    }
    if let Some(p) = d
        .backoff_policy
        .as_ref()
        .filter(|p| *p != "exponential" && *p != "linear")
    {
        problems.add(
            &format!("{path}.backoffPolicy"),
            format!("{p:?} is not exponential or linear"),
        );
    }
    for (name, v) in [
        ("backoffDelay", &d.backoff_delay),
        ("timeout", &d.timeout),
        ("retryAfterMax", &d.retry_after_max),
    ] {
        let Some(v) = v else { continue };
        let parsed = parse_iso8601(v).map_err(|e| field(&format!("{path}.{name}"), e));
        if let Some(dur) = problems.note(parsed) {
            if name == "timeout" && dur.is_zero() {
                problems.add(&format!("{path}.timeout"), "must be greater than zero");
            }
        }
    }
    if let Some(f) = d.format.as_ref().filter(|f| *f != "json" && *f != "binary") {
        problems.add(
            &format!("{path}.format"),
            format!("{f:?} is not json or binary"),
        );
    }
}

/// Resolves a Destination to a URL: `uri` as is, or a `ref` through the services map,
/// the URL template, or (for a Broker) this process's ingress; a relative `uri` next
/// to a `ref` is appended to the ref's URL.
pub fn resolve(
    dest: &Destination,
    namespace: &str,
    path: &str,
    ctx: &ResolveContext<'_>,
) -> Result<reqwest::Url, FieldError> {
    let base = match &dest.reference {
        None => {
            let Some(uri) = &dest.uri else {
                return Err(field(path, "one of uri or ref is required"));
            };
            return parse_http_url(uri).map_err(|e| field(&format!("{path}.uri"), e));
        }
        Some(r) => {
            let rpath = format!("{path}.ref");
            if r.name.is_empty() {
                return Err(field(&format!("{rpath}.name"), "required"));
            }
            if r.kind.is_empty() {
                return Err(field(&format!("{rpath}.kind"), "required (e.g. Service)"));
            }
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            let by_name = ctx
                .services
                .get(&format!("{ns}/{}", r.name))
                .or_else(|| ctx.services.get(&r.name));
            let url = if let Some(address) = local_address(&r.kind, &r.name) {
                format!("{}/{ns}/{address}", ctx.ingress_base.trim_end_matches('/'))
            } else if let Some(s) = by_name {
                match &s.target {
                    ServiceTarget::Url(url) => url.clone(),
                    // Each attempt replaces the host with a leased instance's
                    // (`TriggerRuntime.endpoints`); only a subscriber has that.
                    ServiceTarget::Command(_) if is_subscriber_path(path) => {
                        format!("http://{}.on-demand.invalid/", r.name)
                    }
                    ServiceTarget::Command(_) => {
                        return Err(field(
                            &format!("{rpath}.name"),
                            format!(
                                "service {:?} is started on demand (a command) and can only be a subscriber",
                                r.name
                            ),
                        ))
                    }
                }
            } else {
                ctx.service_url_template
                    .replace("{name}", &r.name)
                    .replace("{namespace}", ns)
                    .replace("{kind}", &r.kind.to_ascii_lowercase())
            };
            parse_http_url(&url).map_err(|e| field(&rpath, format!("resolves to {url:?}: {e}")))?
        }
    };
    match &dest.uri {
        None => Ok(base),
        Some(rel) => {
            let joined = format!(
                "{}/{}",
                base.as_str().trim_end_matches('/'),
                rel.trim_start_matches('/')
            );
            parse_http_url(&joined).map_err(|e| field(&format!("{path}.uri"), e))
        }
    }
}

/// The address name (at `{ingress}/{namespace}/`) of an addressable this mesh runs:
/// a Broker, a channel, or a flow (its first channel, as in Knative).
pub(super) fn local_address(kind: &str, name: &str) -> Option<String> {
    use super::channel::channel_address;
    use super::flows::{parallel_ingress, sequence_channel};
    match kind {
        "Broker" => Some(name.to_owned()),
        "Channel" | "InMemoryChannel" | "KafkaChannel" => Some(channel_address(name)),
        "Sequence" => Some(channel_address(&sequence_channel(name, 0))),
        "Parallel" => Some(channel_address(&parallel_ingress(name))),
        _ => None,
    }
}

/// Where a Destination may be an on-demand service: a trigger's or subscription's
/// subscriber, a sequence step, a parallel branch's subscriber or filter.
fn is_subscriber_path(path: &str) -> bool {
    path == "spec.subscriber"
        || path.starts_with("spec.steps[")
        || (path.starts_with("spec.branches[")
            && (path.ends_with(".subscriber") || path.ends_with(".filter")))
}

/// The instance pool of the on-demand service a subscriber `ref` names, if any.
fn on_demand_endpoints(
    dest: &Destination,
    namespace: &str,
    ctx: &ResolveContext<'_>,
) -> Option<std::sync::Arc<dyn cemesh_dispatcher::Endpoints>> {
    let r = dest
        .reference
        .as_ref()
        .filter(|r| local_address(&r.kind, &r.name).is_none())?;
    let ns = r.namespace.as_deref().unwrap_or(namespace);
    ctx.services
        .get(&format!("{ns}/{}", r.name))
        .or_else(|| ctx.services.get(&r.name))?
        .endpoints
        .clone()
}

/// Why a subscriber URL is refused.
#[derive(Debug, thiserror::Error)]
enum UrlError {
    #[error("{input:?} is not an absolute URL: {source}")]
    NotAbsolute {
        input: String,
        source: url::ParseError,
    },
    #[error("{input:?}: scheme {scheme:?} is not http or https")]
    Scheme { input: String, scheme: String },
}

fn parse_http_url(s: &str) -> Result<reqwest::Url, UrlError> {
    let url = reqwest::Url::parse(s).map_err(|source| UrlError::NotAbsolute {
        input: s.to_owned(),
        source,
    })?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(UrlError::Scheme {
            input: s.to_owned(),
            scheme: other.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{compile, parse_str, KReference};
    use std::path::Path;

    static NO_IMAGES: BTreeMap<String, Vec<String>> = BTreeMap::new();

    fn ctx<'a>(services: &'a BTreeMap<String, ServiceEntry>) -> ResolveContext<'a> {
        ResolveContext {
            ingress_base: "http://127.0.0.1:8080".into(),
            service_url_template: crate::config::DEFAULT_SERVICE_TEMPLATE,
            services,
            images: &NO_IMAGES,
            default_channel: ChannelKind::Memory,
            default_max_body: 1 << 20,
        }
    }

    #[test]
    fn refs_resolve_through_services_template_and_brokers() {
        let mut services = BTreeMap::new();
        services.insert(
            "display".to_string(),
            ServiceEntry::url("http://127.0.0.1:9999"),
        );
        let c = ctx(&services);
        let dest = |kind: &str, name: &str, uri: Option<&str>| Destination {
            reference: Some(KReference {
                kind: kind.into(),
                name: name.into(),
                ..Default::default()
            }),
            uri: uri.map(Into::into),
            ..Default::default()
        };
        assert_eq!(
            resolve(&dest("Service", "display", None), "ns", "p", &c)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9999/"
        );
        assert_eq!(
            resolve(&dest("Service", "other", Some("/hook")), "ns", "p", &c)
                .unwrap()
                .as_str(),
            "http://other.ns.svc.cluster.local/hook"
        );
        assert_eq!(
            resolve(&dest("Broker", "b2", None), "ns", "p", &c)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/ns/b2"
        );
        let err = resolve(&Destination::default(), "ns", "spec.subscriber", &c).unwrap_err();
        assert_eq!(err.0, "spec.subscriber");
        let err = resolve(
            &Destination {
                uri: Some("/relative".into()),
                ..Default::default()
            },
            "ns",
            "spec.subscriber",
            &c,
        )
        .unwrap_err();
        assert_eq!(err.0, "spec.subscriber.uri");
    }

    #[test]
    fn an_on_demand_service_is_a_subscriber_only() {
        let mut services = BTreeMap::new();
        let entry: ServiceEntry =
            crate::manifest::parser::typed("command: [python3, app.py]", "a test").expect("entry");
        services.insert("thumbs".to_string(), entry);
        let c = ctx(&services);
        let dest = Destination {
            reference: Some(KReference {
                kind: "Service".into(),
                name: "thumbs".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let url = resolve(&dest, "ns", "spec.subscriber", &c).unwrap();
        assert_eq!(url.as_str(), "http://thumbs.on-demand.invalid/");
        let err = resolve(&dest, "ns", "spec.delivery.deadLetterSink", &c).unwrap_err();
        assert_eq!(err.0, "spec.delivery.deadLetterSink.ref.name");
        assert!(err.1.contains("can only be a subscriber"), "{}", err.1);
        // Without a running pool (validation only) nothing is leased.
        assert!(on_demand_endpoints(&dest, "ns", &c).is_none());
    }

    fn problems_of(text: &str) -> Vec<String> {
        let (resources, errors) = parse_str(Path::new("f.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let services = BTreeMap::new();
        compile(&resources, &ctx(&services))
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn max_lag_and_breaker_annotations_are_read_and_checked() {
        let text = |anns: &str, backlog: &str| {
            format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations: {{cemesh.dev/max-backlog: \"{backlog}\"}}\n---\n\
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations: {{{anns}}}\nspec:\n  broker: b\n  subscriber: {{uri: 'http://x'}}\n")
        };
        let compiled = |anns: &str, backlog: &str| {
            let (resources, errors) = parse_str(Path::new("f.yaml"), &text(anns, backlog));
            assert!(errors.is_empty(), "{errors:?}");
            let services = BTreeMap::new();
            compile(&resources, &ctx(&services))
        };
        let runtime = |anns: &str| {
            let d = compiled(anns, "1000");
            assert!(d.problems.is_empty(), "{:?}", d.problems);
            d.triggers.into_values().next().unwrap().runtime
        };
        // By default 90 % of the broker's cap; records, an age, both, or none.
        assert_eq!(
            runtime("").max_lag,
            MaxLag {
                records: Some(900),
                age: None,
                pause: false,
            }
        );
        let paused = runtime("cemesh.dev/max-lag: '300', cemesh.dev/max-lag-action: pause").max_lag;
        assert!(paused.pause);
        assert_eq!(paused.to_string(), "300 records, then pause");
        assert!(
            runtime("cemesh.dev/max-lag-action: pause").max_lag.pause,
            "the default limit"
        );
        assert_eq!(
            runtime("cemesh.dev/max-lag: '300'").max_lag.records,
            Some(300)
        );
        let both = runtime("cemesh.dev/max-lag: '300, 10m'").max_lag;
        assert_eq!(
            (both.records, both.age),
            (Some(300), Some(Duration::from_secs(600)))
        );
        assert!(!runtime("cemesh.dev/max-lag: none").max_lag.is_set());
        let b = runtime("cemesh.dev/breaker-failures: '3', cemesh.dev/breaker-window: 0s, cemesh.dev/breaker-probe-delay: 200ms, cemesh.dev/breaker-probe-max: 2s").delivery.breaker;
        assert_eq!(
            (b.failures, b.window, b.probe_delay, b.probe_max),
            (
                3,
                Duration::ZERO,
                Duration::from_millis(200),
                Duration::from_secs(2)
            )
        );
        assert_eq!(
            runtime("cemesh.dev/breaker-failures: 'off'")
                .delivery
                .breaker
                .failures,
            0
        );
        assert_eq!(
            runtime("").delivery.breaker,
            cemesh_dispatcher::BreakerSpec::default()
        );

        let d = compiled("cemesh.dev/max-lag: '0', cemesh.dev/breaker-failures: often, cemesh.dev/breaker-probe-delay: 0s", "1000");
        let msgs: Vec<String> = d.problems.iter().map(ToString::to_string).collect();
        for needle in [
            "metadata.annotations.cemesh.dev/max-lag: \"0\" in \"0\" is not a positive number of records",
            "metadata.annotations.cemesh.dev/breaker-failures: \"often\" is not a whole number",
            "metadata.annotations.cemesh.dev/breaker-probe-delay: must be longer than zero",
        ] {
            assert!(msgs.iter().any(|m| m.contains(needle)), "{needle} in {msgs:#?}");
        }
        for (anns, needle) in [
            (
                "cemesh.dev/max-lag-action: stop",
                "\"stop\" is not dead-letter or pause",
            ),
            (
                "cemesh.dev/max-lag: none, cemesh.dev/max-lag-action: pause",
                "max-lag-action: pause needs a max-lag",
            ),
        ] {
            let d = compiled(anns, "1000");
            let msgs: Vec<String> = d.problems.iter().map(ToString::to_string).collect();
            assert!(
                msgs.iter().any(|m| m.contains(needle)),
                "{needle} in {msgs:#?}"
            );
        }
    }

    #[test]
    fn unknown_cemesh_annotations_are_refused_with_a_suggestion() {
        let problems = problems_of("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations:\n    cemesh.dev/owner: api\n    cemesh.dev/retension: 7d\n    other.io/x: y\n---\n\
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    cemesh.dev/paralelism: \"4\"\n    cemesh.dev/zzzzzzzzzzzz: x\nspec:\n  broker: b\n  subscriber: {uri: 'http://x'}\n");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].ends_with("metadata.annotations.cemesh.dev/retension: unknown cemesh annotation; did you mean cemesh.dev/retention?"), "{}", problems[0]);
        assert!(problems[1].ends_with("metadata.annotations.cemesh.dev/paralelism: unknown cemesh annotation; did you mean cemesh.dev/parallelism?"), "{}", problems[1]);
        assert!(
            problems[2].contains("unknown cemesh annotation; known: cemesh.dev/parallelism, "),
            "{}",
            problems[2]
        );
        assert!(!problems[2].contains("cemesh.dev/owner"), "{}", problems[2]);
    }

    #[test]
    fn a_trigger_on_an_invalid_broker_says_why() {
        let problems = problems_of("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations: {cemesh.dev/channel: disk}\n---\n\
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: b\n  subscriber: {uri: 'http://x'}\n");
        assert!(problems[1].ends_with("spec.broker: broker default/b is invalid: metadata.annotations.cemesh.dev/channel: \"disk\" is not a channel; expected memory, sled or kafka"), "{problems:#?}");
    }

    #[test]
    fn broker_class_and_spec_config_are_noted() {
        let (resources, _) = parse_str(Path::new("f.yaml"), "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations: {eventing.knative.dev/broker.class: Kafka}\nspec:\n  config: {apiVersion: v1, kind: ConfigMap, name: kafka-broker-config}\n");
        let Resource::Broker(b) = &resources[0].value else {
            panic!("a broker")
        };
        let notes = b.notes();
        assert_eq!(notes.len(), 2);
        assert!(notes[0]
            .message
            .contains("is \"Kafka\"; cemesh runs this broker itself"));
        assert!(notes[1]
            .message
            .starts_with("spec.config (ConfigMap kafka-broker-config) is not read"));
    }

    #[test]
    fn every_problem_of_a_resource_is_reported() {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations:\n    cemesh.dev/channel: disk\n    cemesh.dev/max-backlog: \"0\"\n---\n\
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    cemesh.dev/parallelism: \"0\"\n    cemesh.dev/start: middle\nspec:\n  broker: nope\n  subscriber: {uri: 'http://x'}\n  filter: {attributes: {Type: x}}\n  delivery: {backoffDelay: soon, retry: -1}\n";
        let (resources, errors) = parse_str(Path::new("f.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let services = BTreeMap::new();
        let d = compile(&resources, &ctx(&services));
        let msgs: Vec<String> = d.problems.iter().map(|p| p.to_string()).collect();
        for needle in [
            "(Broker default/b): metadata.annotations.cemesh.dev/channel",
            "(Broker default/b): metadata.annotations.cemesh.dev/max-backlog",
            "(Trigger default/t): spec.broker",
            "(Trigger default/t): spec.filter.attributes.Type",
            "(Trigger default/t): spec.delivery.retry",
            "(Trigger default/t): spec.delivery.backoffDelay",
            "(Trigger default/t): metadata.annotations.cemesh.dev/parallelism",
            "(Trigger default/t): metadata.annotations.cemesh.dev/start",
        ] {
            assert!(
                msgs.iter().any(|m| m.contains(needle)),
                "{needle} in {msgs:#?}"
            );
        }
        assert!(d.brokers.is_empty() && d.triggers.is_empty());
        let retry = msgs
            .iter()
            .filter(|m| m.contains("spec.delivery.retry"))
            .count();
        assert_eq!(retry, 1, "each problem once: {msgs:#?}");
    }

    #[test]
    fn invalid_trigger_is_reported_and_others_compile() {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n---\n\
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: bad}\nspec:\n  broker: b\n  subscriber: {uri: 'http://x'}\n  filter: {attributes: {Type: x}}\n---\n\
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: good}\nspec:\n  broker: b\n  subscriber: {uri: 'http://x'}\n---\n\
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: orphan}\nspec:\n  broker: nope\n  subscriber: {uri: 'http://x'}\n";
        let (resources, errors) = parse_str(Path::new("f.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let services = BTreeMap::new();
        let d = compile(&resources, &ctx(&services));
        assert_eq!(d.triggers.len(), 1);
        assert_eq!(d.problems.len(), 2);
        let msgs: Vec<String> = d.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            msgs[0].contains("(Trigger default/bad): spec.filter.attributes.Type: attribute name"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].contains("spec.broker: broker default/nope is not defined"),
            "{msgs:?}"
        );
    }

    #[test]
    fn delivery_merges_field_by_field() {
        let b = DeliveryManifest {
            retry: Some(3),
            timeout: Some("PT5S".into()),
            ..Default::default()
        };
        let t = DeliveryManifest {
            retry: Some(1),
            ..Default::default()
        };
        let m = merge_delivery(Some(&b), Some(&t));
        assert_eq!(m.retry, Some(1));
        assert_eq!(m.timeout.as_deref(), Some("PT5S"));
    }
}
