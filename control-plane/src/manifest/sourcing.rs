//! Compiles PingSources, ContainerSources, SinkBindings and KafkaSources
//! (`super::sources`) into the desired state: the channels, delivery loops and
//! [`SourceDesired`]s the mesh runs.

use base64::Engine as _;
use cemesh_channels::StartAt;
use cemesh_dispatcher::{ReplyTo, TriggerKey};
use cemesh_ingress::BrokerKey;
use cemesh_sources::{PingSpec, ProcessSpec, Schedule};
use serde_json::json;

use super::kinds::Kind;
use super::sources::{
    kafka_channel, kafka_trigger, ping_channel, ping_trigger, Binding, CeOverrides,
    ContainerSourceManifest, KafkaSourceManifest, PingSourceManifest, SinkBindingManifest,
    SourceDesired, SourceTopic,
};
use super::validate::{
    broker_desired, resolve, subscriber_runtime, AddressKind, FieldError, Problems, Subscribing,
};
use super::{
    DeliveryManifest, Desired, Destination, Located, ResolveContext, Resource, TriggerDesired,
};

/// Compiles every PingSource and ContainerSource into `desired`.
pub(super) fn compile_sources(
    resources: &[Located<Resource>],
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) {
    for located in resources {
        let (label, result) = match &located.value {
            Resource::PingSource(p) => (
                format!("PingSource {}/{}", p.metadata.namespace(), p.metadata.name),
                compile_ping(p, ctx, desired),
            ),
            Resource::ContainerSource(c) => (
                format!(
                    "ContainerSource {}/{}",
                    c.metadata.namespace(),
                    c.metadata.name
                ),
                compile_container(c, ctx, desired),
            ),
            Resource::SinkBinding(b) => (
                format!("SinkBinding {}/{}", b.metadata.namespace(), b.metadata.name),
                compile_binding(b, ctx, desired),
            ),
            Resource::KafkaSource(k) => (
                format!("KafkaSource {}/{}", k.metadata.namespace(), k.metadata.name),
                compile_kafka(k, ctx, desired),
            ),
            _ => continue,
        };
        if let Err(problems) = result {
            for (path, msg) in problems {
                desired
                    .problems
                    .push(located.error(label.clone(), path, msg));
            }
        }
    }
}

fn overrides(o: Option<&CeOverrides>) -> Vec<(String, String)> {
    o.map(|o| o.extensions.clone().into_iter().collect())
        .unwrap_or_default()
}

