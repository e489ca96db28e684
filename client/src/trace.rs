//! `cemesh trace BROKER ID`: an event's journey (the admin API's
//! `/v1/namespaces/{ns}/brokers/{name}/journey/{id}`) as a timeline.

use serde_json::Value;

use crate::admin_client::AdminClient;
use crate::args::TraceArgs;

pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let client = AdminClient::from_args(&args.admin)?;
    let mut url = reqwest::Url::parse("http://x/")?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("bad path"))?
        .extend([
            "v1",
            "namespaces",
            &args.namespace,
            "brokers",
            &args.broker,
            "journey",
            &args.id,
        ]);
    if let Some(s) = &args.source {
        url.query_pairs_mut().append_pair("source", s);
    }
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let j = client.call(http::Method::GET, &path, None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    print!("{}", render(&j));
    Ok(())
}

fn s(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The journey as lines of text.
pub fn render(j: &Value) -> String {
    let mut out = format!(
        "event {} (source {}, type {}) in {}\n",
        s(&j["id"]),
        s(&j["source"]),
        s(&j["type"]),
        s(&j["broker"])
    );
    match j["accepted"].as_object() {
        Some(a) => out += &format!("  {}  accepted ({})\n", s(&a["at"]), s(&a["via"])),
        None => out += "  (its acceptance is no longer in the journal)\n",
    }
    for t in j["triggers"].as_array().into_iter().flatten() {
        let name = s(&t["trigger"]);
        if t["matched"] != true {
            out += &format!("  trigger {name}: filtered out\n");
            continue;
        }
        out += &format!("  trigger {name}: {}\n", s(&t["outcome"]));
        for a in t["attempts"].as_array().into_iter().flatten() {
            let status = if a["status"].is_null() {
                "no answer".to_owned()
            } else {
                a["status"].to_string()
            };
            out += &format!(
                "    {}  {} -> {status} in {} ms{}\n",
                s(&a["at"]),
                s(&a["destination"]),
                a["latencyMs"],
                a["error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        for r in t["replies"].as_array().into_iter().flatten() {
            out += &format!(
                "    reply {} (type {}) to {}: `cemesh trace {} {}`\n",
                s(&r["id"]),
                s(&r["type"]),
                s(&r["broker"]),
                s(&r["broker"]).rsplit('/').next().unwrap_or_default(),
                s(&r["id"])
            );
        }
        if let Some(reason) = t["reason"].as_str() {
            out += &format!("    {reason}\n");
        }
    }
    out
}
