//! A small client for the admin API, shared by the CLI commands that talk to a
//! running broker. Errors name the URL and carry the server's `error` message, so a
//! script sees why a command failed.

use anyhow::{anyhow, Context as _};
use serde_json::Value;

use crate::args::{AdminArgs, ClientTls};

/// An HTTP client trusting what `tls` says (the system's roots plus `--cacert`, or
/// nothing checked with `--insecure-skip-verify`) and sending its bearer token.
pub fn http_client(tls: &ClientTls) -> anyhow::Result<reqwest::Client> {
    configure(reqwest::Client::builder(), tls, true)?
        .build()
        .context("building the HTTP client")
}

/// `builder` trusting `--cacert` (or nothing checked with `--insecure-skip-verify`)
/// and, when `identify` (the client talks to the mesh), sending `--token`/
/// `--token-file` as `Authorization: Bearer` on every request and presenting
/// `--client-cert`. The sidecar shares it: its client for the service does neither.
pub fn configure(
    mut builder: reqwest::ClientBuilder,
    tls: &ClientTls,
    identify: bool,
) -> anyhow::Result<reqwest::ClientBuilder> {
    if let Some(path) = &tls.cacert {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --cacert {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--cacert {}: not PEM certificates", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!(
                "--cacert {}: no PEM certificate in the file",
                path.display()
            );
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let (true, Some(cert), Some(key)) = (identify, &tls.client_cert, &tls.client_key) {
        let mut pem = std::fs::read(cert)
            .with_context(|| format!("reading --client-cert {}", cert.display()))?;
        pem.push(b'\n');
        pem.extend(
            std::fs::read(key)
                .with_context(|| format!("reading --client-key {}", key.display()))?,
        );
        let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
            format!(
                "--client-cert {} and --client-key {}: not a PEM certificate chain and its key",
                cert.display(),
                key.display()
            )
        })?;
        builder = builder.identity(identity);
    }
    if let Some(value) = bearer(tls)?.filter(|_| identify) {
        builder = builder.default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            value,
        )]));
    }
    Ok(builder)
}

/// The `Authorization: Bearer` value of `--token`/`--token-file`, marked sensitive
/// (left out of hyper's debug output).
pub fn bearer(tls: &ClientTls) -> anyhow::Result<Option<http::HeaderValue>> {
    let token = match (&tls.token, &tls.token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token has characters a header cannot carry")?;
    value.set_sensitive(true);
    Ok(Some(value))
}

pub struct AdminClient {
    base: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `base` is a URL, or `HOST:PORT` (taken as `http://HOST:PORT`, as kubectl's
    /// `--server` is).
    pub fn new(base: &str, tls: &ClientTls) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        Ok(AdminClient {
            base,
            http: http_client(tls)?,
        })
    }

    /// The client for the admin API given on the command line.
    pub fn from_args(args: &AdminArgs) -> anyhow::Result<Self> {
        Self::new(&args.admin, &args.tls)
    }

    /// The HTTP client, for requests this type has no helper for (a stream).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The admin API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One line for a request that got no answer: what failed, at which address, and
    /// what to check, instead of reqwest's error chain.
    pub fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        let cause = cemesh_dispatcher::delivery::root_cause(e);
        let why = if cause.to_ascii_lowercase().contains("certificate") {
            format!("its TLS certificate is not trusted ({cause}); pass --cacert with the CA that issued it")
        } else if e.is_connect() {
            "connection refused or no route".to_owned()
        } else if e.is_timeout() {
            "timed out".to_owned()
        } else {
            cemesh_dispatcher::delivery::root_cause(e)
        };
        anyhow!(
            "cannot reach the admin API at {} ({why}); is `cemesh serve` running? \
             Point --admin (or CEMESH_ADMIN) at its admin address",
            self.base
        )
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
            .map_err(|e| self.unreachable(&e))?;
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
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
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
            let hint = match status.as_u16() {
                401 => " (pass --token or --token-file, or set CEMESH_TOKEN)",
                _ => "",
            };
            return Err(anyhow!("{method} {url}: {status}: {msg}{hint}"));
        }
        Ok(json)
    }
}
