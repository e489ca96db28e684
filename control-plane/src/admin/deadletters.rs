//! `/v1/namespaces/{ns}/triggers/{name}/deadletters`: list, show, redrive and purge
//! the events a trigger could not deliver.
//!
//! A redrive runs each letter through the trigger's full pipeline again (retries,
//! dead-letter sink) in the background; the letter is removed only once that
//! finished, so a crash mid-redrive loses nothing (it may redeliver).
//!
//! The operations themselves ([`list_page`], [`redrive_letters`], [`purge_all`]) are
//! shared with the gRPC `Admin` service; the handlers here only translate HTTP. The
//! store-level reads under them ([`letter_page`], [`every_letter`]) also serve the
//! sidecar's own dead letters.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use cemesh_channels::{ChannelError, DeadLetter, DeadLetterStore};
use cemesh_dispatcher::{DeadLettered, Processed, TriggerContext, TriggerKey};
use cemesh_proto::knative;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::resources::Resources;
use super::{AdminState, ApiError};
use crate::control::{Kind, ResKey};

/// Largest page.
const MAX_LIMIT: usize = 1000;

/// Why a dead-letter operation failed; REST and gRPC map it to their codes.
#[derive(Debug)]
pub(crate) enum DeadLetterError {
    /// No such trigger, or no such letter.
    NotFound(String),
    /// The trigger is defined but does not run (invalid, or its broker failed).
    NotRunning(String),
    /// The dead-letter store failed.
    Storage(String),
}

impl std::fmt::Display for DeadLetterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterError::NotFound(m)
            | DeadLetterError::NotRunning(m)
            | DeadLetterError::Storage(m) => f.write_str(m),
        }
    }
}

impl From<DeadLetterError> for ApiError {
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::NotFound(m) => ApiError::not_found(m),
            DeadLetterError::NotRunning(m) => ApiError::conflict(m),
            DeadLetterError::Storage(m) => ApiError::internal(m),
        }
    }
}

/// The running trigger `ns/name` (a Subscription's is `subscription.{name}`): "not
/// found" when no such trigger is defined, "not running" (with why) when it is
/// defined but does not run.
pub(crate) fn trigger_context(
    resources: &Resources,
    ns: &str,
    name: &str,
) -> Result<Arc<TriggerContext>, DeadLetterError> {
    let key = TriggerKey::new(ns, name);
    let running = resources
        .registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(ctx) = running {
        return Ok(ctx);
    }
    // A Subscription runs as trigger `subscription.{name}`, a PingSource's
    // delivery as `pingsource.{name}`, a KafkaSource's as `kafkasource.{name}.{i}`.
    let resource = if let Some(sub) = name.strip_prefix("subscription.") {
        ResKey::new(Kind::Subscription, ns, sub)
    } else if let Some(ping) = name.strip_prefix("pingsource.") {
        ResKey::new(Kind::PingSource, ns, ping)
    } else if let Some((kafka, _)) = name
        .strip_prefix("kafkasource.")
        .and_then(|n| n.rsplit_once('.'))
    {
        ResKey::new(Kind::KafkaSource, ns, kafka)
    } else {
        ResKey::new(Kind::Trigger, ns, name)
    };
    match resources.control.get(&resource) {
        None => Err(DeadLetterError::NotFound(format!(
            "trigger {key} not found"
        ))),
        Some(view) => {
            let ready = view.json["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["message"].as_str())
                .filter(|m| !m.is_empty())
                .unwrap_or("see `cemesh describe trigger`");
            Err(DeadLetterError::NotRunning(format!(
                "trigger {key} is defined but not running: {ready}"
            )))
        }
    }
}

fn context(state: &AdminState, ns: &str, name: &str) -> Result<Arc<TriggerContext>, ApiError> {
    Ok(trigger_context(&Resources::of(state), ns, name)?)
}

fn storage(e: impl std::fmt::Display) -> DeadLetterError {
    DeadLetterError::Storage(format!("dead-letter store: {e}"))
}

fn no_letter(trigger: &str, id: u64) -> DeadLetterError {
    DeadLetterError::NotFound(format!("trigger {trigger} has no dead letter {id}"))
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
            "to": a.to.as_str(),
            "url": a.url,
        })).collect::<Vec<_>>(),
        "event": event,
    })
}

