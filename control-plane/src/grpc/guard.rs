//! The gRPC `Admin` service behind the admin API's one gate ([`AdminGuard`]): each
//! call's `authorization` metadata is checked for the role its method needs (`read`
//! for Get, List and ListDeadLetters, `admin` for the rest), and with
//! `--tls-client-ca` the connection's verified client certificate, before the service
//! sees it. Publisher, health, reflection and KEDA's scaler are not wrapped.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::server::NamedService;

use crate::auth::{AdminGuard, GuardError, Role};

/// `S` (the Admin server) behind `guard`.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: AdminGuard,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, guard: AdminGuard) -> Self {
        Guarded { inner, guard }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

/// The role a method of `cemesh.v1.Admin` needs.
fn role_of(path: &str) -> Role {
    match path.rsplit('/').next() {
        Some("GetResource" | "ListResources" | "ListDeadLetters") => Role::Read,
        _ => Role::Admin,
    }
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let credential = req.headers().get("authorization").map(|v| v.as_bytes());
        let peer = req
            .extensions()
            .get::<super::Peer>()
            .and_then(|p| p.identity.as_ref());
        if let Err(e) = self
            .guard
            .check(credential, peer, role_of(req.uri().path()))
        {
            let status = match e {
                GuardError::Unauthenticated(e) => tonic::Status::unauthenticated(e.to_string()),
                GuardError::NoClientCertificate => tonic::Status::unauthenticated(e.to_string()),
                GuardError::Forbidden(m) => tonic::Status::permission_denied(m),
            };
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_read_and_the_rest_admin() {
        assert_eq!(role_of("/cemesh.v1.Admin/ListResources"), Role::Read);
        assert_eq!(role_of("/cemesh.v1.Admin/GetResource"), Role::Read);
        assert_eq!(role_of("/cemesh.v1.Admin/ListDeadLetters"), Role::Read);
        assert_eq!(role_of("/cemesh.v1.Admin/ApplyResource"), Role::Admin);
        assert_eq!(role_of("/cemesh.v1.Admin/PurgeDeadLetters"), Role::Admin);
        assert_eq!(role_of("/cemesh.v1.Admin/SomethingNew"), Role::Admin);
    }
}
