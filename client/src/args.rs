//! The command-line arguments of the client commands (`send`, `display`, `apply`,
//! `get`, `describe`, `delete`, `validate`, `tail`, `deadletters`); the binary
//! gathers them under one `cemesh` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    #[command(flatten)]
    pub tls: ClientTls,
}

/// How a client command trusts an `https` broker, and the credential it sends.
#[derive(Clone, Default, Args)]
pub struct ClientTls {
    /// Send this bearer token (a static token of the server's auth.tokens, or a JWT)
    /// as Authorization: Bearer; prefer --token-file or the environment over the
    /// command line, which other users of the machine can see
    #[arg(long, env = "CEMESH_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file
    #[arg(
        long,
        env = "CEMESH_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file (besides the system's) for https
    #[arg(long, env = "CEMESH_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Do not verify the server's certificate at all (tests only: anyone on the path
    /// can then read and change what is sent)
    #[arg(long, global = true)]
    pub insecure_skip_verify: bool,
    /// Present this client certificate (PEM chain) over https, for a server started
    /// with --tls-client-ca (mTLS); with --client-key
    #[arg(
        long,
        env = "CEMESH_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM)
    #[arg(
        long,
        env = "CEMESH_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("cacert", &self.cacert)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
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
        /// Start the redrive and return without waiting for the outcomes
        #[arg(long)]
        no_wait: bool,
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
    #[command(flatten)]
    pub tls: ClientTls,
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
    /// The table with more columns (filter, counters, channel).
    Wide,
    /// One document per resource, ready for `apply -f`.
    Yaml,
    /// One object, or a `List` of them, ready for `apply -f`.
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
    /// brokers (br) or triggers (tr)
    pub kind: String,
    /// Only this one
    pub name: Option<String>,
    /// Namespace
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace (as kubectl's -A)
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// broker (br) or trigger (tr)
    pub kind: String,
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The trigger paused at its max-lag
    pub trigger: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// broker (br) or trigger (tr); not with -f
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub kind: Option<String>,
    /// The resource's name; not with -f
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Delete the resources these manifests name: files, directories or - for stdin
    /// (repeatable)
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
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

/// `cemesh replay TRIGGER --from ...`, or `cemesh replay status|cancel`.
#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub action: Option<ReplayAction>,
    /// The trigger whose archived events are delivered again
    #[arg(required = true)]
    pub trigger: Option<String>,
    #[arg(short = 'n', long, default_value = "default", global = true)]
    pub namespace: String,
    /// Where the range starts: an RFC 3339 time, a duration ago (10m), an offset,
    /// or earliest
    #[arg(long, required = true)]
    pub from: Option<String>,
    /// Where it ends (exclusive): a time, a duration ago, an offset; default now
    #[arg(long)]
    pub to: Option<String>,
    /// Only events that also match this CESQL expression
    #[arg(long)]
    pub filter: Option<String>,
    /// Wait until the replay ends, printing its progress
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReplayAction {
    /// Show replays (of the namespace) and their progress, or one replay
    Status {
        /// The replay's id
        id: Option<String>,
        /// Every namespace
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Cancel a running replay (deliveries in flight finish)
    Cancel {
        /// The replay's id
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ResetCursorArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The trigger whose cursor moves
    pub trigger: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Where to: an RFC 3339 time, a duration ago (10m), an offset, earliest or
    /// latest
    #[arg(long)]
    pub to: String,
    /// Also when the move skips events the trigger has not delivered
    #[arg(long)]
    pub force: bool,
}

/// `cemesh trace BROKER ID`: where an event went.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The broker the event was sent to
    pub broker: String,
    /// The event's id
    pub id: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The event's source, when events from several sources share the id
    #[arg(long)]
    pub source: Option<String>,
    /// Print the journey as JSON
    #[arg(short = 'o', long)]
    pub json: bool,
}