fn compile_ping(
    p: &PingSourceManifest,
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) -> Result<(), Vec<FieldError>> {
    let meta = &p.metadata;
    let ns = meta.namespace();
    let mut problems =
        Problems::for_resource(meta, &super::messaging::channel_and_trigger_annotations());
    let schedule = match Schedule::parse(&p.spec.schedule, p.spec.timezone.as_deref()) {
        Ok(s) => Some(s),
        Err(e @ cemesh_sources::ScheduleError::TimeZone(_)) => {
            problems.add("spec.timezone", e);
            None
        }
        Err(e) => {
            problems.add("spec.schedule", e);
            None
        }
    };
    let data = match (&p.spec.data, &p.spec.data_base64) {
        (Some(_), Some(_)) => {
            problems.add(
                "spec.dataBase64",
                "data and dataBase64 are mutually exclusive",
            );
            None
        }
        (Some(d), None) => Some(bytes::Bytes::from(d.clone())),
        (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
            Ok(d) => Some(bytes::Bytes::from(d)),
            Err(e) => {
                problems.add("spec.dataBase64", format!("not base64: {e}"));
                None
            }
        },
        (None, None) => None,
    };
    let Some(sink) = &p.spec.sink else {
        problems.add("spec.sink", "required: where the pings go");
        return Err(problems.0);
    };
    let channel = broker_desired(
        BrokerKey::new(ns, ping_channel(&meta.name)),
        AddressKind::Internal,
        ctx.default_channel,
        meta,
        None,
        ctx,
        &mut problems,
    );
    let runtime = subscriber_runtime(
        Subscribing {
            meta,
            key: TriggerKey::new(ns, ping_trigger(&meta.name)),
            broker: channel.key.name.clone(),
            broker_desired: Some(&channel),
            subscriber: sink,
            subscriber_path: "spec.sink",
            delivery: &DeliveryManifest::default(),
            delivery_path: "spec.delivery",
            reply: ReplyTo::Drop,
        },
        ctx,
        &mut problems,
    );
    let (Some(schedule), Some((runtime, _))) = (schedule, runtime) else {
        return Err(problems.0);
    };
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    let spec = PingSpec {
        namespace: ns.to_owned(),
        name: meta.name.clone(),
        schedule,
        content_type: p.spec.content_type.clone(),
        data,
        extensions: overrides(p.spec.ce_overrides.as_ref()),
        state_file: Default::default(),
    };
    desired.status.insert(
        (Kind::PingSource, ns.to_owned(), meta.name.clone()),
        json!({
            "sinkUri": runtime.subscriber.as_str(),
            "ceAttributes": [{"type": cemesh_sources::ping::PING_TYPE, "source": spec.source()}],
        }),
    );
    if desired.brokers.contains_key(&channel.key) || desired.triggers.contains_key(&runtime.key) {
        return Err(vec![(
            "metadata.name".into(),
            "defined more than once".into(),
        )]);
    }
    desired.brokers.insert(channel.key.clone(), channel);
    desired.triggers.insert(
        runtime.key.clone(),
        TriggerDesired {
            runtime,
            start: StartAt::Earliest,
        },
    );
    desired.sources.insert(
        format!("PingSource {ns}/{}", meta.name),
        SourceDesired::Ping(spec),
    );
    Ok(())
}

fn compile_container(
    c: &ContainerSourceManifest,
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) -> Result<(), Vec<FieldError>> {
    let meta = &c.metadata;
    let ns = meta.namespace();
    let mut problems = Problems::for_resource(meta, &[super::OWNER_ANNOTATION]);
    let template = serde_json::to_value(&c.spec.template).unwrap_or_default();
    let at = "spec.template.spec.containers[0]";
    let container = &template["spec"]["containers"][0];
    if !container.is_object() {
        problems.add(at, "required: the container whose command cemesh runs");
    }
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let image = container["image"].as_str().unwrap_or("");
    let mut command = match strings(&container["command"]) {
        Some(c) if !c.is_empty() => c,
        _ => match image_command(image, ctx) {
            Some(c) => c.clone(),
            None => {
                if container.is_object() {
                    problems.add(
                        &format!("{at}.command"),
                        format!(
                            "required: cemesh runs a local program, not the image {}; give the container a command, or map the image to one in the server config's images:",
                            if image.is_empty() { "(none)" } else { image }
                        ),
                    );
                }
                Vec::new()
            }
        },
    };
    command.extend(strings(&container["args"]).unwrap_or_default());
    let mut env = std::collections::BTreeMap::new();
    for (i, e) in container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        match (e["name"].as_str(), e["value"].as_str()) {
            (Some(n), v) => {
                env.insert(n.to_owned(), v.unwrap_or("").to_owned());
            }
            _ => problems.add(&format!("{at}.env[{i}].name"), "required"),
        }
    }
    let sink = resolved_sink(
        c.spec.sink.as_ref(),
        "where the program sends its events",
        ns,
        ctx,
        &mut problems,
    );
    let Some(sink) = sink else {
        return Err(problems.0);
    };
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    env.extend(sink_env(
        sink.as_str(),
        c.spec.ce_overrides.as_ref(),
        c.spec.sink.as_ref(),
    ));
    desired.status.insert(
        (Kind::ContainerSource, ns.to_owned(), meta.name.clone()),
        json!({"sinkUri": sink.as_str()}),
    );
    desired.sources.insert(
        format!("ContainerSource {ns}/{}", meta.name),
        SourceDesired::Process(ProcessSpec {
            owner: format!("{ns}/{}", meta.name),
            command,
            env,
            working_dir: container["workingDir"].as_str().map(str::to_owned),
        }),
    );
    Ok(())
}

