//! `GET /v1/namespaces/{ns}/triggers/{name}/scale`: the scaling signals of one trigger
//! as JSON, for KEDA's `metrics-api` scaler (no Prometheus needed).

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use cemesh_dispatcher::TriggerKey;
use serde_json::json;

use super::{AdminState, ApiError};

pub async fn scale(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let key = TriggerKey::new(&ns, &name);
    let ctx = state
        .registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("trigger {key} is not running")))?;
    let lag = ctx
        .broker
        .lag(&key.subscription_name())
        .await
        .map_err(|e| ApiError::internal(format!("reading the lag: {e}")))?;
    let in_flight = ctx
        .stats
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(0);
    Ok(Json(json!({
        "trigger": key.to_string(),
        "lag": lag,
        "inFlight": in_flight,
        "active": lag > 0 || in_flight > 0,
    })))
}
