//! The control-plane service layer: the one place that changes what runs. The config
//! dir watcher, SIGHUP, the admin REST API (and later gRPC) all call it, so none of
//! them holds logic of its own.
//!
//! Resources come from two owners: files in `--config-dir` (changed by editing them)
//! and the admin API (stored under `<data-dir>/resources/` so they survive restarts).
//! A resource belongs to exactly one owner; the API refuses to change a file's.
//!
//! Every change is validated as a whole before anything runs: a reload with any new
//! problem is rejected and the running configuration stays as it was; an API `PUT`
//! with problems in its resource is answered 400. Only then is the difference applied.
//!
//! Reading, parsing and compiling manifests is CPU work that grows with what a user
//! sends: it runs on the blocking pool ([`blocking`]), never on a runtime worker, so a
//! large or hostile manifest cannot stall the ingress that shares those workers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};
use tokio::sync::Mutex as AsyncMutex;

use crate::config::Settings;
use crate::manifest::{
    compile, load_dir, parse_str, Desired, Located, ManifestError, ResolveContext, Resource,
};
use crate::mesh::{Mesh, MeshStatus};

pub use crate::manifest::Kind;

/// A resource's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ResKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        ResKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn of(r: &Resource) -> ResKey {
        let meta = r.metadata();
        ResKey::new(r.kind(), meta.namespace(), &meta.name)
    }

    /// `Trigger ns/name`, as manifest errors name resources.
    fn label(&self) -> String {
        format!("{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

impl fmt::Display for ResKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.kind.as_str().to_ascii_lowercase(),
            self.namespace,
            self.name
        )
    }
}

/// Who may change a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    File(PathBuf),
    Api,
    /// Recorded from traffic (an EventType a broker or channel saw).
    Discovered,
}

/// Why a change was refused.
#[derive(Debug)]
pub enum ApplyError {
    /// 400: every problem found.
    Invalid(Vec<String>),
    /// 409: the resource is owned by this file.
    OwnedByFile(PathBuf),
    /// 404.
    NotFound(String),
    /// 500: storing the resource failed.
    Storage(String),
    /// 405: this server takes resources from its config dir only.
    ReadOnly,
}

/// Why a server refuses API writes, and what to do instead.
pub const READ_ONLY_MESSAGE: &str = "this cemesh takes its resources from its config dir only (--api-writes false, the default with the kafka channel: every replica must run the same resources, and one applied here would live on one replica only); change the manifests in the config dir (the ConfigMap), or start cemesh with --api-writes true if it runs as a single replica";

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Invalid(p) => write!(f, "invalid: {}", p.join("; ")),
            ApplyError::OwnedByFile(file) => write!(
                f,
                "owned by the file {}: edit the file instead",
                file.display()
            ),
            ApplyError::NotFound(what) => write!(f, "{what} not found"),
            ApplyError::Storage(e) => write!(f, "{e}"),
            ApplyError::ReadOnly => f.write_str(READ_ONLY_MESSAGE),
        }
    }
}

/// What a `PUT` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

/// Bookkeeping kept per resource across changes.
#[derive(Debug, Clone)]
struct Tracked {
    spec: crate::manifest::Value,
    generation: i64,
    created: String,
}

struct Inner {
    mesh: Mesh,
    files: Vec<Located<Resource>>,
    api: BTreeMap<ResKey, Located<Resource>>,
    tracked: BTreeMap<ResKey, Tracked>,
    /// Documents in the config dir of kinds cemesh does not run.
    unsupported: Vec<ManifestError>,
    /// Problems of the running configuration, and of a rejected reload.
    problems: Vec<ManifestError>,
    rejected: Vec<ManifestError>,
    /// The running `EventPolicy`s, for status.
    policies: BTreeMap<String, crate::manifest::PolicyDesired>,
    /// What compiling said for each resource's status beyond Ready.
    statuses: BTreeMap<(Kind, String, String), Value>,
}

