//! Keeps each broker's dedup window (`cemesh_ingress::dedup`) across restarts: one
//! file per broker under `<data-dir>/dedup/`, read when the broker opens and written
//! every second while it accepts, and at shutdown. A crash forgets at most the last
//! second's pairs. The file is 24 bytes per pair (the 16-byte key, then the Unix ms
//! it was accepted, big-endian): a window of `cemesh.dev/dedup-max-keys` pairs is
//! written whole, so JSON's size would cost more than its readability gives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cemesh_ingress::dedup::{Dedup, Key};
use cemesh_ingress::{BrokerKey, Routes};
use cemesh_proto::knative::now_ms;
use tokio_util::sync::CancellationToken;

/// How often changed windows are written.
const EVERY: Duration = Duration::from_secs(1);

fn file(data_dir: &Path, key: &BrokerKey) -> PathBuf {
    data_dir
        .join("dedup")
        .join(format!("{}.{}.bin", key.namespace, key.name))
}

/// The window of `key`, with the pairs an earlier run accepted.
pub fn load(data_dir: &Path, key: &BrokerKey, window: Duration, max_keys: usize) -> Arc<Dedup> {
    let dedup = Dedup::new(window, max_keys);
    match std::fs::read(file(data_dir, key)) {
        Ok(bytes) => {
            let entries = bytes
                .chunks_exact(24)
                .map(|c| {
                    let mut k: Key = [0; 16];
                    k.copy_from_slice(&c[..16]);
                    let mut at = [0; 8];
                    at.copy_from_slice(&c[16..]);
                    (k, i64::from_be_bytes(at))
                })
                .collect();
            dedup.restore(entries, now_ms());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(broker = %key, error = %e, "The dedup window cannot be read; starting empty")
        }
    }
    Arc::new(dedup)
}

/// Writes the windows that changed since the last write.
pub fn flush(routes: &Routes, data_dir: &Path) {
    for endpoint in routes.all() {
        let Some(dedup) = &endpoint.dedup else {
            continue;
        };
        if !dedup.take_dirty() {
            continue;
        }
        let entries = dedup.entries(now_ms());
        let mut bytes = Vec::with_capacity(entries.len() * 24);
        for (k, at) in entries {
            bytes.extend_from_slice(&k);
            bytes.extend_from_slice(&at.to_be_bytes());
        }
        let result = crate::persist::replace(&file(data_dir, &endpoint.key), &bytes);
        if let Err(e) = result {
            tracing::warn!(broker = %endpoint.key, error = %e, "Could not write the dedup window");
        }
    }
}

/// Flushes every [`EVERY`] until `stop`, then once more.
pub async fn keep(routes: Routes, data_dir: PathBuf, stop: CancellationToken) {
    crate::persist::keep(routes, data_dir, stop, EVERY, flush).await
}
