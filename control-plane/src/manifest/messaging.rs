//! Channels, subscriptions and flows to what the mesh runs: each channel is a
//! broker-like address on the storage its kind (or template) chooses, each
//! subscription a trigger-like loop on it matching every event, with its reply going
//! where `spec.reply` says. A flow is compiled whole: any problem leaves all of it
//! out, since half a sequence is not one.

use std::collections::BTreeMap;

use cemesh_channels::StartAt;
use cemesh_dispatcher::{ReplyTo, TriggerKey};
use cemesh_ingress::BrokerKey;
use serde_json::{json, Value as Json};

use super::broker::{
    CHANNEL_ANNOTATION, KAFKA_PARTITIONS_ANNOTATION as PARTITIONS_ANNOTATION,
    KAFKA_REPLICATION_ANNOTATION as REPLICATION_ANNOTATION, RETENTION_ANNOTATION,
};
use super::channel::{
    channel_address, subscription_key, ChannelTemplate, SubscriptionManifest, MESSAGING_V1,
    MESSAGING_V1BETA1,
};
use super::flows::{
    parallel_branch, parallel_ingress, sequence_channel, ParallelManifest, SequenceManifest,
};
use super::kinds::Kind;
use super::trigger::TRIGGER_ANNOTATIONS;
use super::validate::{
    broker_desired, check_delivery, field, local_address, resolve, subscriber_runtime, AddressKind,
    FieldError, Problems, Subscribing,
};
use super::{
    BrokerDesired, DeliveryManifest, Desired, Destination, Located, Metadata, ResolveContext,
    Resource, TriggerDesired,
};
use crate::config::ChannelKind;
use crate::duration::parse_iso8601;

/// The `cemesh.dev/` annotations a channel takes: a broker's, except the channel
/// kind, which its kind or template chooses.
fn channel_annotations() -> Vec<&'static str> {
    super::broker::BROKER_ANNOTATIONS
        .iter()
        .copied()
        .filter(|a| *a != CHANNEL_ANNOTATION)
        .collect()
}

/// A flow's (its channels' and its subscriptions'), and a PingSource's (its channel's
/// and its delivery's).
pub(super) fn channel_and_trigger_annotations() -> Vec<&'static str> {
    let mut all = channel_annotations();
    all.extend(TRIGGER_ANNOTATIONS.iter().copied());
    all.sort_unstable();
    all.dedup();
    all
}

