//! `/v1/namespaces/{ns}/{brokers|triggers}[/{name}]`: list, get, apply (`PUT` a
//! manifest, YAML or JSON) and delete, Kubernetes-shaped. Everything goes through the
//! control plane; these handlers only translate HTTP.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde_json::{json, Value};

use super::{AdminState, ApiError};
use crate::control::{Applied, ApplyError, Kind, ResKey, ResourceView};

fn kind(plural: &str) -> Result<Kind, ApiError> {
    Kind::parse_plural(plural).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown resource type {plural:?}; use brokers or triggers"
        ))
    })
}

/// The view with live counters for triggers (lag, deliveries, dead letters).
async fn with_stats(state: &AdminState, view: ResourceView) -> Value {
    let mut json = view.json;
    if view.key.kind != Kind::Trigger {
        return json;
    }
    let ctx = state
        .registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&cemesh_dispatcher::TriggerKey::new(
            &view.key.namespace,
            &view.key.name,
        ))
        .cloned();
    if let Some(ctx) = ctx {
        let mut stats = ctx.stats.snapshot();
        let key = &ctx.runtime.key;
        if let Ok(lag) = ctx.broker.lag(&key.subscription_name()).await {
            stats["lag"] = json!(lag);
        }
        if let Ok(n) = ctx.dead_letters.count(&key.to_string()).await {
            stats["deadLettersStored"] = json!(n);
        }
        stats["subscriber"] = json!(ctx.runtime.subscriber.as_str());
        json["status"]["stats"] = stats;
    }
    json
}

pub async fn list_all(
    State(state): State<AdminState>,
    Path(plural): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    list_in(&state, kind(&plural)?, None).await
}

pub async fn list(
    State(state): State<AdminState>,
    Path((ns, plural)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    list_in(&state, kind(&plural)?, Some(&ns)).await
}

async fn list_in(
    state: &AdminState,
    kind: Kind,
    ns: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    let mut items = Vec::new();
    for v in state.control.list(kind, ns) {
        items.push(with_stats(state, v).await);
    }
    Ok(Json(
        json!({ "kind": format!("{}List", kind.as_str()), "items": items }),
    ))
}

pub async fn get(
    State(state): State<AdminState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let key = ResKey::new(kind(&plural)?, &ns, &name);
    let view = state
        .control
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("{key} not found")))?;
    Ok(Json(with_stats(&state, view).await))
}

fn apply_error(e: ApplyError) -> Response {
    match e {
        ApplyError::Invalid(problems) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": problems.join("\n"), "problems": problems })),
        )
            .into_response(),
        ApplyError::OwnedByFile(file) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("owned by the file {}: change it there, not through the API", file.display()),
                "file": file.display().to_string(),
            })),
        )
            .into_response(),
        ApplyError::NotFound(what) => ApiError::not_found(format!("{what} not found")).into_response(),
        ApplyError::Storage(e) => ApiError::internal(e).into_response(),
    }
}

pub async fn put(
    State(state): State<AdminState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let kind = match kind(&plural) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return ApiError::bad_request("the body is not UTF-8 YAML or JSON").into_response();
    };
    let key = ResKey::new(kind, &ns, &name);
    match state.control.apply(&key, text).await {
        Ok((applied, view)) => {
            let code = if applied == Applied::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut json = with_stats(&state, view).await;
            json["status"]["applied"] = json!(format!("{applied:?}").to_ascii_lowercase());
            (code, Json(json)).into_response()
        }
        Err(e) => apply_error(e),
    }
}

pub async fn delete(
    State(state): State<AdminState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Response {
    let kind = match kind(&plural) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let key = ResKey::new(kind, &ns, &name);
    match state.control.delete(&key).await {
        Ok(()) => Json(json!({ "deleted": key.to_string() })).into_response(),
        Err(e) => apply_error(e),
    }
}
