//! `GET /v1/namespaces/{ns}/brokers/{name}/events`: the events entering a broker,
//! live, as server-sent events (each `data:` one structured-mode JSON event). An
//! optional `?filter=` CESQL expression is applied server-side. A reader that falls
//! behind loses events and gets an `event: dropped` with how many; the broker never
//! waits for it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use cemesh_dispatcher::filter::cesql::Expression;
use cemesh_ingress::BrokerKey;
use futures::stream::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{AdminState, ApiError};

#[derive(Debug, Deserialize)]
pub struct TailQuery {
    filter: Option<String>,
}

pub async fn events(
    State(state): State<AdminState>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<TailQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let key = BrokerKey::new(&ns, &name);
    let filter = match q.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(f) => {
            Some(Expression::parse(f).map_err(|e| ApiError::bad_request(format!("filter: {e}")))?)
        }
        None => None,
    };
    let tap = state
        .taps
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("broker {key} is not running")))?;
    let rx = tap.listen();
    let stream = tail_stream(rx, filter);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

fn tail_stream(
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<cemesh_proto::Event>>,
    filter: Option<Expression>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    if let Some(f) = &filter {
                        if !f.matches(&*event) {
                            continue;
                        }
                    }
                    let json = String::from_utf8_lossy(&cemesh_proto::json::encode_event(&event))
                        .into_owned();
                    return Some((Ok(SseEvent::default().data(json)), (rx, filter)));
                }
                Err(RecvError::Lagged(n)) => {
                    let ev = SseEvent::default().event("dropped").data(n.to_string());
                    return Some((Ok(ev), (rx, filter)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
