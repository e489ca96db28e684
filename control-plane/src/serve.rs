//! `cemesh serve`: load manifests, bind, run the mesh until SIGINT/SIGTERM, then stop
//! gracefully (no new events accepted, in-flight deliveries finish).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cemesh_ingress::server::Limits;
use cemesh_ingress::Routes;
use cemesh_proto::http::HeaderBudget;

use clap::Args;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{
    ChannelKind, LogFormat, ServerConfig, Settings, DEFAULT_MAX_BODY, DEFAULT_SERVICE_TEMPLATE,
};
use crate::control::ControlPlane;
use crate::duration::parse_bytes;
use crate::error::Error;
use crate::mesh::{Channels, Mesh};

/// `cemesh serve`'s flags; each is also a `CEMESH_*` variable and a config file key.
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
    #[arg(long, env = "CEMESH_SHUTDOWN_GRACE", value_parser = crate::duration::parse_humane)]
    pub shutdown_grace: Option<Duration>,
    /// Let the admin API apply and delete resources [default: true; false with
    /// --channel kafka, whose replicas must all read one config: the config dir]
    #[arg(long, env = "CEMESH_API_WRITES")]
    pub api_writes: Option<bool>,
    /// Free space to keep on the data dir's disk, e.g. 128MiB: below it writes to
    /// sled are refused with 507 until space returns (0: never) [default: 128MiB]
    #[arg(long, env = "CEMESH_MIN_FREE_DISK")]
    pub min_free_disk: Option<String>,
    /// sled's page cache, e.g. 64MiB: with --max-pending-bytes, what bounds the
    /// broker's memory [default: 64MiB]
    #[arg(long, env = "CEMESH_SLED_CACHE_SIZE")]
    pub sled_cache_size: Option<String>,
    /// The longest a sled group commit waits for as many appends as the last one
    /// covered, e.g. 1ms: longer groups fewer appends per fsync (less CPU at
    /// moderate rates), shorter answers sooner; 0s: never waits [default: 1.5ms]
    #[arg(long, env = "CEMESH_SLED_COMMIT_DELAY", value_parser = crate::duration::parse_humane)]
    pub sled_commit_delay: Option<Duration>,
    /// Request bytes the ingress reads, decodes and stores at once over all
    /// connections, e.g. 8MiB; requests past it wait their turn [default: 8MiB]
    #[arg(long, env = "CEMESH_MAX_PENDING_BYTES")]
    pub max_pending_bytes: Option<String>,
    /// Bytes one header line of an event in binary-mode HTTP may take (`ce-name:
    /// value`, percent-encoded): past it the ingress refuses the event with 400 unless
    /// every trigger that could match it delivers structured (0: no limit) [default: 8KiB]
    #[arg(long, env = "CEMESH_MAX_HEADER_LINE_BYTES")]
    pub max_header_line_bytes: Option<String>,
    /// Bytes an event's binary-mode header lines may take together, checked as
    /// --max-header-line-bytes is (0: no limit) [default: 16KiB]
    #[arg(long, env = "CEMESH_MAX_HEADER_BYTES_TOTAL")]
    pub max_header_bytes_total: Option<String>,
    /// Time a client has to send a request's head (line and headers) on the ingress
    /// and admin listeners; past it the connection is closed [default: 10s]
    #[arg(long, env = "CEMESH_HEADER_READ_TIMEOUT", value_parser = positive_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Time a client has to send a request's body once its head arrived; past it the
    /// request is answered 408 [default: 30s]
    #[arg(long, env = "CEMESH_BODY_READ_TIMEOUT", value_parser = positive_duration)]
    pub body_read_timeout: Option<Duration>,
    /// Time a keep-alive connection with no request in flight stays open [default: 120s]
    #[arg(long, env = "CEMESH_IDLE_TIMEOUT", value_parser = positive_duration)]
    pub idle_timeout: Option<Duration>,
    /// Connections each listener (ingress, admin, gRPC) serves at once; past it a new
    /// one is refused: 503 with Retry-After on HTTP, closed on gRPC [default: 10000]
    #[arg(long, env = "CEMESH_MAX_CONNECTIONS")]
    pub max_connections: Option<std::num::NonZeroUsize>,
    #[cfg(feature = "kafka")]
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaArgs,
    /// Serve the ingress, admin API and gRPC over TLS with this certificate chain
    /// (PEM; re-read when the file changes), with --tls-key
    #[arg(long, env = "CEMESH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1)
    #[arg(long, env = "CEMESH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM) on the admin API and gRPC
    /// admin (mTLS): a verified certificate's name (URI SAN, DNS SAN or CN) is the
    /// subject auth.admin's roles match; without auth.admin it may do anything
    #[arg(long, env = "CEMESH_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// The issuer URL of delivery tokens (JWTs for destinations with an audience):
    /// where subscribers find /.well-known/openid-configuration [default: the admin
    /// API's own URL]
    #[arg(long, env = "CEMESH_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Serve an admin API anyone can call (no auth.admin in the config) on an address
    /// other than loopback; without it such a start is refused
    #[arg(long, env = "CEMESH_INSECURE_ADMIN")]
    pub insecure_admin: bool,
    /// Export spans over OTLP/HTTP (JSON) to this collector, e.g. http://127.0.0.1:4318
    /// (builds with the `otel` cargo feature only)
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Merges flags/env over the config file over the defaults.
pub fn settings(args: &ServeArgs) -> crate::error::Result<Settings> {
    let file = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::default(),
    };
    let max_body_bytes = match &args.max_body_size {
        Some(s) => parse_bytes(s).map_err(Error::MaxBodySize)?,
        None => file.max_body_size.map_or(DEFAULT_MAX_BODY, |b| b.0),
    };
    let channel = args.channel.or(file.channel).unwrap_or(ChannelKind::Sled);
    let limits = limits(args, &file, args.config.as_deref())?;
    Ok(Settings {
        config_dir: args
            .config_dir
            .clone()
            .or(file.config_dir)
            .unwrap_or_else(|| PathBuf::from("config")),
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data")),
        ingress_addr: args
            .ingress_addr
            .or(file.ingress_addr)
            .unwrap_or(([127, 0, 0, 1], 8080).into()),
        admin_addr: args
            .admin_addr
            .or(file.admin_addr)
            .unwrap_or(([127, 0, 0, 1], 9090).into()),
        grpc_addr: args
            .grpc_addr
            .or(file.grpc_addr)
            .unwrap_or(([127, 0, 0, 1], 50051).into()),
        channel,
        api_writes: args
            .api_writes
            .or(file.api_writes)
            .unwrap_or(channel != ChannelKind::Kafka),
        max_body_bytes,
        min_free_disk: match &args.min_free_disk {
            Some(s) => parse_bytes(s).map_err(Error::MinFreeDisk)?,
            None => file
                .min_free_disk
                .map_or(cemesh_channels::sled::DEFAULT_MIN_FREE_BYTES, |b| b.0),
        },
        sled_cache_bytes: match &args.sled_cache_size {
            Some(s) => parse_bytes(s).map_err(Error::SledCacheSize)?,
            None => file
                .sled_cache_size
                .map_or(crate::mesh::DEFAULT_SLED_CACHE_BYTES, |b| b.0),
        },
        sled_commit_delay: args
            .sled_commit_delay
            .or(file.sled_commit_delay.map(|d| d.0))
            .unwrap_or(cemesh_channels::sled::DEFAULT_COMMIT_DELAY),
        journal: {
            let mut j = cemesh_channels::journal::JournalConfig::default();
            if let Some(d) = &file.journal_retention {
                j.retention = d.0;
            }
            if let Some(b) = file.journal_max_size {
                j.max_bytes = b.0;
            }
            j
        },
        max_pending_bytes: match &args.max_pending_bytes {
            Some(s) => parse_bytes(s).map_err(Error::MaxPendingBytes)?,
            None => file
                .max_pending_bytes
                .map_or(cemesh_ingress::DEFAULT_MAX_PENDING_BYTES, |b| b.0),
        },
        header_budget: HeaderBudget {
            line: match &args.max_header_line_bytes {
                Some(s) => parse_bytes(s).map_err(Error::MaxHeaderLineBytes)?,
                None => file
                    .max_header_line_bytes
                    .map_or(HeaderBudget::DEFAULT_LINE as u64, |b| b.0),
            }
            .try_into()
            .unwrap_or(usize::MAX),
            total: match &args.max_header_bytes_total {
                Some(s) => parse_bytes(s).map_err(Error::MaxHeaderBytesTotal)?,
                None => file
                    .max_header_bytes_total
                    .map_or(HeaderBudget::DEFAULT_TOTAL as u64, |b| b.0),
            }
            .try_into()
            .unwrap_or(usize::MAX),
        },
        tls: match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(cemesh_ingress::tls::TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(Error::TlsPair),
        },
        tls_client_ca: args.tls_client_ca.clone().or(file.tls_client_ca),
        service_url_template: file
            .service_url_template
            .unwrap_or_else(|| DEFAULT_SERVICE_TEMPLATE.to_owned()),
        services: file.services,
        images: file.images,
        auth: file.auth,
        insecure_admin: args.insecure_admin || file.insecure_admin.unwrap_or(false),
        oidc_issuer: args.oidc_issuer.clone().or(file.oidc_issuer),
        limits,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        #[cfg(feature = "kafka")]
        kafka: crate::kafka::options(&args.kafka, &file.kafka)?,
        log_level: args.log_level.clone().or(file.log_level),
        shutdown_grace: args
            .shutdown_grace
            .or(file.shutdown_grace.map(|d| d.0))
            .unwrap_or(Duration::from_secs(30)),
    })
}

