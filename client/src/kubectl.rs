//! `cemesh apply | get | describe | delete | validate | tail`: operating a running
//! broker through its admin API, the way `kubectl` and `kn` operate Knative. Output is
//! stable for scripts: one line per resource changed, tables with fixed columns,
//! `-o json|yaml` for machines, exit code 1 on any failure.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::admin_client::AdminClient;
use crate::args::{
    ApplyArgs, DeleteArgs, DescribeArgs, GetArgs, OutputFormat, TailArgs, ValidateArgs,
};
use cemesh_control::config::{ServerConfig, DEFAULT_MAX_BODY, DEFAULT_SERVICE_TEMPLATE};
use cemesh_control::control::Kind;
use cemesh_control::manifest::{
    compile, load_dir, parse_str, Located, ManifestError, ResolveContext, Resource,
};

fn kind_arg(s: &str) -> anyhow::Result<Kind> {
    Kind::parse_plural(s)
        .with_context(|| format!("{s:?} is not a resource type; use broker(s) or trigger(s)"))
}

fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Broker => "brokers",
        Kind::Trigger => "triggers",
    }
}

/// Reads manifests from files, directories and `-` (stdin).
fn read_manifests(
    sources: &[String],
) -> anyhow::Result<(Vec<Located<Resource>>, Vec<ManifestError>)> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for src in sources {
        let (r, e) = if src == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading manifests from stdin")?;
            parse_str(Path::new("<stdin>"), &text)
        } else {
            let path = PathBuf::from(src);
            if path.is_dir() {
                load_dir(&path)
            } else {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                parse_str(&path, &text)
            }
        };
        resources.extend(r);
        errors.extend(e);
    }
    Ok((resources, errors))
}

fn key_of(r: &Resource) -> (Kind, String, String) {
    match r {
        Resource::Broker(b) => (
            Kind::Broker,
            b.metadata.namespace().to_owned(),
            b.metadata.name.clone(),
        ),
        Resource::Trigger(t) => (
            Kind::Trigger,
            t.metadata.namespace().to_owned(),
            t.metadata.name.clone(),
        ),
    }
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let (resources, errors) = read_manifests(&args.files)?;
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        bail!(
            "{} problem(s) in the manifests; nothing applied",
            errors.len()
        );
    }
    if resources.is_empty() {
        bail!(
            "no Broker or Trigger manifests found in {}",
            args.files.join(", ")
        );
    }
    let client = AdminClient::new(&args.admin.admin);
    let mut failed = 0;
    // Brokers first, so their triggers validate.
    let mut ordered: Vec<&Located<Resource>> = resources.iter().collect();
    ordered.sort_by_key(|l| matches!(l.value, Resource::Trigger(_)));
    for l in ordered {
        let (kind, ns, name) = key_of(&l.value);
        let body = serde_yaml::to_string(&l.raw).context("re-encoding a manifest")?;
        let path = format!("/v1/namespaces/{ns}/{}/{name}", plural(kind));
        match client.put_yaml(&path, body).await {
            Ok(v) => println!(
                "{}.eventing.knative.dev/{name} {}",
                kind.as_str().to_ascii_lowercase(),
                match v["status"]["applied"].as_str() {
                    Some("created") => "created",
                    Some("unchanged") => "unchanged",
                    _ => "configured",
                }
            ),
            Err(e) => {
                failed += 1;
                eprintln!(
                    "error: {}/{name}: {e:#}",
                    kind.as_str().to_ascii_lowercase()
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} resource(s) not applied");
    }
    Ok(())
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let kind = kind_arg(&args.kind)?;
    let client = AdminClient::new(&args.admin.admin);
    let items: Vec<Value> = match (&args.name, &args.namespace) {
        (Some(name), ns) => {
            let ns = ns.as_deref().unwrap_or("default");
            vec![
                client
                    .call(
                        http::Method::GET,
                        &format!("/v1/namespaces/{ns}/{}/{name}", plural(kind)),
                        None,
                    )
                    .await?,
            ]
        }
        (None, Some(ns)) => list(&client, &format!("/v1/namespaces/{ns}/{}", plural(kind))).await?,
        (None, None) => list(&client, &format!("/v1/{}", plural(kind))).await?,
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&items)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&items)?),
        OutputFormat::Table => print_table(kind, &items, args.namespace.is_none()),
    }
    Ok(())
}

