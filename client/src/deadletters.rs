//! `cemesh deadletters list|show|redrive|purge`: the dead-letter admin API from the
//! command line.

use serde_json::{json, Value};

use crate::admin_client::AdminClient;
use crate::args::{DeadLettersAction, DeadLettersArgs, TriggerRef};

/// The dead-letter collection: a mesh trigger's, or a sidecar's outbox's.
fn collection(sidecar: bool, t: &TriggerRef) -> anyhow::Result<String> {
    if sidecar {
        return Ok("/v1/deadletters".to_owned());
    }
    let Some(trigger) = &t.trigger else {
        anyhow::bail!("name the trigger (or pass --sidecar URL for a sidecar's outbox)");
    };
    Ok(format!(
        "/v1/namespaces/{}/triggers/{trigger}/deadletters",
        t.namespace
    ))
}

pub async fn run(args: DeadLettersArgs) -> anyhow::Result<()> {
    let sidecar = args.sidecar.is_some();
    let client = AdminClient::new(
        args.sidecar.as_deref().unwrap_or(&args.admin.admin),
        &args.admin.tls,
    )?;
    let base = |t: &TriggerRef| collection(sidecar, t);
    let trigger_name = |t: &TriggerRef| t.trigger.clone().unwrap_or_default();
    match args.action {
        DeadLettersAction::List {
            trigger,
            json,
            limit,
        } => {
            let page = client
                .call(
                    http::Method::GET,
                    &format!("{}?limit={limit}", base(&trigger)?),
                    None,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_table(&page);
            }
        }
        DeadLettersAction::Show { namespace, args } => {
            let (trigger, id) = match args.as_slice() {
                [id] => (None, id),
                [trigger, id] => (Some(trigger.clone()), id),
                _ => anyhow::bail!("expected TRIGGER ID"),
            };
            let id: u64 = id.parse().map_err(|_| {
                anyhow::anyhow!("{id:?} is not a dead-letter id (a number from `list`)")
            })?;
            let trigger = TriggerRef { trigger, namespace };
            let letter = client
                .call(
                    http::Method::GET,
                    &format!("{}/{id}", base(&trigger)?),
                    None,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
        }
        DeadLettersAction::Redrive {
            trigger,
            ids,
            no_wait,
        } if !sidecar && !no_wait => {
            let answer = client
                .call(
                    http::Method::POST,
                    &format!("{}:redrive?wait=true", base(&trigger)?),
                    Some(redrive_body(&ids)),
                )
                .await?;
            print_outcomes(&answer);
        }
        DeadLettersAction::Redrive { trigger, ids, .. } => {
            let answer = client
                .call(
                    http::Method::POST,
                    &format!("{}:redrive", base(&trigger)?),
                    Some(redrive_body(&ids)),
                )
                .await?;
            if sidecar {
                println!(
                    "redriving {} dead letter(s) of the sidecar outbox",
                    answer["redriving"]
                );
            } else {
                println!(
                    "redriving {} dead letter(s) of {}/{}",
                    answer["redriving"],
                    trigger.namespace,
                    trigger_name(&trigger)
                );
            }
        }
        DeadLettersAction::Purge { trigger, id } => {
            let path = match id {
                Some(id) => format!("{}/{id}", base(&trigger)?),
                None => base(&trigger)?,
            };
            let answer = client.call(http::Method::DELETE, &path, None).await?;
            println!("deleted {} dead letter(s)", answer["deleted"]);
        }
    }
    Ok(())
}

/// One line per redriven letter: where it went this time.
fn print_outcomes(answer: &Value) {
    let empty = Vec::new();
    let results = answer["results"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
            let (outcome, detail) = match r["outcome"].as_str() {
                Some("delivered") => ("delivered".to_owned(), format!("to {}", text("to"))),
                Some("deadLetterSink") => (
                    "failed again".to_owned(),
                    format!("sent to the dead-letter sink {}", text("to")),
                ),
                Some("deadLetters") => (
                    "failed again".to_owned(),
                    format!("stored as dead letter {}", r["deadLetter"]),
                ),
                _ => (
                    "interrupted".to_owned(),
                    "the letter stays; redrive it again".to_owned(),
                ),
            };
            vec![r["id"].to_string(), text("eventId"), outcome, detail]
        })
        .collect();
    crate::kubectl::print_columns("", &["ID", "EVENT ID", "OUTCOME", "WHERE"], &rows);
    let delivered = results
        .iter()
        .filter(|r| r["outcome"] == "delivered")
        .count();
    println!(
        "{delivered} of {} redriven dead letter(s) delivered",
        results.len()
    );
}

fn print_table(page: &Value) {
    let empty = Vec::new();
    let items = page["items"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|l| {
            vec![
                l["id"].to_string(),
                l["event"]["id"].as_str().unwrap_or("-").to_owned(),
                l["event"]["type"].as_str().unwrap_or("-").to_owned(),
                l["attempts"].as_array().map_or(0, Vec::len).to_string(),
                l["deadAt"]
                    .as_str()
                    .and_then(|t| t.get(..23))
                    .unwrap_or("-")
                    .to_owned(),
                l["reason"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    crate::kubectl::print_columns(
        "",
        &["ID", "EVENT ID", "TYPE", "ATTEMPTS", "DEAD AT", "REASON"],
        &rows,
    );
    println!("{} of {} shown", items.len(), page["total"]);
}

/// `{"ids": [..]}`, or `{"all": true}` when no id was named (an empty list is refused).
fn redrive_body(ids: &[u64]) -> serde_json::Value {
    if ids.is_empty() {
        json!({ "all": true })
    } else {
        json!({ "ids": ids })
    }
}