/// The storage behind a channel of `kind` (`Channel` with its template), and the
/// annotations that shape a Kafka topic; problems at `at`.
fn backing(
    kind: &str,
    template: Option<&ChannelTemplate>,
    spec: &super::channel::ChannelSpec,
    at: &str,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> (ChannelKind, BTreeMap<String, String>) {
    let mut kafka = BTreeMap::new();
    let mut kafka_fields = |partitions: Option<i64>,
                            replication: Option<i64>,
                            retention: Option<&str>,
                            at: &str,
                            problems: &mut Problems| {
        for (name, v, a) in [
            ("numPartitions", partitions, PARTITIONS_ANNOTATION),
            ("replicationFactor", replication, REPLICATION_ANNOTATION),
        ] {
            match v {
                Some(n) if (1..=65535).contains(&n) => {
                    kafka.insert(a.to_owned(), n.to_string());
                }
                Some(n) => problems.add(
                    &format!("{at}.{name}"),
                    format!("{n} is not a whole number from 1 to 65535"),
                ),
                None => {}
            }
        }
        if let Some(r) = retention {
            match parse_iso8601(r) {
                Ok(d) => {
                    kafka.insert(RETENTION_ANNOTATION.to_owned(), format!("{}s", d.as_secs()));
                }
                Err(e) => problems.add(&format!("{at}.retentionDuration"), e),
            }
        }
    };
    let not_kafka = |problems: &mut Problems, at: &str| {
        for (name, set) in [
            ("numPartitions", spec.num_partitions.is_some()),
            ("replicationFactor", spec.replication_factor.is_some()),
            ("retentionDuration", spec.retention_duration.is_some()),
        ] {
            if set {
                problems.add(
                    &format!("{at}.{name}"),
                    format!("only a KafkaChannel has {name}"),
                );
            }
        }
    };
    let channel = match kind {
        "InMemoryChannel" => {
            not_kafka(problems, "spec");
            ChannelKind::Memory
        }
        "KafkaChannel" => {
            kafka_fields(
                spec.num_partitions,
                spec.replication_factor,
                spec.retention_duration.as_deref(),
                "spec",
                problems,
            );
            ChannelKind::Kafka
        }
        _ => {
            not_kafka(problems, "spec");
            match template {
                None => ctx.default_channel,
                Some(t) => {
                    let at = format!("{at}.channelTemplate");
                    let inner = t
                        .spec
                        .as_ref()
                        .and_then(|v| serde_json::to_value(v).ok())
                        .unwrap_or(Json::Null);
                    let int = |k: &str| inner.get(k).and_then(Json::as_i64);
                    let expected = match t.kind.as_str() {
                        // The generic kind: the default channel.
                        "Channel" => Some((MESSAGING_V1, ctx.default_channel)),
                        "InMemoryChannel" => Some((MESSAGING_V1, ChannelKind::Memory)),
                        "KafkaChannel" => Some((MESSAGING_V1BETA1, ChannelKind::Kafka)),
                        _ => None,
                    };
                    match expected {
                        None => {
                            problems.add(
                                &format!("{at}.kind"),
                                format!("{:?} is not a channel kind cemesh runs; use InMemoryChannel, KafkaChannel or Channel (the default)", t.kind),
                            );
                            ctx.default_channel
                        }
                        Some((api, c)) => {
                            if !t.api_version.is_empty() && t.api_version != api {
                                problems.add(
                                    &format!("{at}.apiVersion"),
                                    format!(
                                        "{} {:?} is not supported: cemesh runs {} as {api}",
                                        t.kind, t.api_version, t.kind
                                    ),
                                );
                            }
                            if c == ChannelKind::Kafka {
                                kafka_fields(
                                    int("numPartitions"),
                                    int("replicationFactor"),
                                    inner.get("retentionDuration").and_then(Json::as_str),
                                    &format!("{at}.spec"),
                                    problems,
                                );
                            }
                            c
                        }
                    }
                }
            }
        }
    };
    (channel, kafka)
}

/// A channel at `ns/{name}-kn-channel`.
#[allow(clippy::too_many_arguments)]
fn channel_desired(
    meta: &Metadata,
    name: &str,
    kind: &str,
    template: Option<&ChannelTemplate>,
    spec: &super::channel::ChannelSpec,
    at: &str,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> BrokerDesired {
    if meta.annotations.contains_key(CHANNEL_ANNOTATION) {
        problems.add(
            &format!("metadata.annotations.{CHANNEL_ANNOTATION}"),
            "a channel's kind (or channelTemplate) chooses its storage",
        );
    }
    let (channel, kafka) = backing(kind, template, spec, at, ctx, problems);
    let mut meta = meta.clone();
    meta.annotations.extend(kafka);
    let key = BrokerKey::new(meta.namespace(), channel_address(name));
    broker_desired(
        key,
        AddressKind::Channel,
        channel,
        &meta,
        spec.delivery.clone(),
        ctx,
        problems,
    )
}

/// Compiles every channel, subscription and flow into `desired`, after the brokers
/// (replies may go to them) and before status is read.
pub(super) fn compile_messaging(
    resources: &[Located<Resource>],
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) {
    let channel_known = channel_annotations();
    for located in resources {
        let Resource::Channel(c) = &located.value else {
            continue;
        };
        let label = format!("{} {}/{}", c.kind, c.metadata.namespace(), c.metadata.name);
        let mut problems = Problems::for_resource(&c.metadata, &channel_known);
        if c.kind != "Channel" && c.spec.channel_template.is_some() {
            problems.add(
                "spec.channelTemplate",
                format!("only a Channel has a channelTemplate, not a {}", c.kind),
            );
        }
        let d = channel_desired(
            &c.metadata,
            &c.metadata.name,
            &c.kind,
            c.spec.channel_template.as_ref(),
            &c.spec,
            "spec",
            ctx,
            &mut problems,
        );
        desired.status.insert(
            (
                Kind::of_channel(&c.kind),
                c.metadata.namespace().to_owned(),
                c.metadata.name.clone(),
            ),
            channel_status(&d, ctx),
        );
        match problems.into_result(d) {
            Ok(d) => insert_channel(located, &label, d, desired),
            Err(problems) => push(located, &label, problems, desired),
        }
    }
    for located in resources {
        match &located.value {
            Resource::Sequence(s) => compile_sequence(located, s, ctx, desired),
            Resource::Parallel(p) => compile_parallel(located, p, ctx, desired),
            _ => {}
        }
    }
    for located in resources {
        let Resource::Subscription(s) = &located.value else {
            continue;
        };
        let label = format!(
            "Subscription {}/{}",
            s.metadata.namespace(),
            s.metadata.name
        );
        match compile_subscription(s, desired, ctx) {
            Ok((t, status)) => {
                desired.status.insert(
                    (
                        Kind::Subscription,
                        s.metadata.namespace().to_owned(),
                        s.metadata.name.clone(),
                    ),
                    status,
                );
                insert_trigger(located, &label, t, desired);
            }
            Err(problems) => push(located, &label, problems, desired),
        }
    }
}

/// What a channel's status says beyond Ready: its address and, for a memory
/// channel, that it is not durable.
fn channel_status(d: &BrokerDesired, ctx: &ResolveContext<'_>) -> Json {
    let mut st = json!({
        "address": {"url": address_url(ctx, &d.key.namespace, &d.key.name)},
    });
    if d.channel == ChannelKind::Memory {
        st["durable"] = json!(false);
    }
    st
}

fn address_url(ctx: &ResolveContext<'_>, ns: &str, address: &str) -> String {
    format!("{}/{ns}/{address}", ctx.ingress_base.trim_end_matches('/'))
}

fn push(
    located: &Located<Resource>,
    label: &str,
    problems: Vec<FieldError>,
    desired: &mut Desired,
) {
    for (path, msg) in problems {
        desired
            .problems
            .push(located.error(label.to_owned(), path, msg));
    }
}

fn insert_channel(
    located: &Located<Resource>,
    label: &str,
    d: BrokerDesired,
    desired: &mut Desired,
) {
    if desired.brokers.contains_key(&d.key) {
        desired.problems.push(located.error(
            label.to_owned(),
            "metadata.name",
            format!("address {} is defined more than once", d.key),
        ));
    } else {
        desired.brokers.insert(d.key.clone(), d);
    }
}

fn insert_trigger(
    located: &Located<Resource>,
    label: &str,
    t: TriggerDesired,
    desired: &mut Desired,
) {
    if desired.triggers.contains_key(&t.runtime.key) {
        desired.problems.push(located.error(
            label.to_owned(),
            "metadata.name",
            "defined more than once",
        ));
    } else {
        desired.triggers.insert(t.runtime.key.clone(), t);
    }
}

/// Where replies to `dest` go: appended to an addressable this mesh runs (it must
/// be defined), or sent to its URL.
fn reply_to(
    dest: Option<&Destination>,
    ns: &str,
    at: &str,
    brokers: &BTreeMap<BrokerKey, BrokerDesired>,
    ctx: &ResolveContext<'_>,
) -> Result<ReplyTo, FieldError> {
    let Some(dest) = dest else {
        return Ok(ReplyTo::Drop);
    };
    if let (Some(r), None) = (&dest.reference, &dest.uri) {
        if let Some(address) = local_address(&r.kind, &r.name) {
            let namespace = r.namespace.clone().unwrap_or_else(|| ns.to_owned());
            let key = BrokerKey::new(&namespace, &address);
            if !brokers.contains_key(&key) {
                return Err(field(
                    &format!("{at}.ref"),
                    format!(
                        "{} {namespace}/{} is not defined (or is invalid)",
                        r.kind, r.name
                    ),
                ));
            }
            return Ok(ReplyTo::Local {
                namespace,
                name: address,
            });
        }
    }
    let url = resolve(dest, ns, at, ctx)?;
    let mut problems = Problems::default();
    let auth = super::validate::delivery_auth(&Metadata::default(), dest, at, &mut problems);
    match problems.0.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(ReplyTo::Url { url, auth }),
    }
}

fn reply_uri(reply: &ReplyTo, ctx: &ResolveContext<'_>) -> Json {
    match reply {
        ReplyTo::Local { namespace, name } => json!(address_url(ctx, namespace, name)),
        ReplyTo::Url { url, .. } => json!(url.as_str()),
        ReplyTo::Broker | ReplyTo::Drop => Json::Null,
    }
}

/// One subscription of a channel, and its `physicalSubscription`.
struct Sub<'a> {
    meta: &'a Metadata,
    /// What its trigger is keyed by.
    key_name: String,
    channel: &'a BrokerDesired,
    subscriber: &'a Destination,
    subscriber_path: String,
    /// Its own delivery; without one the channel's applies, whole.
    delivery: Option<&'a DeliveryManifest>,
    delivery_path: String,
    reply: ReplyTo,
    /// A flow's hops start at the channel's first event, so none is lost between a
    /// channel's creation and its subscription's; a Subscription starts as its
    /// annotation says.
    flow: bool,
}

