//! `cemesh apply | get | describe | delete | validate | tail`: operating a running
//! broker through its admin API, the way `kubectl` and `kn` operate Knative. Output is
//! stable for scripts: one line per resource changed, tables with fixed columns,
//! `-o json|yaml` for machines, exit code 1 on any failure.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::admin_client::AdminClient;
use crate::args::{
    ApplyArgs, DeleteArgs, DescribeArgs, GetArgs, OutputFormat, ResumeArgs, TailArgs, ValidateArgs,
};
use cemesh_control::config::{ServerConfig, DEFAULT_MAX_BODY, DEFAULT_SERVICE_TEMPLATE};
use cemesh_control::control::Kind;
use cemesh_control::manifest::{
    compile, load_dir, parse_str, parse_values, Located, ManifestError, ResolveContext, Resource,
};

/// A resource type as typed on the command line: plural, singular or kubectl's
/// short name (`br`, `tr`).
fn kind_arg(s: &str) -> anyhow::Result<Kind> {
    Kind::parse_plural(s)
        .with_context(|| format!("{s:?} is not a resource type; use {}", Kind::plurals()))
}

fn plural(kind: Kind) -> &'static str {
    kind.plural()
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
            parse_str(Path::new("<stdin>"), &expand_lists(text)?)
        } else {
            let path = PathBuf::from(src);
            if path.is_dir() {
                load_dir(&path)
            } else {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                parse_str(&path, &expand_lists(text)?)
            }
        };
        resources.extend(r);
        errors.extend(e);
    }
    Ok((resources, errors))
}

/// What `get -o json|yaml` prints can be applied again: a `kind: List` document (as
/// kubectl and `get -o json` write for several resources) stands for its items.
/// Text without a List is returned unchanged, so error lines stay true.
fn expand_lists(text: String) -> anyhow::Result<String> {
    if !text.contains("List") {
        return Ok(text);
    }
    let mut docs = Vec::new();
    let mut any_list = false;
    let Ok(values) = parse_values(Path::new(""), &text) else {
        return Ok(text); // the manifest parser reports it, with its line
    };
    for value in values {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => {
                any_list = true;
                if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
                    docs.extend(items.iter().cloned());
                }
            }
            _ if value.is_null() => {}
            _ => docs.push(value),
        }
    }
    if !any_list {
        return Ok(text);
    }
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&d).context("re-encoding a List item")?);
    }
    Ok(out)
}

fn key_of(r: &Resource) -> (Kind, String, String) {
    let meta = r.metadata();
    (r.kind(), meta.namespace().to_owned(), meta.name.clone())
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
    let client = AdminClient::from_args(&args.admin)?;
    let mut failed = 0;
    // Brokers first, so their triggers validate.
    let mut ordered: Vec<&Located<Resource>> = resources.iter().collect();
    ordered.sort_by_key(|l| matches!(l.value, Resource::Trigger(_)));
    for l in ordered {
        let (kind, ns, name) = key_of(&l.value);
        let body = serde_saphyr::to_string(&l.raw).context("re-encoding a manifest")?;
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
    let client = AdminClient::from_args(&args.admin)?;
    let ns = &args.namespace;
    if let Some(name) = &args.name {
        let item = client
            .call(http::Method::GET, &resource_path(kind, ns, name), None)
            .await?;
        return print_items(kind, &[item], None, args.output);
    }
    let items = if args.all_namespaces {
        list(&client, &format!("/v1/{}", plural(kind))).await?
    } else {
        list(&client, &format!("/v1/namespaces/{ns}/{}", plural(kind))).await?
    };
    if items.is_empty() && matches!(args.output, OutputFormat::Table | OutputFormat::Wide) {
        match args.all_namespaces {
            true => eprintln!("No {} found.", plural(kind)),
            false => eprintln!("No {} found in namespace {ns}.", plural(kind)),
        }
        return Ok(());
    }
    print_items(kind, &items, Some(args.all_namespaces), args.output)
}

fn resource_path(kind: Kind, ns: &str, name: &str) -> String {
    format!("/v1/namespaces/{ns}/{}/{name}", plural(kind))
}

/// Tables for people; for machines, documents `apply -f` takes back: one object
/// for a named resource, a `List` (JSON) or a multi-document stream (YAML) for a
/// listing (`Some(all_namespaces)`).
fn print_items(
    kind: Kind,
    items: &[Value],
    listing: Option<bool>,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let all_ns = listing.unwrap_or(false);
    match (output, listing.is_some()) {
        (OutputFormat::Json, false) => println!("{}", serde_json::to_string_pretty(&items[0])?),
        (OutputFormat::Json, true) => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": items,
            }))?
        ),
        (OutputFormat::Yaml, _) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_saphyr::to_string(item)?);
            }
        }
        (OutputFormat::Table, _) => print_table(kind, items, false, all_ns),
        (OutputFormat::Wide, _) => print_table(kind, items, true, all_ns),
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

