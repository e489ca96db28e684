//! The admin port: health, readiness with detail.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;

use crate::mesh::MeshStatus;

pub fn router(status: Arc<Mutex<MeshStatus>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(status)
}

async fn readyz(State(status): State<Arc<Mutex<MeshStatus>>>) -> impl IntoResponse {
    let s = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let code = if s.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(s))
}