async fn list(client: &AdminClient, path: &str) -> anyhow::Result<Vec<Value>> {
    let v = client.call(http::Method::GET, path, None).await?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// READY and REASON: a failing condition wins over `Ready`.
fn readiness(item: &Value) -> (String, String) {
    let empty = Vec::new();
    let conditions = item["status"]["conditions"].as_array().unwrap_or(&empty);
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_owned();
    let reason = conditions
        .iter()
        .find(|c| c["status"] == "False")
        .or_else(|| conditions.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["reason"].as_str())
        .unwrap_or("")
        .to_owned();
    (ready, reason)
}

fn age(item: &Value) -> String {
    let Some(created) = item["metadata"]["creationTimestamp"].as_str() else {
        return "-".into();
    };
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "-".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn subscriber(item: &Value) -> String {
    if let Some(s) = item["status"]["stats"]["subscriber"].as_str() {
        return s.to_owned();
    }
    let sub = &item["spec"]["subscriber"];
    match (sub["ref"]["name"].as_str(), sub["uri"].as_str()) {
        (Some(r), Some(u)) => format!("{}/{r}{u}", sub["ref"]["kind"].as_str().unwrap_or("")),
        (Some(r), None) => format!("{}/{r}", sub["ref"]["kind"].as_str().unwrap_or("")),
        (None, Some(u)) => u.to_owned(),
        (None, None) => "-".into(),
    }
}

fn print_table(kind: Kind, items: &[Value], with_ns: bool) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<&str> = Vec::new();
    if with_ns {
        header.push("NAMESPACE");
    }
    match kind {
        Kind::Trigger => header.extend(["NAME", "BROKER", "SUBSCRIBER", "READY", "REASON", "AGE"]),
        Kind::Broker => header.extend(["NAME", "URL", "READY", "REASON", "AGE"]),
    }
    for item in items {
        let mut row = Vec::new();
        if with_ns {
            row.push(
                item["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned(),
            );
        }
        row.push(item["metadata"]["name"].as_str().unwrap_or("").to_owned());
        let (ready, reason) = readiness(item);
        match kind {
            Kind::Trigger => {
                row.push(item["spec"]["broker"].as_str().unwrap_or("").to_owned());
                row.push(subscriber(item));
            }
            Kind::Broker => {
                row.push(
                    item["status"]["address"]["url"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                );
            }
        }
        row.extend([ready, reason, age(item)]);
        rows.push(row);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.clone());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let kind = kind_arg(&args.kind)?;
    let client = AdminClient::new(&args.admin.admin);
    let item = client
        .call(
            http::Method::GET,
            &format!(
                "/v1/namespaces/{}/{}/{}",
                args.namespace,
                plural(kind),
                args.name
            ),
            None,
        )
        .await?;
    print!("{}", serde_yaml::to_string(&item)?);
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let kind = kind_arg(&args.kind)?;
    let client = AdminClient::new(&args.admin.admin);
    client
        .call(
            http::Method::DELETE,
            &format!(
                "/v1/namespaces/{}/{}/{}",
                args.namespace,
                plural(kind),
                args.name
            ),
            None,
        )
        .await?;
    println!(
        "{}.eventing.knative.dev/{} deleted",
        kind.as_str().to_ascii_lowercase(),
        args.name
    );
    Ok(())
}

/// Offline: parses and compiles as a load would, lists every problem.
pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => ServerConfig::load(p)?,
        None => ServerConfig::default(),
    };
    let sources: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
    for p in &args.paths {
        if !p.exists() {
            bail!("{}: no such file or directory", p.display());
        }
    }
    let (resources, mut problems) = read_manifests(&sources)?;
    let template = config
        .service_url_template
        .clone()
        .unwrap_or_else(|| DEFAULT_SERVICE_TEMPLATE.to_owned());
    let ctx = ResolveContext {
        ingress_base: "http://127.0.0.1:8080".into(),
        service_url_template: &template,
        services: &config.services,
        default_channel: config
            .channel
            .unwrap_or(cemesh_control::config::ChannelKind::Sled),
        default_max_body: config.max_body_size.map_or(DEFAULT_MAX_BODY, |b| b.0),
    };
    let desired = compile(&resources, &ctx);
    problems.extend(desired.problems);
    for p in &problems {
        println!("{p}");
    }
    if !problems.is_empty() {
        bail!("{} problem(s) found", problems.len());
    }
    println!(
        "valid: {} broker(s), {} trigger(s)",
        desired.brokers.len(),
        desired.triggers.len()
    );
    Ok(())
}

/// Prints each event entering the broker as one JSON line.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.admin.admin);
    let mut url = client.url(&format!(
        "/v1/namespaces/{}/brokers/{}/events",
        args.namespace, args.broker
    ));
    if let Some(f) = &args.filter {
        url.push_str("?filter=");
        url.push_str(&percent_encode(f));
    }
    let mut resp = reqwest::Client::new()
        .get(&url)
        .header(http::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(|e| client.unreachable(&e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json_or_null().await;
        bail!(
            "GET {url}: {status}: {}",
            body["error"].as_str().unwrap_or("")
        );
    }
    let mut buf = String::new();
    let mut printed = 0u64;
    let mut event_name = String::new();
    while let Some(chunk) = resp.chunk().await.context("reading the event stream")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line = buf[..i].trim_end_matches('\r').to_owned();
            buf.drain(..=i);
            if let Some(name) = line.strip_prefix("event:") {
                event_name = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let data = data.strip_prefix(' ').unwrap_or(data);
                if event_name == "dropped" {
                    eprintln!("(dropped {data} event(s): this reader was too slow)");
                } else {
                    println!("{data}");
                    printed += 1;
                    if args.count.is_some_and(|c| printed >= c) {
                        return Ok(());
                    }
                }
            } else if line.is_empty() {
                event_name.clear();
            }
        }
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

trait JsonOrNull {
    async fn json_or_null(self) -> Value;
}

impl JsonOrNull for reqwest::Response {
    async fn json_or_null(self) -> Value {
        let bytes = self.bytes().await.unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}