impl Inner {
    /// The config file defining `key`, if a file owns it.
    fn file_owning(&self, key: &ResKey) -> Option<PathBuf> {
        self.files
            .iter()
            .find(|l| ResKey::of(&l.value) == *key)
            .map(|l| l.file.clone())
    }
}

/// A resource as the API shows it: the manifest, its owner and a Knative-style status.
#[derive(Debug, Clone)]
pub struct ResourceView {
    pub key: ResKey,
    pub owner: Owner,
    pub json: Value,
}

pub struct ControlPlane {
    inner: AsyncMutex<Inner>,
    settings: Settings,
    ingress_base: String,
    mesh_status: Arc<Mutex<MeshStatus>>,
    views: RwLock<BTreeMap<ResKey, ResourceView>>,
    /// The running addresses, for the event types they recorded.
    routes: cemesh_ingress::Routes,
}

impl ControlPlane {
    /// Loads files and API resources and starts the mesh on them. Invalid resources
    /// are reported and skipped; unparseable files fail the start.
    pub async fn start(
        mesh: Mesh,
        settings: Settings,
        ingress_base: String,
    ) -> crate::error::Result<Arc<ControlPlane>> {
        let dir = settings.config_dir.clone();
        let stored = resources_dir(&settings.data_dir);
        let (files, errors, api) = blocking(move || {
            let (files, errors) = load_dir(&dir);
            // Resources stored by the API are read only when the files are.
            let api = if errors.iter().all(|e| e.unsupported_kind) {
                load_api(&stored, &files)
            } else {
                BTreeMap::new()
            };
            (files, errors, api)
        })
        .await;
        let (unsupported, errors) = split_unsupported(errors);
        if !errors.is_empty() {
            return Err(crate::Error::Manifests {
                dir: settings.config_dir.clone(),
                problems: errors.iter().map(ToString::to_string).collect(),
            });
        }
        let mesh_status = mesh.status();
        let routes = mesh.routes();
        let cp = Arc::new(ControlPlane {
            inner: AsyncMutex::new(Inner {
                mesh,
                files: Vec::new(),
                api: BTreeMap::new(),
                tracked: BTreeMap::new(),
                unsupported: Vec::new(),
                problems: Vec::new(),
                rejected: Vec::new(),
                policies: BTreeMap::new(),
                statuses: BTreeMap::new(),
            }),
            settings,
            ingress_base,
            mesh_status,
            views: RwLock::default(),
            routes,
        });
        {
            let mut inner = cp.inner.lock().await;
            inner.files = files;
            inner.api = api;
            inner.unsupported = unsupported;
            let desired = cp.compile(&inner.files, &inner.api).await;
            for p in inner.unsupported.iter().chain(&desired.problems) {
                tracing::error!(problem = %p, "Resource not started");
            }
            cp.run(&mut inner, desired).await;
        }
        Ok(cp)
    }

    /// Validates `files` and `api` together into a desired state, on the blocking pool.
    async fn compile(
        &self,
        files: &[Located<Resource>],
        api: &BTreeMap<ResKey, Located<Resource>>,
    ) -> Desired {
        let all: Vec<Located<Resource>> = files.iter().chain(api.values()).cloned().collect();
        let ingress_base = self.ingress_base.clone();
        let template = self.settings.service_url_template.clone();
        let services = self.settings.services.clone();
        let images = self.settings.images.clone();
        let default_channel = self.settings.channel;
        let default_max_body = self.settings.max_body_bytes;
        blocking(move || {
            let ctx = ResolveContext {
                ingress_base,
                service_url_template: &template,
                services: &services,
                images: &images,
                default_channel,
                default_max_body,
            };
            compile(&all, &ctx)
        })
        .await
    }