/// A page of a trigger's (or a sidecar's) dead letters.
pub struct LetterPage {
    /// The trigger, `namespace/name`, or the sidecar's key.
    pub trigger: String,
    /// How many letters it has in all.
    pub total: u64,
    pub items: Vec<DeadLetter>,
    /// The `after` of the next page, when this one is full.
    pub next: Option<u64>,
}

impl LetterPage {
    /// The page as the REST APIs answer it: `{trigger, total, items, next}`.
    pub fn json(&self) -> Value {
        json!({
            "trigger": self.trigger,
            "total": self.total,
            "items": self.items.iter().map(letter_json).collect::<Vec<_>>(),
            "next": self.next,
        })
    }
}

/// Up to `limit` letters of `key` in `store` (default 100, at most [`MAX_LIMIT`])
/// with ids above `after`. Counted before listing, and never fewer than listed: a
/// letter stored between the two reads shows in `items` and in `total`.
pub async fn letter_page(
    store: &dyn DeadLetterStore,
    key: String,
    after: Option<u64>,
    limit: Option<usize>,
) -> Result<LetterPage, ChannelError> {
    let limit = limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let counted = store.count(&key).await?;
    let items = store.list(&key, after, limit).await?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|l| l.id))
        .flatten();
    Ok(LetterPage {
        total: counted.max(items.len() as u64),
        trigger: key,
        items,
        next,
    })
}

/// Every letter of `key` in `store`, page by page.
pub async fn every_letter(
    store: &dyn DeadLetterStore,
    key: &str,
) -> Result<Vec<DeadLetter>, ChannelError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(key, after, MAX_LIMIT).await?;
        let full = page.len() == MAX_LIMIT;
        after = page.last().map(|l| l.id);
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// A page of the trigger's letters ([`letter_page`]).
pub(crate) async fn list_page(
    ctx: &TriggerContext,
    after: Option<u64>,
    limit: Option<usize>,
) -> Result<LetterPage, DeadLetterError> {
    letter_page(
        &*ctx.dead_letters,
        ctx.runtime.key.to_string(),
        after,
        limit,
    )
    .await
    .map_err(storage)
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
    let page = list_page(&ctx, page.after, page.limit).await?;
    Ok(Json(page.json()))
}

pub async fn show(
    State(state): State<AdminState>,
    Path((ns, name, id)): Path<(String, String, u64)>,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = context(&state, &ns, &name)?;
    let trigger = ctx.runtime.key.to_string();
    match ctx.dead_letters.get(&trigger, id).await.map_err(storage)? {
        Some(l) => Ok(Json(letter_json(&l))),
        None => Err(no_letter(&trigger, id).into()),
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
        Err(no_letter(&trigger, id).into())
    }
}

/// Every letter of the trigger.
async fn all_letters(ctx: &TriggerContext) -> Result<Vec<DeadLetter>, DeadLetterError> {
    every_letter(&*ctx.dead_letters, &ctx.runtime.key.to_string())
        .await
        .map_err(storage)
}

/// Deletes every letter of the trigger; answers how many were deleted.
pub(crate) async fn purge_all(ctx: &TriggerContext) -> Result<u64, DeadLetterError> {
    let trigger = ctx.runtime.key.to_string();
    let mut deleted = 0u64;
    for l in all_letters(ctx).await? {
        if ctx
            .dead_letters
            .remove(&trigger, l.id)
            .await
            .map_err(storage)?
        {
            deleted += 1;
        }
    }
    Ok(deleted)
}

pub async fn purge(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let ctx = context(&state, &ns, &name)?;
    let deleted = purge_all(&ctx).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    #[serde(default)]
    ids: Option<Vec<u64>>,
    #[serde(default)]
    all: bool,
}

/// `?wait=true`: answer once every letter was redriven, with each one's outcome.
#[derive(Debug, Default, Deserialize)]
pub struct RedriveQuery {
    #[serde(default)]
    wait: bool,
}

