//! The `PingSource` ticker: at each firing of its schedule it appends Knative's ping
//! event to the source's channel, from which the mesh delivers it to the sink.
//!
//! The time of the last firing is kept in a file, written after the append, so a
//! restart neither fires a tick again nor forgets one: ticks that fell due while
//! the process was down fire once, as the latest of them (Knative's mt-ping skips
//! them). A crash between the append and the write can repeat that one tick.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cemesh_channels::Channel;
use cemesh_proto::{AttributeValue, Event};
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::schedule::Schedule;

/// Knative's ping event type.
pub const PING_TYPE: &str = "dev.knative.sources.ping";

/// What a running PingSource needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PingSpec {
    pub namespace: String,
    pub name: String,
    pub schedule: Schedule,
    /// `spec.contentType`, set with the data.
    pub content_type: Option<String>,
    /// `spec.data`, or `spec.dataBase64` decoded.
    pub data: Option<Bytes>,
    /// `spec.ceOverrides.extensions`.
    pub extensions: Vec<(String, String)>,
    /// Where the time of the last firing is kept.
    pub state_file: PathBuf,
}

impl PingSpec {
    /// Knative's `source` for this PingSource.
    pub fn source(&self) -> String {
        format!(
            "/apis/v1/namespaces/{}/pingsources/{}",
            self.namespace, self.name
        )
    }

    /// The event fired at `at`, as Knative's mt-ping makes it (a random UUID id, the
    /// overrides as extensions, the data with its content type) plus `time`.
    pub fn event(&self, at: DateTime<Utc>) -> Event {
        let mut e = Event::new(uuid::Uuid::new_v4().to_string(), self.source(), PING_TYPE);
        e.time = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        for (k, v) in &self.extensions {
            e.set_extension(k, AttributeValue::String(v.clone()));
        }
        if let Some(data) = &self.data {
            e.datacontenttype = self.content_type.clone();
            e.data = Some(data.clone());
        }
        e
    }
}

/// A running ticker; stopping it waits for an append in progress.
pub struct PingHandle {
    spec: PingSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl PingHandle {
    pub fn spec(&self) -> &PingSpec {
        &self.spec
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts the ticker of `spec`, appending to `channel`.
pub fn spawn_ping(spec: PingSpec, channel: Arc<dyn Channel>) -> PingHandle {
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(spec.clone(), channel, stop.clone()));
    PingHandle { spec, stop, task }
}

async fn run(spec: PingSpec, channel: Arc<dyn Channel>, stop: CancellationToken) {
    let mut last = read_last(&spec.state_file).await;
    loop {
        let now = Utc::now();
        let due = match last.and_then(|l| spec.schedule.missed(l, now)) {
            Some(missed) => {
                tracing::info!(pingsource = %format!("{}/{}", spec.namespace, spec.name), tick = %missed, "A tick fell due while cemesh was down; firing it once");
                missed
            }
            None => {
                let from = last.map_or(now, |l| l.max(now));
                let Some(next) = spec.schedule.next_after(from) else {
                    tracing::warn!(pingsource = %spec.name, "The schedule never fires again");
                    return;
                };
                let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                next
            }
        };
        if !append(&spec, &channel, due, &stop).await {
            return;
        }
        last = Some(due);
        write_last(&spec.state_file, due).await;
    }
}

/// Appends the tick's event, retrying while the channel refuses; false if stopped
/// first.
async fn append(
    spec: &PingSpec,
    channel: &Arc<dyn Channel>,
    at: DateTime<Utc>,
    stop: &CancellationToken,
) -> bool {
    let event = spec.event(at);
    let mut wait = Duration::from_millis(100);
    loop {
        match channel.append(vec![event.clone()]).await {
            Ok(()) => {
                tracing::debug!(pingsource = %spec.name, event.id = %event.id, "Ping fired");
                return true;
            }
            Err(e) => {
                tracing::warn!(pingsource = %spec.name, error = %e, retry_in = ?wait, "Could not store a ping; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

async fn read_last(file: &PathBuf) -> Option<DateTime<Utc>> {
    let text = tokio::fs::read_to_string(file).await.ok()?;
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Writes through a temporary file and a rename, so a crash leaves the old or the
/// new time.
async fn write_last(file: &PathBuf, at: DateTime<Utc>) {
    let tmp = file.with_extension("tmp");
    let text = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let result = async {
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(&tmp, text).await?;
        tokio::fs::rename(&tmp, file).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(file = %file.display(), error = %e, "Could not record the last ping; a restart may fire it again");
    }
}
