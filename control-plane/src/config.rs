//! The server configuration: flags, `CEMESH_*` environment variables and an optional
//! YAML file (`--config`), in that order of precedence, then the defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::duration::parse_bytes;
use crate::error::Error;

/// Where a broker keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// In RAM: fast, lost on restart.
    Memory,
    /// Embedded, durable (fsynced before 202).
    Sled,
    /// A Kafka cluster.
    Kafka,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Memory => "memory",
            ChannelKind::Sled => "sled",
            ChannelKind::Kafka => "kafka",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "memory" => Some(ChannelKind::Memory),
            "sled" => Some(ChannelKind::Sled),
            "kafka" => Some(ChannelKind::Kafka),
            _ => None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The server config file. Every key is optional; flags and `CEMESH_*` variables win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Folder of Knative manifests (`*.yaml`, `*.yml`). Default `./config`.
    pub config_dir: Option<PathBuf>,
    /// Folder for durable data. Default `./data`.
    pub data_dir: Option<PathBuf>,
    /// Ingress listen address. Default `127.0.0.1:8080`.
    pub ingress_addr: Option<SocketAddr>,
    /// Admin, health and metrics listen address. Default `127.0.0.1:9090`.
    pub admin_addr: Option<SocketAddr>,
    /// gRPC listen address. Default `127.0.0.1:50051`.
    pub grpc_addr: Option<SocketAddr>,
    /// Channel for brokers that do not choose one. Default `sled`.
    pub channel: Option<ChannelKind>,
    /// Largest request body the ingress accepts, e.g. `1MiB`. Default 1 MiB.
    pub max_body_size: Option<ByteSize>,
    /// How a subscriber `ref` becomes a URL when `services` does not name it.
    /// Placeholders `{name}`, `{namespace}`, `{kind}`. Default
    /// `http://{name}.{namespace}.svc.cluster.local`.
    pub service_url_template: Option<String>,
    /// Services by name (or `namespace/name`): where a subscriber `ref` points.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceEntry>,
    /// Local programs standing for container images: a ContainerSource whose
    /// container names an image and no command runs this argv, then the
    /// container's `args`. Keys are images with or without their tag.
    #[serde(default)]
    pub images: BTreeMap<String, Vec<String>>,
    /// `text` or `json`.
    pub log_format: Option<LogFormat>,
    /// `tracing` filter, e.g. `info` or `cemesh_dispatcher=debug`.
    pub log_level: Option<String>,
    /// How long deliveries in flight may take to finish on shutdown, e.g. `30s`.
    pub shutdown_grace: Option<crate::duration::HumaneDuration>,
    /// Whether the admin API may apply and delete resources. Default true, false
    /// when the default channel is `kafka` (several replicas share one config).
    pub api_writes: Option<bool>,
    /// Free space the data dir's disk keeps, e.g. `128MiB`: below it the ingress
    /// answers 507 instead of letting the disk fill. Default 128 MiB.
    pub min_free_disk: Option<ByteSize>,
    /// sled's page cache, e.g. `64MiB`. Default 64 MiB.
    pub sled_cache_size: Option<ByteSize>,
    /// The longest a sled group commit waits for the producers of the last one,
    /// e.g. `1ms`; `0s`: never waits. Default 1.5 ms.
    pub sled_commit_delay: Option<crate::duration::HumaneDuration>,
    /// How long the event journal keeps entries, e.g. `1h` (default).
    pub journal_retention: Option<crate::duration::HumaneDuration>,
    /// Disk the event journal's files may take, e.g. `32MiB` (default); RAM holds
    /// an index of about 32 bytes an entry.
    pub journal_max_size: Option<ByteSize>,
    /// Request bytes the ingress works on at once, over all connections; requests
    /// past it wait their turn. Default 8 MiB.
    pub max_pending_bytes: Option<ByteSize>,
    /// Bytes one header line of an event in binary-mode HTTP may take, e.g. `8KiB`;
    /// past it the ingress refuses the event (400) unless every trigger that could
    /// match it delivers structured. `0`: no limit. Default 8 KiB.
    pub max_header_line_bytes: Option<ByteSize>,
    /// Bytes an event's binary-mode header lines may take together, e.g. `16KiB`.
    /// `0`: no limit. Default 16 KiB.
    pub max_header_bytes_total: Option<ByteSize>,
    /// Time a client has to send a request's head (line and headers) on the ingress
    /// and admin listeners, e.g. `10s`. Default 10s.
    pub header_read_timeout: Option<crate::duration::HumaneDuration>,
    /// Time a client has to send a request's body once its head arrived, e.g. `30s`.
    /// Default 30s.
    pub body_read_timeout: Option<crate::duration::HumaneDuration>,
    /// Time a keep-alive connection with no request in flight stays open, e.g.
    /// `120s`. Default 120s.
    pub idle_timeout: Option<crate::duration::HumaneDuration>,
    /// Connections each listener (ingress, admin, gRPC) holds at once; past it a new
    /// one is refused (503 on HTTP). Default 10000.
    pub max_connections: Option<std::num::NonZeroUsize>,
    /// Serve the ingress, admin API and gRPC over TLS with this certificate chain
    /// (PEM, re-read when it changes); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM) on the admin API and gRPC
    /// admin (mTLS; `--tls-client-ca`).
    pub tls_client_ca: Option<PathBuf>,
    /// Sender authentication and authorization (see [`crate::auth`]).
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Serve an open admin API beyond loopback (`--insecure-admin`).
    pub insecure_admin: Option<bool>,
    /// The issuer URL of delivery tokens (`--oidc-issuer`).
    pub oidc_issuer: Option<String>,
    /// Kafka connection and naming (builds with the `kafka` feature).
    #[cfg(feature = "kafka")]
    #[serde(default)]
    pub kafka: crate::kafka::KafkaConfig,
}

