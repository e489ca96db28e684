//! `/v1/namespaces/{ns}/triggers/{name}/deadletters`: list, show, redrive and purge
//! the events a trigger could not deliver.
//!
//! A redrive runs each letter through the trigger's full pipeline again (retries,
//! dead-letter sink) in the background; the letter is removed only once that
//! finished, so a crash mid-redrive loses nothing (it may redeliver).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use cemesh_channels::DeadLetter;
use cemesh_dispatcher::{Processed, TriggerContext, TriggerKey};
use cemesh_proto::knative;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::{AdminState, ApiError};

/// Largest page.
const MAX_LIMIT: usize = 1000;

fn context(state: &AdminState, ns: &str, name: &str) -> Result<Arc<TriggerContext>, ApiError> {
    let key = TriggerKey::new(ns, name);
    state
        .registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("trigger {key} is not running")))
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("dead-letter store: {e}"))
}

/// The JSON form of a dead letter; the event in structured mode.
pub fn letter_json(l: &DeadLetter) -> Value {
    let event: Value =
        serde_json::from_slice(&cemesh_proto::json::encode_event(&l.event)).unwrap_or(Value::Null);
    json!({
        "id": l.id,
        "trigger": l.trigger,
        "reason": l.reason,
        "deadAt": l.dead_at,
        "attempts": l.attempts.iter().map(|a| json!({
            "at": a.at,
            "status": a.status,
            "error": a.error,
            "latencyMs": a.latency_ms,
        })).collect::<Vec<_>>(),
        "event": event,
    })
}

#[derive(Debug, Deserialize)]
pub struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = context(&state, &ns, &name)?;
    let trigger = ctx.runtime.key.to_string();
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let items = ctx
        .dead_letters
        .list(&trigger, page.after, limit)
        .await
        .map_err(storage)?;
    let total = ctx.dead_letters.count(&trigger).await.map_err(storage)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|l| l.id))
        .flatten();
    Ok(Json(json!({
        "trigger": trigger,
        "total": total,
        "items": items.iter().map(letter_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

pub async fn show(
    State(state): State<AdminState>,
    Path((ns, name, id)): Path<(String, String, u64)>,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = context(&state, &ns, &name)?;
    let trigger = ctx.runtime.key.to_string();
    match ctx.dead_letters.get(&trigger, id).await.map_err(storage)? {
        Some(l) => Ok(Json(letter_json(&l))),
        None => Err(ApiError::not_found(format!(
            "trigger {trigger} has no dead letter {id}"
        ))),
    }
}

pub async fn remove(
    State(state): State<AdminState>,
    Path((ns, name, id)): Path<(String, String, u64)>,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = context(&state, &ns, &name)?;
    let trigger = ctx.runtime.key.to_string();
    if ctx
        .dead_letters
        .remove(&trigger, id)
        .await
        .map_err(storage)?
    {
        Ok(Json(json!({ "deleted": 1 })))
    } else {
        Err(ApiError::not_found(format!(
            "trigger {trigger} has no dead letter {id}"
        )))
    }
}

/// Every letter of the trigger, page by page.
async fn all_letters(ctx: &TriggerContext) -> Result<Vec<DeadLetter>, ApiError> {
    let trigger = ctx.runtime.key.to_string();
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = ctx
            .dead_letters
            .list(&trigger, after, MAX_LIMIT)
            .await
            .map_err(storage)?;
        let full = page.len() == MAX_LIMIT;
        after = page.last().map(|l| l.id);
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

pub async fn purge(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = context(&state, &ns, &name)?;
    let trigger = ctx.runtime.key.to_string();
    let mut deleted = 0u64;
    for l in all_letters(&ctx).await? {
        if ctx
            .dead_letters
            .remove(&trigger, l.id)
            .await
            .map_err(storage)?
        {
            deleted += 1;
        }
    }
    Ok(Json(json!({ "deleted": deleted })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    #[serde(default)]
    ids: Vec<u64>,
}

/// `POST ...deadletters:redrive` with an optional body `{"ids": [..]}` (all when
/// absent or empty). Answers 202 with how many letters are being redriven.
pub async fn redrive(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = context(&state, &ns, &name)?;
    let req: RedriveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "body must be JSON like {{\"ids\": [1, 2]}} (or empty for all): {e}"
            ))
        })?
    };
    let trigger = ctx.runtime.key.to_string();
    let letters = if req.ids.is_empty() {
        all_letters(&ctx).await?
    } else {
        let mut v = Vec::new();
        for id in &req.ids {
            match ctx.dead_letters.get(&trigger, *id).await.map_err(storage)? {
                Some(l) => v.push(l),
                None => {
                    return Err(ApiError::not_found(format!(
                        "trigger {trigger} has no dead letter {id}"
                    )))
                }
            }
        }
        v
    };
    let count = letters.len();
    let permits = Arc::new(Semaphore::new(ctx.runtime.parallelism.max(1)));
    for letter in letters {
        let (ctx, cancel, permits) = (ctx.clone(), state.background.clone(), permits.clone());
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let mut event = letter.event.clone();
            for ext in [
                knative::ERROR_DEST,
                knative::ERROR_CODE,
                knative::ERROR_DATA,
            ] {
                event.remove_extension(ext);
            }
            let outcome = ctx.process(&event, &cancel).await;
            tracing::info!(trigger = %ctx.runtime.key, dead_letter = letter.id, ?outcome, "Redriven");
            if outcome != Processed::Interrupted {
                if let Err(e) = ctx.dead_letters.remove(&letter.trigger, letter.id).await {
                    tracing::error!(dead_letter = letter.id, error = %e, "Removing a redriven dead letter failed");
                }
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "redriving": count }))))
}