/// The program the server config's `images:` gives for `image`, with or without
/// its tag or digest.
fn image_command<'a>(image: &str, ctx: &ResolveContext<'a>) -> Option<&'a Vec<String>> {
    if image.is_empty() {
        return None;
    }
    let bare = image.split('@').next().unwrap_or(image);
    let untagged = match bare.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => bare,
    };
    [image, bare, untagged]
        .into_iter()
        .find_map(|i| ctx.images.get(i))
        .filter(|c| c.first().is_some_and(|p| !p.trim().is_empty()))
}

fn compile_binding(
    b: &SinkBindingManifest,
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) -> Result<(), Vec<FieldError>> {
    let meta = &b.metadata;
    let ns = meta.namespace();
    let mut problems = Problems::for_resource(meta, &[super::OWNER_ANNOTATION]);
    let subject = serde_json::to_value(&b.spec.subject).unwrap_or_default();
    let entries = bound_services(&subject, ns, ctx, &mut problems);
    let sink = resolved_sink(
        b.spec.sink.as_ref(),
        "where the bound program sends its events",
        ns,
        ctx,
        &mut problems,
    );
    let Some(sink) = sink else {
        return Err(problems.0);
    };
    if !problems.0.is_empty() || entries.is_empty() {
        return Err(problems.0);
    }
    desired.status.insert(
        (Kind::SinkBinding, ns.to_owned(), meta.name.clone()),
        json!({"sinkUri": sink.as_str()}),
    );
    let env = sink_env(
        sink.as_str(),
        b.spec.ce_overrides.as_ref(),
        b.spec.sink.as_ref(),
    );
    for (service, entry) in entries {
        // Validating without a running server: the checks above are all there is.
        let Some(target) = entry.binding.clone() else {
            continue;
        };
        if desired
            .sources
            .values()
            .any(|s| matches!(s, SourceDesired::Binding(other) if other.service == service))
        {
            return Err(vec![(
                "spec.subject".into(),
                format!("service {service:?} is bound by another SinkBinding already"),
            )]);
        }
        desired.sources.insert(
            format!("SinkBinding {ns}/{} {service}", meta.name),
            SourceDesired::Binding(Binding {
                service,
                env: env.clone(),
                target,
            }),
        );
    }
    Ok(())
}

/// The `services:` command entries a SinkBinding's subject names (`name`) or
/// selects (`selector.matchLabels` against their `labels`), by key.
fn bound_services<'a>(
    subject: &serde_json::Value,
    ns: &str,
    ctx: &ResolveContext<'a>,
    problems: &mut Problems,
) -> Vec<(String, &'a crate::config::ServiceEntry)> {
    let is_command = |e: &crate::config::ServiceEntry| {
        matches!(e.target, crate::ondemand::ServiceTarget::Command(_))
    };
    let name = subject["name"].as_str().unwrap_or("");
    let selector = &subject["selector"];
    if !name.is_empty() {
        let key = format!("{ns}/{name}");
        let found = ctx
            .services
            .get_key_value(&key)
            .or_else(|| ctx.services.get_key_value(name));
        return match found {
            Some((key, e)) if is_command(e) => vec![(key.clone(), e)],
            Some(_) => {
                problems.add(
                    "spec.subject.name",
                    format!("service {name:?} is a URL, not a command cemesh runs: only processes cemesh starts can be bound"),
                );
                Vec::new()
            }
            None => {
                problems.add(
                    "spec.subject.name",
                    format!("no services: entry named {name:?} in the server config (a SinkBinding binds processes cemesh runs)"),
                );
                Vec::new()
            }
        };
    }
    if selector.get("matchExpressions").is_some() {
        problems.add(
            "spec.subject.selector.matchExpressions",
            "not supported: select services: entries with matchLabels",
        );
        return Vec::new();
    }
    let Some(labels) = selector["matchLabels"]
        .as_object()
        .filter(|l| !l.is_empty())
    else {
        problems.add(
            "spec.subject",
            "required: name or selector.matchLabels, naming or selecting services: command entries of the server config",
        );
        return Vec::new();
    };
    let matched: Vec<_> = ctx
        .services
        .iter()
        .filter(|(_, e)| is_command(e))
        .filter(|(_, e)| {
            labels
                .iter()
                .all(|(k, v)| e.labels.get(k).map(String::as_str) == v.as_str())
        })
        .map(|(k, e)| (k.clone(), e))
        .collect();
    if matched.is_empty() {
        problems.add(
            "spec.subject.selector.matchLabels",
            format!(
                "no services: command entry of the server config has the labels {}",
                serde_json::Value::Object(labels.clone())
            ),
        );
    }
    matched
}

