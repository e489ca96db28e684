//! The sidecar's admin endpoints, on the local (`--listen`) port beside publishing:
//! health, counters, and the dead letters of the outbox — events the broker refused
//! for good. Paths and JSON mirror the mesh's dead-letter API
//! (`/v1/namespaces/{ns}/triggers/{name}/deadletters`) with the trigger part left out,
//! so `cemesh deadletters --sidecar URL` needs only a different base path.
//!
//! - `GET /v1/deadletters?after=ID&limit=N` → `{trigger, total, items, next}`
//! - `GET|DELETE /v1/deadletters/{id}`, `DELETE /v1/deadletters` (purge all)
//! - `POST /v1/deadletters:redrive` with optional `{"ids": [..]}` → back into the
//!   outbox (after the `knativeerror*` extensions are removed); answers 202
//!   `{"redriving": n}`. A letter is removed only once its event is in the outbox.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cemesh_channels::{DeadLetter, DeadLetterStore};
use cemesh_proto::knative;
use http::{header, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::SidecarError;
use crate::outbox::DEAD_LETTER_KEY;
use crate::Local;
// Dead letters look the same as the mesh's.
use cemesh_control::admin::deadletters::{every_letter, letter_json, letter_page, redrive_ids};

fn storage(e: impl std::fmt::Display) -> SidecarError {
    SidecarError::Storage(format!("dead-letter store: {e}"))
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready once serving; the body tells what the sidecar knows of the mesh and the
/// service (registration, health, outbox).
pub async fn readyz(State(local): State<Local>) -> Response {
    let pending = local.outbox.pending().await.ok();
    let dead = local.outbox.dead_letter_count().await.ok();
    let mut body = local.stats.json(pending, dead);
    body["ready"] = Value::Bool(true);
    body["registration"] = local.registration.json();
    Json(body).into_response()
}

pub async fn stats(State(local): State<Local>) -> Response {
    let pending = local.outbox.pending().await.ok();
    let dead = local.outbox.dead_letter_count().await.ok();
    Json(local.stats.json(pending, dead)).into_response()
}

pub async fn metrics(State(local): State<Local>) -> Response {
    let pending = local.outbox.pending().await.ok();
    let dead = local.outbox.dead_letter_count().await.ok();
    local.stats.record(pending, dead);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        cemesh_control::metrics::render_recorded(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn list(
    State(local): State<Local>,
    Query(page): Query<Page>,
) -> Result<Response, SidecarError> {
    let store = local.outbox.dead_letters();
    let page = letter_page(&*store, DEAD_LETTER_KEY.to_owned(), page.after, page.limit)
        .await
        .map_err(storage)?;
    Ok(Json(page.json()).into_response())
}

fn no_letter(id: u64) -> SidecarError {
    SidecarError::NotFound(format!("the sidecar has no dead letter {id}"))
}

pub async fn show(
    State(local): State<Local>,
    Path(id): Path<u64>,
) -> Result<Response, SidecarError> {
    match local
        .outbox
        .dead_letters()
        .get(DEAD_LETTER_KEY, id)
        .await
        .map_err(storage)?
    {
        Some(l) => Ok(Json(letter_json(&l)).into_response()),
        None => Err(no_letter(id)),
    }
}

pub async fn remove(
    State(local): State<Local>,
    Path(id): Path<u64>,
) -> Result<Response, SidecarError> {
    if local
        .outbox
        .dead_letters()
        .remove(DEAD_LETTER_KEY, id)
        .await
        .map_err(storage)?
    {
        Ok(Json(json!({ "deleted": 1 })).into_response())
    } else {
        Err(no_letter(id))
    }
}

async fn all_letters(local: &Local) -> Result<Vec<DeadLetter>, SidecarError> {
    every_letter(&*local.outbox.dead_letters(), DEAD_LETTER_KEY)
        .await
        .map_err(storage)
}

pub async fn purge(State(local): State<Local>) -> Result<Response, SidecarError> {
    let store = local.outbox.dead_letters();
    let mut deleted = 0u64;
    for l in all_letters(&local).await? {
        if store.remove(DEAD_LETTER_KEY, l.id).await.map_err(storage)? {
            deleted += 1;
        }
    }
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

pub async fn redrive(State(local): State<Local>, body: Bytes) -> Result<Response, SidecarError> {
    let ids = redrive_ids(&body).map_err(SidecarError::BadRequest)?;
    let store = local.outbox.dead_letters();
    let letters = if ids.is_empty() {
        all_letters(&local).await?
    } else {
        let mut v = Vec::with_capacity(ids.len());
        for id in &ids {
            match store.get(DEAD_LETTER_KEY, *id).await.map_err(storage)? {
                Some(l) => v.push(l),
                None => return Err(no_letter(*id)),
            }
        }
        v
    };
    let count = letters.len();
    for letter in letters {
        let mut event = letter.event;
        for ext in [
            knative::ERROR_DEST,
            knative::ERROR_CODE,
            knative::ERROR_DATA,
        ] {
            event.remove_extension(ext);
        }
        local.outbox.append(vec![event]).await?;
        store
            .remove(DEAD_LETTER_KEY, letter.id)
            .await
            .map_err(storage)?;
        tracing::info!(dead_letter = letter.id, "Dead letter back in the outbox");
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "redriving": count }))).into_response())
}
