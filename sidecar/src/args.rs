//! The flags of `cemesh sidecar`. They follow `serve`'s where they mean the same thing
//! (`--data-dir`, `--max-body-size`, `--log-format`), and every one can also come from
//! a `CEMESH_*` variable, because a sidecar is usually configured by its pod spec.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use cemesh_control::config::LogFormat;

/// How the sidecar hands events to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AppProtocol {
    /// The event exactly as the mesh sent it (binary or structured mode).
    #[default]
    Cloudevents,
    /// Only the data with its content type; the attributes ride along as `ce-`
    /// headers the service may ignore.
    Plain,
}

/// Options of `cemesh sidecar`.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// Where the service publishes (localhost only in practice); port 0 picks a free port
    #[arg(long, env = "CEMESH_SIDECAR_LISTEN", default_value = "127.0.0.1:3500")]
    pub listen: SocketAddr,
    /// The mesh's broker ingress URL events are forwarded to, e.g.
    /// http://cemesh:8080/default/default
    #[arg(long, env = "CEMESH_BROKER_URL")]
    pub broker_url: reqwest::Url,
    /// `source` of the events wrapped from plain `POST /publish/{type}` requests and
    /// of wrapped replies
    #[arg(long, env = "CEMESH_SIDECAR_SOURCE", default_value = "cemesh-sidecar")]
    pub source: String,
    /// Header whose value becomes the `partitionkey` of a plain publish
    #[arg(
        long,
        env = "CEMESH_SIDECAR_PARTITION_KEY_HEADER",
        default_value = "x-partition-key"
    )]
    pub partition_key_header: http::HeaderName,
    /// Folder for the outbox (a sled database)
    #[arg(long, env = "CEMESH_DATA_DIR", default_value = "sidecar-data")]
    pub data_dir: PathBuf,
    /// Largest request body accepted, e.g. 1MiB
    #[arg(long, env = "CEMESH_MAX_BODY_SIZE", default_value = "1MiB", value_parser = bytes_arg)]
    pub max_body_size: u64,
    /// Most events waiting in the outbox; past it publishes are answered 503
    #[arg(
        long,
        env = "CEMESH_SIDECAR_OUTBOX_MAX_EVENTS",
        default_value_t = 100_000
    )]
    pub outbox_max_events: u64,
    /// Most stored bytes waiting in the outbox, e.g. 256MiB; past it publishes are
    /// answered 503
    #[arg(long, env = "CEMESH_SIDECAR_OUTBOX_MAX_BYTES", default_value = "256MiB", value_parser = bytes_arg)]
    pub outbox_max_bytes: u64,
    /// Events forwarded to the broker at once (across partition keys)
    #[arg(long, env = "CEMESH_SIDECAR_MAX_IN_FLIGHT", default_value = "64")]
    pub max_in_flight: NonZeroUsize,
    /// First wait before forwarding again after a failure (doubles each time), e.g. 200ms
    #[arg(long, env = "CEMESH_SIDECAR_BACKOFF_DELAY", default_value = "200ms", value_parser = duration_arg)]
    pub backoff_delay: Duration,
    /// Longest wait between two forwarding attempts (also caps an honoured Retry-After)
    #[arg(long, env = "CEMESH_SIDECAR_BACKOFF_MAX", default_value = "10s", value_parser = duration_arg)]
    pub backoff_max: Duration,
    /// Time allowed for one POST to the broker
    #[arg(long, env = "CEMESH_SIDECAR_BROKER_TIMEOUT", default_value = "30s", value_parser = duration_arg)]
    pub broker_timeout: Duration,

    /// Where the mesh delivers events for the service (triggers' subscriber)
    #[arg(
        long,
        env = "CEMESH_SIDECAR_DELIVER_LISTEN",
        default_value = "0.0.0.0:3501"
    )]
    pub deliver_listen: SocketAddr,
    /// The service's event endpoint, e.g. http://127.0.0.1:8000/events; without it
    /// the sidecar only publishes
    #[arg(long, env = "CEMESH_APP_URL")]
    pub app_url: Option<reqwest::Url>,
    /// Requests in flight to the service at most
    #[arg(long, env = "CEMESH_APP_MAX_CONCURRENCY", default_value = "16")]
    pub app_max_concurrency: NonZeroUsize,
    /// Path on the service that answers 2xx once it is ready, e.g. /healthz; until
    /// then the mesh is answered 503 with Retry-After
    #[arg(long, env = "CEMESH_APP_HEALTH_PATH")]
    pub app_health_path: Option<String>,
    /// How often the health path is probed
    #[arg(long, env = "CEMESH_APP_HEALTH_INTERVAL", default_value = "1s", value_parser = duration_arg)]
    pub app_health_interval: Duration,
    /// How the service receives events
    #[arg(long, env = "CEMESH_APP_PROTOCOL", value_enum, default_value_t = AppProtocol::Cloudevents)]
    pub app_protocol: AppProtocol,
    /// Time allowed for the service to answer one event
    #[arg(long, env = "CEMESH_APP_TIMEOUT", default_value = "60s", value_parser = duration_arg)]
    pub app_timeout: Duration,
    /// `type` of the reply event made from a plain (non-CloudEvent) answer body; without
    /// it such bodies are not replies
    #[arg(long, env = "CEMESH_SIDECAR_REPLY_TYPE")]
    pub reply_type: Option<String>,

    /// Knative Trigger manifests (YAML, multi-document) to register with the mesh;
    /// their subscriber is the sidecar
    #[arg(long, env = "CEMESH_SIDECAR_TRIGGERS")]
    pub triggers: Option<PathBuf>,
    /// The mesh's admin URL, for registering triggers
    #[arg(long, env = "CEMESH_ADMIN", default_value = "http://127.0.0.1:9090")]
    pub mesh_admin: String,
    /// The URL the mesh reaches the delivery listener at [default: from --deliver-listen]
    #[arg(long, env = "CEMESH_SIDECAR_ADVERTISE_URL")]
    pub advertise_url: Option<reqwest::Url>,
    /// Delete the registered triggers when the sidecar stops (SIGTERM/SIGINT)
    #[arg(long, env = "CEMESH_SIDECAR_UNREGISTER_ON_EXIT")]
    pub unregister_on_exit: bool,
    /// Log format (takes effect once `main_with` reads it for this command)
    #[arg(long, env = "CEMESH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Time a client has to send a request's head (line and headers) on either
    /// listener; past it the connection is closed
    #[arg(long, env = "CEMESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body once its head arrived
    #[arg(long, env = "CEMESH_BODY_READ_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub body_read_timeout: Duration,
    /// Time a keep-alive connection with no request in flight stays open
    #[arg(long, env = "CEMESH_IDLE_TIMEOUT", default_value = "120s", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// Connections each listener serves at once; past it a new one is answered 503
    /// with Retry-After
    #[arg(long, env = "CEMESH_MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: NonZeroUsize,

    /// Serve both listeners over TLS with this certificate chain (PEM; re-read when
    /// the file changes), with --tls-key; the advertised delivery URL is then https
    #[arg(long, env = "CEMESH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "CEMESH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM) on the publishing/admin
    /// listener (mTLS); /healthz, /readyz and /metrics stay open
    #[arg(long, env = "CEMESH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer <the token in this file>` for publishing and the
    /// admin endpoints on --listen (as Dapr's APP_API_TOKEN); /healthz, /readyz and
    /// /metrics stay open
    #[arg(long, env = "CEMESH_SIDECAR_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// A token (in this file) that may only read the admin endpoints on --listen
    /// (stats, dead letters)
    #[arg(
        long,
        env = "CEMESH_SIDECAR_READ_TOKEN_FILE",
        requires = "api_token_file"
    )]
    pub read_token_file: Option<PathBuf>,
    /// Serve publishing and the admin endpoints to anyone on a --listen address other
    /// than loopback (no --api-token-file or --tls-client-ca); refused without it
    #[arg(long, env = "CEMESH_INSECURE_ADMIN")]
    pub insecure_admin: bool,
    /// The client commands' `--cacert`, `--insecure-skip-verify` (trust for https to
    /// the broker, the mesh admin API and the service) and `--token`/`--token-file`
    /// (sent to the mesh: publishing to the broker, registering triggers; never to the
    /// service).
    #[command(flatten)]
    pub client: cemesh_client::args::ClientTls,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    cemesh_control::serve::positive_duration(s)
}

fn duration_arg(s: &str) -> Result<Duration, cemesh_control::duration::ParseError> {
    cemesh_control::duration::parse_humane(s)
}

fn bytes_arg(s: &str) -> Result<u64, cemesh_control::duration::ParseError> {
    cemesh_control::duration::parse_bytes(s)
}

impl SidecarArgs {
    /// The timeouts and connection limit of both listeners.
    pub fn limits(&self) -> cemesh_ingress::server::Limits {
        cemesh_ingress::server::Limits {
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections.get(),
        }
    }

    /// The advertised delivery URL: `--advertise-url`, or one made of the bound
    /// delivery address (an unspecified IP becomes 127.0.0.1, fine on one host).
    pub fn advertise(&self, deliver: SocketAddr) -> String {
        match &self.advertise_url {
            Some(u) => u.as_str().trim_end_matches('/').to_owned(),
            None => {
                let ip = if deliver.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    deliver.ip()
                };
                let scheme = if self.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", SocketAddr::new(ip, deliver.port()))
            }
        }
    }
}