/// One entry of `services:`: `{url: URL}` for a service that runs elsewhere, or
/// `{command: [...], port_env, readiness, concurrency, min, max, idle, ...}` for one
/// cemesh starts on demand and scales (see [`crate::ondemand`], which checks every
/// field when the file is read).
pub use crate::ondemand::ServiceEntry;

/// A byte size written as a number or a string such as `1MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

pub const DEFAULT_SERVICE_TEMPLATE: &str = "http://{name}.{namespace}.svc.cluster.local";
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;

impl ServerConfig {
    /// Reads and checks a config file; errors name the file, line and field.
    pub fn load(path: &Path) -> crate::error::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(ServerConfig::default());
        }
        crate::manifest::parser::typed(&text, "a config file").map_err(|e| Error::Config {
            path: path.to_owned(),
            line: e.line,
            field: e.path,
            message: e.message,
        })
    }
}

/// The settings `serve` runs with, every source merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub channel: ChannelKind,
    pub max_body_bytes: u64,
    pub service_url_template: String,
    pub services: BTreeMap<String, ServiceEntry>,
    pub images: BTreeMap<String, Vec<String>>,
    pub log_format: LogFormat,
    pub log_level: Option<String>,
    pub shutdown_grace: std::time::Duration,
    /// Whether the admin API may create, change and delete resources. Off makes the
    /// config dir the only source (each replica of a Kafka deployment reads the same
    /// ConfigMap, while an API-applied resource would live on one replica only).
    pub api_writes: bool,
    /// Bytes the data dir's filesystem keeps free: sled writes are refused (507)
    /// below it.
    pub min_free_disk: u64,
    /// sled's page cache in bytes.
    pub sled_cache_bytes: u64,
    /// The longest a sled group commit waits for the producers of the last one.
    pub sled_commit_delay: std::time::Duration,
    /// The event journal's bounds.
    pub journal: cemesh_channels::journal::JournalConfig,
    /// Request bytes the ingress works on at once.
    pub max_pending_bytes: u64,
    /// What an accepted event's binary-mode headers may take.
    pub header_budget: cemesh_proto::http::HeaderBudget,
    /// TLS for the ingress, admin and gRPC listeners.
    pub tls: Option<cemesh_ingress::tls::TlsFiles>,
    /// Client certificates on the admin API and gRPC admin must chain to this CA.
    pub tls_client_ca: Option<PathBuf>,
    /// Timeouts and the connection limit of the ingress, admin and gRPC listeners.
    pub limits: cemesh_ingress::server::Limits,
    /// Sender authentication and authorization.
    pub auth: crate::auth::AuthConfig,
    /// An open admin API may listen beyond loopback.
    pub insecure_admin: bool,
    /// The issuer URL of delivery tokens; default the admin API's URL.
    pub oidc_issuer: Option<String>,
    #[cfg(feature = "kafka")]
    pub kafka: Option<cemesh_channels::kafka::KafkaOptions>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_typed_and_a_bad_one_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, "shutdown_grace: 250ms\n").unwrap();
        let cfg = ServerConfig::load(&good).unwrap();
        assert_eq!(
            cfg.shutdown_grace,
            Some(crate::duration::HumaneDuration(
                std::time::Duration::from_millis(250)
            ))
        );
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "log_level: info\nshutdown_grace: soon\n").unwrap();
        let err = ServerConfig::load(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("shutdown_grace"),
            "{err}"
        );
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
        assert!(err.contains("line 2: shutdown_grace: "), "{err}");

        // Unknown keys, and a value of the wrong type, name their line.
        std::fs::write(
            &bad,
            "log_level: info\n\nservices:\n  a:\n    urll: http://x\n",
        )
        .unwrap();
        let err = ServerConfig::load(&bad).unwrap_err().to_string();
        assert!(
            err.contains("line 5: services.a.urll: unknown field `urll`"),
            "{err}"
        );
        std::fs::write(&bad, "services: [a]\n").unwrap();
        let err = ServerConfig::load(&bad).unwrap_err().to_string();
        assert!(
            err.ends_with("bad.yaml: line 1: services: invalid type: sequence, expected a map"),
            "{err}"
        );
    }
}
