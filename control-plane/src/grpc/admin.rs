//! `cemesh.v1.Admin`: the admin REST API's operations over gRPC. Every call goes to
//! the layer the REST handlers use ([`Resources`] for brokers and triggers, the
//! shared dead-letter operations of [`crate::admin::deadletters`]); this module only
//! translates messages and maps refusals to gRPC codes:
//!
//! - invalid manifest or request → INVALID_ARGUMENT, every problem in the message,
//!   one a line;
//! - owned by a file → FAILED_PRECONDITION, the file in the message and in the
//!   `cemesh-owner-file` metadata. Not ALREADY_EXISTS: apply is create-or-replace
//!   and delete removes, so existence is never what is wrong; the system's state (a
//!   file declares the resource) must change first, which is FAILED_PRECONDITION's
//!   meaning, and a client must not retry until it has;
//! - not found → NOT_FOUND; storage → INTERNAL.

use std::sync::Arc;

use cemesh_channels::DeadLetter as StoredLetter;
use cemesh_proto::pb::cemesh::v1 as pb;
use cemesh_proto::pb::cemesh::v1::admin_server::Admin;
use cemesh_proto::pb::prost_types::Timestamp;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::admin::deadletters::{
    letter_json, list_page, purge_all, redrive_letters, trigger_context, DeadLetterError,
};
use crate::admin::resources::{owned_by_file_message, Resources};
use crate::control::{Applied, ApplyError, ControlPlane, Kind, Owner, ResKey, ResourceView};
use crate::mesh::Registry;

/// Metadata key naming the file that owns a resource (FAILED_PRECONDITION).
pub const OWNER_FILE_METADATA: &str = "cemesh-owner-file";

/// What the `Admin` service needs: the control plane, the running triggers, and the
/// token that stops background redrives at shutdown.
#[derive(Clone)]
pub struct AdminContext {
    pub control: Arc<ControlPlane>,
    pub registry: Registry,
    pub background: CancellationToken,
    /// Who may call what ([`super::guard`]).
    pub guard: crate::auth::AdminGuard,
    pub replays: Arc<crate::replay::Replays>,
}

/// The `cemesh.v1.Admin` implementation.
pub struct AdminService {
    resources: Resources,
    background: CancellationToken,
    replays: Arc<crate::replay::Replays>,
}

impl AdminService {
    pub fn new(ctx: AdminContext) -> Self {
        AdminService {
            resources: Resources {
                control: ctx.control,
                registry: ctx.registry,
            },
            background: ctx.background,
            replays: ctx.replays,
        }
    }
}

/// A control-plane refusal as a gRPC status.
pub fn apply_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Invalid(problems) => Status::invalid_argument(problems.join("\n")),
        ApplyError::OwnedByFile(file) => {
            let mut metadata = MetadataMap::new();
            if let Ok(v) = MetadataValue::try_from(file.display().to_string()) {
                metadata.insert(OWNER_FILE_METADATA, v);
            }
            Status::with_metadata(
                Code::FailedPrecondition,
                owned_by_file_message(&file),
                metadata,
            )
        }
        ApplyError::NotFound(what) => Status::not_found(format!("{what} not found")),
        ApplyError::Storage(e) => Status::internal(e),
        ApplyError::ReadOnly => Status::failed_precondition(e.to_string()),
    }
}

fn dead_letter_status(e: DeadLetterError) -> Status {
    match e {
        DeadLetterError::NotFound(m) => Status::not_found(m),
        DeadLetterError::NotRunning(m) => Status::failed_precondition(m),
        DeadLetterError::Storage(m) => Status::internal(m),
    }
}

fn log_status(e: crate::point::LogError) -> Status {
    use crate::point::LogError;
    match e {
        LogError::NotFound(m) => Status::not_found(m),
        LogError::Invalid(m) => Status::invalid_argument(m),
        LogError::Conflict(m) => Status::failed_precondition(m),
        LogError::Channel(e) => Status::internal(e.to_string()),
    }
}