/// The listeners' timeouts and connection limit: flags over the file over the
/// defaults; a zero timeout in the file is refused (the flags refuse it as they parse).
fn limits(
    args: &ServeArgs,
    file: &ServerConfig,
    path: Option<&std::path::Path>,
) -> crate::error::Result<Limits> {
    let defaults = Limits::default();
    let timeout = |flag: Option<Duration>,
                   key: Option<crate::duration::HumaneDuration>,
                   field: &str,
                   default: Duration| {
        match (flag, key) {
            (Some(d), _) => Ok(d),
            (None, Some(d)) if d.0.is_zero() => Err(Error::Config {
                path: path.map(ToOwned::to_owned).unwrap_or_default(),
                line: None,
                field: field.to_owned(),
                message: "must be more than zero".to_owned(),
            }),
            (None, Some(d)) => Ok(d.0),
            (None, None) => Ok(default),
        }
    };
    Ok(Limits {
        header_read_timeout: timeout(
            args.header_read_timeout,
            file.header_read_timeout,
            "header_read_timeout",
            defaults.header_read_timeout,
        )?,
        body_read_timeout: timeout(
            args.body_read_timeout,
            file.body_read_timeout,
            "body_read_timeout",
            defaults.body_read_timeout,
        )?,
        idle_timeout: timeout(
            args.idle_timeout,
            file.idle_timeout,
            "idle_timeout",
            defaults.idle_timeout,
        )?,
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .map_or(defaults.max_connections, std::num::NonZeroUsize::get),
    })
}