/// Knative's label choosing how record keys are read.
pub const KEY_TYPE_LABEL: &str = "kafkasources.sources.knative.dev/key-type";
/// The values [`KEY_TYPE_LABEL`] takes.
const KEY_TYPES: [&str; 4] = ["string", "int", "float", "byte-array"];

/// A KafkaSource: per topic, an internal channel reading the topic with the
/// source's consumer group and a delivery loop to the sink.
fn compile_kafka(
    k: &KafkaSourceManifest,
    ctx: &ResolveContext<'_>,
    desired: &mut Desired,
) -> Result<(), Vec<FieldError>> {
    let meta = &k.metadata;
    let ns = meta.namespace();
    let spec = &k.spec;
    let mut problems =
        Problems::for_resource(meta, &super::messaging::channel_and_trigger_annotations());
    let servers: Vec<&str> = spec
        .bootstrap_servers
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        problems.add(
            "spec.bootstrapServers",
            "required: HOST:PORT of the Kafka cluster",
        );
    }
    if spec.topics.is_empty() {
        problems.add("spec.topics", "required: the topics to read");
    }
    for (i, t) in spec.topics.iter().enumerate() {
        if t.trim().is_empty() {
            problems.add(&format!("spec.topics[{i}]"), "a topic name is empty");
        }
    }
    let start = match spec.initial_offset.as_deref() {
        None | Some("latest") => StartAt::Latest,
        Some("earliest") => StartAt::Earliest,
        Some(other) => {
            problems.add(
                "spec.initialOffset",
                format!("{other:?} is not earliest or latest"),
            );
            StartAt::Latest
        }
    };
    if spec.consumers.is_some_and(|c| c < 1) {
        problems.add("spec.consumers", "must be at least 1");
    }
    let mut meta = meta.clone();
    match spec.ordering.as_deref() {
        // Knative delivers a partition's records one at a time; here records of one
        // key (the record key, Knative's `partitionkey`) keep their order.
        None | Some("ordered") => {
            meta.annotations
                .entry(super::trigger::ORDER_ANNOTATION.to_owned())
                .or_insert_with(|| "ordered".to_owned());
        }
        Some("unordered") => {}
        Some(other) => problems.add(
            "spec.ordering",
            format!("{other:?} is not ordered or unordered"),
        ),
    }
    for part in ["sasl", "tls"] {
        if spec.net.as_ref().is_some_and(|n| {
            serde_json::to_value(n).unwrap_or_default()[part]["enable"] == json!(true)
        }) {
            problems.add(
                &format!("spec.net.{part}"),
                "cemesh reads no Kubernetes secrets: give SASL and TLS settings as Kafka properties in the server config (kafka.properties, --kafka-property) and leave spec.net out",
            );
        }
    }
    let key_type = meta
        .labels
        .get(KEY_TYPE_LABEL)
        .cloned()
        .unwrap_or_else(|| "string".to_owned());
    if !KEY_TYPES.contains(&key_type.as_str()) {
        problems.add(
            &format!("metadata.labels.{KEY_TYPE_LABEL}"),
            format!("{key_type:?} is not one of {}", KEY_TYPES.join(", ")),
        );
    }
    let Some(sink) = &spec.sink else {
        problems.add("spec.sink", "required: where the records go");
        return Err(problems.0);
    };
    let group = spec
        .consumer_group
        .clone()
        .filter(|g| !g.trim().is_empty())
        .unwrap_or_else(|| format!("cemesh.{ns}.kafkasource.{}", meta.name));
    let source = format!("/apis/v1/namespaces/{ns}/kafkasources/{}", meta.name);
    let delivery = spec.delivery.clone().unwrap_or_default();
    let mut parts = Vec::new();
    let mut attributes = Vec::new();
    for (i, topic) in spec.topics.iter().enumerate() {
        let mut channel = broker_desired(
            BrokerKey::new(ns, kafka_channel(&meta.name, i)),
            AddressKind::Internal,
            crate::config::ChannelKind::Kafka,
            &meta,
            None,
            ctx,
            &mut problems,
        );
        channel.source_topic = Some(SourceTopic {
            bootstrap: servers.join(","),
            topic: topic.trim().to_owned(),
            group: group.clone(),
            source: source.clone(),
            key_type: key_type.clone(),
            overrides: overrides(spec.ce_overrides.as_ref()),
        });
        let runtime = subscriber_runtime(
            Subscribing {
                meta: &meta,
                key: TriggerKey::new(ns, kafka_trigger(&meta.name, i)),
                broker: channel.key.name.clone(),
                broker_desired: Some(&channel),
                subscriber: sink,
                subscriber_path: "spec.sink",
                delivery: &delivery,
                delivery_path: "spec.delivery",
                reply: ReplyTo::Drop,
            },
            ctx,
            &mut problems,
        );
        attributes.push(json!({
            "type": super::sources::KAFKA_EVENT_TYPE,
            "source": format!("{source}#{}", topic.trim()),
        }));
        if let Some((runtime, _)) = runtime {
            parts.push((channel, runtime));
        }
    }
    if !problems.0.is_empty() || parts.len() != spec.topics.len() {
        return Err(problems.0);
    }
    let sink_uri = parts[0].1.subscriber.as_str().to_owned();
    for (channel, runtime) in &parts {
        if desired.brokers.contains_key(&channel.key) || desired.triggers.contains_key(&runtime.key)
        {
            return Err(vec![(
                "metadata.name".into(),
                "defined more than once".into(),
            )]);
        }
    }
    for (channel, runtime) in parts {
        desired.brokers.insert(channel.key.clone(), channel);
        desired
            .triggers
            .insert(runtime.key.clone(), TriggerDesired { runtime, start });
    }
    desired.status.insert(
        (Kind::KafkaSource, ns.to_owned(), meta.name.clone()),
        json!({
            "sinkUri": sink_uri,
            "consumers": spec.consumers.unwrap_or(1),
            "ceAttributes": attributes,
        }),
    );
    Ok(())
}

