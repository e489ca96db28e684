//! Hot reload: the config dir is watched (inotify through `notify`) and re-read after
//! a short quiet period, so an editor's burst of writes is one reload; `SIGHUP` reloads
//! at once. The control plane rejects a reload with any new problem.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::control::ControlPlane;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the file watcher alive; dropping it stops watching.
pub struct Watcher {
    _inner: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `dir` (if it exists) and listening for `SIGHUP`.
pub fn watch(control: Arc<ControlPlane>, dir: &Path) -> Option<Watcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let fs_tx = tx.clone();
    let inner = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let relevant = ev
                .paths
                .iter()
                .any(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")));
            if relevant && !ev.kind.is_access() {
                let _ = fs_tx.send(());
            }
        }
    }) {
        Ok(mut w) => match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "Not watching the config dir; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "No file watcher; reload with SIGHUP");
            None
        }
    };
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until changes stop for a moment.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let _ = control.reload().await;
        }
    });
    Some(Watcher {
        _inner: inner,
        task,
    })
}
