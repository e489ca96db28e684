//! The command line: `cemesh serve | send | display`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ChannelKind, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "cemesh",
    version,
    about = "A CloudEvents broker and trigger event mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker: ingress, dispatcher and admin API.
    Serve(ServeArgs),
    /// Send one CloudEvent (like `kn event send`).
    Send(SendArgs),
    /// Run a subscriber that prints every event it receives (like Knative's
    /// event-display).
    Display(DisplayArgs),
    /// Measure throughput and latency against a bare-forwarder baseline.
    Bench(crate::bench::BenchArgs),
    /// Run beside an existing service: a durable outbox for its publishes and a
    /// relay delivering the mesh's events to it.
    Sidecar(crate::sidecar::SidecarArgs),
    /// Apply Broker/Trigger manifests through the admin API (like kubectl apply).
    Apply(ApplyArgs),
    /// List brokers or triggers with their readiness.
    Get(GetArgs),
    /// Show one resource: spec, status, counters and lag.
    Describe(DescribeArgs),
    /// Delete a broker or trigger created through the admin API.
    Delete(DeleteArgs),
    /// Check manifests offline, as a load would; exit 1 on any problem.
    Validate(ValidateArgs),
    /// Stream the events entering a broker, live.
    Tail(TailArgs),
    /// List, show, redrive or purge a trigger's dead letters.
    #[command(name = "deadletters", alias = "dlq")]
    DeadLetters(DeadLettersArgs),
}

/// Where the admin API is, for commands that talk to a running broker.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The broker's admin URL
    #[arg(
        long,
        env = "CEMESH_ADMIN",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    pub admin: String,
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Manage a sidecar's outbox dead letters instead, at this sidecar admin URL
    /// (e.g. http://127.0.0.1:3500); the trigger name is then not needed
    #[arg(long, env = "CEMESH_SIDECAR", global = true)]
    pub sidecar: Option<String>,
    #[command(subcommand)]
    pub action: DeadLettersAction,
}

/// Which trigger.
#[derive(Debug, Args)]
pub struct TriggerRef {
    /// The trigger's name (not with --sidecar)
    pub trigger: Option<String>,
    /// The trigger's namespace
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersAction {
    /// List dead letters (id, event id, type, attempts, reason)
    List {
        #[command(flatten)]
        trigger: TriggerRef,
        /// Print the API's JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Most letters to list
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter: event, reason and every attempt (JSON)
    Show {
        /// The trigger's namespace
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// TRIGGER ID, or just ID with --sidecar (the id comes from `list`)
        #[arg(value_name = "[TRIGGER] ID", num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Deliver dead letters again through the trigger's delivery policy
    Redrive {
        #[command(flatten)]
        trigger: TriggerRef,
        /// Only these ids (repeatable) [default: all]
        #[arg(long = "id")]
        ids: Vec<u64>,
    },
    /// Delete dead letters
    Purge {
        #[command(flatten)]
        trigger: TriggerRef,
        /// Only this id [default: all]
        #[arg(long)]
        id: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Server config file (YAML); flags and CEMESH_* variables override it.
    #[arg(long, env = "CEMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder of Knative Broker/Trigger manifests [default: ./config]
    #[arg(long, env = "CEMESH_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Folder for durable data [default: ./data]
    #[arg(long, env = "CEMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Ingress listen address; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, env = "CEMESH_INGRESS_ADDR")]
    pub ingress_addr: Option<SocketAddr>,
    /// Admin, health and metrics listen address [default: 127.0.0.1:9090]
    #[arg(long, env = "CEMESH_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// gRPC listen address (cemesh.v1.Publisher, KEDA external scaler, health,
    /// reflection) [default: 127.0.0.1:50051]
    #[arg(long, env = "CEMESH_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Channel for brokers that do not choose one [default: sled]
    #[arg(long, env = "CEMESH_CHANNEL")]
    pub channel: Option<ChannelKind>,
    /// Largest request body the ingress accepts, e.g. 1MiB [default: 1MiB]
    #[arg(long, env = "CEMESH_MAX_BODY_SIZE")]
    pub max_body_size: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "CEMESH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or cemesh_dispatcher=debug [default: $RUST_LOG, else info]
    #[arg(long, env = "CEMESH_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Time deliveries in flight get to finish on shutdown, e.g. 30s [default: 30s]
    #[arg(long, env = "CEMESH_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    #[cfg(feature = "kafka")]
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaArgs,
    /// Export spans over OTLP/HTTP (JSON) to this collector, e.g. http://127.0.0.1:4318
    /// (builds with the `otel` cargo feature only)
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Content mode for `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendMode {
    Binary,
    Structured,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Where to POST: a broker ingress URL such as http://127.0.0.1:8080/default/default
    #[arg(long)]
    pub to: String,
    /// The event type
    #[arg(long = "type")]
    pub ty: String,
    /// The event source (a URI-reference)
    #[arg(long)]
    pub source: String,
    /// The event id [default: a new UUID]
    #[arg(long)]
    pub id: Option<String>,
    /// The event subject
    #[arg(long)]
    pub subject: Option<String>,
    /// Data: JSON text, or @FILE to read a file
    #[arg(long)]
    pub data: Option<String>,
    /// Content type of the data [default: application/json when --data is given]
    #[arg(long)]
    pub content_type: Option<String>,
    /// An extension attribute, name=value (repeatable)
    #[arg(long = "extension", short = 'e', value_name = "NAME=VALUE")]
    pub extensions: Vec<String>,
    /// Content mode
    #[arg(long, value_enum, default_value_t = SendMode::Binary)]
    pub mode: SendMode,
    /// Publish over gRPC to this gRPC address (HOST:PORT); --to then names the broker
    /// as NAMESPACE/BROKER (an ingress URL also works)
    #[arg(long, value_name = "ADDR")]
    pub grpc: Option<String>,
}

#[derive(Debug, Args)]
pub struct DisplayArgs {
    /// Listen address
    #[arg(long, default_value = "127.0.0.1:8081", env = "CEMESH_DISPLAY_ADDR")]
    pub addr: SocketAddr,
}

/// Output format of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// A manifest file, a directory of them, or - for stdin (repeatable)
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// brokers or triggers
    pub kind: String,
    /// Only this one
    pub name: Option<String>,
    /// Namespace [default: all namespaces]
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// broker or trigger
    pub kind: String,
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// broker or trigger
    pub kind: String,
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Manifest files or directories
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Server config file, for `services` and the URL template refs resolve through
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The broker's name
    pub broker: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only events matching this CESQL expression
    #[arg(long)]
    pub filter: Option<String>,
    /// Stop after this many events
    #[arg(long)]
    pub count: Option<u64>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