fn compile_sub(
    s: Sub<'_>,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> Option<(TriggerDesired, Json)> {
    if let Some(d) = s.delivery {
        check_delivery(d, &s.delivery_path, problems);
    }
    let delivery = s
        .delivery
        .or(s.channel.delivery.as_ref())
        .cloned()
        .unwrap_or_default();
    let reply_uri = reply_uri(&s.reply, ctx);
    let (runtime, start) = subscriber_runtime(
        Subscribing {
            meta: s.meta,
            key: TriggerKey::new(s.meta.namespace(), &s.key_name),
            broker: s.channel.key.name.clone(),
            broker_desired: Some(s.channel),
            subscriber: s.subscriber,
            subscriber_path: &s.subscriber_path,
            delivery: &delivery,
            delivery_path: &s.delivery_path,
            reply: s.reply,
        },
        ctx,
        problems,
    )?;
    let start = if s.flow { StartAt::Earliest } else { start };
    // Knative's `physicalSubscription`: the URIs as resolved.
    let status = json!({
        "physicalSubscription": {
            "subscriberUri": runtime.subscriber.as_str(),
            "replyUri": reply_uri,
            "deadLetterSinkUri": runtime.delivery.dead_letter_sink.as_ref().map(|u| u.as_str()),
        }
    });
    Some((TriggerDesired { runtime, start }, status))
}