fn print_table(kind: Kind, items: &[Value], wide: bool, with_ns: bool) {
    let namespace = |item: &Value| {
        item["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    };
    let mut header: Vec<&str> = Vec::new();
    if with_ns {
        header.push("NAMESPACE");
    }
    match kind {
        Kind::Trigger => header.extend(["NAME", "BROKER", "SUBSCRIBER", "READY", "REASON", "AGE"]),
        Kind::Broker => header.extend(["NAME", "URL", "READY", "REASON", "AGE"]),
        Kind::EventPolicy => header.extend(["NAME", "FROM", "BROKERS", "READY", "REASON", "AGE"]),
        Kind::Subscription => header.extend([
            "NAME",
            "CHANNEL",
            "SUBSCRIBER",
            "REPLY",
            "READY",
            "REASON",
            "AGE",
        ]),
        Kind::Channel
        | Kind::InMemoryChannel
        | Kind::KafkaChannel
        | Kind::Sequence
        | Kind::Parallel => header.extend(["NAME", "URL", "READY", "REASON", "AGE"]),
        Kind::PingSource | Kind::ContainerSource | Kind::SinkBinding | Kind::KafkaSource => {
            header.extend(["NAME", "SINK", "READY", "REASON", "AGE"])
        }
        Kind::EventType => header.extend([
            "NAME",
            "TYPE",
            "SOURCE",
            "REFERENCE",
            "COUNT",
            "LAST-SEEN",
            "READY",
            "REASON",
            "AGE",
        ]),
    }
    if wide {
        match kind {
            Kind::Trigger => {
                header.extend(["FILTER", "DELIVERED", "RETRIES", "DEAD-LETTERED", "LAG"])
            }
            Kind::Broker | Kind::EventPolicy => header.extend(["CHANNEL", "SOURCE"]),
            Kind::Channel | Kind::InMemoryChannel | Kind::KafkaChannel => {
                header.extend(["SUBSCRIBERS", "SOURCE"])
            }
            Kind::Subscription
            | Kind::Sequence
            | Kind::Parallel
            | Kind::PingSource
            | Kind::ContainerSource
            | Kind::SinkBinding
            | Kind::KafkaSource
            | Kind::EventType => header.push("SOURCE"),
        }
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    for item in items {
        let mut row = Vec::new();
        if with_ns {
            row.push(namespace(item));
        }
        row.push(item["metadata"]["name"].as_str().unwrap_or("").to_owned());
        let (ready, reason) = readiness(item);
        match kind {
            Kind::Trigger => {
                row.push(item["spec"]["broker"].as_str().unwrap_or("").to_owned());
                row.push(subscriber(item));
            }
            Kind::Broker
            | Kind::Channel
            | Kind::InMemoryChannel
            | Kind::KafkaChannel
            | Kind::Sequence
            | Kind::Parallel => row.push(text(&item["status"]["address"]["url"])),
            Kind::EventPolicy => {
                row.push(joined(&item["status"]["from"]));
                row.push(joined(&item["status"]["brokers"]));
            }
            Kind::PingSource | Kind::ContainerSource | Kind::SinkBinding | Kind::KafkaSource => {
                row.push(text(&item["status"]["sinkUri"]))
            }
            Kind::EventType => {
                let spec = &item["spec"];
                row.push(text(&spec["type"]));
                row.push(text(&spec["source"]));
                row.push(text(&spec["reference"]["name"]));
                row.push(text(&item["status"]["count"]));
                row.push(text(&item["status"]["lastSeen"]));
            }
            Kind::Subscription => {
                let physical = &item["status"]["physicalSubscription"];
                row.push(text(&item["spec"]["channel"]["name"]));
                row.push(text(&physical["subscriberUri"]));
                row.push(text(&physical["replyUri"]));
            }
        }
        row.extend([ready, reason, age(item)]);
        if wide {
            match kind {
                Kind::Trigger => {
                    let stats = &item["status"]["stats"];
                    row.push(filter_summary(&item["spec"]));
                    for k in ["delivered", "retries", "deadLettered", "lag"] {
                        row.push(text(&stats[k]));
                    }
                }
                Kind::Broker => {
                    let channel = &item["metadata"]["annotations"]["cemesh.dev/channel"];
                    row.push(channel.as_str().unwrap_or("(default)").to_owned());
                    row.push(source(item));
                }
                Kind::EventPolicy => {
                    row.push("-".into());
                    row.push(source(item));
                }
                Kind::Channel | Kind::InMemoryChannel | Kind::KafkaChannel => {
                    let n = item["status"]["subscribers"].as_array().map_or(0, Vec::len);
                    row.push(n.to_string());
                    row.push(source(item));
                }
                Kind::Subscription
                | Kind::Sequence
                | Kind::Parallel
                | Kind::PingSource
                | Kind::ContainerSource
                | Kind::SinkBinding
                | Kind::KafkaSource
                | Kind::EventType => row.push(source(item)),
            }
        }
        rows.push(row);
    }
    print_columns("", &header, &rows);
}

/// The `key` of each object of a JSON array, as an array.
fn each(v: &Value, key: &str) -> Value {
    Value::Array(
        v.as_array()
            .map(|a| a.iter().map(|o| o[key].clone()).collect())
            .unwrap_or_default(),
    )
}

/// A JSON array of strings as one cell: `a,b`, `-` for none.
fn joined(v: &Value) -> String {
    let items: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// A JSON value as a table cell: strings bare, numbers as they are, `-` for none.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where a resource comes from: a file in the config dir, or the API.
fn source(item: &Value) -> String {
    match item["metadata"]["annotations"]["cemesh.dev/owner"].as_str() {
        Some(owner) => owner.to_owned(),
        None => "api".into(),
    }
}

/// A trigger's filter on one line: `type=x,region=eu` for Knative's attributes
/// filter, the compact JSON of `spec.filters` otherwise.
fn filter_summary(spec: &Value) -> String {
    if let Some(filters) = spec.get("filters").filter(|f| !f.is_null()) {
        return filters.to_string();
    }
    match spec["filter"]["attributes"].as_object() {
        Some(attrs) if !attrs.is_empty() => attrs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "(all events)".into(),
    }
}

/// Left-aligned columns three spaces apart, as kubectl prints them, each line
/// starting with `indent`.
pub(crate) fn print_columns(indent: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                out.push_str(c);
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        println!("{indent}{}", out.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// For people, as `kubectl describe`: what the resource is, its conditions, its live
/// counters and, for a trigger, its most recent dead letters (the errors that
/// stopped deliveries); `get -o yaml` is the form for machines.
pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let kind = kind_arg(&args.kind)?;
    let client = AdminClient::from_args(&args.admin)?;
    let path = resource_path(kind, &args.namespace, &args.name);
    let item = client.call(http::Method::GET, &path, None).await?;
    let meta = &item["metadata"];
    let field = |name: &str, value: String| println!("{:<14}{value}", format!("{name}:"));
    field("Name", text(&meta["name"]));
    field("Namespace", text(&meta["namespace"]));
    field("Kind", kind.as_str().to_owned());
    field("Source", source(&item));
    field(
        "Created",
        format!("{} ({} ago)", text(&meta["creationTimestamp"]), age(&item)),
    );
    field(
        "Generation",
        format!(
            "{} (observed {})",
            text(&meta["generation"]),
            text(&item["status"]["observedGeneration"])
        ),
    );
    if let Some(annotations) = meta["annotations"].as_object() {
        let list: Vec<String> = annotations
            .iter()
            .filter(|(k, _)| *k != "cemesh.dev/owner")
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        if !list.is_empty() {
            field("Annotations", list.join(", "));
        }
    }
    let spec = &item["spec"];
    match kind {
        Kind::Broker => {
            field("Address", text(&item["status"]["address"]["url"]));
            field("Audience", text(&item["status"]["address"]["audience"]));
            field(
                "Policies",
                joined(&each(&item["status"]["policies"], "name")),
            );
        }
        Kind::EventPolicy => {
            field("From", joined(&item["status"]["from"]));
            field("Brokers", joined(&item["status"]["brokers"]));
        }
        Kind::Trigger => {
            field("Broker", text(&spec["broker"]));
            field("Subscriber", subscriber(&item));
            field("Filter", filter_summary(spec));
        }
        Kind::Channel | Kind::InMemoryChannel | Kind::KafkaChannel => {
            field("Address", text(&item["status"]["address"]["url"]));
            field(
                "Subscribers",
                joined(&each(&item["status"]["subscribers"], "uid")),
            );
        }
        Kind::Subscription => {
            let physical = &item["status"]["physicalSubscription"];
            field("Channel", text(&spec["channel"]["name"]));
            field("Subscriber", text(&physical["subscriberUri"]));
            field("Reply", text(&physical["replyUri"]));
            field("Dead-letter sink", text(&physical["deadLetterSinkUri"]));
        }
        Kind::Sequence | Kind::Parallel => {
            field("Address", text(&item["status"]["address"]["url"]));
        }
        Kind::PingSource | Kind::ContainerSource | Kind::SinkBinding | Kind::KafkaSource => {
            field("Sink", text(&item["status"]["sinkUri"]));
        }
        Kind::EventType => {
            field("Type", text(&spec["type"]));
            field("Source", text(&spec["source"]));
            field("Reference", text(&spec["reference"]["name"]));
            field("Count", text(&item["status"]["count"]));
        }
    }
    field("Delivery", delivery_summary(&spec["delivery"]));
    println!("Conditions:");
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = item["status"]["conditions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|c| {
            ["type", "status", "reason", "message"]
                .iter()
                .map(|k| text(&c[*k]))
                .collect()
        })
        .collect();
    print_columns("  ", &["TYPE", "STATUS", "REASON", "MESSAGE"], &rows);
    if kind == Kind::Trigger {
        let stats = &item["status"]["stats"];
        println!("Stats:");
        for (label, key) in [
            ("Delivered", "delivered"),
            ("Retries", "retries"),
            ("Dead-lettered", "deadLettered"),
            ("Stored dead letters", "deadLettersStored"),
            ("Replies", "replies"),
            ("In flight", "inFlight"),
            ("Lag", "lag"),
            ("Max lag", "maxLag"),
            ("Backlog overflow", "backlogOverflow"),
        ] {
            println!("  {:<21}{}", format!("{label}:"), text(&stats[key]));
        }
        let breaker = &stats["breaker"];
        let mut line = text(&breaker["state"]);
        if let Some(since) = breaker["openSince"].as_str() {
            line.push_str(&format!(" since {since}"));
        }
        if let Some(next) = breaker["nextProbeInSeconds"].as_f64() {
            line.push_str(&format!(", next probe in {next:.1}s"));
        }
        line.push_str(&format!(
            " (opened {} times, {} probes, {} consecutive failures)",
            text(&breaker["openedTotal"]),
            text(&breaker["probesTotal"]),
            text(&breaker["consecutiveFailures"])
        ));
        println!("  {:<21}{}", "Circuit breaker:", line);
        if let Some(paused) = stats["paused"].as_object() {
            println!(
                "  {:<21}since {}, {}; nothing is delivered until `cemesh resume {} -n {}`",
                "Paused:",
                text(&paused["since"]),
                text(&paused["reason"]),
                args.name,
                args.namespace
            );
        }
        recent_dead_letters(&client, &path).await;
    }
    Ok(())
}

/// `spec.delivery` on one line, or where the policy comes from when unset.
fn delivery_summary(delivery: &Value) -> String {
    let Some(d) = delivery.as_object().filter(|d| !d.is_empty()) else {
        return "the broker's, else cemesh's defaults (retry 10, exponential from PT0.2S)".into();
    };
    d.iter()
        .map(|(k, v)| match v {
            Value::Object(_) => format!("{k}={}", v),
            _ => format!("{k}={}", text(v)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The last few dead letters with their reasons: the errors an operator looks for.
async fn recent_dead_letters(client: &AdminClient, trigger_path: &str) {
    println!("Recent dead letters:");
    let page = match client
        .call(
            http::Method::GET,
            &format!("{trigger_path}/deadletters?limit=5"),
            None,
        )
        .await
    {
        Ok(p) => p,
        Err(e) => {
            println!("  (not available: {e})");
            return;
        }
    };
    let empty = Vec::new();
    let items = page["items"].as_array().unwrap_or(&empty);
    if items.is_empty() {
        println!("  (none)");
        return;
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|l| {
            vec![
                text(&l["id"]),
                text(&l["event"]["id"]),
                text(&l["deadAt"]),
                text(&l["reason"]),
            ]
        })
        .collect();
    print_columns("  ", &["ID", "EVENT ID", "DEAD AT", "REASON"], &rows);
    println!(
        "  ({} in all; `cemesh deadletters list` shows them)",
        page["total"]
    );
}

/// `cemesh resume TRIGGER`: lets a trigger paused at its max-lag deliver again.
pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let client = AdminClient::from_args(&args.admin)?;
    let path = format!(
        "/v1/namespaces/{}/triggers/{}/resume",
        args.namespace, args.trigger
    );
    let answer = client.call(http::Method::POST, &path, None).await?;
    let key = format!("{}/{}", args.namespace, args.trigger);
    if answer["resumed"] == true {
        println!("trigger {key} resumed: it delivers its backlog and pauses again only once back under its max-lag");
    } else {
        println!("trigger {key} was not paused");
    }
    Ok(())
}

/// Deletes by name, or every resource the `-f` manifests name (as `kubectl delete -f`).
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let client = AdminClient::from_args(&args.admin)?;
    let targets: Vec<(Kind, String, String)> = if args.files.is_empty() {
        let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
            bail!("name the resource (KIND NAME) or pass -f FILE");
        };
        vec![(kind_arg(kind)?, args.namespace.clone(), name.clone())]
    } else {
        let (resources, errors) = read_manifests(&args.files)?;
        if !errors.is_empty() {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!(
                "{} problem(s) in the manifests; nothing deleted",
                errors.len()
            );
        }
        // Triggers before their brokers, the reverse of apply.
        let mut keys: Vec<_> = resources.iter().map(|l| key_of(&l.value)).collect();
        keys.sort_by_key(|(kind, _, _)| *kind == Kind::Broker);
        keys
    };
    let mut failed = 0;
    for (kind, ns, name) in targets {
        let label = kind.as_str().to_ascii_lowercase();
        match client
            .call(http::Method::DELETE, &resource_path(kind, &ns, &name), None)
            .await
        {
            Ok(_) => println!("{label}.eventing.knative.dev/{name} deleted"),
            Err(e) => {
                failed += 1;
                eprintln!("error: {label}/{name}: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} resource(s) not deleted");
    }
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
        images: &config.images,
        default_channel: config
            .channel
            .unwrap_or(cemesh_control::config::ChannelKind::Sled),
        default_max_body: config.max_body_size.map_or(DEFAULT_MAX_BODY, |b| b.0),
    };
    let desired = compile(&resources, &ctx);
    problems.extend(desired.problems);
    for l in &resources {
        if let Resource::Broker(b) = &l.value {
            for note in b.notes().iter().filter(|n| n.severity == "Warning") {
                eprintln!(
                    "warning: {}: document {} (Broker {}/{}): {}",
                    l.file.display(),
                    l.document,
                    b.metadata.namespace(),
                    b.metadata.name,
                    note.message
                );
            }
        }
    }
    for p in &problems {
        println!("{p}");
    }
    if !problems.is_empty() {
        bail!("{} problem(s) found", problems.len());
    }
    // Brokers and triggers always; other kinds when there are some.
    let counts: Vec<String> = cemesh_control::manifest::KINDS
        .iter()
        .map(|k| {
            let n = resources
                .iter()
                .filter(|l| l.value.kind() == k.kind)
                .count();
            (k, n)
        })
        .filter(|(k, n)| *n > 0 || matches!(k.kind, Kind::Broker | Kind::Trigger))
        .map(|(k, n)| format!("{n} {}(s)", k.name.to_ascii_lowercase()))
        .collect();
    println!("valid: {}", counts.join(", "));
    Ok(())
}

/// Prints each event entering the broker as one JSON line.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = AdminClient::from_args(&args.admin)?;
    let mut url = client.url(&format!(
        "/v1/namespaces/{}/brokers/{}/events",
        args.namespace, args.broker
    ));
    if let Some(f) = &args.filter {
        url.push_str("?filter=");
        url.push_str(&percent_encode(f));
    }
    let mut resp = client
        .http()
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
