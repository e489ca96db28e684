//! Kafka settings of `cemesh serve`: flags, `CEMESH_KAFKA_*` variables and the
//! `kafka:` section of the server config file, merged into the channel crate's
//! [`KafkaOptions`], and the per-broker annotations that shape a broker's topic.
//!
//! Several replicas pointed at the same Kafka and the same manifests share the work;
//! nothing here is per replica except `client_id`.

use std::collections::BTreeMap;
use std::time::Duration;

use cemesh_channels::kafka::{
    KafkaChannelConfig, KafkaOptions, KafkaStore, DEFAULT_GROUP_TEMPLATE, DEFAULT_TOPIC_TEMPLATE,
    KNATIVE_GROUP_TEMPLATE, KNATIVE_TOPIC_TEMPLATE,
};
use serde::Deserialize;

use crate::duration::parse_humane;
use crate::error::Error;

/// Knative's annotation naming an existing topic for a broker.
pub const EXTERNAL_TOPIC_ANNOTATION: &str = "kafka.eventing.knative.dev/external.topic";
/// The broker's backlog cap in records (shared with the other channels): past it the
/// ingress answers 429.
pub const MAX_BACKLOG_ANNOTATION: &str = "cemesh.dev/max-backlog";
/// Partitions of the broker's topic when cemesh creates it.
pub const PARTITIONS_ANNOTATION: &str = crate::manifest::KAFKA_PARTITIONS_ANNOTATION;
/// Replication factor of the broker's topic when cemesh creates it.
pub const REPLICATION_ANNOTATION: &str = crate::manifest::KAFKA_REPLICATION_ANNOTATION;
/// Retention of the broker's topic when cemesh creates it (`retention.ms`), e.g. `7d`.
pub const RETENTION_ANNOTATION: &str = "cemesh.dev/retention";

/// How topics and consumer groups are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// `cemesh.{namespace}.{broker}` and `cemesh.{namespace}.{trigger}`.
    #[default]
    Cemesh,
    /// Knative's Kafka broker: `knative-broker-{namespace}-{broker}` and
    /// `knative-trigger-{namespace}-{trigger}`.
    Knative,
}

/// Kafka flags of `cemesh serve` (flatten into `ServeArgs`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]; needed by kafka channels
    #[arg(long, env = "CEMESH_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,
    /// librdkafka property KEY=VALUE for security and tuning (repeatable), e.g.
    /// security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512, sasl.username=...
    #[arg(
        long = "kafka-property",
        env = "CEMESH_KAFKA_PROPERTIES",
        value_delimiter = ','
    )]
    pub kafka_properties: Vec<String>,
    /// Topic and consumer-group names: cemesh or knative [default: cemesh]
    #[arg(long, env = "CEMESH_KAFKA_NAMING")]
    pub kafka_naming: Option<Naming>,
    /// Topic name template with {namespace} and {broker} [default: from --kafka-naming]
    #[arg(long, env = "CEMESH_KAFKA_TOPIC_TEMPLATE")]
    pub kafka_topic_template: Option<String>,
    /// Consumer group template with {namespace}, {trigger}, {broker} [default: from --kafka-naming]
    #[arg(long, env = "CEMESH_KAFKA_GROUP_TEMPLATE")]
    pub kafka_group_template: Option<String>,
    /// Partitions of topics cemesh creates [default: 10]
    #[arg(long, env = "CEMESH_KAFKA_PARTITIONS")]
    pub kafka_partitions: Option<u16>,
    /// Replication factor of topics cemesh creates [default: 1]
    #[arg(long, env = "CEMESH_KAFKA_REPLICATION")]
    pub kafka_replication: Option<u16>,
}