fn compile_subscription(
    s: &SubscriptionManifest,
    desired: &Desired,
    ctx: &ResolveContext<'_>,
) -> Result<(TriggerDesired, Json), Vec<FieldError>> {
    let mut problems = Problems::for_resource(&s.metadata, TRIGGER_ANNOTATIONS);
    let ns = s.metadata.namespace();
    let c = &s.spec.channel;
    let mut channel = None;
    if c.name.is_empty() {
        problems.add("spec.channel.name", "required: the channel to subscribe to");
    } else if !matches!(
        c.kind.as_str(),
        "Channel" | "InMemoryChannel" | "KafkaChannel"
    ) {
        problems.add(
            "spec.channel.kind",
            format!(
                "{:?} is not a channel kind; use Channel, InMemoryChannel or KafkaChannel",
                c.kind
            ),
        );
    } else if c.namespace.as_deref().is_some_and(|n| n != ns) {
        problems.add(
            "spec.channel.namespace",
            "the channel must be in the subscription's namespace",
        );
    } else {
        let key = BrokerKey::new(ns, channel_address(&c.name));
        channel = desired
            .brokers
            .get(&key)
            .filter(|b| b.kind == AddressKind::Channel);
        if channel.is_none() {
            problems.add(
                "spec.channel",
                format!("{} {ns}/{} is not defined (or is invalid)", c.kind, c.name),
            );
        }
    }
    let subscriber = s.spec.subscriber.as_ref();
    if subscriber.is_none() {
        problems.add("spec.subscriber", "required: where the channel's events go");
    }
    let reply = problems.note(reply_to(
        s.spec.reply.as_ref(),
        ns,
        "spec.reply",
        &desired.brokers,
        ctx,
    ));
    let (Some(channel), Some(subscriber), Some(reply)) = (channel, subscriber, reply) else {
        return Err(problems.0);
    };
    let compiled = compile_sub(
        Sub {
            meta: &s.metadata,
            key_name: subscription_key(&s.metadata.name),
            channel,
            subscriber,
            subscriber_path: "spec.subscriber".into(),
            delivery: s.spec.delivery.as_ref(),
            delivery_path: "spec.delivery".into(),
            reply,
            flow: false,
        },
        ctx,
        &mut problems,
    );
    match compiled {
        Some(c) => problems.into_result(c),
        None => Err(problems.0),
    }
}