/// A duration flag that must be more than zero, e.g. `300ms`, `10s`.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match crate::duration::parse_humane(s) {
        Ok(d) if d.is_zero() => Err("must be more than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A running broker: what `cemesh serve` runs, embeddable (the benchmark uses it).
pub struct Server {
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub control: Arc<ControlPlane>,
    on_demand: crate::ondemand::OnDemand,
    routes: Routes,
    grace: Duration,
    stop: CancellationToken,
    ingress_task: JoinHandle<std::io::Result<()>>,
    grpc_task: JoinHandle<crate::error::Result<()>>,
    admin_task: JoinHandle<std::io::Result<()>>,
    _watcher: Option<crate::reload::Watcher>,
}

impl Server {
    /// Stops gracefully: new events are answered 503 with `Retry-After`, deliveries
    /// in flight get the grace period to finish, cursors are committed and channels
    /// flushed and closed.
    pub async fn shutdown(self) {
        self.routes.start_draining();
        self.control.shutdown(self.grace).await;
        self.on_demand.shutdown().await;
        self.stop.cancel();
        let _ = self.ingress_task.await;
        let _ = self.grpc_task.await;
        let _ = self.admin_task.await;
    }
}

/// Binds both listeners, loads manifests and starts every broker and trigger, and
/// watches the config dir.
pub async fn start(mut settings: Settings) -> crate::error::Result<Server> {
    crate::metrics::install();
    // Before anything listens: a start refused for an open admin API binds nothing.
    let authenticator = settings.auth.authenticator(jwks_client()).await?;
    let client_ca = match (&settings.tls_client_ca, &settings.tls) {
        (Some(path), Some(_)) => Some(cemesh_ingress::tls::ClientCa::load(path)?),
        (Some(_), None) => return Err(Error::ClientCaWithoutTls),
        (None, _) => None,
    };
    let guard = crate::auth::AdminGuard::new(authenticator.clone(), settings.auth.admin.as_ref())
        .requiring_client_certificates(client_ca.is_some());
    guard.check_provable()?;
    check_exposure(&settings, &guard)?;
    let ingress = listen("ingress", settings.ingress_addr).await?;
    let admin = listen("admin", settings.admin_addr).await?;
    let grpc = listen("gRPC", settings.grpc_addr).await?;
    let (ingress_tls, admin_tls, grpc_tls) = match &settings.tls {
        Some(files) => {
            use cemesh_ingress::tls::acceptor;
            let ca = client_ca.as_ref();
            (
                Some(acceptor(files, &[b"http/1.1"], None)?),
                Some(acceptor(files, &[b"http/1.1"], ca)?),
                Some(acceptor(files, &[b"h2"], ca)?),
            )
        }
        None => (None, None, None),
    };
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let ingress_addr = ingress.local_addr().map_err(Error::LocalAddr)?;
    let admin_addr = admin.local_addr().map_err(Error::LocalAddr)?;
    let grpc_addr = grpc.local_addr().map_err(Error::LocalAddr)?;

    // On-demand services (a command instead of a URL) get their instance pools; refs
    // to them resolve to the pool.
    let on_demand = crate::ondemand::OnDemand::start(&mut settings.services);
    let own_issuers = match &settings.tls {
        Some(files) => cemesh_ingress::tls::issuers(files)?,
        None => Vec::new(),
    };
    let routes = Routes::default()
        .with_pending_budget(settings.max_pending_bytes)
        .with_header_budget(settings.header_budget)
        .with_auth(authenticator);
    #[allow(unused_mut)]
    let mut channels = Channels::new(settings.data_dir.clone())
        .with_min_free_disk(settings.min_free_disk)
        .with_sled_cache(settings.sled_cache_bytes)
        .with_sled_commit_delay(settings.sled_commit_delay);
    #[cfg(feature = "kafka")]
    if let Some(options) = settings.kafka.clone() {
        channels.set_kafka(crate::kafka::connect(options).await?);
    }
    let issuer = settings
        .oidc_issuer
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{admin_addr}"));
    let data_dir = settings.data_dir.clone();
    let signer = Arc::new(
        tokio::task::spawn_blocking(move || crate::signer::Signer::open(&data_dir, issuer))
            .await
            .map_err(|source| Error::Task {
                what: "OIDC key loading",
                source,
            })??,
    );
    {
        // A long-running server rotates its signing key too.
        let signer = signer.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let s = signer.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.rotate_if_due()).await {
                    tracing::warn!(error = %e, "Rotating the OIDC signing key failed");
                }
            }
        });
    }
    let journal_dir = settings.data_dir.join("journal");
    let journal_config = settings.journal;
    let journal = tokio::task::spawn_blocking(move || {
        cemesh_channels::journal::JournalStore::open(&journal_dir, journal_config)
    })
    .await
    .map_err(|source| Error::Task {
        what: "opening the event journal",
        source,
    })?
    .map_err(|e| Error::Journal(e.to_string()))?;
    let mesh = Mesh::new(routes.clone(), channels)
        .with_journal(journal.clone())
        .trusting(&own_issuers)
        .with_tokens(signer.clone())
        .with_default_access(settings.auth.default_mode());
    let registry = mesh.registry();
    let taps = mesh.taps();
    let background = mesh.background();
    let status = mesh.status();
    let control =
        ControlPlane::start(mesh, settings.clone(), format!("{scheme}://{ingress_addr}")).await?;
    let replays =
        crate::replay::Replays::new(&settings.data_dir, registry.clone(), background.clone());
    replays.resume().await;
    let watcher = crate::reload::watch(control.clone(), &settings.config_dir);
    tokio::spawn(crate::eventtypes::keep(
        routes.clone(),
        settings.data_dir.clone(),
        background.clone(),
    ));
    tokio::spawn(crate::dedup::keep(
        routes.clone(),
        settings.data_dir.clone(),
        background.clone(),
    ));

    let stop = CancellationToken::new();
    let ingress_task = {
        let stop = stop.clone();
        tokio::spawn(cemesh_ingress::server::serve_tls(
            "ingress",
            ingress,
            cemesh_ingress::service(routes.clone()),
            settings.limits,
            ingress_tls,
            async move { stop.cancelled().await },
        ))
    };
    let grpc_task = {
        let stop = stop.clone();
        let keda = crate::keda::service(registry.clone(), taps.clone());
        let admin = crate::grpc::AdminContext {
            control: control.clone(),
            registry: registry.clone(),
            background: background.clone(),
            guard: guard.clone(),
            replays: replays.clone(),
        };
        tokio::spawn(crate::grpc::serve(
            grpc,
            routes.clone(),
            keda,
            admin,
            settings.limits,
            grpc_tls,
            async move { stop.cancelled().await },
        ))
    };
    let stats = crate::stats::Stats::spawn(registry.clone(), taps.clone(), background.clone());
    let admin_task = {
        let stop = stop.clone();
        let app = crate::admin::router(crate::admin::AdminState {
            status,
            registry,
            taps,
            background,
            control: control.clone(),
            routes: routes.clone(),
            guard: guard.clone(),
            signer: signer.clone(),
            replays: replays.clone(),
            stats,
            journal: Some(journal.clone()),
            journal_retention: settings.journal.retention,
        });
        tokio::spawn(cemesh_ingress::server::serve_tls(
            "admin",
            admin,
            app,
            settings.limits,
            admin_tls,
            async move { stop.cancelled().await },
        ))
    };
    Ok(Server {
        ingress_addr,
        admin_addr,
        grpc_addr,
        control,
        on_demand,
        routes,
        grace: settings.shutdown_grace,
        stop,
        ingress_task,
        grpc_task,
        admin_task,
        _watcher: watcher,
    })
}

