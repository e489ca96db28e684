//! The dashboard: its page at `/ui/` (the files of `admin/ui/`, built into the
//! binary: no web server, no CDN, works offline), and the two endpoints only it
//! and `cemesh trace` need: `GET /v1/stats` (live series) and
//! `GET /v1/namespaces/{ns}/brokers/{name}/journey/{id}` (an event's journey).
//! The page itself carries no data, so it is served without credentials; every
//! call it makes goes through the admin API's guard with the token the user gives
//! it (kept in the tab's session storage, sent as a header, never in a URL).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde::Deserialize;

use super::{AdminState, ApiError};

/// The page's files, built into the binary.
macro_rules! ui_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("ui/", $name)))),*]
    };
}

/// Every file of `admin/ui/` (a test checks none is missing).
const FILES: &[(&str, &str)] = ui_files![
    "index.html",
    "app.css",
    "app.js",
    "charts.js",
    "deadletters.js",
    "journey.js",
    "lib.js",
    "metrics.js",
    "resources.js",
    "tail.js",
    "topology.js",
    "types.js",
];

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _)| *n == name) {
        Some((name, body)) => (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                ),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::not_found(format!("no file {name} in the dashboard")).into_response(),
    }
}

pub async fn index() -> Response {
    file("index.html")
}

pub async fn asset(Path(name): Path<String>) -> Response {
    file(&name)
}

pub async fn redirect() -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/ui/")]).into_response()
}

pub async fn stats(State(state): State<AdminState>) -> impl IntoResponse {
    Json(state.stats.json())
}

#[derive(Debug, Deserialize)]
pub struct JourneyQuery {
    source: Option<String>,
}

pub async fn journey(
    State(state): State<AdminState>,
    Path((ns, name, id)): Path<(String, String, String)>,
    Query(q): Query<JourneyQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(journal) = &state.journal else {
        return Err(ApiError::not_found("this server keeps no event journal"));
    };
    let broker = format!("{ns}/{name}");
    crate::journey::journey(
        journal,
        &state.registry,
        &broker,
        &id,
        q.source.as_deref(),
        state.journal_retention,
    )
    .map(Json)
    .map_err(|e| match e {
        crate::journey::JourneyError::NotFound { .. } => ApiError::not_found(e.to_string()),
        crate::journey::JourneyError::Ambiguous { .. } => ApiError::conflict(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_of_the_ui_folder_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/ui");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                super::FILES.iter().any(|(n, _)| *n == name),
                "{name} is in admin/ui/ but not in FILES"
            );
        }
    }
}