/// What a flow is made of, added to `desired` only when all of it is valid.
#[derive(Default)]
struct Parts {
    channels: Vec<BrokerDesired>,
    triggers: Vec<TriggerDesired>,
}

/// A channel a flow makes, from its `channelTemplate` (whose problems, the same for
/// every channel, are noted once: `Problems` keeps one per field).
fn flow_channel(
    meta: &Metadata,
    name: &str,
    template: Option<&ChannelTemplate>,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> BrokerDesired {
    let spec = super::channel::ChannelSpec::default();
    channel_desired(
        meta, name, "Channel", template, &spec, "spec", ctx, problems,
    )
}

/// What a flow's replies may go to: every address defined, and its own channels.
fn with_channels<'a>(
    brokers: &BTreeMap<BrokerKey, BrokerDesired>,
    channels: impl Iterator<Item = &'a BrokerDesired>,
) -> BTreeMap<BrokerKey, BrokerDesired> {
    let mut known = brokers.clone();
    known.extend(channels.map(|c| (c.key.clone(), c.clone())));
    known
}

fn compile_sequence(
    located: &Located<Resource>,
    s: &SequenceManifest,
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) {
    let meta = &s.metadata;
    let ns = meta.namespace();
    let label = format!("Sequence {ns}/{}", meta.name);
    let mut problems = Problems::for_resource(meta, &channel_and_trigger_annotations());
    if s.spec.steps.is_empty() {
        problems.add("spec.steps", "at least one step is required");
    }
    let template = s.spec.channel_template.as_ref();
    let mut parts = Parts::default();
    for i in 0..s.spec.steps.len() {
        parts.channels.push(flow_channel(
            meta,
            &sequence_channel(&meta.name, i),
            template,
            ctx,
            &mut problems,
        ));
    }
    // The last step's reply may go to anything defined, the flow's own channels too.
    let known = with_channels(&desired.brokers, parts.channels.iter());
    let last = problems.note(reply_to(
        s.spec.reply.as_ref(),
        ns,
        "spec.reply",
        &known,
        ctx,
    ));
    let mut statuses = Vec::new();
    let destinations: Vec<Destination> = s.spec.steps.iter().map(|st| st.destination()).collect();
    for (i, step) in s.spec.steps.iter().enumerate() {
        let reply = match parts.channels.get(i + 1) {
            Some(next) => ReplyTo::Local {
                namespace: ns.to_owned(),
                name: next.key.name.clone(),
            },
            None => match &last {
                Some(r) => r.clone(),
                None => continue,
            },
        };
        let compiled = compile_sub(
            Sub {
                meta,
                key_name: sequence_channel(&meta.name, i),
                channel: &parts.channels[i],
                subscriber: &destinations[i],
                subscriber_path: format!("spec.steps[{i}]"),
                delivery: step.delivery.as_ref(),
                delivery_path: format!("spec.steps[{i}].delivery"),
                reply,
                flow: true,
            },
            ctx,
            &mut problems,
        );
        if let Some((t, st)) = compiled {
            statuses.push(json!({
                "subscription": {"apiVersion": MESSAGING_V1, "kind": "Subscription", "name": sequence_channel(&meta.name, i), "namespace": ns},
                "physicalSubscription": st["physicalSubscription"],
            }));
            parts.triggers.push(t);
        }
    }
    let status = json!({
        "address": {"url": address_url(ctx, ns, &channel_address(&sequence_channel(&meta.name, 0)))},
        "channelStatuses": parts.channels.iter().map(|c| json!({
            "channel": {"apiVersion": MESSAGING_V1, "kind": "Channel", "name": c.key.name.trim_end_matches(super::channel::CHANNEL_SUFFIX), "namespace": ns},
            "address": address_url(ctx, ns, &c.key.name),
        })).collect::<Vec<_>>(),
        "subscriptionStatuses": statuses,
    });
    desired
        .status
        .insert((Kind::Sequence, ns.to_owned(), meta.name.clone()), status);
    finish_flow(located, &label, problems, parts, desired);
}