/// The ids a redrive body names: `{"ids": [..]}`, or all (empty) for `{"all": true}`
/// or no body. An empty list is refused rather than read as "all": a script whose
/// selection came out empty must not redrive everything. Shared with the sidecar's
/// admin endpoint; the error is the message to send.
pub fn redrive_ids(body: &[u8]) -> Result<Vec<u64>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let request = serde_json::from_slice::<RedriveRequest>(body).map_err(|e| {
        format!("body must be JSON like {{\"ids\": [1, 2]}} or {{\"all\": true}}: {e}")
    })?;
    match (request.ids, request.all) {
        (Some(_), true) => Err("name either ids or all, not both".to_owned()),
        (None, true) => Ok(Vec::new()),
        (Some(ids), false) if !ids.is_empty() => Ok(ids),
        (Some(_), false) => Err(
            "ids is empty: name at least one dead letter, or send {\"all\": true} to redrive every one"
                .to_owned(),
        ),
        (None, false) => Err(
            "name the dead letters to redrive ({\"ids\": [1, 2]}) or send {\"all\": true}".to_owned(),
        ),
    }
}

/// `POST ...deadletters:redrive` with a body `{"ids": [..]}` or `{"all": true}` (all
/// when there is no body). Answers 202 with how many letters are being redriven, or with
/// `?wait=true` 200 once all were, with each letter's outcome.
pub async fn redrive(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<RedriveQuery>,
    headers: http::HeaderMap,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    let body = super::read_body(&headers, body).await?;
    let ctx = context(&state, &ns, &name)?;
    let ids = redrive_ids(&body).map_err(ApiError::bad_request)?;
    let running = redrive_letters(ctx, &ids, state.background.clone()).await?;
    if !query.wait {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "redriving": running.len() })),
        ));
    }
    let mut results = Vec::new();
    for (letter, task) in running {
        let outcome = task.await.unwrap_or(Processed::Interrupted);
        results.push(outcome_json(&letter, &outcome));
    }
    Ok((
        StatusCode::OK,
        Json(json!({ "redriven": results.len(), "results": results })),
    ))
}

/// One redriven letter's outcome: `delivered` (to the subscriber), `deadLetterSink`
/// (failed again; the sink took it), `deadLetters` (failed again; stored anew under
/// `deadLetter`), or `interrupted` (shutdown; the letter stays).
fn outcome_json(letter: &RedrivenLetter, outcome: &Processed) -> Value {
    let (name, to, new_id) = match outcome {
        Processed::Delivered => ("delivered", Some(letter.subscriber.clone()), None),
        Processed::DeadLettered(DeadLettered::Sink(url)) => {
            ("deadLetterSink", Some(url.clone()), None)
        }
        Processed::DeadLettered(DeadLettered::Store(id)) => ("deadLetters", None, Some(*id)),
        Processed::Interrupted => ("interrupted", None, None),
    };
    json!({
        "id": letter.id,
        "eventId": letter.event_id,
        "outcome": name,
        "to": to,
        "deadLetter": new_id,
    })
}

/// A letter a redrive runs, for its outcome.
pub(crate) struct RedrivenLetter {
    pub id: u64,
    pub event_id: String,
    pub subscriber: String,
}

