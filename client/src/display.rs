//! `cemesh display`: a subscriber that prints each event readably, like Knative's
//! event-display.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use cemesh_proto::{AttrRef, Event};
use http::StatusCode;
use http_body_util::BodyExt as _;

pub async fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "cemesh display listening");
    let app = Router::new().fallback(receive);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn receive(req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match cemesh_proto::http::decode(&parts.headers, body) {
        Ok(events) => {
            let mut out = String::new();
            for e in &events {
                render(e, &mut out);
            }
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            println!("Invalid CloudEvent received: {e}");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

/// Renders an event the way event-display does.
pub fn render(e: &Event, out: &mut String) {
    let _ = writeln!(out, "☁️  cloudevents.Event\nContext Attributes,");
    let mut extensions = Vec::new();
    for (name, value) in e.attributes() {
        if cemesh_proto::event::is_core_attribute(e.specversion, name) {
            let _ = writeln!(out, "  {name}: {}", value.to_canonical());
        } else {
            extensions.push((name, value));
        }
    }
    if !extensions.is_empty() {
        let _ = writeln!(out, "Extensions,");
        for (name, value) in extensions {
            let shown = match value {
                AttrRef::Str(s) => s.to_owned(),
                other => other.to_canonical(),
            };
            let _ = writeln!(out, "  {name}: {shown}");
        }
    }
    if let Some(data) = &e.data {
        let _ = writeln!(out, "Data,");
        let text = if cemesh_proto::json::is_json_content_type(e.datacontenttype.as_deref()) {
            serde_json::from_slice::<serde_json::Value>(data)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
        } else {
            None
        };
        let text = text.or_else(|| std::str::from_utf8(data).ok().map(str::to_owned));
        match text {
            Some(t) => {
                for line in t.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
            None => {
                use base64::Engine as _;
                let _ = writeln!(
                    out,
                    "  (binary, base64) {}",
                    base64::engine::general_purpose::STANDARD.encode(data)
                );
            }
        }
    }
}
