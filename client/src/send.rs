//! `cemesh send`: build one CloudEvent from flags and POST it (like `kn event send`).

use anyhow::Context as _;
use bytes::Bytes;
use cemesh_proto::{AttributeValue, Event};
use http::header::CONTENT_TYPE;
use http::HeaderMap;

use crate::args::{SendArgs, SendMode};

pub fn build_event(args: &SendArgs) -> anyhow::Result<Event> {
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut event = Event::new(id, &args.source, &args.ty);
    event.subject = args.subject.clone();
    event.time = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    if let Some(data) = &args.data {
        let bytes = match data.strip_prefix('@') {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("--data: cannot read {path}"))?
            }
            None => data.clone().into_bytes(),
        };
        event.data = Some(Bytes::from(bytes));
        event.datacontenttype = Some(
            args.content_type
                .clone()
                .unwrap_or_else(|| "application/json".into()),
        );
    } else {
        event.datacontenttype = args.content_type.clone();
    }
    for ext in &args.extensions {
        let (name, value) = ext
            .split_once('=')
            .with_context(|| format!("--extension {ext:?}: expected NAME=VALUE"))?;
        event.set_extension(name, AttributeValue::String(value.to_owned()));
    }
    cemesh_proto::validate::validate(&event).map_err(|e| anyhow::anyhow!("invalid event: {e}"))?;
    Ok(event)
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let event = build_event(&args)?;
    if let Some(addr) = &args.grpc {
        return crate::send_grpc::run(addr, &args.to, &event).await;
    }
    let client = crate::admin_client::http_client(&args.tls)?;
    let request = match args.mode {
        SendMode::Binary => {
            let mut headers = HeaderMap::new();
            let body = cemesh_proto::http::encode_binary(&event, &mut headers).unwrap_or_default();
            client.post(&args.to).headers(headers).body(body)
        }
        SendMode::Structured => client
            .post(&args.to)
            .header(CONTENT_TYPE, cemesh_proto::http::STRUCTURED_JSON)
            .body(cemesh_proto::json::encode_event(&event)),
    };
    let resp = request
        .send()
        .await
        .with_context(|| format!("cannot POST to {}", args.to))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        println!(
            "{} {} (id {})",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            event.id
        );
        Ok(())
    } else {
        anyhow::bail!(
            "{} {}: {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.trim()
        )
    }
}
