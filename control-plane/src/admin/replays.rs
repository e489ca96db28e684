//! Replays and cursor moves over REST (`cemesh replay`, `cemesh reset-cursor`):
//! - `POST /v1/namespaces/{ns}/triggers/{name}/replays` `{"from", "to"?, "filter"?}`
//!   starts a replay (201 with it);
//! - `GET /v1/replays`, `GET /v1/namespaces/{ns}/replays[/{id}]` show progress;
//! - `DELETE /v1/namespaces/{ns}/replays/{id}` cancels one;
//! - `POST /v1/namespaces/{ns}/triggers/{name}/cursor` `{"to", "force"?}` moves a
//!   trigger's cursor (409 when it would skip events and `force` is not set).

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use cemesh_dispatcher::TriggerKey;
use http::StatusCode;
use serde::Deserialize;

use super::{AdminState, ApiError};
use crate::point::{LogError, Point};
use crate::replay::ReplayRequest;

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::NotFound(m) => ApiError::not_found(m),
            LogError::Invalid(m) => ApiError::bad_request(m),
            LogError::Conflict(m) => ApiError::conflict(m),
            LogError::Channel(e) => ApiError::internal(e.to_string()),
        }
    }
}

/// A request's JSON body, or 400 naming what is wrong with it.
async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<T, ApiError> {
    let body = super::read_body(headers, body).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

pub async fn start(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
    headers: http::HeaderMap,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    let req: ReplayRequest = read_json(&headers, body).await?;
    let view = state
        .replays
        .start(&TriggerKey::new(&ns, &name), req)
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list_all(State(state): State<AdminState>) -> impl IntoResponse {
    Json(serde_json::json!({ "items": state.replays.list(None) }))
}

pub async fn list(State(state): State<AdminState>, Path(ns): Path<String>) -> impl IntoResponse {
    Json(serde_json::json!({ "items": state.replays.list(Some(&ns)) }))
}

pub async fn get(
    State(state): State<AdminState>,
    Path((ns, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .replays
        .get(&ns, &id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no replay {id} in namespace {ns}")))
}

pub async fn cancel(
    State(state): State<AdminState>,
    Path((ns, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.replays.cancel(&ns, &id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorRequest {
    to: String,
    #[serde(default)]
    force: bool,
}

pub async fn reset_cursor(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
    headers: http::HeaderMap,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    let req: CursorRequest = read_json(&headers, body).await?;
    let now = cemesh_proto::knative::now_ms();
    let to =
        Point::parse(&req.to, Some(now)).map_err(|e| ApiError::bad_request(format!("to: {e}")))?;
    let key = TriggerKey::new(&ns, &name);
    let moved = state
        .control
        .reset_cursor(&key, to.start_at(), req.force)
        .await?;
    Ok(Json(moved))
}
