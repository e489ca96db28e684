//! `cemesh sidecar`: the same binary, run beside a service that knows nothing of
//! CloudEvents, retries or outages, so that it joins the mesh without code changes.
//!
//! Two halves, each a module:
//! - **Publishing** ([`publish`], [`outbox`], [`forwarder`]): the service posts to
//!   localhost (`--listen`); the sidecar answers 202 once the event is fsynced in a
//!   local sled outbox, then forwards it to the broker (`--broker-url`) with retries,
//!   in order per partition key, and removes it only after the broker's 202. A broker
//!   outage or a `kill -9` of the sidecar loses nothing. Refusals go to local dead
//!   letters ([`admin`]).
//! - **Receiving** ([`relay`], [`register`]): triggers deliver to the sidecar
//!   (`--deliver-listen`), which relays to the service (`--app-url`) with a concurrency
//!   limit, health gating and plain or CloudEvents protocol, and turns answers into
//!   replies. `--triggers` registers the service's triggers with the mesh.
//!
//! Start-up binds both ports and opens the outbox before announcing one parsable line,
//! `cemesh sidecar listening listen=ADDR deliver=ADDR ...`; registration with a mesh
//! that is not up yet continues in the background.

mod admin;
mod args;
mod error;
mod forwarder;
mod lock;
mod outbox;
mod publish;
mod register;
mod relay;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use args::{AppProtocol, SidecarArgs};
pub use error::SidecarError;

use outbox::Outbox;
use register::Registration;
use stats::Stats;

/// How long a graceful stop waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// What the local (publish and admin) handlers share.
#[derive(Clone)]
pub struct Local {
    outbox: Outbox,
    stats: Arc<Stats>,
    settings: Arc<LocalSettings>,
    registration: Arc<Registration>,
}

struct LocalSettings {
    source: String,
    partition_key_header: http::HeaderName,
    max_body_bytes: u64,
}

fn local_router(local: Local, guard: cemesh_control::auth::AdminGuard) -> axum::Router {
    axum::Router::new()
        .route("/publish/{ty}", any(publish::plain))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/v1/stats", get(admin::stats))
        .route("/v1/deadletters", get(admin::list).delete(admin::purge))
        .route("/v1/deadletters:redrive", post(admin::redrive))
        .route(
            "/v1/deadletters/{id}",
            get(admin::show).delete(admin::remove),
        )
        .fallback(publish::cloudevents)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            lock::middleware,
        ))
        .with_state(local)
}

/// A running sidecar (what `cemesh sidecar` runs; embeddable).
pub struct Sidecar {
    /// The bound publishing/admin address.
    pub listen: SocketAddr,
    /// The bound delivery address (absent without `--app-url`).
    pub deliver: Option<SocketAddr>,
    /// The subscriber URL given to the mesh.
    pub advertise: Option<String>,
    args: SidecarArgs,
    client: reqwest::Client,
    outbox: Outbox,
    registration: Arc<Registration>,
    /// Stops the delivery listener, the health monitor and registration.
    stop_receiving: CancellationToken,
    /// Stops the publishing listener.
    stop_publishing: CancellationToken,
    /// Stops the forwarder.
    stop_forwarding: CancellationToken,
    deliver_task: Option<JoinHandle<std::io::Result<()>>>,
    local_task: JoinHandle<std::io::Result<()>>,
    forward_task: JoinHandle<()>,
}

