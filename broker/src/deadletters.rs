//! `cemesh deadletters list|show|redrive|purge`: the dead-letter admin API from the
//! command line.

use serde_json::{json, Value};

use crate::cli::{DeadLettersAction, DeadLettersArgs, TriggerRef};
use crate::client::AdminClient;

fn base(t: &TriggerRef) -> String {
    format!(
        "/v1/namespaces/{}/triggers/{}/deadletters",
        t.namespace, t.trigger
    )
}

pub async fn run(args: DeadLettersArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.admin.admin);
    match args.action {
        DeadLettersAction::List {
            trigger,
            json,
            limit,
        } => {
            let page = client
                .call(
                    http::Method::GET,
                    &format!("{}?limit={limit}", base(&trigger)),
                    None,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_table(&page);
            }
        }
        DeadLettersAction::Show { trigger, id } => {
            let letter = client
                .call(http::Method::GET, &format!("{}/{id}", base(&trigger)), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
        }
        DeadLettersAction::Redrive { trigger, ids } => {
            let answer = client
                .call(
                    http::Method::POST,
                    &format!("{}:redrive", base(&trigger)),
                    Some(json!({ "ids": ids })),
                )
                .await?;
            println!(
                "redriving {} dead letter(s) of {}/{}",
                answer["redriving"], trigger.namespace, trigger.trigger
            );
        }
        DeadLettersAction::Purge { trigger, id } => {
            let path = match id {
                Some(id) => format!("{}/{id}", base(&trigger)),
                None => base(&trigger),
            };
            let answer = client.call(http::Method::DELETE, &path, None).await?;
            println!("deleted {} dead letter(s)", answer["deleted"]);
        }
    }
    Ok(())
}

fn print_table(page: &Value) {
    let empty = Vec::new();
    let items = page["items"].as_array().unwrap_or(&empty);
    println!(
        "{:<8} {:<36} {:<32} {:>8} {:<24} REASON",
        "ID", "EVENT ID", "TYPE", "ATTEMPTS", "DEAD AT"
    );
    for l in items {
        println!(
            "{:<8} {:<36} {:<32} {:>8} {:<24} {}",
            l["id"],
            l["event"]["id"].as_str().unwrap_or("-"),
            l["event"]["type"].as_str().unwrap_or("-"),
            l["attempts"].as_array().map_or(0, Vec::len),
            l["deadAt"].as_str().unwrap_or("-").get(..23).unwrap_or("-"),
            l["reason"].as_str().unwrap_or("")
        );
    }
    println!("{} of {} shown", items.len(), page["total"]);
}