/// A source's `spec.sink` as a URL, or `None` with why noted (`what` says what the
/// sink is for when it is missing).
fn resolved_sink(
    sink: Option<&Destination>,
    what: &str,
    ns: &str,
    ctx: &ResolveContext<'_>,
    problems: &mut Problems,
) -> Option<reqwest::Url> {
    match sink {
        None => {
            problems.add("spec.sink", format!("required: {what}"));
            None
        }
        Some(s) => problems.note(resolve(s, ns, "spec.sink", ctx)),
    }
}

/// Knative's source contract: `K_SINK`, `K_CE_OVERRIDES` (JSON), and the sink's
/// `K_CA_CERTS` and `K_AUDIENCE` when it has them.
pub(super) fn sink_env(
    sink: &str,
    overrides: Option<&CeOverrides>,
    dest: Option<&Destination>,
) -> Vec<(String, String)> {
    let mut env = vec![("K_SINK".to_owned(), sink.to_owned())];
    if let Some(o) = overrides {
        env.push((
            "K_CE_OVERRIDES".to_owned(),
            json!({"extensions": o.extensions}).to_string(),
        ));
    }
    if let Some(ca) = dest.and_then(|d| d.ca_certs.clone()) {
        env.push(("K_CA_CERTS".to_owned(), ca));
    }
    if let Some(aud) = dest.and_then(|d| d.audience.clone()) {
        env.push(("K_AUDIENCE".to_owned(), aud));
    }
    env
}
