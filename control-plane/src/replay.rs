//! Replays and cursor resets: the admin API's way back into a broker's archive.
//!
//! A replay re-delivers one trigger's share of a range of the archive (what
//! `cemesh.dev/retention` keeps) through that trigger's pipeline; the dispatcher's
//! [`cemesh_dispatcher::replay`] runs it on a passive subscription of its own, so the
//! trigger's live cursor and every other trigger are untouched. Each replay is a JSON
//! file under `{data-dir}/replays/`, rewritten every second while it runs: a replay
//! interrupted by a crash or a restart resumes from its subscription's cursor (what
//! was in flight is delivered again, at least once), with its counters as last
//! written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cemesh_channels::{Channel, Position, StartAt, REPLAY_PREFIX};
use cemesh_dispatcher::filter::{DialectFilter, FilterSpec};
use cemesh_dispatcher::replay::{self, Bounded, Range, ReplayProgress};
use cemesh_dispatcher::{MaxLag, TriggerContext, TriggerKey, TriggerStats};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::mesh::Registry;
use crate::point::{LogError as ReplayError, Point};

/// Finished replays kept for `cemesh replay status`; older ones are forgotten.
const KEEP_FINISHED: usize = 100;
/// How often a running replay's file is rewritten.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// What a caller asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub from: String,
    #[serde(default)]
    pub to: Option<String>,
    /// CESQL that events must also match.
    #[serde(default)]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum ReplayState {
    Running,
    Completed,
    Cancelled,
    Failed,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Offsets of the range finished, whatever became of them.
    pub done: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retries: u64,
    /// Outside the time window, not matched by the replay's filter, gone before read.
    pub outside_window: u64,
    pub unmatched: u64,
    pub expired: u64,
}

/// A replay as the API shows it and as its file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayView {
    pub id: String,
    pub namespace: String,
    pub trigger: String,
    pub broker: String,
    pub from: String,
    pub to: Option<String>,
    pub filter: Option<String>,
    pub state: ReplayState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Offsets the range covers (at most: a range by time may end early).
    pub total: u64,
    pub counters: Counters,
    /// Per partition, where the range began and where it ends.
    pub start_offsets: Vec<Position>,
    pub end_offsets: Vec<Position>,
    /// The arrival-time window (Unix ms).
    pub window: (Option<i64>, Option<i64>),
}

struct Running {
    view: Mutex<ReplayView>,
    /// Counters written before this run (a resumed replay's).
    before: Counters,
    progress: Arc<ReplayProgress>,
    stats: Arc<TriggerStats>,
    /// Stops this run; `user` says whether a caller asked (else the mesh is
    /// shutting down and the replay resumes at the next start).
    cancel: CancellationToken,
    user_cancel: std::sync::atomic::AtomicBool,
    ended: tokio::sync::watch::Sender<bool>,
}

impl Running {
    fn lock(&self) -> MutexGuard<'_, ReplayView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The view with the live counters.
    fn snapshot(&self) -> ReplayView {
        let mut v = self.lock().clone();
        if v.state == ReplayState::Running {
            let (p, s, b) = (&self.progress, &self.stats, &self.before);
            v.counters = Counters {
                done: b.done + p.done.load(Relaxed),
                delivered: b.delivered + s.delivered.load(Relaxed),
                dead_lettered: b.dead_lettered + s.dead_lettered.load(Relaxed),
                retries: b.retries + s.retries.load(Relaxed),
                outside_window: b.outside_window + p.outside.load(Relaxed),
                unmatched: b.unmatched + p.unmatched.load(Relaxed),
                expired: b.expired + p.expired.load(Relaxed),
            };
        }
        v
    }
}

/// Every replay this process knows, running or finished.
pub struct Replays {
    dir: PathBuf,
    registry: Registry,
    background: CancellationToken,
    all: Mutex<BTreeMap<String, Arc<Running>>>,
}

