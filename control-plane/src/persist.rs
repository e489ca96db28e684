//! The small state files each address keeps under the data dir (recorded event
//! types, dedup windows): a whole file replaced at once, and the loop that writes
//! what changed every so often and once more at shutdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cemesh_ingress::Routes;
use tokio_util::sync::CancellationToken;

/// Replaces `path` with `bytes` through `{path}.tmp` and a rename, so a crash
/// leaves the old file or the new one, never a torn one.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Runs `flush` every `every` until `stop`, then once more, off the async threads.
pub async fn keep(
    routes: Routes,
    data_dir: PathBuf,
    stop: CancellationToken,
    every: Duration,
    flush: fn(&Routes, &Path),
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        let (r, d) = (routes.clone(), data_dir.clone());
        let _ = tokio::task::spawn_blocking(move || flush(&r, &d)).await;
    }
    let _ = tokio::task::spawn_blocking(move || flush(&routes, &data_dir)).await;
}
