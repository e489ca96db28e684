//! `cemesh replay` and `cemesh reset-cursor`: a trigger's archived events delivered
//! again, and its cursor moved, through the admin API.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use crate::admin_client::AdminClient;
use crate::args::{ReplayAction, ReplayArgs, ResetCursorArgs};
use crate::kubectl::print_columns;

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let client = AdminClient::from_args(&args.admin)?;
    let ns = &args.namespace;
    match args.action {
        Some(ReplayAction::Status { id: Some(id), .. }) => {
            let r = client
                .call(
                    http::Method::GET,
                    &format!("/v1/namespaces/{ns}/replays/{id}"),
                    None,
                )
                .await?;
            print_one(&r);
        }
        Some(ReplayAction::Status {
            id: None,
            all_namespaces,
        }) => {
            let path = if all_namespaces {
                "/v1/replays".to_owned()
            } else {
                format!("/v1/namespaces/{ns}/replays")
            };
            let list = client.call(http::Method::GET, &path, None).await?;
            print_table(list["items"].as_array().map_or(&[][..], Vec::as_slice));
        }
        Some(ReplayAction::Cancel { id }) => {
            let r = client
                .call(
                    http::Method::DELETE,
                    &format!("/v1/namespaces/{ns}/replays/{id}"),
                    None,
                )
                .await?;
            print_one(&r);
        }
        None => {
            let (Some(trigger), Some(from)) = (&args.trigger, &args.from) else {
                bail!("name the trigger and --from");
            };
            let body = json!({ "from": from, "to": args.to, "filter": args.filter });
            let path = format!("/v1/namespaces/{ns}/triggers/{trigger}/replays");
            let r = client.call(http::Method::POST, &path, Some(body)).await?;
            let id = r["id"].as_str().unwrap_or_default().to_owned();
            println!(
                "replay {id} started: {} events of trigger {ns}/{trigger} to go through (`cemesh replay status {id}`)",
                r["total"]
            );
            if args.wait {
                wait(&client, ns, &id).await?;
            }
        }
    }
    Ok(())
}

/// Polls a replay until it ends; fails unless it completed.
async fn wait(client: &AdminClient, ns: &str, id: &str) -> anyhow::Result<()> {
    let path = format!("/v1/namespaces/{ns}/replays/{id}");
    loop {
        let r = client.call(http::Method::GET, &path, None).await?;
        if r["state"] != "Running" {
            print_one(&r);
            if r["state"] != "Completed" {
                bail!("replay {id} ended {}", r["state"]);
            }
            return Ok(());
        }
        eprintln!("{}", progress(&r));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn progress(r: &Value) -> String {
    let c = &r["counters"];
    format!(
        "{}/{} read, {} delivered, {} dead-lettered",
        c["done"], r["total"], c["delivered"], c["deadLettered"]
    )
}

fn print_one(r: &Value) {
    let c = &r["counters"];
    println!(
        "replay {}: {}",
        r["id"].as_str().unwrap_or_default(),
        r["state"].as_str().unwrap_or_default()
    );
    println!(
        "  trigger:   {}/{}",
        r["namespace"].as_str().unwrap_or_default(),
        r["trigger"].as_str().unwrap_or_default()
    );
    println!(
        "  range:     from {} to {}",
        r["from"],
        if r["to"].is_null() {
            json!("its start")
        } else {
            r["to"].clone()
        }
    );
    if let Some(f) = r["filter"].as_str() {
        println!("  filter:    {f}");
    }
    println!("  progress:  {}", progress(r));
    println!(
        "  skipped:   {} outside the time window, {} not matching the filter, {} gone from the archive",
        c["outsideWindow"], c["unmatched"], c["expired"]
    );
    if let Some(why) = r["reason"].as_str() {
        println!("  reason:    {why}");
    }
}

fn print_table(items: &[Value]) {
    if items.is_empty() {
        println!("no replays");
        return;
    }
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            vec![
                s(&r["id"]),
                format!("{}/{}", s(&r["namespace"]), s(&r["trigger"])),
                s(&r["state"]),
                format!("{}/{}", r["counters"]["done"], r["total"]),
                r["counters"]["delivered"].to_string(),
                r["counters"]["deadLettered"].to_string(),
            ]
        })
        .collect();
    print_columns(
        "",
        &[
            "ID",
            "TRIGGER",
            "STATE",
            "READ",
            "DELIVERED",
            "DEAD-LETTERED",
        ],
        &rows,
    );
}

pub async fn reset_cursor(args: ResetCursorArgs) -> anyhow::Result<()> {
    let client = AdminClient::from_args(&args.admin)?;
    let path = format!(
        "/v1/namespaces/{}/triggers/{}/cursor",
        args.namespace, args.trigger
    );
    let body = json!({ "to": args.to, "force": args.force });
    let r = client.call(http::Method::POST, &path, Some(body)).await?;
    let at = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| format!("{}:{}", p["partition"], p["offset"]))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    println!(
        "trigger {}: cursor moved from {} to {} ({} events skipped, {} to be delivered again)",
        r["trigger"].as_str().unwrap_or_default(),
        at(&r["from"]),
        at(&r["to"]),
        r["skipped"],
        r["again"]
    );
    Ok(())
}