/// Secure by default: an admin API anyone may call is served on loopback only unless
/// `--insecure-admin` says so; an ingress anyone may send to beyond loopback is
/// worth one line of warning.
fn check_exposure(
    settings: &Settings,
    guard: &crate::auth::AdminGuard,
) -> crate::error::Result<()> {
    let ingress = settings.ingress_addr;
    if !guard.is_locked() {
        for (what, addr) in [
            ("admin", settings.admin_addr),
            ("gRPC (its Admin service)", settings.grpc_addr),
        ] {
            if addr.ip().is_loopback() {
                continue;
            }
            if !settings.insecure_admin {
                return Err(Error::OpenAdmin { what, addr });
            }
            tracing::warn!(%addr, "The {what} API is open to anyone who reaches {addr} (--insecure-admin)");
        }
    }
    if !ingress.ip().is_loopback()
        && settings.auth.default_mode() == cemesh_ingress::auth::DefaultMode::AllowAll
    {
        tracing::warn!(%ingress, "The ingress accepts events from anyone who reaches {ingress} for brokers no EventPolicy selects (auth.default_authorization: allow-all)");
    }
    Ok(())
}

/// The client that fetches OIDC issuers' keys (JWKS URLs).
fn jwks_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_default()
}

async fn listen(what: &'static str, addr: SocketAddr) -> crate::error::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { what, addr, source })
}

