//! The admin port: health, readiness with detail, and the REST API under `/v1`
//! (Kubernetes-shaped paths) that the CLI talks to. With `auth.admin` configured,
//! every route but `/healthz`, `/readyz` (and `/metrics` unless locked too) needs a
//! caller with a role ([`guard`]): `read` for GET, `admin` for anything else.

mod dashboard;
pub mod deadletters;
mod replays;
pub(crate) mod resources;
mod scale;
mod tail;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::control::ControlPlane;
use crate::mesh::{MeshStatus, Registry, Taps};

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<Mutex<MeshStatus>>,
    pub registry: Registry,
    pub taps: Taps,
    /// Cancelled at shutdown; background work (redrives) stops with it.
    pub background: CancellationToken,
    pub control: Arc<ControlPlane>,
    pub routes: cemesh_ingress::Routes,
    /// Who may call what.
    pub guard: crate::auth::AdminGuard,
    /// The issuer of delivery tokens, whose keys `/.well-known/` publishes.
    pub signer: Arc<crate::signer::Signer>,
    /// Replays of the triggers' archives.
    pub replays: Arc<crate::replay::Replays>,
    /// The dashboard's live series.
    pub stats: crate::stats::Stats,
    /// The event journal, and how long it keeps entries.
    pub journal: Option<Arc<cemesh_channels::journal::JournalStore>>,
    pub journal_retention: std::time::Duration,
}

pub fn router(state: AdminState) -> Router {
    let dl = "/v1/namespaces/{ns}/triggers/{name}/deadletters";
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/.well-known/openid-configuration",
            get(|State(s): State<AdminState>| async move { Json(s.signer.discovery()) }),
        )
        .route(
            "/.well-known/jwks.json",
            get(|State(s): State<AdminState>| async move { Json(s.signer.jwks()) }),
        )
        .route("/ui", get(dashboard::redirect))
        .route("/ui/", get(dashboard::index))
        .route("/ui/{file}", get(dashboard::asset))
        .route("/v1/stats", get(dashboard::stats))
        .route(
            "/v1/namespaces/{ns}/brokers/{name}/journey/{id}",
            get(dashboard::journey),
        )
        .route("/v1/replays", get(replays::list_all))
        .route("/v1/namespaces/{ns}/replays", get(replays::list))
        .route(
            "/v1/namespaces/{ns}/replays/{id}",
            get(replays::get).delete(replays::cancel),
        )
        .route(
            "/v1/namespaces/{ns}/triggers/{name}/replays",
            post(replays::start),
        )
        .route(
            "/v1/namespaces/{ns}/triggers/{name}/cursor",
            post(replays::reset_cursor),
        )
        .route("/v1/{plural}", get(resources::list_all))
        .route("/v1/namespaces/{ns}/{plural}", get(resources::list))
        .route(
            "/v1/namespaces/{ns}/{plural}/{name}",
            get(resources::get)
                .put(resources::put)
                .delete(resources::delete),
        )
        .route(
            "/v1/namespaces/{ns}/brokers/{name}/events",
            get(tail::events),
        )
        .route(
            "/v1/namespaces/{ns}/triggers/{name}/scale",
            get(scale::scale),
        )
        .route(
            "/v1/namespaces/{ns}/triggers/{name}/resume",
            post(scale::resume),
        )
        .route(dl, get(deadletters::list).delete(deadletters::purge))
        .route(&format!("{dl}:redrive"), post(deadletters::redrive))
        .route(
            &format!("{dl}/{{id}}"),
            get(deadletters::show).delete(deadletters::remove),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A refused admin call's answer: 401 with a `Bearer` challenge, or 403; the body
/// names what was missing. The sidecar's admin endpoints answer the same.
pub fn refusal(e: &crate::auth::GuardError) -> Response {
    use crate::auth::GuardError;
    match e {
        GuardError::Unauthenticated(_) | GuardError::NoClientCertificate => {
            cemesh_ingress::ErrorAnswer::new(StatusCode::UNAUTHORIZED, e.to_string())
                .with_challenge("Bearer")
        }
        GuardError::Forbidden(_) => {
            cemesh_ingress::ErrorAnswer::new(StatusCode::FORBIDDEN, e.to_string())
        }
    }
    .into_response()
}

/// Checks the caller's role before any handler runs: the admin API's one gate.
async fn guard(
    State(state): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::auth::Role;
    let need = match req.uri().path() {
        "/healthz" | "/readyz" => None,
        // The dashboard's files: no data in them (every call they make is checked).
        p if p == "/ui" || p.starts_with("/ui/") => None,
        p if p.starts_with("/.well-known/") => None,
        "/metrics" if state.guard.metrics_open() => None,
        _ if matches!(*req.method(), http::Method::GET | http::Method::HEAD) => Some(Role::Read),
        _ => Some(Role::Admin),
    };
    if let Some(need) = need {
        if let Err(e) = state.guard.check_request(&req, need) {
            return refusal(&e);
        }
    }
    next.run(req).await
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    state.replays.export_metrics();
    if let Some(j) = &state.journal {
        metrics::gauge!(cemesh_proto::metric_names::JOURNAL_DROPPED).set(j.dropped() as f64);
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.registry).await,
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let mut s = state
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if state.routes.is_draining() {
        s.ready = false;
        s.problems.push("shutting down".into());
    }
    let code = if s.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(s))
}

/// An error answer: `{"error": "..."}` with its status.
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, msg.into())
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::CONFLICT, msg.into())
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.into())
    }
}

/// A body the admin could not read: 408 at the listener's body read timeout, 413
/// past [`MAX_BODY`], as on the ingress.
impl From<cemesh_ingress::IngressError> for ApiError {
    fn from(e: cemesh_ingress::IngressError) -> Self {
        ApiError(e.status(), e.to_string())
    }
}

/// The largest admin request body (a manifest, a redrive list).
pub const MAX_BODY: usize = 2 << 20;

/// Reads an admin request's body through the ingress's reader (timeouts and size
/// limit answered 408 and 413, where axum's extractor answers 400).
pub async fn read_body(
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    Ok(cemesh_ingress::accept::read_body(headers, body, MAX_BODY).await?)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        cemesh_ingress::ErrorAnswer::new(self.0, self.1).into_response()
    }
}
