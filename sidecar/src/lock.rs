//! Who may use the sidecar's local (`--listen`) listener: the service publishes and
//! its operators manage the outbox there, so a sidecar reachable beyond its pod is
//! locked like the mesh's admin API, by the same [`AdminGuard`] (Dapr's
//! `APP_API_TOKEN` plays this part there).
//!
//! - `--api-token-file`: publishing and every admin endpoint need `Authorization:
//!   Bearer <that token>`; `--read-token-file`'s token may only read (stats, dead
//!   letters).
//! - `--tls-client-ca`: every caller needs a client certificate that CA issued; with
//!   no token configured, such a certificate may do anything.
//! - `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapers.
//!
//! Unlocked, the listener serves on loopback only unless `--insecure-admin` says so.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use cemesh_control::auth::{AdminGuard, AdminRoles, Role};
use cemesh_ingress::auth::{Authenticator, Secret, StaticToken};

use crate::args::SidecarArgs;

/// The subjects of the two tokens.
const API: &str = "sidecar-api";
const READ: &str = "sidecar-read";

/// The guard `args` ask for; refuses an unlocked listener beyond loopback unless
/// `--insecure-admin`.
pub fn guard(args: &SidecarArgs) -> anyhow::Result<AdminGuard> {
    let mut tokens = Vec::new();
    for (name, file, flag) in [
        (API, &args.api_token_file, "--api-token-file"),
        (READ, &args.read_token_file, "--read-token-file"),
    ] {
        if let Some(file) = file {
            tokens.push(StaticToken {
                name: name.to_owned(),
                secret: Secret::new(read_token(file, flag)?.as_bytes()),
                namespace: None,
            });
        }
    }
    let roles = (!tokens.is_empty()).then(|| AdminRoles {
        admin: vec![API.to_owned()],
        read: vec![READ.to_owned()],
        metrics: None,
    });
    let guard = AdminGuard::new(
        Arc::new(Authenticator::new(tokens, None, false)),
        roles.as_ref(),
    )
    .requiring_client_certificates(args.tls_client_ca.is_some());
    if !guard.is_locked() && !args.listen.ip().is_loopback() {
        if !args.insecure_admin {
            anyhow::bail!(
                "refusing to serve publishing and the outbox admin endpoints to anyone on --listen {}: give --api-token-file or --tls-client-ca, listen on 127.0.0.1, or pass --insecure-admin to accept the risk",
                args.listen
            );
        }
        tracing::warn!(listen = %args.listen, "The sidecar's publishing and admin endpoints are open to anyone who reaches them (--insecure-admin)");
    }
    Ok(guard)
}

fn read_token(file: &Path, flag: &str) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading {flag} {}", file.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        anyhow::bail!("{flag} {}: the file is empty", file.display());
    }
    Ok(token)
}

/// What a request on the local listener needs.
fn need(method: &http::Method, path: &str) -> Option<Role> {
    match path {
        "/healthz" | "/readyz" | "/metrics" => None,
        p if p.starts_with("/v1/") && matches!(*method, http::Method::GET | http::Method::HEAD) => {
            Some(Role::Read)
        }
        // Publishing and changes to the outbox.
        _ => Some(Role::Admin),
    }
}

/// The listener's gate (an axum middleware).
pub async fn middleware(State(guard): State<AdminGuard>, req: Request, next: Next) -> Response {
    if let Some(need) = need(req.method(), req.uri().path()) {
        if let Err(e) = guard.check_request(&req, need) {
            return cemesh_control::admin::refusal(&e);
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_open_reads_need_read_and_the_rest_admin() {
        use http::Method;
        assert_eq!(need(&Method::GET, "/healthz"), None);
        assert_eq!(need(&Method::GET, "/metrics"), None);
        assert_eq!(need(&Method::GET, "/v1/stats"), Some(Role::Read));
        assert_eq!(need(&Method::GET, "/v1/deadletters/x"), Some(Role::Read));
        assert_eq!(need(&Method::DELETE, "/v1/deadletters"), Some(Role::Admin));
        assert_eq!(
            need(&Method::POST, "/v1/deadletters:redrive"),
            Some(Role::Admin)
        );
        assert_eq!(need(&Method::POST, "/publish/order"), Some(Role::Admin));
        assert_eq!(need(&Method::POST, "/"), Some(Role::Admin));
        // A GET outside /v1 is a publish attempt (answered 405), still gated.
        assert_eq!(need(&Method::GET, "/"), Some(Role::Admin));
    }
}