fn replay(v: crate::replay::ReplayView) -> pb::Replay {
    let json = serde_json::to_string(&v).unwrap_or_default();
    let state = serde_json::to_value(v.state)
        .ok()
        .and_then(|s| s.as_str().map(str::to_owned))
        .unwrap_or_default();
    pb::Replay {
        id: v.id,
        namespace: v.namespace,
        trigger: v.trigger,
        state,
        total: v.total,
        done: v.counters.done,
        delivered: v.counters.delivered,
        dead_lettered: v.counters.dead_lettered,
        json,
    }
}

fn kind(raw: i32) -> Result<Kind, Status> {
    Kind::from_grpc(raw).ok_or_else(|| {
        Status::invalid_argument(format!(
            "kind: set one of {}",
            crate::manifest::KINDS
                .iter()
                .filter_map(|k| pb::ResourceKind::try_from(k.grpc).ok())
                .map(|k| k.as_str_name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn pb_kind(kind: Kind) -> pb::ResourceKind {
    pb::ResourceKind::try_from(kind.info().grpc).unwrap_or(pb::ResourceKind::Unspecified)
}

/// An empty namespace is `default`, as in manifests.
fn namespace(ns: &str) -> &str {
    if ns.is_empty() {
        "default"
    } else {
        ns
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

fn key(raw_kind: i32, ns: &str, name: &str) -> Result<ResKey, Status> {
    Ok(ResKey::new(
        kind(raw_kind)?,
        namespace(ns),
        required("name", name)?,
    ))
}

fn resource(view: ResourceView) -> pb::Resource {
    pb::Resource {
        kind: pb_kind(view.key.kind) as i32,
        namespace: view.key.namespace,
        name: view.key.name,
        owner_file: match view.owner {
            Owner::File(f) => f.display().to_string(),
            Owner::Api => String::new(),
            Owner::Discovered => "discovered".into(),
        },
        json: view.json.to_string(),
    }
}

fn timestamp(rfc3339: &str) -> Option<Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).ok()?,
    })
}

fn letter(l: &StoredLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        id: l.id,
        trigger: l.trigger.clone(),
        reason: l.reason.clone(),
        dead_at: timestamp(&l.dead_at),
        attempts: u32::try_from(l.attempts.len()).unwrap_or(u32::MAX),
        event: Some(cemesh_proto::protobuf::to_proto(&l.event)),
        json: letter_json(l).to_string(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply_resource(
        &self,
        request: Request<pb::ApplyResourceRequest>,
    ) -> Result<Response<pb::ApplyResourceResponse>, Status> {
        let req = request.into_inner();
        let key = key(req.kind, &req.namespace, &req.name)?;
        let (applied, view) = self
            .resources
            .apply(&key, &req.manifest)
            .await
            .map_err(apply_status)?;
        let applied = match applied {
            Applied::Created => pb::ApplyOutcome::Created,
            Applied::Configured => pb::ApplyOutcome::Configured,
            Applied::Unchanged => pb::ApplyOutcome::Unchanged,
        };
        Ok(Response::new(pb::ApplyResourceResponse {
            resource: Some(resource(view)),
            applied: applied as i32,
        }))
    }

    async fn get_resource(
        &self,
        request: Request<pb::GetResourceRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        let req = request.into_inner();
        let key = key(req.kind, &req.namespace, &req.name)?;
        let view = self.resources.get(&key).await.map_err(apply_status)?;
        Ok(Response::new(resource(view)))
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let req = request.into_inner();
        let kind = kind(req.kind)?;
        let items = self
            .resources
            .list(kind, req.namespace.as_deref())
            .await
            .into_iter()
            .map(resource)
            .collect();
        Ok(Response::new(pb::ListResourcesResponse { items }))
    }

    async fn delete_resource(
        &self,
        request: Request<pb::DeleteResourceRequest>,
    ) -> Result<Response<pb::DeleteResourceResponse>, Status> {
        let req = request.into_inner();
        let key = key(req.kind, &req.namespace, &req.name)?;
        self.resources.delete(&key).await.map_err(apply_status)?;
        Ok(Response::new(pb::DeleteResourceResponse {}))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let ctx = trigger_context(
            &self.resources,
            namespace(&req.namespace),
            required("trigger", &req.trigger)?,
        )
        .map_err(dead_letter_status)?;
        let limit = (req.limit > 0).then(|| usize::try_from(req.limit).unwrap_or(usize::MAX));
        let page = list_page(&ctx, req.after, limit)
            .await
            .map_err(dead_letter_status)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            trigger: page.trigger,
            total: page.total,
            items: page.items.iter().map(letter).collect(),
            next: page.next,
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let ctx = trigger_context(
            &self.resources,
            namespace(&req.namespace),
            required("trigger", &req.trigger)?,
        )
        .map_err(dead_letter_status)?;
        match (req.ids.is_empty(), req.all) {
            (false, true) => {
                return Err(Status::invalid_argument("name either ids or all, not both"))
            }
            (true, false) => {
                return Err(Status::invalid_argument(
                    "ids is empty: name at least one dead letter, or set all to redrive every one",
                ))
            }
            _ => {}
        }
        let count = redrive_letters(ctx, &req.ids, self.background.clone())
            .await
            .map_err(dead_letter_status)?
            .len();
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            redriving: u32::try_from(count).unwrap_or(u32::MAX),
        }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let ctx = trigger_context(
            &self.resources,
            namespace(&req.namespace),
            required("trigger", &req.trigger)?,
        )
        .map_err(dead_letter_status)?;
        let deleted = purge_all(&ctx).await.map_err(dead_letter_status)?;
        Ok(Response::new(pb::PurgeDeadLettersResponse { deleted }))
    }

    async fn start_replay(
        &self,
        request: Request<pb::StartReplayRequest>,
    ) -> Result<Response<pb::Replay>, Status> {
        let req = request.into_inner();
        let key = cemesh_dispatcher::TriggerKey::new(
            namespace(&req.namespace),
            required("trigger", &req.trigger)?,
        );
        let asked = crate::replay::ReplayRequest {
            from: required("from", &req.from)?.to_owned(),
            to: req.to,
            filter: req.filter,
        };
        let view = self.replays.start(&key, asked).await.map_err(log_status)?;
        Ok(Response::new(replay(view)))
    }

    async fn get_replay(
        &self,
        request: Request<pb::GetReplayRequest>,
    ) -> Result<Response<pb::Replay>, Status> {
        let req = request.into_inner();
        let ns = namespace(&req.namespace);
        let id = required("id", &req.id)?;
        self.replays
            .get(ns, id)
            .map(|v| Response::new(replay(v)))
            .ok_or_else(|| Status::not_found(format!("no replay {id} in namespace {ns}")))
    }

    async fn list_replays(
        &self,
        request: Request<pb::ListReplaysRequest>,
    ) -> Result<Response<pb::ListReplaysResponse>, Status> {
        let req = request.into_inner();
        let items = self
            .replays
            .list(req.namespace.as_deref())
            .into_iter()
            .map(replay)
            .collect();
        Ok(Response::new(pb::ListReplaysResponse { items }))
    }

    async fn cancel_replay(
        &self,
        request: Request<pb::CancelReplayRequest>,
    ) -> Result<Response<pb::Replay>, Status> {
        let req = request.into_inner();
        let view = self
            .replays
            .cancel(namespace(&req.namespace), required("id", &req.id)?)
            .await
            .map_err(log_status)?;
        Ok(Response::new(replay(view)))
    }

    async fn reset_cursor(
        &self,
        request: Request<pb::ResetCursorRequest>,
    ) -> Result<Response<pb::ResetCursorResponse>, Status> {
        let req = request.into_inner();
        let key = cemesh_dispatcher::TriggerKey::new(
            namespace(&req.namespace),
            required("trigger", &req.trigger)?,
        );
        let now = cemesh_proto::knative::now_ms();
        let to = crate::point::Point::parse(required("to", &req.to)?, Some(now))
            .map_err(|e| Status::invalid_argument(format!("to: {e}")))?;
        let moved = self
            .resources
            .control
            .reset_cursor(&key, to.start_at(), req.force)
            .await
            .map_err(log_status)?;
        Ok(Response::new(pb::ResetCursorResponse {
            skipped: moved.skipped,
            again: moved.again,
            json: serde_json::to_string(&moved).unwrap_or_default(),
        }))
    }
}