    /// Applies a validated desired state and refreshes every resource's status.
    async fn run(&self, inner: &mut Inner, mut desired: Desired) {
        let mut problems = inner.unsupported.clone();
        problems.append(&mut desired.problems);
        desired.problems = problems;
        inner.problems = desired.problems.clone();
        inner.policies = desired.policies.clone();
        inner.statuses = std::mem::take(&mut desired.status);
        inner.mesh.apply(desired).await;
        self.refresh(inner);
    }

    /// Re-reads the config dir. Any new problem rejects the whole reload: the running
    /// configuration stays, and the problems are reported (log, `/readyz`, status).
    pub async fn reload(&self) -> Result<(), Vec<String>> {
        let mut inner = self.inner.lock().await;
        let dir = self.settings.config_dir.clone();
        let (files, errors) = blocking(move || load_dir(&dir)).await;
        let (unsupported, mut new_problems) = split_unsupported(errors);
        let desired = self.compile(&files, &inner.api).await;
        let known: Vec<String> = inner.problems.iter().map(ToString::to_string).collect();
        new_problems.extend(
            unsupported
                .iter()
                .chain(&desired.problems)
                .filter(|p| !known.contains(&p.to_string()))
                .cloned(),
        );
        if !new_problems.is_empty() {
            for p in &new_problems {
                tracing::error!(problem = %p, "Reload rejected; the previous configuration keeps running");
            }
            let list = new_problems.iter().map(ToString::to_string).collect();
            inner.rejected = new_problems;
            self.refresh(&mut inner);
            return Err(list);
        }
        inner.rejected.clear();
        inner.files = files;
        inner.unsupported = unsupported;
        // A file now owning what the API owned takes it over.
        let owned: Vec<ResKey> = inner.files.iter().map(|l| ResKey::of(&l.value)).collect();
        inner.api.retain(|k, _| !owned.contains(k));
        self.run(&mut inner, desired).await;
        tracing::info!("Configuration reloaded");
        Ok(())
    }

    /// `PUT`: creates or replaces an API-owned resource from a manifest (YAML or
    /// JSON) that must name exactly `key`.
    pub async fn apply(
        &self,
        key: &ResKey,
        body: &str,
    ) -> Result<(Applied, ResourceView), ApplyError> {
        if !self.settings.api_writes {
            return Err(ApplyError::ReadOnly);
        }
        let text = body.to_owned();
        let (mut parsed, errors) =
            blocking(move || parse_str(Path::new("request body"), &text)).await;
        if !errors.is_empty() {
            return Err(ApplyError::Invalid(
                errors.iter().map(ToString::to_string).collect(),
            ));
        }
        if parsed.len() != 1 {
            return Err(ApplyError::Invalid(vec![format!(
                "request body: expected exactly one {} manifest (apiVersion eventing.knative.dev/v1), found {}",
                key.kind.as_str(),
                parsed.len()
            )]));
        }
        let mut located = parsed.remove(0);
        let got = ResKey::of(&located.value);
        if got != *key {
            return Err(ApplyError::Invalid(vec![format!(
                "request body: the manifest is {got} but the path names {key}"
            )]));
        }
        let mut inner = self.inner.lock().await;
        if let Some(file) = inner.file_owning(key) {
            return Err(ApplyError::OwnedByFile(file));
        }
        let path = resource_path(&self.settings.data_dir, key);
        located.file = path.clone();
        let previous = inner.api.get(key).map(|l| spec_of(&l.raw));
        let mut candidate = inner.api.clone();
        candidate.insert(key.clone(), located.clone());
        let desired = self.compile(&inner.files, &candidate).await;
        let label = key.label();
        let mine: Vec<String> = desired
            .problems
            .iter()
            .filter(|p| p.resource.as_deref() == Some(label.as_str()))
            .map(|p| {
                let mut p = p.clone();
                p.file = PathBuf::from("request body");
                p.to_string()
            })
            .collect();
        if !mine.is_empty() {
            return Err(ApplyError::Invalid(mine));
        }
        let applied = match previous {
            None => Applied::Created,
            Some(prev) if prev == spec_of(&located.raw) => Applied::Unchanged,
            Some(_) => Applied::Configured,
        };
        let text = body.to_owned();
        blocking(move || write_atomically(&path, &text))
            .await
            .map_err(|e| ApplyError::Storage(e.to_string()))?;
        inner.api = candidate;
        self.run(&mut inner, desired).await;
        tracing::info!(resource = %key, ?applied, "Applied through the admin API");
        let view = self
            .get(key)
            .ok_or_else(|| ApplyError::NotFound(key.to_string()))?;
        Ok((applied, view))
    }

