//! Why `cemesh serve` cannot start or keep serving: the control plane's one error
//! type, with the file, field, flag or address at fault. The binary prints it with its
//! causes; nothing here is mapped to HTTP (refusals of requests are the ingress's
//! `ErrorAnswer` and the admin API's).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::duration::ParseError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: cannot read: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The server config file: a field that does not parse, or that is unknown.
    #[error("{}: {}{field}: {message}", path.display(), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Config {
        path: PathBuf,
        line: Option<usize>,
        field: String,
        message: String,
    },
    #[error("--max-body-size: {0}")]
    MaxBodySize(ParseError),
    #[error("--min-free-disk: {0}")]
    MinFreeDisk(ParseError),
    #[error("--sled-cache-size: {0}")]
    SledCacheSize(ParseError),
    #[error("--max-pending-bytes: {0}")]
    MaxPendingBytes(ParseError),
    #[error("TLS needs both a certificate and its key (--tls-cert and --tls-key)")]
    TlsPair,
    #[error("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")]
    ClientCaWithoutTls,
    #[error(transparent)]
    Tls(#[from] cemesh_ingress::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error(transparent)]
    Signer(#[from] crate::signer::SignerError),
    #[error("refusing to serve the {what} API to anyone on {addr}: configure auth.admin (roles for tokens or JWT subjects) in the config file or --tls-client-ca (client certificates), bind it to 127.0.0.1, or pass --insecure-admin to accept the risk")]
    OpenAdmin {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("--max-header-line-bytes: {0}")]
    MaxHeaderLineBytes(ParseError),
    #[error("--max-header-bytes-total: {0}")]
    MaxHeaderBytesTotal(ParseError),
    #[error("invalid manifests in {}:\n  {}", dir.display(), problems.join("\n  "))]
    Manifests { dir: PathBuf, problems: Vec<String> },
    #[error("cannot listen on {what} address {addr}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("kafka.{field}: {source}")]
    KafkaDuration {
        field: &'static str,
        source: ParseError,
    },
    #[error("--kafka-property {0:?}: expected KEY=VALUE, e.g. security.protocol=SSL")]
    KafkaProperty(String),
    #[error("kafka {what} template {template:?} must contain {needs}")]
    KafkaTemplate {
        what: &'static str,
        template: String,
        needs: &'static str,
    },
    #[error("kafka {0} must be at least 1")]
    KafkaZero(&'static str),
    #[error("Kafka at {bootstrap}: {source}")]
    KafkaConnect {
        bootstrap: String,
        source: cemesh_channels::ChannelError,
    },
    #[error("gRPC reflection: cannot load the service descriptors")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    #[error("opening the event journal under the data dir: {0}")]
    Journal(String),
    #[error("{what} task failed: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