/// The `kafka:` section of the server config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `HOST:PORT[,HOST:PORT...]`.
    pub bootstrap: Option<String>,
    /// librdkafka properties passed through (security, tuning).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// `cemesh` (default) or `knative`.
    pub naming: Option<Naming>,
    /// Topic template with `{namespace}` and `{broker}`.
    pub topic_template: Option<String>,
    /// Consumer group template with `{namespace}`, `{trigger}` and `{broker}`.
    pub group_template: Option<String>,
    /// Dead-letter topic template with `{namespace}` and `{trigger}`.
    pub dead_letter_template: Option<String>,
    /// Partitions of topics cemesh creates. Default 10.
    pub partitions: Option<u16>,
    /// Replication factor of topics cemesh creates. Default 1.
    pub replication: Option<u16>,
    /// How often finished offsets are committed, e.g. `200ms`. Default 200ms.
    pub commit_interval: Option<String>,
    /// How long a crashed replica keeps its partitions, e.g. `10s`. Default 10s.
    pub session_timeout: Option<String>,
    /// `client.id`. Default `cemesh`.
    pub client_id: Option<String>,
}

fn duration(field: &'static str, v: Option<&String>, default: Duration) -> Result<Duration, Error> {
    match v {
        None => Ok(default),
        Some(s) => parse_humane(s).map_err(|source| Error::KafkaDuration { field, source }),
    }
}

/// Merges flags (first) and the config file into the channel crate's options.
/// `Ok(None)` when no bootstrap servers are set anywhere (Kafka not configured).
pub fn options(args: &KafkaArgs, file: &KafkaConfig) -> Result<Option<KafkaOptions>, Error> {
    let Some(bootstrap) = args
        .kafka_bootstrap
        .clone()
        .or_else(|| file.bootstrap.clone())
        .filter(|b| !b.trim().is_empty())
    else {
        return Ok(None);
    };
    let defaults = KafkaOptions::default();
    let naming = args.kafka_naming.or(file.naming).unwrap_or_default();
    let (topic, group) = match naming {
        Naming::Cemesh => (DEFAULT_TOPIC_TEMPLATE, DEFAULT_GROUP_TEMPLATE),
        Naming::Knative => (KNATIVE_TOPIC_TEMPLATE, KNATIVE_GROUP_TEMPLATE),
    };
    let mut properties = file.properties.clone();
    for p in &args.kafka_properties {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::KafkaProperty(p.clone()))?;
        properties.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let topic_template = args
        .kafka_topic_template
        .clone()
        .or_else(|| file.topic_template.clone())
        .unwrap_or_else(|| topic.to_owned());
    if !topic_template.contains("{broker}") {
        return Err(Error::KafkaTemplate {
            what: "topic",
            template: topic_template,
            needs: "{broker}",
        });
    }
    let group_template = args
        .kafka_group_template
        .clone()
        .or_else(|| file.group_template.clone())
        .unwrap_or_else(|| group.to_owned());
    if !group_template.contains("{trigger}") {
        return Err(Error::KafkaTemplate {
            what: "group",
            template: group_template,
            needs: "{trigger}",
        });
    }
    let positive = |what: &'static str, v: Option<u16>, default: i32| -> Result<i32, Error> {
        match v {
            None => Ok(default),
            Some(0) => Err(Error::KafkaZero(what)),
            Some(n) => Ok(i32::from(n)),
        }
    };
    Ok(Some(KafkaOptions {
        bootstrap,
        properties,
        topic_template,
        group_template,
        dead_letter_template: file
            .dead_letter_template
            .clone()
            .unwrap_or(defaults.dead_letter_template),
        partitions: positive(
            "partitions",
            args.kafka_partitions.or(file.partitions),
            defaults.partitions,
        )?,
        replication: positive(
            "replication",
            args.kafka_replication.or(file.replication),
            defaults.replication,
        )?,
        commit_interval: duration(
            "commit_interval",
            file.commit_interval.as_ref(),
            defaults.commit_interval,
        )?,
        session_timeout: duration(
            "session_timeout",
            file.session_timeout.as_ref(),
            defaults.session_timeout,
        )?,
        request_timeout: defaults.request_timeout,
        client_id: file.client_id.clone().unwrap_or(defaults.client_id),
    }))
}

