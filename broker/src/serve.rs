//! `cemesh serve`: load manifests, bind, run the mesh until SIGINT/SIGTERM, then stop
//! gracefully (no new events accepted, in-flight deliveries finish).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::config::{
    ChannelKind, LogFormat, ServerConfig, Settings, DEFAULT_MAX_BODY, DEFAULT_SERVICE_TEMPLATE,
};
use crate::duration::parse_bytes;
use crate::manifest::{compile, load_dir, ResolveContext};
use crate::mesh::{Channels, Mesh};

/// Merges flags/env over the config file over the defaults.
pub fn settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::default(),
    };
    let max_body_bytes = match &args.max_body_size {
        Some(s) => parse_bytes(s).map_err(|e| anyhow::anyhow!("--max-body-size: {e}"))?,
        None => file.max_body_size.map_or(DEFAULT_MAX_BODY, |b| b.0),
    };
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
        channel: args.channel.or(file.channel).unwrap_or(ChannelKind::Sled),
        max_body_bytes,
        service_url_template: file
            .service_url_template
            .unwrap_or_else(|| DEFAULT_SERVICE_TEMPLATE.to_owned()),
        services: file.services,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
    })
}

/// A running broker: what `cemesh serve` runs, embeddable (the benchmark uses it).
pub struct Server {
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: CancellationToken,
    ingress_task: JoinHandle<std::io::Result<()>>,
    admin_task: JoinHandle<std::io::Result<()>>,
    mesh: Mesh,
}

impl Server {
    /// Stops gracefully: no new events accepted, in-flight deliveries finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = self.ingress_task.await;
        self.mesh.shutdown().await;
        let _ = self.admin_task.await;
    }
}

/// Loads manifests, binds both listeners and starts every broker and trigger.
pub async fn start(settings: Settings) -> anyhow::Result<Server> {
    let (resources, errors) = load_dir(&settings.config_dir);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "invalid manifests in {}:\n  {}",
            settings.config_dir.display(),
            list.join("\n  ")
        );
    }
    let ingress = TcpListener::bind(settings.ingress_addr)
        .await
        .with_context(|| format!("cannot listen on ingress address {}", settings.ingress_addr))?;
    let admin = TcpListener::bind(settings.admin_addr)
        .await
        .with_context(|| format!("cannot listen on admin address {}", settings.admin_addr))?;
    let ingress_addr = ingress.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let ctx = ResolveContext {
        ingress_base: format!("http://{ingress_addr}"),
        service_url_template: &settings.service_url_template,
        services: &settings.services,
        default_channel: settings.channel,
        default_max_body: settings.max_body_bytes,
    };
    let desired = compile(&resources, &ctx);
    for p in &desired.problems {
        tracing::error!(problem = %p, "Resource not started");
    }
    let routes = cemesh_ingress::Routes::default();
    let mut mesh = Mesh::new(routes.clone(), Channels::new(settings.data_dir.clone()));
    mesh.apply(desired).await;

    let stop = CancellationToken::new();
    let ingress_task = {
        let stop = stop.clone();
        tokio::spawn(cemesh_ingress::serve(ingress, routes, async move {
            stop.cancelled().await
        }))
    };
    let admin_task = {
        let stop = stop.clone();
        let app = crate::admin::router(crate::admin::AdminState {
            status: mesh.status(),
            registry: mesh.registry(),
            background: mesh.background(),
        });
        tokio::spawn(async move {
            axum::serve(admin, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    Ok(Server {
        ingress_addr,
        admin_addr,
        stop,
        ingress_task,
        admin_task,
        mesh,
    })
}

/// `cemesh serve`: start, announce the addresses, run until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let server = start(settings.clone()).await?;
    tracing::info!(
        ingress = %server.ingress_addr,
        admin = %server.admin_addr,
        config_dir = %settings.config_dir.display(),
        channel = settings.channel.as_str(),
        "cemesh listening"
    );
    shutdown_signal().await;
    tracing::info!("Shutting down");
    server.shutdown().await;
    tracing::info!("Stopped");
    Ok(())
}

async fn shutdown_signal() {
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
