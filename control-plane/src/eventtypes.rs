//! Keeps each address's recorded event types (`cemesh_ingress::seen`) across
//! restarts: one JSON file per address under `<data-dir>/eventtypes/`, read when the
//! address opens and written every few seconds while it records, and at shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cemesh_ingress::seen::{EventTypes, SeenType};
use cemesh_ingress::{BrokerKey, Routes};
use tokio_util::sync::CancellationToken;

/// How often recorded types are written.
const EVERY: Duration = Duration::from_secs(5);

fn file(data_dir: &Path, key: &BrokerKey) -> PathBuf {
    data_dir
        .join("eventtypes")
        .join(format!("{}.{}.json", key.namespace, key.name))
}

/// The registry of `key`, with what an earlier run recorded.
pub fn load(data_dir: &Path, key: &BrokerKey) -> Arc<EventTypes> {
    let types = EventTypes::default();
    if let Ok(text) = std::fs::read_to_string(file(data_dir, key)) {
        match serde_json::from_str::<Vec<SeenType>>(&text) {
            Ok(seen) => types.restore(seen),
            Err(e) => {
                tracing::warn!(broker = %key, error = %e, "The recorded event types cannot be read; starting empty")
            }
        }
    }
    Arc::new(types)
}

/// Writes the registries that recorded something since the last write.
pub fn flush(routes: &Routes, data_dir: &Path) {
    for endpoint in routes.all() {
        if !endpoint.event_types.take_dirty() {
            continue;
        }
        let result = serde_json::to_vec(&endpoint.event_types.list())
            .map_err(std::io::Error::from)
            .and_then(|text| crate::persist::replace(&file(data_dir, &endpoint.key), &text));
        if let Err(e) = result {
            tracing::warn!(broker = %endpoint.key, error = %e, "Could not write the recorded event types");
        }
    }
}

/// Flushes every [`EVERY`] until `stop`, then once more.
pub async fn keep(routes: Routes, data_dir: PathBuf, stop: CancellationToken) {
    crate::persist::keep(routes, data_dir, stop, EVERY, flush).await
}
