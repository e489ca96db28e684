//! Registration: the service's triggers (`--triggers FILE`, Knative Trigger manifests)
//! applied to the mesh's admin API with the sidecar as their subscriber, and removed
//! on exit with `--unregister-on-exit`.
//!
//! A manifest either has no subscriber (it becomes `--advertise-url`) or a relative
//! `subscriber.uri` (resolved against it, and relayed to that path on the service).
//! An absolute URI or a `ref` is refused: such a trigger is not the sidecar's.
//! Manifests are checked at start with the mesh's own parser, so a typo stops the
//! sidecar with the file, document and field named. The mesh itself may be down at
//! start: each trigger is retried with backoff until the mesh answers, while
//! publishing works meanwhile. A refusal (400, 409) is final and is logged and shown
//! in `/readyz`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use cemesh_control::manifest::{parse_str, Resource};

/// A trigger ready to PUT.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTrigger {
    pub namespace: String,
    pub name: String,
    /// The manifest as JSON, subscriber set.
    pub body: Value,
}

impl PlannedTrigger {
    fn path(&self) -> String {
        format!("/v1/namespaces/{}/triggers/{}", self.namespace, self.name)
    }

    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Where a trigger's registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Pending(String),
    Registered,
    Failed(String),
    Unregistered,
}

/// The registration state of every trigger, for `/readyz` and shutdown.
#[derive(Debug, Default)]
pub struct Registration {
    triggers: Mutex<Vec<(PlannedTrigger, State)>>,
}