    /// `DELETE` of an API-owned resource.
    pub async fn delete(&self, key: &ResKey) -> Result<(), ApplyError> {
        if !self.settings.api_writes {
            return Err(ApplyError::ReadOnly);
        }
        let mut inner = self.inner.lock().await;
        if let Some(file) = inner.file_owning(key) {
            return Err(ApplyError::OwnedByFile(file));
        }
        let Some(located) = inner.api.remove(key) else {
            return Err(ApplyError::NotFound(key.to_string()));
        };
        if let Err(e) = std::fs::remove_file(&located.file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                inner.api.insert(key.clone(), located);
                return Err(ApplyError::Storage(format!(
                    "removing the stored resource: {e}"
                )));
            }
        }
        let desired = self.compile(&inner.files, &inner.api).await;
        self.run(&mut inner, desired).await;
        tracing::info!(resource = %key, "Deleted through the admin API");
        Ok(())
    }

    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<ResourceView> {
        self.views
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|v| v.key.kind == kind && namespace.is_none_or(|ns| v.key.namespace == ns))
            .cloned()
            .collect()
    }

    /// The event types the running brokers and channels recorded, as `EventType`
    /// resources (`cemesh.dev/owner: discovered`).
    pub fn discovered_event_types(&self, namespace: Option<&str>) -> Vec<ResourceView> {
        use crate::manifest::channel::CHANNEL_SUFFIX;
        use crate::manifest::eventtype::{discovered_name, EVENTING_V1BETA2};
        let mut out = Vec::new();
        for endpoint in self.routes.all() {
            let key = &endpoint.key;
            if namespace.is_some_and(|ns| ns != key.namespace) {
                continue;
            }
            let reference = match key.name.strip_suffix(CHANNEL_SUFFIX) {
                Some(channel) => {
                    json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": channel})
                }
                None => {
                    json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": key.name})
                }
            };
            for seen in endpoint.event_types.list() {
                let name = discovered_name(&key.name, &seen.ty, &seen.source);
                let json = json!({
                    "apiVersion": EVENTING_V1BETA2,
                    "kind": "EventType",
                    "metadata": {
                        "name": name,
                        "namespace": key.namespace,
                        "creationTimestamp": seen.first_seen,
                        "annotations": {"cemesh.dev/owner": "discovered"},
                    },
                    "spec": {
                        "type": seen.ty,
                        "source": seen.source,
                        "schema": seen.dataschema,
                        "reference": reference,
                    },
                    "status": {
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Discovered", "message": ""}],
                        "count": seen.count,
                        "firstSeen": seen.first_seen,
                        "lastSeen": seen.last_seen,
                    },
                });
                out.push(ResourceView {
                    key: ResKey::new(Kind::EventType, &key.namespace, &name),
                    owner: Owner::Discovered,
                    json,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    pub fn get(&self, key: &ResKey) -> Option<ResourceView> {
        self.views
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Stops every trigger (waiting up to `grace`) and closes the channels.
    /// Moves a running trigger's cursor (see [`Mesh::reset_cursor`]).
    pub async fn reset_cursor(
        &self,
        key: &cemesh_dispatcher::TriggerKey,
        at: cemesh_channels::StartAt,
        force: bool,
    ) -> Result<crate::mesh::CursorReset, crate::point::LogError> {
        let mut inner = self.inner.lock().await;
        inner.mesh.reset_cursor(key, at, force).await
    }

    pub async fn shutdown(&self, grace: std::time::Duration) {
        let mut inner = self.inner.lock().await;
        inner.mesh.shutdown(grace).await;
    }

    /// Recomputes every resource's status from the running mesh.
    fn refresh(&self, inner: &mut Inner) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut status = self.mesh_status.lock().unwrap_or_else(|p| p.into_inner());
        status.rejected_reload = inner.rejected.iter().map(ToString::to_string).collect();
        let mut views = BTreeMap::new();
        let resources = inner
            .files
            .iter()
            .map(|l| (l, Owner::File(l.file.clone())))
            .chain(inner.api.values().map(|l| (l, Owner::Api)));
        for (located, owner) in resources {
            let key = ResKey::of(&located.value);
            let spec = spec_of(&located.raw);
            let tracked = inner
                .tracked
                .entry(key.clone())
                .and_modify(|t| {
                    if t.spec != spec {
                        t.spec = spec.clone();
                        t.generation += 1;
                    }
                })
                .or_insert_with(|| Tracked {
                    spec: spec.clone(),
                    generation: 1,
                    created: now.clone(),
                })
                .clone();
            let label = key.label();
            let problem = inner
                .problems
                .iter()
                .find(|p| p.resource.as_deref() == Some(label.as_str()));
            let failure = failure_of(&key, &status);
            let (ready, reason, message) = match (problem, failure) {
                (Some(p), _) => ("False", "InvalidSpec", p.to_string()),
                (None, Some(f)) => ("False", "NotRunning", f.clone()),
                (None, None) => ("True", "Running", String::new()),
            };
            let mut conditions = vec![json!({
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": message,
            })];
            // A rejected edit of this resource (or of its file, for YAML errors).
            if let Some(rejected) = inner.rejected.iter().find(|p| {
                p.resource.as_deref() == Some(label.as_str())
                    || (p.resource.is_none() && p.file == located.file)
            }) {
                conditions.push(json!({
                    "type": "ConfigApplied",
                    "status": "False",
                    "reason": "InvalidEdit",
                    "message": format!("the running configuration is the previous one: {rejected}"),
                }));
            }
            if let Resource::Broker(b) = &located.value {
                for note in b.notes() {
                    conditions.push(json!({
                        "type": note.kind,
                        "status": "True",
                        "severity": note.severity,
                        "reason": note.reason,
                        "message": note.message,
                    }));
                }
            }
            let mut st = json!({
                "observedGeneration": tracked.generation,
                "conditions": conditions,
            });
            match key.kind {
                Kind::Broker => {
                    let broker = cemesh_ingress::BrokerKey::new(&key.namespace, &key.name);
                    st["address"] = json!({
                        "url": format!("{}/{}/{}", self.ingress_base, key.namespace, key.name),
                        "audience": cemesh_ingress::auth::Access::broker_audience(&key.namespace, &key.name),
                    });
                    let policies: Vec<Value> = inner
                        .policies
                        .iter()
                        .filter(|(_, p)| p.brokers.contains(&broker))
                        .map(|(name, _)| {
                            let name = name.rsplit('/').next().unwrap_or(name);
                            json!({"apiVersion": crate::manifest::EVENTING_V1ALPHA1, "name": name})
                        })
                        .collect();
                    if !policies.is_empty() {
                        st["policies"] = Value::Array(policies);
                    }
                }
                Kind::EventPolicy => {
                    if let Some(p) = inner
                        .policies
                        .get(&format!("{}/{}", key.namespace, key.name))
                    {
                        st["from"] =
                            json!(p.policy.from.iter().map(|f| f.as_str()).collect::<Vec<_>>());
                        st["brokers"] = json!(p
                            .brokers
                            .iter()
                            .map(|b| b.name.as_str())
                            .collect::<Vec<_>>());
                    }
                }
                Kind::Trigger => {}
                _ => {}
            }
            if let Some(Value::Object(extra)) =
                inner
                    .statuses
                    .get(&(key.kind, key.namespace.clone(), key.name.clone()))
            {
                for (k, v) in extra {
                    st[k] = v.clone();
                }
            }
            if st.get("durable") == Some(&json!(false)) {
                conditions_push(
                    &mut st,
                    json!({
                        "type": "Durable",
                        "status": "False",
                        "severity": "Info",
                        "reason": "InMemory",
                        "message": "events are kept in memory only: a restart loses what subscribers have not taken yet",
                    }),
                );
            }
            let mut manifest = serde_json::to_value(&located.raw).unwrap_or(Value::Null);
            if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), json!(key.namespace));
                meta.insert("generation".into(), json!(tracked.generation));
                meta.insert("creationTimestamp".into(), json!(tracked.created));
                let owner_text = match &owner {
                    Owner::File(f) => format!("file:{}", f.display()),
                    Owner::Api => "api".to_owned(),
                    Owner::Discovered => "discovered".to_owned(),
                };
                let ann = meta.entry("annotations").or_insert_with(|| json!({}));
                if let Some(ann) = ann.as_object_mut() {
                    ann.insert("cemesh.dev/owner".into(), json!(owner_text));
                }
            }
            manifest["status"] = st;
            views.insert(
                key.clone(),
                ResourceView {
                    key,
                    owner,
                    json: manifest,
                },
            );
        }
        subscribers_into_channels(&mut views);
        let live: Vec<ResKey> = views.keys().cloned().collect();
        inner.tracked.retain(|k, _| live.contains(k));
        *self.views.write().unwrap_or_else(|p| p.into_inner()) = views;
    }
}

/// Why the running parts of `key` are not running, if one is not: a channel is a
/// broker at its address, a subscription a trigger, a flow both.
fn failure_of<'a>(key: &ResKey, status: &'a MeshStatus) -> Option<&'a String> {
    use crate::manifest::channel::{channel_address, subscription_key};
    let ns = &key.namespace;
    match key.kind {
        Kind::Broker => status.broker_failures.get(&format!("{ns}/{}", key.name)),
        Kind::Trigger => status.trigger_failures.get(&format!("{ns}/{}", key.name)),
        Kind::EventPolicy => None,
        Kind::Channel | Kind::InMemoryChannel | Kind::KafkaChannel => status
            .broker_failures
            .get(&format!("{ns}/{}", channel_address(&key.name))),
        Kind::Subscription => status
            .trigger_failures
            .get(&format!("{ns}/{}", subscription_key(&key.name))),
        Kind::PingSource => status.trigger_failures.get(&format!(
            "{ns}/{}",
            crate::manifest::sources::ping_trigger(&key.name)
        )),
        Kind::ContainerSource | Kind::EventType | Kind::SinkBinding => None,
        Kind::Sequence | Kind::Parallel | Kind::KafkaSource => {
            let prefixes = match key.kind {
                Kind::Sequence => [format!("{ns}/{}-kn-sequence-", key.name), String::new()],
                Kind::Parallel => [format!("{ns}/{}-kn-parallel", key.name), String::new()],
                _ => [
                    format!("{ns}/{}-kn-kafkasource-", key.name),
                    format!("{ns}/kafkasource.{}.", key.name),
                ],
            };
            status
                .broker_failures
                .iter()
                .chain(&status.trigger_failures)
                .find(|(k, _)| prefixes.iter().any(|p| !p.is_empty() && k.starts_with(p)))
                .map(|(_, v)| v)
        }
    }
}