/// Binds both listeners, opens the outbox and starts every task.
pub async fn start(args: SidecarArgs) -> anyhow::Result<Sidecar> {
    cemesh_control::metrics::install();
    cemesh_control::metrics::describe(&cemesh_proto::metric_names::SIDECAR_METRICS);
    if args.triggers.is_some() && args.app_url.is_none() {
        anyhow::bail!(
            "--triggers needs --app-url: the triggers deliver to the service through the sidecar"
        );
    }
    if let Some(p) = &args.app_health_path {
        if !p.starts_with('/') {
            anyhow::bail!("--app-health-path {p:?} must start with '/'");
        }
    }
    if let Some(ty) = &args.reply_type {
        if ty.is_empty() {
            anyhow::bail!("--reply-type must not be empty");
        }
    }
    let guard = lock::guard(&args)?;
    let local_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let listen = local_listener.local_addr()?;
    let deliver_listener = match &args.app_url {
        Some(_) => Some(
            TcpListener::bind(args.deliver_listen)
                .await
                .with_context(|| {
                    format!("cannot listen on --deliver-listen {}", args.deliver_listen)
                })?,
        ),
        None => None,
    };
    let deliver = deliver_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let advertise = deliver.map(|d| args.advertise(d));
    let planned = match (&args.triggers, &advertise) {
        (Some(file), Some(advertise)) => register::plan(file, advertise)?,
        _ => Vec::new(),
    };
    let registration = Arc::new(Registration::new(planned));

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", args.data_dir.display()))?;
    let outbox = Outbox::open(
        &args.data_dir,
        args.outbox_max_events,
        args.outbox_max_bytes,
    )
    .await?;
    let stats = Arc::new(Stats::default());
    stats
        .app_configured
        .store(args.app_url.is_some(), std::sync::atomic::Ordering::Relaxed);

    let client = http_client(&args, false)?;
    let mesh_client = http_client(&args, true)?;
    let client_ca = match &args.tls_client_ca {
        Some(path) => Some(cemesh_ingress::tls::ClientCa::load(path)?),
        None => None,
    };
    let (tls, local_tls) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = cemesh_ingress::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            (
                Some(cemesh_ingress::tls::acceptor(&files, &[b"http/1.1"], None)?),
                Some(cemesh_ingress::tls::acceptor(
                    &files,
                    &[b"http/1.1"],
                    client_ca.as_ref(),
                )?),
            )
        }
        _ => (None, None),
    };
    let stop_receiving = CancellationToken::new();
    let stop_publishing = CancellationToken::new();
    let stop_forwarding = CancellationToken::new();

    let forward_task = tokio::spawn(forwarder::run(
        outbox.clone(),
        stats.clone(),
        mesh_client.clone(),
        forwarder::ForwarderConfig {
            broker_url: args.broker_url.clone(),
            authorization: cemesh_client::admin_client::bearer(&args.client)?,
            max_in_flight: args.max_in_flight.get(),
            backoff_delay: args.backoff_delay,
            backoff_max: args.backoff_max,
            timeout: args.broker_timeout,
        },
        stop_forwarding.clone(),
    ));

    let local = Local {
        outbox: outbox.clone(),
        stats: stats.clone(),
        settings: Arc::new(LocalSettings {
            source: args.source.clone(),
            partition_key_header: args.partition_key_header.clone(),
            max_body_bytes: args.max_body_size,
        }),
        registration: registration.clone(),
    };
    let limits = args.limits();
    // Metrics are also served on the delivery port, the one a cluster can scrape.
    let metrics_router = axum::Router::new()
        .route("/metrics", get(admin::metrics))
        .with_state(local.clone());
    let local_task = {
        let stop = stop_publishing.clone();
        tokio::spawn(cemesh_ingress::server::serve_tls(
            "sidecar publishing",
            local_listener,
            local_router(local, guard),
            limits,
            local_tls,
            async move { stop.cancelled().await },
        ))
    };

    let deliver_task = match (deliver_listener, &args.app_url) {
        (Some(listener), Some(app_url)) => {
            let health_url = match &args.app_health_path {
                Some(p) => Some(
                    app_url
                        .join(p)
                        .with_context(|| format!("--app-health-path {p:?}"))?,
                ),
                None => None,
            };
            let relay = relay::Relay::new(
                relay::RelayConfig {
                    app_url: app_url.clone(),
                    protocol: args.app_protocol,
                    timeout: args.app_timeout,
                    max_concurrency: args.app_max_concurrency.get(),
                    max_body_bytes: args.max_body_size,
                    health_url,
                    health_interval: args.app_health_interval,
                    reply_type: args.reply_type.clone(),
                    source: args.source.clone(),
                },
                stats.clone(),
                client.clone(),
            );
            tokio::spawn(relay.clone().monitor_health(stop_receiving.clone()));
            let stop = stop_receiving.clone();
            Some(tokio::spawn(cemesh_ingress::server::serve_tls(
                "sidecar delivery",
                listener,
                relay.router().merge(metrics_router),
                limits,
                tls,
                async move { stop.cancelled().await },
            )))
        }
        _ => None,
    };

    if args.triggers.is_some() {
        tokio::spawn(register::register_all(
            mesh_client.clone(),
            args.mesh_admin.clone(),
            registration.clone(),
            stop_receiving.clone(),
        ));
    }

    Ok(Sidecar {
        listen,
        deliver,
        advertise,
        args,
        client: mesh_client,
        outbox,
        registration,
        stop_receiving,
        stop_publishing,
        stop_forwarding,
        deliver_task,
        local_task,
        forward_task,
    })
}

