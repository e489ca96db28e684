//! The server config's `auth:` section: who senders are (static tokens, OIDC
//! issuers), what a broker no `EventPolicy` selects accepts, and whether accepted
//! events carry their sender. Read here, turned into the ingress's
//! [`Authenticator`] at start-up; secrets are read from files or the environment,
//! never written in the config itself, and never printed.
//!
//! ```yaml
//! auth:
//!   default_authorization: allow-same-namespace   # allow-all (default), deny-all
//!   authcontext: true          # stamp authtype/authid on accepted events
//!   tokens:
//!     - name: orders-app       # the subject EventPolicies name in from.sub
//!       namespace: shop        # for allow-same-namespace
//!       file: /run/secrets/orders-token    # or env: ORDERS_TOKEN
//!   jwt:
//!     - issuer: https://kubernetes.default.svc
//!       jwks_url: https://kubernetes.default.svc/openid/v1/jwks   # or jwks_file
//!       audiences: [cemesh]    # besides each broker's own audience
//!       leeway: 30s
//!   admin:                     # locks the admin API (REST and gRPC)
//!     admin: [ops]             # subjects that may change things
//!     read: [dashboard]        # subjects that may look
//!     metrics: open            # or read
//! ```
//!
//! The admin API's roles are checked by [`AdminGuard`], one place for the REST
//! routes (an axum middleware) and the gRPC `Admin` service (a tower wrapper).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cemesh_ingress::auth::jwt::{JwtIssuerConfig, JwtVerifier, KeySource};
use cemesh_ingress::auth::{
    AuthError, Authenticator, DefaultMode, Secret, StaticToken, SubjectPattern,
};
use cemesh_ingress::tls::PeerIdentity;
use serde::Deserialize;

use crate::duration::HumaneDuration;

/// `auth:` in the server config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// OIDC issuers whose JWTs are accepted.
    #[serde(default)]
    pub jwt: Vec<JwtEntry>,
    /// What a broker no `EventPolicy` selects accepts. Default `allow-all`.
    pub default_authorization: Option<DefaultAuthorization>,
    /// Stamp the sender on accepted events as the CloudEvents authcontext extension
    /// (`authtype`, `authid`), replacing what the producer wrote there.
    #[serde(default)]
    pub authcontext: bool,
    /// Who may use the admin API; absent: it is open (loopback only, unless
    /// `--insecure-admin`).
    pub admin: Option<AdminRoles>,
}

/// `auth.admin`: subjects (token names or JWT subjects, `*` suffix wildcards) by role.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRoles {
    /// May apply, delete, redrive, purge and resume (and read).
    #[serde(default)]
    pub admin: Vec<String>,
    /// May get, list, describe, tail and read dead letters.
    #[serde(default)]
    pub read: Vec<String>,
    /// `/metrics`: `open` (default, for scrapers) or `read`.
    pub metrics: Option<MetricsAccess>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    Open,
    Read,
}

/// The audience a JWT for the admin API names (besides the issuer's `audiences`).
pub const ADMIN_AUDIENCE: &str = "cemesh/admin";

/// What an admin call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    Admin,
}

/// Why an admin call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// 401 / UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// 401 / UNAUTHENTICATED: `--tls-client-ca` is set and the caller sent no
    /// certificate.
    #[error("the admin API requires a client certificate issued by the server's --tls-client-ca")]
    NoClientCertificate,
    /// 403 / PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(String),
}

/// Checks admin callers' roles; open when neither `auth.admin` nor a client CA
/// (`--tls-client-ca`) is configured.
///
/// A caller is who its bearer token says, or, without one, who its verified client
/// certificate names. With a client CA every caller must have such a certificate
/// (a token alone is not enough); with `auth.admin` its subject must hold the role;
/// with a client CA and no `auth.admin`, the certificate is the whole lock.
#[derive(Debug, Clone, Default)]
pub struct AdminGuard {
    auth: Arc<Authenticator>,
    roles: Option<(Vec<SubjectPattern>, Vec<SubjectPattern>)>,
    metrics_open: bool,
    client_certificates: bool,
}

impl AdminGuard {
    pub fn new(auth: Arc<Authenticator>, roles: Option<&AdminRoles>) -> Self {
        let patterns = |v: &[String]| v.iter().map(SubjectPattern::new).collect::<Vec<_>>();
        AdminGuard {
            auth,
            roles: roles.map(|r| (patterns(&r.admin), patterns(&r.read))),
            metrics_open: roles.is_none_or(|r| r.metrics != Some(MetricsAccess::Read)),
            client_certificates: false,
        }
    }