/// `cemesh serve`: start, announce the addresses, run until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> crate::error::Result<()> {
    let server = start(settings.clone()).await?;
    tracing::info!(
        ingress = %server.ingress_addr,
        admin = %server.admin_addr,
        grpc = %server.grpc_addr,
        config_dir = %settings.config_dir.display(),
        channel = settings.channel.as_str(),
        "cemesh listening"
    );
    shutdown_signal().await;
    tracing::info!(grace = ?settings.shutdown_grace, "Shutting down: draining");
    server.shutdown().await;
    tracing::info!("Stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn api_writes(args: &[&str]) -> bool {
        let cli = Cli::parse_from(std::iter::once("cemesh").chain(args.iter().copied()));
        settings(&cli.serve).expect("settings").api_writes
    }

    #[test]
    fn api_writes_are_off_by_default_on_kafka_only() {
        assert!(api_writes(&[]));
        assert!(api_writes(&["--channel", "memory"]));
        assert!(!api_writes(&["--channel", "kafka"]));
        assert!(api_writes(&["--channel", "kafka", "--api-writes", "true"]));
        assert!(!api_writes(&["--api-writes", "false"]));
    }

    #[tokio::test]
    async fn an_open_admin_api_beyond_loopback_needs_insecure_admin_or_roles() {
        let check = |args: &[&str], roles: bool| {
            let cli = Cli::parse_from(std::iter::once("cemesh").chain(args.iter().copied()));
            let settings = settings(&cli.serve).expect("settings");
            let mut auth = cemesh_ingress::auth::Authenticator::default();
            if roles {
                auth = cemesh_ingress::auth::Authenticator::new(
                    vec![cemesh_ingress::auth::StaticToken {
                        name: "ops".into(),
                        secret: cemesh_ingress::auth::Secret::new(b"0123456789abcdef"),
                        namespace: None,
                    }],
                    None,
                    false,
                );
            }
            let admin = crate::auth::AdminRoles {
                admin: vec!["ops".into()],
                ..Default::default()
            };
            let guard = crate::auth::AdminGuard::new(Arc::new(auth), roles.then_some(&admin));
            check_exposure(&settings, &guard).map_err(|e| e.to_string())
        };
        assert!(check(&[], false).is_ok());
        assert!(check(&["--admin-addr", "[::1]:9090"], false).is_ok());
        let err = check(&["--admin-addr", "0.0.0.0:9090"], false).unwrap_err();
        assert!(
            err.starts_with("refusing to serve the admin API to anyone on 0.0.0.0:9090"),
            "{err}"
        );
        let err = check(&["--grpc-addr", "10.0.0.1:50051"], false).unwrap_err();
        assert!(err.contains("gRPC (its Admin service)"), "{err}");
        assert!(check(&["--admin-addr", "0.0.0.0:9090", "--insecure-admin"], false).is_ok());
        assert!(check(&["--admin-addr", "0.0.0.0:9090"], true).is_ok());
    }
}
