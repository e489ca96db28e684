//! A trigger paused at its max-lag (`cemesh.dev/max-lag-action: pause`): for
//! subscribers whose events must not go to the dead letters out of turn, the trigger
//! stops attempting deliveries instead, keeps every event in the channel, says so in
//! its status, and waits for an operator to resume it. It pauses again only after
//! its lag has come back under the limit, so a resumed trigger drains its backlog.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One trigger's pause state, shared by its deliveries and its lag watcher.
#[derive(Debug)]
pub struct Pause {
    state: Mutex<Option<PauseView>>,
    /// Whether passing the limit pauses: false from a resume until the lag is back
    /// under the limit.
    armed: AtomicBool,
    changed: Notify,
}

/// A paused trigger as its status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseView {
    /// When it paused (RFC 3339).
    pub since: String,
    /// Why, e.g. `past its max-lag (300 records)`.
    pub reason: String,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            state: Mutex::default(),
            armed: AtomicBool::new(true),
            changed: Notify::new(),
        }
    }
}

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PauseView>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pauses, unless already paused or resumed since the lag last was under the
    /// limit; true when this call paused it.
    pub fn pause(&self, reason: String) -> bool {
        if !self.armed.load(Relaxed) {
            return false;
        }
        let mut state = self.lock();
        if state.is_some() {
            return false;
        }
        *state = Some(PauseView {
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason,
        });
        true
    }

    /// The lag is under the limit: the next time it passes, the trigger pauses.
    pub fn rearm(&self) {
        self.armed.store(true, Relaxed);
    }

    /// Whether passing the limit pauses now (false from a resume until the lag is
    /// back under the limit).
    pub fn is_armed(&self) -> bool {
        self.armed.load(Relaxed)
    }

    /// Lets deliveries go again; true if it was paused.
    pub fn resume(&self) -> bool {
        self.armed.store(false, Relaxed);
        let was = self.lock().take().is_some();
        self.changed.notify_waiters();
        was
    }

    pub fn view(&self) -> Option<PauseView> {
        self.lock().clone()
    }

    pub fn is_paused(&self) -> bool {
        self.lock().is_some()
    }

    /// Returns once the trigger is not paused; false if `cancel` came first.
    pub async fn wait(&self, cancel: &CancellationToken) -> bool {
        // Not paused: no waiter registered (every delivery passes here).
        if !self.is_paused() {
            return true;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.is_paused() {
                return true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                () = changed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_paused_trigger_waits_for_resume_and_pauses_again_only_once_rearmed() {
        let pause = Arc::new(Pause::default());
        let cancel = CancellationToken::new();
        assert!(pause.wait(&cancel).await, "not paused: no wait");
        assert!(pause.pause("past its max-lag".into()));
        assert!(!pause.pause("again".into()), "already paused");
        let waiter = tokio::spawn({
            let (pause, cancel) = (pause.clone(), cancel.clone());
            async move { pause.wait(&cancel).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "held while paused");
        assert_eq!(pause.view().unwrap().reason, "past its max-lag");
        assert!(pause.resume());
        assert!(waiter.await.unwrap(), "released by the resume");
        assert!(!pause.resume(), "not paused any more");
        assert!(
            !pause.pause("still past".into()),
            "disarmed until under the limit"
        );
        pause.rearm();
        assert!(pause.pause("past again".into()));
        cancel.cancel();
        assert!(!pause.wait(&cancel).await, "cancel ends the wait");
    }
}
