//! `GET /v1/namespaces/{ns}/triggers/{name}/scale`: the scaling signals of one trigger
//! as JSON, for KEDA's `metrics-api` scaler (no Prometheus needed). Point its
//! `valueLocation` at `lag` (events waiting), `inFlight`, `deliveryRate` or
//! `oldestWaitingAgeSeconds`; `active` tells whether anything waits at all. Also
//! the resume of a trigger paused at its max-lag.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use std::sync::Arc;

use cemesh_dispatcher::{TriggerContext, TriggerKey};
use serde_json::json;

use super::{AdminState, ApiError};

pub async fn scale(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (key, ctx) = running(&state, &ns, &name)?;
    let s = crate::keda::read(&ctx)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({
        "trigger": key.to_string(),
        "lag": s.lag,
        "inFlight": s.in_flight,
        "deliveryRate": s.delivery_rate,
        "oldestWaitingAgeSeconds": s.oldest_waiting_age_seconds,
        "active": s.active,
        "breakerOpen": s.breaker_open,
        "paused": s.paused,
    })))
}

/// `POST /v1/namespaces/{ns}/triggers/{name}/resume`: lets a trigger paused at its
/// max-lag deliver again (`cemesh resume`). It pauses again only after its lag has
/// come back under the limit.
pub async fn resume(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (key, ctx) = running(&state, &ns, &name)?;
    let resumed = ctx.resume();
    Ok(Json(json!({
        "trigger": key.to_string(),
        "resumed": resumed,
    })))
}

/// The running trigger `ns/name`, or 404.
fn running(
    state: &AdminState,
    ns: &str,
    name: &str,
) -> Result<(TriggerKey, Arc<TriggerContext>), ApiError> {
    let key = TriggerKey::new(ns, name);
    let ctx = state
        .registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("trigger {key} is not running")))?;
    Ok((key, ctx))
}
