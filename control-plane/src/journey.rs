//! "Where is my event?": an event's journey through the mesh, from the journal
//! (`cemesh_channels::journal`) and the running triggers: when and how it was
//! accepted, which triggers matched it and which filtered it out (their filters
//! evaluated now on the event as accepted), each attempt, the replies, and how each
//! trigger finished with it (delivered, dead-lettered, or still waiting).

use cemesh_channels::journal::{Entry, JournalStore};
use cemesh_proto::knative::rfc3339_millis as rfc3339;
use serde_json::{json, Value};

use crate::mesh::Registry;

/// Why there is no journey to show.
#[derive(Debug, thiserror::Error)]
pub enum JourneyError {
    #[error("no event {id}{from} in the journal of {broker} (it keeps the last {retention} of events of brokers not annotated cemesh.dev/journal: off)")]
    NotFound {
        broker: String,
        id: String,
        from: String,
        retention: String,
    },
    #[error(
        "events from several sources have id {id} in {broker}: {sources}; name one with source"
    )]
    Ambiguous {
        broker: String,
        id: String,
        sources: String,
    },
}

/// The journey of event `id` (from `source`, when given) in `broker`
/// (`namespace/name` of its address).
pub fn journey(
    journal: &JournalStore,
    registry: &Registry,
    broker: &str,
    id: &str,
    source: Option<&str>,
    retention: std::time::Duration,
) -> Result<Value, JourneyError> {
    let entries: Vec<Entry> = journal
        .lookup(broker, id)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| source.is_none_or(|s| e.source() == s))
        .collect();
    let mut sources: Vec<&str> = entries.iter().map(Entry::source).collect();
    sources.sort_unstable();
    sources.dedup();
    match sources.as_slice() {
        [] => {
            return Err(JourneyError::NotFound {
                broker: broker.to_owned(),
                id: id.to_owned(),
                from: source.map(|s| format!(" from {s}")).unwrap_or_default(),
                retention: humantime(retention),
            })
        }
        [_] => {}
        many => {
            return Err(JourneyError::Ambiguous {
                broker: broker.to_owned(),
                id: id.to_owned(),
                sources: many.join(", "),
            })
        }
    }
    let accepted = entries.iter().find_map(|e| match e {
        Entry::Accepted(a) => Some(a),
        _ => None,
    });
    let mut triggers: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Attempt(a) => Some(a.trigger.clone()),
            Entry::Outcome(o) => Some(o.trigger.clone()),
            Entry::Accepted(_) => None,
        })
        .collect();
    let (ns, name) = broker.split_once('/').unwrap_or(("default", broker));
    let running: Vec<(String, bool)> = registry
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(k, c)| k.namespace == ns && c.runtime.broker == name)
        .map(|(k, c)| {
            let matches = accepted.is_some_and(|a| c.runtime.filter.matches(&a.event));
            (k.to_string(), matches)
        })
        .collect();
    triggers.extend(running.iter().map(|(k, _)| k.clone()));
    triggers.sort();
    triggers.dedup();
    let per_trigger: Vec<Value> = triggers
        .iter()
        .map(|t| trigger_part(t, &entries, running.iter().find(|(k, _)| k == t)))
        .collect();
    Ok(json!({
        "broker": broker,
        "id": id,
        "source": sources[0],
        "type": accepted.map(|a| a.event.ty.clone()),
        "accepted": accepted.map(|a| json!({"at": rfc3339(a.at_ms), "via": a.via})),
        "triggers": per_trigger,
        "event": accepted.and_then(|a| serde_json::from_slice::<Value>(&cemesh_proto::json::encode_event(&a.event)).ok()),
    }))
}

/// One trigger's part: matched or not, its attempts, replies and outcome.
fn trigger_part(trigger: &str, entries: &[Entry], running: Option<&(String, bool)>) -> Value {
    let attempts: Vec<Value> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Attempt(a) if a.trigger == trigger => Some(json!({
                "at": rfc3339(a.at_ms),
                "destination": a.destination,
                "status": a.status,
                "latencyMs": ms(a.latency_us),
                "error": a.error,
            })),
            // A delivery's successful attempt is kept with its outcome.
            Entry::Outcome(o) if o.trigger == trigger => o.last_attempt.as_ref().map(|a| {
                json!({
                    "at": rfc3339(o.at_ms - (a.latency_us / 1000) as i64),
                    "destination": a.destination,
                    "status": a.status,
                    "latencyMs": ms(a.latency_us),
                })
            }),
            _ => None,
        })
        .collect();
    let outcomes: Vec<_> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Outcome(o) if o.trigger == trigger => Some(o),
            _ => None,
        })
        .collect();
    let replies: Vec<Value> = outcomes
        .iter()
        .flat_map(|o| o.replies.iter())
        .map(|r| json!({"id": r.id, "source": r.source, "type": r.ty, "broker": r.broker}))
        .collect();
    let last = outcomes.iter().rev().find(|o| o.outcome != "replied");
    let matched = !attempts.is_empty() || last.is_some() || running.is_some_and(|(_, m)| *m);
    if !matched {
        return json!({"trigger": trigger, "matched": false});
    }
    let outcome = last.map_or("waiting", |o| o.outcome.as_str());
    json!({
        "trigger": trigger,
        "matched": true,
        "outcome": outcome,
        "reason": last.and_then(|o| o.reason.clone()),
        "deadLetter": last.and_then(|o| o.dead_letter),
        "attempts": attempts,
        "replies": replies,
    })
}

/// Microseconds as milliseconds to a tenth.
fn ms(us: u64) -> f64 {
    (us as f64 / 100.0).round() / 10.0
}

fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