impl Replays {
    pub fn new(data_dir: &Path, registry: Registry, background: CancellationToken) -> Arc<Self> {
        Arc::new(Replays {
            dir: data_dir.join("replays"),
            registry,
            background,
            all: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Running>>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every replay, oldest first (ids sort by creation).
    pub fn list(&self, namespace: Option<&str>) -> Vec<ReplayView> {
        self.lock()
            .values()
            .map(|r| r.snapshot())
            .filter(|v| namespace.is_none_or(|ns| v.namespace == ns))
            .collect()
    }

    pub fn get(&self, namespace: &str, id: &str) -> Option<ReplayView> {
        self.lock()
            .get(id)
            .map(|r| r.snapshot())
            .filter(|v| v.namespace == namespace)
    }

    /// Sets the replay gauges (before a scrape).
    pub fn export_metrics(&self) {
        use cemesh_proto::metric_names as names;
        let views = self.list(None);
        let running = views
            .iter()
            .filter(|v| v.state == ReplayState::Running)
            .count();
        metrics::gauge!(names::REPLAYS_RUNNING).set(running as f64);
        for v in views {
            let labels = [
                ("namespace_name", v.namespace.clone()),
                ("trigger_name", v.trigger.clone()),
                ("replay", v.id.clone()),
            ];
            let ratio = match (v.state, v.total) {
                (ReplayState::Completed, _) | (_, 0) => 1.0,
                _ => v.counters.done as f64 / v.total as f64,
            };
            metrics::gauge!(names::REPLAY_PROGRESS, &labels).set(ratio.min(1.0));
            metrics::gauge!(names::REPLAY_DELIVERED, &labels).set(v.counters.delivered as f64);
        }
    }

    fn context(&self, key: &TriggerKey) -> Result<Arc<TriggerContext>, ReplayError> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .ok_or_else(|| ReplayError::NotFound(format!("trigger {key} is not running")))
    }

    /// Starts a replay of `key`'s events in the asked range.
    pub async fn start(
        self: &Arc<Self>,
        key: &TriggerKey,
        req: ReplayRequest,
    ) -> Result<ReplayView, ReplayError> {
        let ctx = self.context(key)?;
        let now = cemesh_proto::knative::now_ms();
        let from = Point::parse(&req.from, Some(now)).map_err(|e| invalid("from", e))?;
        let to = match &req.to {
            Some(t) => Some(Point::parse(t, Some(now)).map_err(|e| invalid("to", e))?),
            None => None,
        };
        if matches!(to, Some(Point::Earliest)) {
            return Err(invalid("to", "earliest would replay nothing".into()));
        }
        let filter = compile_filter(req.filter.as_deref())?;
        let id = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let channel = ctx.broker.clone();
        let name = format!("{REPLAY_PREFIX}{id}");
        let sub = channel.subscribe(&name, from.start_at()).await?;
        let start = channel.committed(&name).await?;
        let end = match to {
            Some(Point::Offset(o)) => channel.offsets_at(StartAt::Offset(o)).await?,
            _ => channel.ends().await?,
        };
        let range = Range {
            from: start.clone(),
            to: end.clone(),
            window: (from.time(), to.and_then(Point::time)),
        };
        let view = ReplayView {
            id: id.clone(),
            namespace: key.namespace.clone(),
            trigger: key.name.clone(),
            broker: ctx.runtime.broker.clone(),
            from: req.from,
            to: req.to,
            filter: req.filter,
            state: ReplayState::Running,
            reason: None,
            created: chrono::Utc::now().to_rfc3339(),
            finished: None,
            total: range.len(),
            counters: Counters::default(),
            start_offsets: start,
            end_offsets: end,
            window: range.window,
        };
        tracing::info!(replay = %id, trigger = %key, from = %view.from, to = ?view.to, events = view.total, "Replay started");
        let running = self.launch(ctx, sub, view, range, filter, Counters::default());
        let view = running.snapshot();
        self.save(&view);
        Ok(view)
    }

    /// Runs a replay's loop in the background, saving its file as it goes.
    fn launch(
        self: &Arc<Self>,
        ctx: Arc<TriggerContext>,
        sub: Arc<dyn cemesh_channels::Subscription>,
        view: ReplayView,
        range: Range,
        filter: Option<DialectFilter>,
        before: Counters,
    ) -> Arc<Running> {
        let progress = Arc::new(ReplayProgress::default());
        let stats = Arc::new(TriggerStats::default());
        let mut runtime = (*ctx.runtime).clone();
        runtime.max_lag = MaxLag::default();
        let replay_ctx = Arc::new(TriggerContext {
            runtime: Arc::new(runtime),
            stats: stats.clone(),
            ..(*ctx).clone()
        });
        let bounded = Arc::new(Bounded::new(
            sub,
            ctx.broker.clone(),
            view.id.clone(),
            &range,
            filter,
            progress.clone(),
        ));
        let running = Arc::new(Running {
            view: Mutex::new(view.clone()),
            before,
            progress,
            stats,
            cancel: self.background.child_token(),
            user_cancel: Default::default(),
            ended: tokio::sync::watch::channel(false).0,
        });
        {
            let mut all = self.lock();
            all.insert(view.id.clone(), running.clone());
        }
        let (this, r) = (self.clone(), running.clone());
        tokio::spawn(async move {
            let work = replay::run(replay_ctx, bounded, r.cancel.clone());
            tokio::pin!(work);
            let complete = loop {
                tokio::select! {
                    complete = &mut work => break complete,
                    () = tokio::time::sleep(SAVE_EVERY) => this.save(&r.snapshot()),
                }
            };
            this.finish(&r, ctx.broker.as_ref(), complete).await;
        });
        running
    }

    /// Records how a run ended; a finished replay's subscription is removed.
    async fn finish(&self, r: &Running, channel: &dyn Channel, complete: bool) {
        let state = if complete {
            ReplayState::Completed
        } else if r.user_cancel.load(Relaxed) {
            ReplayState::Cancelled
        } else {
            // Shutting down: the file says Running, and the next start resumes it.
            self.save(&r.snapshot());
            let _ = r.ended.send(true);
            return;
        };
        let mut view = r.snapshot();
        view.state = state;
        view.finished = Some(chrono::Utc::now().to_rfc3339());
        *r.lock() = view.clone();
        let name = format!("{REPLAY_PREFIX}{}", view.id);
        if let Err(e) = channel.unsubscribe(&name).await {
            tracing::warn!(replay = %view.id, error = %e, "Removing a finished replay's subscription failed");
        }
        tracing::info!(replay = %view.id, state = ?state, delivered = view.counters.delivered, dead_lettered = view.counters.dead_lettered, "Replay ended");
        self.save(&view);
        self.forget_old();
        let _ = r.ended.send(true);
    }

    /// Cancels a running replay and waits for its deliveries in flight.
    pub async fn cancel(&self, namespace: &str, id: &str) -> Result<ReplayView, ReplayError> {
        let r = self
            .lock()
            .get(id)
            .filter(|r| r.lock().namespace == namespace)
            .cloned()
            .ok_or_else(|| {
                ReplayError::NotFound(format!("no replay {id} in namespace {namespace}"))
            })?;
        if r.lock().state == ReplayState::Running {
            r.user_cancel.store(true, Relaxed);
            r.cancel.cancel();
            let mut ended = r.ended.subscribe();
            let _ = ended.wait_for(|e| *e).await;
        }
        Ok(r.snapshot())
    }

    /// Resumes the replays a previous run left running (after the mesh started).
    pub async fn resume(self: &Arc<Self>) {
        let dir = self.dir.clone();
        let views = tokio::task::spawn_blocking(move || read_all(&dir))
            .await
            .unwrap_or_default();
        for mut view in views {
            if view.state != ReplayState::Running {
                self.keep_finished(view);
                continue;
            }
            if let Err(e) = self.resume_one(&view).await {
                tracing::error!(replay = %view.id, error = %e, "Replay not resumed");
                view.state = ReplayState::Failed;
                view.reason = Some(format!("not resumed after a restart: {e}"));
                view.finished = Some(chrono::Utc::now().to_rfc3339());
                self.save(&view);
                self.keep_finished(view);
            }
        }
    }

    /// Lists a replay that ended before this process started.
    fn keep_finished(&self, view: ReplayView) {
        let r = Arc::new(Running {
            before: view.counters,
            view: Mutex::new(view),
            progress: Arc::default(),
            stats: Arc::default(),
            cancel: CancellationToken::new(),
            user_cancel: Default::default(),
            ended: tokio::sync::watch::channel(true).0,
        });
        let id = r.lock().id.clone();
        self.lock().insert(id, r);
    }

    async fn resume_one(self: &Arc<Self>, view: &ReplayView) -> Result<(), ReplayError> {
        let key = TriggerKey::new(&view.namespace, &view.trigger);
        let ctx = self.context(&key)?;
        if ctx.broker.kind() == "memory" {
            return Err(ReplayError::Conflict(
                "the memory channel lost its events when the process stopped".into(),
            ));
        }
        let filter = compile_filter(view.filter.as_deref())?;
        let name = format!("{REPLAY_PREFIX}{}", view.id);
        // Its cursor already exists: where it starts now is where it stopped.
        let sub = ctx.broker.subscribe(&name, StartAt::Earliest).await?;
        let from = ctx.broker.committed(&name).await?;
        let range = Range {
            from,
            to: view.end_offsets.clone(),
            window: view.window,
        };
        tracing::info!(replay = %view.id, trigger = %key, left = range.len(), "Replay resumed");
        let mut view = view.clone();
        let done_before = view.total.saturating_sub(range.len());
        let mut before = view.counters;
        before.done = done_before;
        view.counters = before;
        self.launch(ctx, sub, view, range, filter, before);
        Ok(())
    }

    fn save(&self, view: &ReplayView) {
        let path = self.dir.join(format!("{}.json", view.id));
        let bytes = match serde_json::to_vec_pretty(view) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(replay = %view.id, error = %e, "Encoding a replay failed");
                return;
            }
        };
        if let Err(e) = crate::persist::replace(&path, &bytes) {
            tracing::warn!(replay = %view.id, path = %path.display(), error = %e, "Saving a replay failed");
        }
    }

    /// Keeps the newest [`KEEP_FINISHED`] finished replays.
    fn forget_old(&self) {
        let mut all = self.lock();
        let finished: Vec<String> = all
            .iter()
            .filter(|(_, r)| r.lock().state != ReplayState::Running)
            .map(|(id, _)| id.clone())
            .collect();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            all.remove(id);
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
        }
    }
}

fn invalid(field: &str, why: String) -> ReplayError {
    ReplayError::Invalid(format!("{field}: {why}"))
}

fn compile_filter(cesql: Option<&str>) -> Result<Option<DialectFilter>, ReplayError> {
    cesql
        .map(|q| {
            DialectFilter::compile(&[FilterSpec::Cesql(q.to_owned())], "filter")
                .map_err(|e| ReplayError::Invalid(e.to_string()))
        })
        .transpose()
}

fn read_all(dir: &Path) -> Vec<ReplayView> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut views: Vec<ReplayView> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            match serde_json::from_slice(&bytes) {
                Ok(v) => Some(v),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "Unreadable replay file skipped");
                    None
                }
            }
        })
        .collect();
    views.sort_by(|a: &ReplayView, b| a.id.cmp(&b.id));
    views
}