fn compile_parallel(
    located: &Located<Resource>,
    p: &ParallelManifest,
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) {
    let meta = &p.metadata;
    let ns = meta.namespace();
    let label = format!("Parallel {ns}/{}", meta.name);
    let mut problems = Problems::for_resource(meta, &channel_and_trigger_annotations());
    if p.spec.branches.is_empty() {
        problems.add("spec.branches", "at least one branch is required");
    }
    let template = p.spec.channel_template.as_ref();
    let mut parts = Parts::default();
    let ingress = flow_channel(
        meta,
        &parallel_ingress(&meta.name),
        template,
        ctx,
        &mut problems,
    );
    let default_reply = p.spec.reply.as_ref();
    let mut branch_statuses = Vec::new();
    let mut branch_channels = Vec::new();
    for (i, b) in p.spec.branches.iter().enumerate() {
        let channel = b.filter.as_ref().map(|_| {
            flow_channel(
                meta,
                &parallel_branch(&meta.name, i),
                template,
                ctx,
                &mut problems,
            )
        });
        branch_channels.push(channel);
    }
    let known = with_channels(
        &desired.brokers,
        std::iter::once(&ingress).chain(branch_channels.iter().flatten()),
    );
    for (i, b) in p.spec.branches.iter().enumerate() {
        let at = format!("spec.branches[{i}]");
        let (reply_dest, reply_at) = match &b.reply {
            Some(r) => (Some(r), format!("{at}.reply")),
            None => (default_reply, "spec.reply".to_owned()),
        };
        let Some(reply) = problems.note(reply_to(reply_dest, ns, &reply_at, &known, ctx)) else {
            continue;
        };
        let mut status = json!({});
        // The subscriber reads the branch's channel behind a filter, else the
        // parallel's own.
        let reads = match (&b.filter, &branch_channels[i]) {
            (Some(filter), Some(channel)) => {
                let compiled = compile_sub(
                    Sub {
                        meta,
                        key_name: format!("{}-kn-parallel-filter-{i}", meta.name),
                        channel: &ingress,
                        subscriber: filter,
                        subscriber_path: format!("{at}.filter"),
                        delivery: b.delivery.as_ref(),
                        delivery_path: format!("{at}.delivery"),
                        reply: ReplyTo::Local {
                            namespace: ns.to_owned(),
                            name: channel.key.name.clone(),
                        },
                        flow: true,
                    },
                    ctx,
                    &mut problems,
                );
                if let Some((t, st)) = compiled {
                    status["filterSubscriptionStatus"] = st;
                    parts.triggers.push(t);
                }
                channel
            }
            _ => &ingress,
        };
        let compiled = compile_sub(
            Sub {
                meta,
                key_name: parallel_branch(&meta.name, i),
                channel: reads,
                subscriber: &b.subscriber,
                subscriber_path: format!("{at}.subscriber"),
                delivery: b.delivery.as_ref(),
                delivery_path: format!("{at}.delivery"),
                reply,
                flow: true,
            },
            ctx,
            &mut problems,
        );
        if let Some((t, st)) = compiled {
            status["subscriptionStatus"] = st;
            parts.triggers.push(t);
        }
        branch_statuses.push(status);
    }
    parts.channels.push(ingress);
    parts.channels.extend(branch_channels.into_iter().flatten());
    let status = json!({
        "address": {"url": address_url(ctx, ns, &channel_address(&parallel_ingress(&meta.name)))},
        "ingressChannelStatus": {"channel": {"apiVersion": MESSAGING_V1, "kind": "Channel", "name": parallel_ingress(&meta.name), "namespace": ns}},
        "branchStatuses": branch_statuses,
    });
    desired
        .status
        .insert((Kind::Parallel, ns.to_owned(), meta.name.clone()), status);
    finish_flow(located, &label, problems, parts, desired);
}