    /// Every caller must present a client certificate the listener verified.
    pub fn requiring_client_certificates(mut self, required: bool) -> Self {
        self.client_certificates = required;
        self
    }

    /// Whether callers must authenticate.
    pub fn is_locked(&self) -> bool {
        self.roles.is_some() || self.client_certificates
    }

    /// Whether `/metrics` needs the read role.
    pub fn metrics_open(&self) -> bool {
        self.metrics_open
    }

    /// Refuses roles nobody could prove: `auth.admin` without tokens, issuers or
    /// client certificates.
    pub fn check_provable(&self) -> Result<(), AuthConfigError> {
        if self.roles.is_some() && !self.auth.is_configured() && !self.client_certificates {
            return Err(AuthConfigError::AdminWithoutCredentials);
        }
        Ok(())
    }

    /// Checks a request: its `Authorization` header and the [`PeerIdentity`] its
    /// listener put in its extensions.
    pub fn check_request<B>(&self, req: &http::Request<B>, need: Role) -> Result<(), GuardError> {
        let credential = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        self.check(credential, req.extensions().get::<PeerIdentity>(), need)
    }

    /// Checks a caller (`credential`: its `Authorization` value; `peer`: its verified
    /// client certificate) for `need`.
    pub fn check(
        &self,
        credential: Option<&[u8]>,
        peer: Option<&PeerIdentity>,
        need: Role,
    ) -> Result<(), GuardError> {
        if self.client_certificates && peer.is_none() {
            return Err(GuardError::NoClientCertificate);
        }
        let Some((admin, read)) = &self.roles else {
            return Ok(());
        };
        let subject = match self
            .auth
            .authenticate(credential, ADMIN_AUDIENCE)
            .map_err(GuardError::Unauthenticated)?
        {
            Some(who) => who.subject,
            None => match peer {
                Some(PeerIdentity(name)) => name.clone(),
                None => return Err(GuardError::Unauthenticated(AuthError::Missing)),
            },
        };
        let is = |set: &[SubjectPattern]| set.iter().any(|p| p.matches(&subject));
        let allowed = match need {
            Role::Admin => is(admin),
            Role::Read => is(admin) || is(read),
        };
        if allowed {
            Ok(())
        } else {
            Err(GuardError::Forbidden(format!(
                "{subject} may not {}: it needs the {} role (auth.admin.{})",
                match need {
                    Role::Admin => "change the mesh",
                    Role::Read => "read the admin API",
                },
                match need {
                    Role::Admin => "admin",
                    Role::Read => "read",
                },
                match need {
                    Role::Admin => "admin",
                    Role::Read => "read or auth.admin.admin",
                }
            )))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAuthorization {
    AllowAll,
    DenyAll,
    AllowSameNamespace,
}

impl From<DefaultAuthorization> for DefaultMode {
    fn from(d: DefaultAuthorization) -> Self {
        match d {
            DefaultAuthorization::AllowAll => DefaultMode::AllowAll,
            DefaultAuthorization::DenyAll => DefaultMode::DenyAll,
            DefaultAuthorization::AllowSameNamespace => DefaultMode::AllowSameNamespace,
        }
    }
}

/// One static token: its name (the subject policies match) and where its secret is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// A file holding the token (surrounding whitespace is ignored).
    pub file: Option<PathBuf>,
    /// An environment variable holding the token.
    pub env: Option<String>,
    /// The sender's namespace, for `allow-same-namespace`.
    pub namespace: Option<String>,
}

/// One OIDC issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtEntry {
    /// `iss`, exactly.
    pub issuer: String,
    /// Audiences accepted besides the target broker's own
    /// (`eventing.knative.dev/broker/<ns>/<name>`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The issuer's keys (JWKS) in a file...
    pub jwks_file: Option<PathBuf>,
    /// ... or at a URL.
    pub jwks_url: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 30s.
    pub leeway: Option<HumaneDuration>,
    /// How often the keys are read again. Default 5m.
    pub refresh: Option<HumaneDuration>,
}

/// Why the `auth:` section cannot be used; names the entry and the file or variable.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.tokens[{index}] ({name}): {message}")]
    Token {
        index: usize,
        name: String,
        message: String,
    },
    #[error("auth.jwt[{index}] ({issuer}): {message}")]
    Jwt {
        index: usize,
        issuer: String,
        message: String,
    },
    #[error(
        "auth.admin needs credentials to check: add auth.tokens or auth.jwt, or --tls-client-ca"
    )]
    AdminWithoutCredentials,
    #[error("auth.jwt: {0}")]
    Keys(#[from] cemesh_ingress::auth::jwt::JwtConfigError),
}