fn conditions_push(status: &mut Value, condition: Value) {
    if let Some(list) = status["conditions"].as_array_mut() {
        list.push(condition);
    }
}

/// Knative's `status.subscribers` of each channel: its subscriptions and whether
/// each is ready.
fn subscribers_into_channels(views: &mut BTreeMap<ResKey, ResourceView>) {
    let mut found: Vec<(ResKey, Value)> = Vec::new();
    for v in views.values() {
        if v.key.kind != Kind::Subscription {
            continue;
        }
        let channel = &v.json["spec"]["channel"];
        let (Some(kind), Some(name)) = (channel["kind"].as_str(), channel["name"].as_str()) else {
            continue;
        };
        let Some(kind) = Kind::parse_plural(kind) else {
            continue;
        };
        let ready = v.json["status"]["conditions"][0].clone();
        found.push((
            ResKey::new(kind, &v.key.namespace, name),
            json!({
                "uid": format!("{}/{}", v.key.namespace, v.key.name),
                "observedGeneration": v.json["metadata"]["generation"],
                "ready": ready["status"],
                "message": ready["message"],
            }),
        ));
    }
    for (channel, entry) in found {
        if let Some(view) = views.get_mut(&channel) {
            let list = view.json["status"]
                .as_object_mut()
                .map(|st| st.entry("subscribers").or_insert_with(|| json!([])));
            if let Some(Value::Array(list)) = list {
                list.push(entry);
            }
        }
    }
}