impl Sidecar {
    /// Stops in the order that loses nothing: unregister (the mesh stops delivering
    /// here), drain deliveries, stop taking publishes, stop forwarding (what is left
    /// stays in the outbox for the next start), flush the outbox.
    pub async fn shutdown(self) {
        self.stop_receiving.cancel();
        if self.args.unregister_on_exit {
            register::unregister_all(&self.client, &self.args.mesh_admin, &self.registration).await;
        }
        if let Some(task) = self.deliver_task {
            if tokio::time::timeout(DRAIN, task).await.is_err() {
                tracing::warn!("Deliveries in flight did not finish in time");
            }
        }
        self.stop_publishing.cancel();
        if tokio::time::timeout(DRAIN, self.local_task).await.is_err() {
            tracing::warn!("Publishes in flight did not finish in time");
        }
        self.stop_forwarding.cancel();
        let _ = self.forward_task.await;
        if let Err(e) = self.outbox.close().await {
            tracing::error!(error = %e, "Closing the outbox failed; events past the last flush are sent again at the next start");
        }
    }
}

/// An HTTP client of the sidecar: pooled keep-alive, no redirects, trusting what
/// the client flags say (`--cacert`); the one for the mesh (broker, mesh admin) sends
/// the token, the one for the service does not. The built-in TLS roots are loaded
/// only when one of those URLs is `https`: parsing them costs start time and
/// resident memory for nothing on the usual plain-HTTP pod network.
fn http_client(args: &SidecarArgs, to_mesh: bool) -> anyhow::Result<reqwest::Client> {
    let https = args.broker_url.scheme() == "https"
        || args.app_url.as_ref().is_some_and(|u| u.scheme() == "https")
        || (args.triggers.is_some() && args.mesh_admin.starts_with("https:"));
    let builder = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        // The forwarder and the relay count and retry their own attempts.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .tls_built_in_root_certs(https);
    cemesh_client::admin_client::configure(builder, &args.client, to_mesh)?
        .build()
        .context("building the HTTP client")
}

/// `cemesh sidecar`: start, announce the addresses, run until SIGINT/SIGTERM.
pub async fn run(args: SidecarArgs) -> anyhow::Result<()> {
    let sidecar = start(args).await?;
    let deliver = sidecar
        .deliver
        .map_or_else(|| "none".to_owned(), |d| d.to_string());
    let app = sidecar
        .args
        .app_url
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    tracing::info!(
        listen = %sidecar.listen,
        deliver = %deliver,
        broker = %sidecar.args.broker_url,
        app = %app,
        advertise = sidecar.advertise.as_deref().unwrap_or("none"),
        "cemesh sidecar listening"
    );
    cemesh_control::serve::shutdown_signal().await;
    tracing::info!("Shutting down");
    sidecar.shutdown().await;
    tracing::info!("Stopped");
    Ok(())
}