impl AuthConfig {
    /// What brokers no policy selects accept.
    pub fn default_mode(&self) -> DefaultMode {
        self.default_authorization
            .map_or(DefaultMode::AllowAll, Into::into)
    }

    /// Reads every secret and every issuer's keys; any problem stops start-up.
    pub async fn authenticator(
        &self,
        http: reqwest::Client,
    ) -> Result<Arc<Authenticator>, AuthConfigError> {
        let mut tokens: Vec<StaticToken> = Vec::new();
        for (index, t) in self.tokens.iter().enumerate() {
            let err = |message: String| AuthConfigError::Token {
                index,
                name: t.name.clone(),
                message,
            };
            if t.name.trim().is_empty() {
                return Err(err("name: required (the subject policies match)".into()));
            }
            if tokens.iter().any(|o| o.name == t.name) {
                return Err(err("name: another token has this name".into()));
            }
            let secret = match (&t.file, &t.env) {
                (Some(file), None) => std::fs::read_to_string(file)
                    .map_err(|e| err(format!("file {}: {e}", file.display())))?,
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| err(format!("env {var}: not set (or not UTF-8)")))?,
                _ => return Err(err("set exactly one of file, env".into())),
            };
            let secret = secret.trim();
            if secret.len() < 16 {
                return Err(err(
                    "the token is shorter than 16 characters; use a long random one (openssl rand -hex 32)".into(),
                ));
            }
            tokens.push(StaticToken {
                name: t.name.clone(),
                secret: Secret::new(secret.as_bytes()),
                namespace: t.namespace.clone(),
            });
        }
        let mut issuers = Vec::new();
        for (index, j) in self.jwt.iter().enumerate() {
            let err = |message: &str| AuthConfigError::Jwt {
                index,
                issuer: j.issuer.clone(),
                message: message.to_owned(),
            };
            if j.issuer.is_empty() {
                return Err(err("issuer: required"));
            }
            let keys = match (&j.jwks_file, &j.jwks_url) {
                (Some(f), None) => KeySource::File(f.clone()),
                (None, Some(u)) => KeySource::Url(u.clone()),
                _ => return Err(err("set exactly one of jwks_file, jwks_url")),
            };
            issuers.push(JwtIssuerConfig {
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                keys,
                leeway: j.leeway.map_or(Duration::from_secs(30), |d| d.0),
                refresh: j.refresh.map_or(Duration::from_secs(300), |d| d.0),
            });
        }
        let jwt = if issuers.is_empty() {
            None
        } else {
            let v = JwtVerifier::new(issuers, http).await?;
            v.spawn_refresh();
            Some(v)
        };
        Ok(Arc::new(Authenticator::new(tokens, jwt, self.authcontext)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> AuthConfig {
        crate::manifest::parser::typed(yaml, "a test").expect("auth config")
    }

    #[tokio::test]
    async fn tokens_come_from_files_and_the_environment_and_problems_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let cfg = config(&format!(
            "tokens:\n  - name: a\n    file: {}\n",
            file.display()
        ));
        let auth = cfg.authenticator(reqwest::Client::new()).await.unwrap();
        let who = auth
            .authenticate(Some(b"Bearer 0123456789abcdef0123"), "aud")
            .unwrap()
            .unwrap();
        assert_eq!(who.subject, "a");

        let cfg = config("tokens:\n  - name: b\n    env: CEMESH_TEST_NO_SUCH_VAR\n");
        let err = cfg
            .authenticator(reqwest::Client::new())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "auth.tokens[0] (b): env CEMESH_TEST_NO_SUCH_VAR: not set (or not UTF-8)"
        );
        std::fs::write(&file, "short").unwrap();
        let cfg = config(&format!(
            "tokens:\n  - name: a\n    file: {}\n",
            file.display()
        ));
        let err = cfg
            .authenticator(reqwest::Client::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorter than 16"), "{err}");
        assert!(!err.contains("short\""), "{err}");
    }

    #[test]
    fn the_default_mode_is_read_in_kebab_case() {
        assert_eq!(
            config("default_authorization: allow-same-namespace\n").default_mode(),
            DefaultMode::AllowSameNamespace
        );
        assert_eq!(config("{}").default_mode(), DefaultMode::AllowAll);
        assert!(crate::manifest::parser::typed::<AuthConfig>(
            "default_authorization: allow-some\n",
            "a test"
        )
        .is_err());
    }
}