impl Registration {
    pub fn new(triggers: Vec<PlannedTrigger>) -> Registration {
        Registration {
            triggers: Mutex::new(
                triggers
                    .into_iter()
                    .map(|t| (t, State::Pending("not tried yet".into())))
                    .collect(),
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(PlannedTrigger, State)>> {
        self.triggers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, index: usize, state: State) {
        if let Some(entry) = self.lock().get_mut(index) {
            entry.1 = state;
        }
    }

    pub fn json(&self) -> Value {
        Value::Array(
            self.lock()
                .iter()
                .map(|(t, s)| {
                    let (state, error) = match s {
                        State::Pending(e) => ("pending", Some(e.as_str())),
                        State::Registered => ("registered", None),
                        State::Failed(e) => ("failed", Some(e.as_str())),
                        State::Unregistered => ("unregistered", None),
                    };
                    json!({ "trigger": t.label(), "state": state, "error": error })
                })
                .collect(),
        )
    }
}

/// Reads the manifests and sets their subscriber to the sidecar.
pub fn plan(file: &Path, advertise: &str) -> anyhow::Result<Vec<PlannedTrigger>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the triggers file {}", file.display()))?;
    let (resources, errors) = parse_str(file, &text);
    let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let mut out = Vec::new();
    for located in resources {
        let where_ = format!("{}: document {}", file.display(), located.document);
        let trigger = match &located.value {
            Resource::Trigger(t) => t,
            other => {
                let (kind, meta) = (other.kind(), other.metadata());
                problems.push(format!(
                    "{where_} ({kind} {}/{}): only Trigger manifests belong in a sidecar's triggers file",
                    meta.namespace(),
                    meta.name
                ));
                continue;
            }
        };
        let label = format!(
            "Trigger {}/{}",
            trigger.metadata.namespace(),
            trigger.metadata.name
        );
        if trigger.metadata.name.is_empty() {
            problems.push(format!("{where_} ({label}): metadata.name: required"));
            continue;
        }
        let subscriber = &trigger.spec.subscriber;
        if subscriber.reference.is_some() {
            problems.push(format!(
                "{where_} ({label}): spec.subscriber.ref: the sidecar is the subscriber; leave the subscriber out or give a relative uri"
            ));
            continue;
        }
        let uri = match subscriber.uri.as_deref() {
            None => advertise.trim_end_matches('/').to_owned(),
            Some(u) if reqwest::Url::parse(u).is_ok() => {
                problems.push(format!(
                    "{where_} ({label}): spec.subscriber.uri: {u:?} is absolute; the sidecar is the subscriber, so give a relative uri such as /orders"
                ));
                continue;
            }
            Some(u) => format!(
                "{}/{}",
                advertise.trim_end_matches('/'),
                u.trim_start_matches('/')
            ),
        };
        let mut body = serde_json::to_value(&located.raw)
            .with_context(|| format!("{where_} ({label}): cannot be converted to JSON"))?;
        let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) else {
            problems.push(format!("{where_} ({label}): spec: required"));
            continue;
        };
        let sub = spec
            .entry("subscriber")
            .or_insert_with(|| Value::Object(Default::default()));
        if !sub.is_object() {
            *sub = Value::Object(Default::default());
        }
        if let Some(sub) = sub.as_object_mut() {
            sub.remove("ref");
            sub.insert("uri".into(), Value::String(uri));
        }
        out.push(PlannedTrigger {
            namespace: trigger.metadata.namespace().to_owned(),
            name: trigger.metadata.name.clone(),
            body,
        });
    }
    if !problems.is_empty() {
        anyhow::bail!("invalid triggers:\n  {}", problems.join("\n  "));
    }
    Ok(out)
}

/// Applies every trigger, retrying each until the mesh answers; returns when all are
/// registered or refused, or at `stop`.
pub async fn register_all(
    client: reqwest::Client,
    admin: String,
    registration: Arc<Registration>,
    stop: CancellationToken,
) {
    let admin = admin.trim_end_matches('/').to_owned();
    let triggers: Vec<PlannedTrigger> =
        registration.lock().iter().map(|(t, _)| t.clone()).collect();
    for (i, trigger) in triggers.iter().enumerate() {
        let url = format!("{admin}{}", trigger.path());
        let body = serde_json::to_vec(&trigger.body).unwrap_or_default();
        let mut wait = Duration::from_millis(200);
        let mut warned = false;
        loop {
            let sent = client
                .put(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let retry_reason = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        tracing::info!(trigger = %trigger.label(), subscriber = %trigger.body["spec"]["subscriber"]["uri"], %status, "Trigger registered");
                        registration.set(i, State::Registered);
                        break;
                    }
                    let msg = error_message(&body);
                    if status.is_client_error() && !matches!(status.as_u16(), 404 | 405 | 408 | 429)
                    {
                        tracing::error!(trigger = %trigger.label(), %status, error = %msg, "The mesh refused the trigger");
                        registration.set(i, State::Failed(format!("{status}: {msg}")));
                        break;
                    }
                    format!("{url} answered {status}: {msg}")
                }
                Err(e) => format!("cannot reach the mesh's admin API at {url}: {e}"),
            };
            if !warned {
                tracing::warn!(trigger = %trigger.label(), error = %retry_reason, "Registering the trigger failed; retrying");
                warned = true;
            }
            registration.set(i, State::Pending(retry_reason));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// Deletes the triggers that were registered (404 counts as gone).
pub async fn unregister_all(client: &reqwest::Client, admin: &str, registration: &Registration) {
    let admin = admin.trim_end_matches('/');
    let registered: Vec<(usize, PlannedTrigger)> = registration
        .lock()
        .iter()
        .enumerate()
        .filter(|(_, (_, s))| *s == State::Registered)
        .map(|(i, (t, _))| (i, t.clone()))
        .collect();
    for (i, trigger) in registered {
        let url = format!("{admin}{}", trigger.path());
        match client
            .delete(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() || resp.status() == 404 => {
                tracing::info!(trigger = %trigger.label(), "Trigger unregistered");
                registration.set(i, State::Unregistered);
            }
            Ok(resp) => {
                let status = resp.status();
                let msg = error_message(&resp.text().await.unwrap_or_default());
                tracing::error!(trigger = %trigger.label(), %status, error = %msg, "Unregistering the trigger failed");
            }
            Err(e) => {
                tracing::error!(trigger = %trigger.label(), error = %e, "Unregistering the trigger failed: the mesh is unreachable");
            }
        }
    }
}

/// The `error` of a JSON error body (with its `problems`), or the body itself.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => {
            let mut msg = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or(body)
                .to_owned();
            if let Some(problems) = v.get("problems").and_then(Value::as_array) {
                for p in problems {
                    msg.push_str("; ");
                    msg.push_str(&p.as_str().map_or_else(|| p.to_string(), str::to_owned));
                }
            }
            msg
        }
        Err(_) => body.chars().take(512).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_text(text: &str) -> anyhow::Result<Vec<PlannedTrigger>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("triggers.yaml");
        std::fs::write(&file, text).unwrap();
        plan(&file, "http://10.0.0.5:3501/")
    }

    const HEAD: &str = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n";

    #[test]
    fn missing_and_relative_subscribers_point_at_the_sidecar() {
        let text = format!(
            "{HEAD}metadata:\n  name: a\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: x\n---\n{HEAD}metadata:\n  name: b\n  namespace: shop\nspec:\n  broker: default\n  subscriber:\n    uri: /orders\n"
        );
        let t = plan_text(&text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "a");
        assert_eq!(t[0].namespace, "default");
        assert_eq!(
            t[0].body["spec"]["subscriber"]["uri"],
            "http://10.0.0.5:3501"
        );
        assert_eq!(t[0].body["spec"]["filter"]["attributes"]["type"], "x");
        assert_eq!(t[1].namespace, "shop");
        assert_eq!(
            t[1].body["spec"]["subscriber"]["uri"],
            "http://10.0.0.5:3501/orders"
        );
        assert_eq!(t[1].path(), "/v1/namespaces/shop/triggers/b");
    }

    #[test]
    fn absolute_subscribers_refs_and_brokers_are_refused_together() {
        let text = format!(
            "{HEAD}metadata:\n  name: a\nspec:\n  broker: default\n  subscriber:\n    uri: http://elsewhere/\n---\n{HEAD}metadata:\n  name: b\nspec:\n  broker: default\n  subscriber:\n    ref:\n      kind: Service\n      name: svc\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n"
        );
        let err = plan_text(&text).unwrap_err().to_string();
        assert!(
            err.contains("document 1 (Trigger default/a): spec.subscriber.uri"),
            "{err}"
        );
        assert!(
            err.contains("document 2 (Trigger default/b): spec.subscriber.ref"),
            "{err}"
        );
        assert!(err.contains("document 3 (Broker default/default)"), "{err}");
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            error_message(r#"{"error":"invalid","problems":["spec.broker: required"]}"#),
            "invalid; spec.broker: required"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