fn finish_flow(
    located: &Located<Resource>,
    label: &str,
    problems: Problems,
    parts: Parts,
    desired: &mut Desired,
) {
    if !problems.0.is_empty() {
        return push(located, label, problems.0, desired);
    }
    let clash = parts
        .channels
        .iter()
        .find(|c| desired.brokers.contains_key(&c.key))
        .map(|c| c.key.to_string())
        .or_else(|| {
            parts
                .triggers
                .iter()
                .find(|t| desired.triggers.contains_key(&t.runtime.key))
                .map(|t| t.runtime.key.to_string())
        });
    if let Some(clash) = clash {
        desired.problems.push(located.error(
            label.to_owned(),
            "metadata.name",
            format!("{clash} is already defined by another resource"),
        ));
        return;
    }
    for c in parts.channels {
        desired.brokers.insert(c.key.clone(), c);
    }
    for t in parts.triggers {
        desired.triggers.insert(t.runtime.key.clone(), t);
    }
}

/// Every address a resource would run, with the resource that owns it (for
/// `EventPolicy` selection).
pub(super) fn address_owners(
    resources: &[Located<Resource>],
) -> BTreeMap<BrokerKey, super::access::Owner> {
    use super::access::Owner;
    let mut out = BTreeMap::new();
    for l in resources {
        let meta = l.value.metadata();
        let ns = meta.namespace();
        let owner = |api_version, kind| Owner {
            api_version,
            kind,
            name: meta.name.clone(),
            labels: meta.labels.clone(),
        };
        let (o, addresses) = match &l.value {
            Resource::Broker(_) => (owner(super::EVENTING_V1, "Broker"), vec![meta.name.clone()]),
            Resource::Channel(c) => {
                let kind = match c.kind.as_str() {
                    "InMemoryChannel" => "InMemoryChannel",
                    "KafkaChannel" => "KafkaChannel",
                    _ => "Channel",
                };
                let api = if kind == "KafkaChannel" {
                    MESSAGING_V1BETA1
                } else {
                    MESSAGING_V1
                };
                (owner(api, kind), vec![channel_address(&meta.name)])
            }
            Resource::Sequence(s) => (
                owner(super::flows::FLOWS_V1, "Sequence"),
                (0..s.spec.steps.len())
                    .map(|i| channel_address(&sequence_channel(&meta.name, i)))
                    .collect(),
            ),
            Resource::Parallel(p) => {
                let mut a = vec![channel_address(&parallel_ingress(&meta.name))];
                a.extend(
                    (0..p.spec.branches.len())
                        .map(|i| channel_address(&parallel_branch(&meta.name, i))),
                );
                (owner(super::flows::FLOWS_V1, "Parallel"), a)
            }
            _ => continue,
        };
        for address in addresses {
            out.insert(BrokerKey::new(ns, address), o.clone());
        }
    }
    out
}
