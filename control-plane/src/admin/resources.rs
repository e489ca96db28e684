//! `/v1/namespaces/{ns}/{brokers|triggers}[/{name}]`: list, get, apply (`PUT` a
//! manifest, YAML or JSON) and delete, Kubernetes-shaped. Everything goes through the
//! control plane; these handlers only translate HTTP.
//! [`Resources`] is the layer they share with the gRPC `Admin` service.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cemesh_ingress::ErrorAnswer;
use http::StatusCode;
use serde_json::{json, Value};

use super::{AdminState, ApiError};
use crate::control::{Applied, ApplyError, ControlPlane, Kind, ResKey, ResourceView};
use crate::mesh::Registry;

fn kind(plural: &str) -> Result<Kind, ApiError> {
    Kind::parse_plural(plural).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown resource type {plural:?}: use one of {} (cemesh runs {})",
            Kind::plurals(),
            crate::manifest::supported_kinds()
        ))
    })
}

/// The resource operations both the REST handlers and the gRPC `Admin` service call:
/// the control plane, plus the live counters of running triggers. Neither front end
/// holds logic of its own; they only translate their protocol.
#[derive(Clone)]
pub(crate) struct Resources {
    pub control: Arc<ControlPlane>,
    pub registry: Registry,
}

impl Resources {
    pub fn of(state: &AdminState) -> Self {
        Resources {
            control: state.control.clone(),
            registry: state.registry.clone(),
        }
    }

    /// The resources of `kind` (in `ns`, or everywhere), with live counters.
    pub async fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<ResourceView> {
        let mut items = Vec::new();
        for v in self.control.list(kind, ns) {
            items.push(self.with_stats(v).await);
        }
        if kind == Kind::EventType {
            items.extend(self.control.discovered_event_types(ns));
        }
        items
    }

    /// One resource, with live counters.
    pub async fn get(&self, key: &ResKey) -> Result<ResourceView, ApplyError> {
        let view = self
            .control
            .get(key)
            .or_else(|| {
                (key.kind == Kind::EventType).then(|| {
                    self.control
                        .discovered_event_types(Some(&key.namespace))
                        .into_iter()
                        .find(|v| v.key == *key)
                })?
            })
            .ok_or_else(|| ApplyError::NotFound(key.to_string()))?;
        Ok(self.with_stats(view).await)
    }

    /// Applies a manifest; the view has live counters and `status.applied`.
    pub async fn apply(
        &self,
        key: &ResKey,
        manifest: &str,
    ) -> Result<(Applied, ResourceView), ApplyError> {
        let (applied, view) = self.control.apply(key, manifest).await?;
        let mut view = self.with_stats(view).await;
        view.json["status"]["applied"] = json!(applied_str(applied));
        Ok((applied, view))
    }

    pub async fn delete(&self, key: &ResKey) -> Result<(), ApplyError> {
        self.control.delete(key).await
    }

    /// The view with live counters for triggers (lag, deliveries, dead letters).
    async fn with_stats(&self, mut view: ResourceView) -> ResourceView {
        // A Subscription and a PingSource's delivery run as triggers; a
        // KafkaSource's first topic's delivery stands for it.
        let trigger = match view.key.kind {
            Kind::Trigger => view.key.name.clone(),
            Kind::Subscription => crate::manifest::channel::subscription_key(&view.key.name),
            Kind::PingSource => crate::manifest::sources::ping_trigger(&view.key.name),
            Kind::KafkaSource => crate::manifest::sources::kafka_trigger(&view.key.name, 0),
            _ => return view,
        };
        let ctx = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cemesh_dispatcher::TriggerKey::new(
                &view.key.namespace,
                &trigger,
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
            stats["maxLag"] = json!(ctx.runtime.max_lag.to_string());
            stats["breaker"] = json!(ctx.breaker.view());
            stats["paused"] = json!(ctx.pause.view());
            view.json["status"]["stats"] = stats;
        }
        view
    }
}

/// `created`, `configured` or `unchanged`.
pub(crate) fn applied_str(applied: Applied) -> &'static str {
    match applied {
        Applied::Created => "created",
        Applied::Configured => "configured",
        Applied::Unchanged => "unchanged",
    }
}

/// The message of a refusal from a file-owned resource, shared by REST and gRPC.
pub(crate) fn owned_by_file_message(file: &std::path::Path) -> String {
    format!(
        "owned by the file {}: change it there, not through the API",
        file.display()
    )
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
    let items: Vec<Value> = Resources::of(state)
        .list(kind, ns)
        .await
        .into_iter()
        .map(|v| v.json)
        .collect();
    Ok(Json(
        json!({ "kind": format!("{}List", kind.as_str()), "items": items }),
    ))
}

pub async fn get(
    State(state): State<AdminState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Response {
    let kind = match kind(&plural) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let key = ResKey::new(kind, &ns, &name);
    match Resources::of(&state).get(&key).await {
        Ok(view) => Json(view.json).into_response(),
        Err(e) => apply_error(e),
    }
}

fn apply_error(e: ApplyError) -> Response {
    let answer = match e {
        ApplyError::Invalid(problems) => {
            ErrorAnswer::new(StatusCode::BAD_REQUEST, problems.join("\n"))
                .with("problems", problems)
        }
        ApplyError::OwnedByFile(file) => {
            ErrorAnswer::new(StatusCode::CONFLICT, owned_by_file_message(&file))
                .with("file", file.display().to_string())
        }
        ApplyError::NotFound(what) => {
            ErrorAnswer::new(StatusCode::NOT_FOUND, format!("{what} not found"))
        }
        ApplyError::Storage(e) => ErrorAnswer::new(StatusCode::INTERNAL_SERVER_ERROR, e),
        ApplyError::ReadOnly => ErrorAnswer::new(StatusCode::METHOD_NOT_ALLOWED, e.to_string()),
    };
    answer.into_response()
}

pub async fn put(
    State(state): State<AdminState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let kind = match kind(&plural) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let body = match super::read_body(&headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return ApiError::bad_request("the body is not UTF-8 YAML or JSON").into_response();
    };
    let key = ResKey::new(kind, &ns, &name);
    match Resources::of(&state).apply(&key, text).await {
        Ok((applied, view)) => {
            let code = if applied == Applied::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(view.json)).into_response()
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
    match Resources::of(&state).delete(&key).await {
        Ok(()) => Json(json!({ "deleted": key.to_string() })).into_response(),
        Err(e) => apply_error(e),
    }
}