/// Redrives the letters `ids` of the trigger (all when empty) in the background:
/// each runs through the trigger's pipeline again (without its `knativeerror*`
/// extensions), at most the trigger's parallelism at a time, and is removed once
/// that finished, unless `cancel` interrupted it. An unknown id refuses the whole
/// call before anything starts. Answers each letter with the task redriving it.
pub(crate) async fn redrive_letters(
    ctx: Arc<TriggerContext>,
    ids: &[u64],
    cancel: CancellationToken,
) -> Result<Vec<(RedrivenLetter, JoinHandle<Processed>)>, DeadLetterError> {
    let trigger = ctx.runtime.key.to_string();
    let letters = if ids.is_empty() {
        all_letters(&ctx).await?
    } else {
        let mut v = Vec::new();
        for id in ids {
            match ctx.dead_letters.get(&trigger, *id).await.map_err(storage)? {
                Some(l) => v.push(l),
                None => return Err(no_letter(&trigger, *id)),
            }
        }
        v
    };
    let permits = Arc::new(Semaphore::new(ctx.runtime.parallelism.max(1)));
    let mut running = Vec::with_capacity(letters.len());
    for letter in letters {
        let redriven = RedrivenLetter {
            id: letter.id,
            event_id: letter.event.id.clone(),
            subscriber: ctx.runtime.subscriber.to_string(),
        };
        let (ctx, cancel, permits) = (ctx.clone(), cancel.clone(), permits.clone());
        let task = tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return Processed::Interrupted;
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
            outcome
        });
        running.push((redriven, task));
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cemesh_channels::MemoryDeadLetters;

    fn letter(id: &str) -> DeadLetter {
        DeadLetter {
            id: 0,
            trigger: "ns/t".into(),
            event: cemesh_proto::Event::new(id, "/s", "t"),
            reason: "delivery failed: 500".into(),
            attempts: Vec::new(),
            dead_at: "2026-12-05T10:00:00Z".into(),
        }
    }

    /// A store where a letter arrives right after the first read of a page
    /// (count or list), as when a delivery dead-letters an event beside the admin
    /// request.
    #[derive(Debug, Default)]
    struct ArrivingBetweenReads {
        store: MemoryDeadLetters,
        arrived: std::sync::atomic::AtomicBool,
    }

    impl ArrivingBetweenReads {
        async fn then_arrive<T>(&self, read: T) -> Result<T, ChannelError> {
            if !self.arrived.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.store.put(letter("arrived")).await?;
            }
            Ok(read)
        }
    }

    #[async_trait::async_trait]
    impl DeadLetterStore for ArrivingBetweenReads {
        async fn put(&self, letter: DeadLetter) -> Result<u64, ChannelError> {
            self.store.put(letter).await
        }
        async fn list(
            &self,
            trigger: &str,
            after: Option<u64>,
            limit: usize,
        ) -> Result<Vec<DeadLetter>, ChannelError> {
            let read = self.store.list(trigger, after, limit).await?;
            self.then_arrive(read).await
        }
        async fn get(&self, trigger: &str, id: u64) -> Result<Option<DeadLetter>, ChannelError> {
            self.store.get(trigger, id).await
        }
        async fn remove(&self, trigger: &str, id: u64) -> Result<bool, ChannelError> {
            self.store.remove(trigger, id).await
        }
        async fn count(&self, trigger: &str) -> Result<u64, ChannelError> {
            let read = self.store.count(trigger).await?;
            self.then_arrive(read).await
        }
    }

    /// A letter stored while a page is read is either on the page and counted, or
    /// neither: never counted and missing (the sidecar's e2e test once saw
    /// `total: 1` with no items).
    #[tokio::test]
    async fn a_page_lists_every_letter_it_counts() {
        let store = ArrivingBetweenReads::default();
        let page = letter_page(&store, "ns/t".into(), None, None)
            .await
            .unwrap();
        assert_eq!(page.total, page.items.len() as u64, "{}", page.json());
        assert_eq!(page.json()["items"][0]["event"]["id"], "arrived");
        // Two letters, a page of one: the next page starts after the first.
        store.put(letter("second")).await.unwrap();
        let page = letter_page(&store, "ns/t".into(), None, Some(1))
            .await
            .unwrap();
        assert_eq!((page.items.len(), page.total), (1, 2));
        assert_eq!(page.next, Some(page.items[0].id));
    }

    #[test]
    fn a_redrive_names_its_letters_or_says_all_and_an_empty_list_is_refused() {
        assert_eq!(redrive_ids(b"").unwrap(), Vec::<u64>::new());
        assert_eq!(redrive_ids(b"{\"all\": true}").unwrap(), Vec::<u64>::new());
        assert_eq!(redrive_ids(b"{\"ids\": [3, 1]}").unwrap(), vec![3, 1]);
        let empty = redrive_ids(b"{\"ids\": []}").unwrap_err();
        assert!(
            empty.contains("ids is empty") && empty.contains("\"all\": true"),
            "{empty}"
        );
        assert!(redrive_ids(b"{}")
            .unwrap_err()
            .contains("name the dead letters"));
        assert!(redrive_ids(b"{\"ids\": [1], \"all\": true}")
            .unwrap_err()
            .contains("not both"));
        assert!(redrive_ids(b"{\"id\": [1]}")
            .unwrap_err()
            .contains("unknown field"));
    }
}