/// Connects to Kafka (checking it answers) with merged settings.
pub async fn connect(options: KafkaOptions) -> Result<KafkaStore, Error> {
    let bootstrap = options.bootstrap.clone();
    KafkaStore::connect(options)
        .await
        .map_err(|source| Error::KafkaConnect { bootstrap, source })
}

/// A broker's topic settings from its annotations; errors name the annotation.
pub fn channel_config(
    annotations: &BTreeMap<String, String>,
) -> Result<KafkaChannelConfig, (String, String)> {
    let err = |a: &str, m: String| (format!("metadata.annotations.{a}"), m);
    let mut c = KafkaChannelConfig::default();
    if let Some(t) = annotations.get(EXTERNAL_TOPIC_ANNOTATION) {
        if t.trim().is_empty() {
            return Err(err(
                EXTERNAL_TOPIC_ANNOTATION,
                "the topic name is empty".into(),
            ));
        }
        c.topic = Some(t.trim().to_owned());
    }
    let count = |a: &str| -> Result<Option<i32>, (String, String)> {
        annotations
            .get(a)
            .map(|v| {
                v.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(i32::from)
                    .ok_or_else(|| err(a, format!("{v:?} is not a whole number from 1 to 65535")))
            })
            .transpose()
    };
    if let Some(v) = annotations.get(MAX_BACKLOG_ANNOTATION) {
        let n = v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                err(
                    MAX_BACKLOG_ANNOTATION,
                    format!("{v:?} is not a positive whole number"),
                )
            })?;
        c.max_backlog = Some(n);
    }
    c.partitions = count(PARTITIONS_ANNOTATION)?;
    c.replication = count(REPLICATION_ANNOTATION)?;
    if let Some(v) = annotations.get(RETENTION_ANNOTATION) {
        let d = parse_humane(v).map_err(|e| err(RETENTION_ANNOTATION, e.to_string()))?;
        c.topic_configs
            .insert("retention.ms".into(), d.as_millis().to_string());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_naming_selects_templates() {
        let file = KafkaConfig {
            bootstrap: Some("file:9092".into()),
            naming: Some(Naming::Knative),
            partitions: Some(3),
            ..KafkaConfig::default()
        };
        let args = KafkaArgs {
            kafka_bootstrap: Some("flag:9092".into()),
            kafka_properties: vec!["security.protocol=SASL_SSL".into()],
            ..KafkaArgs::default()
        };
        let o = options(&args, &file).unwrap().unwrap();
        assert_eq!(o.bootstrap, "flag:9092");
        assert_eq!(o.topic_template, KNATIVE_TOPIC_TEMPLATE);
        assert_eq!(o.group_template, KNATIVE_GROUP_TEMPLATE);
        assert_eq!(o.partitions, 3);
        assert_eq!(o.properties["security.protocol"], "SASL_SSL");
        assert!(options(&KafkaArgs::default(), &KafkaConfig::default())
            .unwrap()
            .is_none());
        let bad = KafkaArgs {
            kafka_bootstrap: Some("x:1".into()),
            kafka_properties: vec!["novalue".into()],
            ..KafkaArgs::default()
        };
        assert!(options(&bad, &file).is_err());
    }

    #[test]
    fn annotations_shape_the_topic() {
        let mut a = BTreeMap::new();
        a.insert(EXTERNAL_TOPIC_ANNOTATION.to_owned(), "orders".to_owned());
        a.insert(PARTITIONS_ANNOTATION.to_owned(), "12".to_owned());
        let c = channel_config(&a).unwrap();
        assert_eq!(c.topic.as_deref(), Some("orders"));
        assert_eq!(c.partitions, Some(12));
        a.insert(REPLICATION_ANNOTATION.to_owned(), "0".to_owned());
        assert!(channel_config(&a)
            .unwrap_err()
            .0
            .contains(REPLICATION_ANNOTATION));
    }
}