/// Runs CPU-bound or blocking work (reading, parsing, compiling manifests; writing
/// them) on the blocking pool and waits for it without holding a runtime worker. A
/// panic there is raised here, as if the work had run inline.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("manifest work on the blocking pool did not finish: {e}"),
        },
    }
}

/// Documents of kinds cemesh does not run (problems of their own, reported like an
/// invalid resource), and the errors that make a file unreadable.
fn split_unsupported(errors: Vec<ManifestError>) -> (Vec<ManifestError>, Vec<ManifestError>) {
    errors.into_iter().partition(|e| e.unsupported_kind)
}

/// The spec part of a manifest (what a change of bumps the generation), compared as a
/// YAML value.
fn spec_of(raw: &crate::manifest::Value) -> crate::manifest::Value {
    let mut v = raw.clone();
    if let Some(m) = v.as_mapping_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(|x| x.as_mapping_mut()) {
            for k in [
                "generation",
                "resourceVersion",
                "creationTimestamp",
                "uid",
                "managedFields",
            ] {
                meta.remove(k);
            }
        }
    }
    v
}

fn resources_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("resources")
}

fn resource_path(data_dir: &Path, key: &ResKey) -> PathBuf {
    resources_dir(data_dir).join(format!(
        "{}.{}.{}.yaml",
        key.kind.as_str().to_ascii_lowercase(),
        key.namespace,
        key.name
    ))
}

