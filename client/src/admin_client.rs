//! A small client for the admin API, shared by the CLI commands that talk to a
//! running broker. Errors name the URL and carry the server's `error` message, so a
//! script sees why a command failed.

use anyhow::{anyhow, Context as _};
use serde_json::Value;

pub struct AdminClient {
    base: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base: &str) -> Self {
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `PUT`s a YAML manifest.
    pub async fn put_yaml(&self, path: &str, yaml: String) -> anyhow::Result<Value> {
        let url = self.url(path);
        let resp = self
            .http
            .put(&url)
            .header(http::header::CONTENT_TYPE, "application/yaml")
            .body(yaml)
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {url}"))?;
        Self::answer(http::Method::PUT, &url, resp).await
    }

    /// Sends a request and returns the JSON answer; a non-2xx answer is an error
    /// carrying the server's message.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = self.url(path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&b)?);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {url}"))?;
        Self::answer(method, &url, resp).await
    }

    async fn answer(
        method: http::Method,
        url: &str,
        resp: reqwest::Response,
    ) -> anyhow::Result<Value> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading {url}"))?;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = json
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow!("{method} {url}: {status}: {msg}"));
        }
        Ok(json)
    }
}