/// Reads resources stored by the API; one a file now owns is ignored (and said so).
fn load_api(dir: &Path, files: &[Located<Resource>]) -> BTreeMap<ResKey, Located<Resource>> {
    let (stored, errors) = load_dir_quiet(dir);
    for e in errors {
        tracing::error!(problem = %e, "A resource stored by the admin API cannot be read; ignored");
    }
    let mut out = BTreeMap::new();
    for l in stored {
        let key = ResKey::of(&l.value);
        if let Some(f) = files.iter().find(|f| ResKey::of(&f.value) == key) {
            tracing::warn!(resource = %key, file = %f.file.display(), "A config file now defines this API resource; the file wins");
            continue;
        }
        out.insert(key, l);
    }
    out
}

fn load_dir_quiet(dir: &Path) -> (Vec<Located<Resource>>, Vec<ManifestError>) {
    if !dir.exists() {
        return (Vec::new(), Vec::new());
    }
    load_dir(dir)
}

/// Writes `text` to `path` through a temporary file and a rename, fsynced, so a crash
/// leaves the old or the new content, never a mix.
/// Why a resource could not be written under the data dir.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct WriteError {
    step: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn write_atomically(path: &Path, text: &str) -> Result<(), WriteError> {
    use std::io::Write as _;
    let fail = |step, path: &Path| {
        let path = path.to_owned();
        move |source| WriteError { step, path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail("creating", dir))?;
    let tmp = path.with_extension("yaml.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(fail("writing", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(fail("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(fail("renaming to", path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
