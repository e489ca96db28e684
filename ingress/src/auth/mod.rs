//! Who sent a request, and whether they may: the ingress's security layer.
//!
//! **Authentication** ([`Authenticator`]) reads `Authorization: Bearer <token>` (HTTP)
//! or the `authorization` metadata (gRPC): a static token named in the server config
//! (compared as SHA-256 digests in constant time, so neither its bytes nor its length
//! leak through timing), or a JWT from a configured OIDC issuer ([`jwt`]) whose
//! audience is the target broker's (`eventing.knative.dev/broker/<ns>/<name>`, as in
//! Knative). A credential that is sent but not valid is always refused (401), even
//! where anonymous senders are allowed: a client with a broken token should hear so.
//! With no token and no issuer configured, credentials are ignored.
//!
//! **Authorization** ([`Access`]) is Knative's `EventPolicy`: a broker that some
//! policy selects accepts a request only from a subject one of them names (`from.sub`,
//! with a `*` suffix wildcard), and each event only if that policy's filters pass it.
//! A broker no policy selects follows the default mode (`allow-all`, `deny-all`,
//! `allow-same-namespace`). The sender is checked before the body is read; the
//! filters once it is decoded.
//!
//! Both run inside the one accept path ([`crate::accept::admit`],
//! [`crate::accept::check_policies`]), where the target broker is already known, so
//! the HTTP ingress, the gRPC `Publisher` and the sidecar share them.

pub mod jwt;

use std::fmt;
use std::sync::Arc;

use cemesh_proto::{AttributeValue, Event};

use crate::BrokerKey;
use subtle::ConstantTimeEq as _;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// What policies match: the static token's name or the JWT's `sub`.
    pub subject: String,
    /// The sender's namespace, for `allow-same-namespace`: the token's configured
    /// one, or `NS` of a `system:serviceaccount:NS:NAME` subject.
    pub namespace: Option<String>,
    pub kind: IdentityKind,
    /// When the credential stops being valid (a JWT's `exp` plus the leeway, Unix
    /// seconds); a long-lived gRPC stream is admitted again past it.
    pub valid_until: Option<u64>,
}

impl Identity {
    /// Whether the credential has expired since it was checked.
    pub fn expired(&self) -> bool {
        self.valid_until.is_some_and(|until| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            now > until
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityKind {
    /// A static token from the server config.
    Token,
    /// A JWT from this issuer.
    Jwt { issuer: String },
}

impl Identity {
    /// The namespace a Kubernetes service account subject names.
    fn namespace_of(subject: &str) -> Option<String> {
        let rest = subject.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty()).then(|| ns.to_owned())
    }
}

/// A secret's bytes: never printed, compared by digest in constant time.
#[derive(Clone)]
pub struct Secret {
    digest: [u8; 32],
}

impl Secret {
    pub fn new(value: &[u8]) -> Self {
        Secret {
            digest: sha256(value),
        }
    }

    fn matches(&self, digest: &[u8; 32]) -> bool {
        self.digest.ct_eq(digest).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn sha256(value: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, value);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A named static token.
#[derive(Debug, Clone)]
pub struct StaticToken {
    /// The subject policies name (`from.sub`).
    pub name: String,
    pub secret: Secret,
    pub namespace: Option<String>,
}

/// Why a credential was refused (401). Never contains the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this broker accepts only authenticated senders: send Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header must be \"Bearer <token>\"")]
    NotBearer,
    #[error("the bearer token is not one this server knows")]
    UnknownToken,
    #[error("the bearer token was refused: {0}")]
    Jwt(String),
}

/// Checks credentials against the static tokens and JWT issuers of the server config.
#[derive(Default)]
pub struct Authenticator {
    tokens: Vec<StaticToken>,
    jwt: Option<Arc<jwt::JwtVerifier>>,
    /// Stamp `authtype`/`authid` (the CloudEvents authcontext extension) on accepted
    /// events.
    authcontext: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("jwt", &self.jwt.as_ref().map(|j| !j.is_empty()))
            .field("authcontext", &self.authcontext)
            .finish()
    }
}

impl Authenticator {
    pub fn new(
        tokens: Vec<StaticToken>,
        jwt: Option<Arc<jwt::JwtVerifier>>,
        authcontext: bool,
    ) -> Self {
        Authenticator {
            tokens,
            jwt,
            authcontext,
        }
    }

    /// Whether any credential can be valid here.
    pub fn is_configured(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.as_ref().is_some_and(|j| !j.is_empty())
    }

    /// The sender of a request whose `Authorization` value is `header` (`None`: no
    /// credential sent), for a target of `audience`.
    pub fn authenticate(
        &self,
        header: Option<&[u8]>,
        audience: &str,
    ) -> Result<Option<Identity>, AuthError> {
        // With nothing configured, a credential cannot be checked: it is ignored, as
        // before authentication existed (a proxy's or a source's header stays harmless).
        let Some(header) = header.filter(|_| self.is_configured()) else {
            return Ok(None);
        };
        let token = bearer(header).ok_or(AuthError::NotBearer)?;
        let digest = sha256(token.as_bytes());
        // Every token is compared, so the time taken does not say which one matched.
        let mut found = None;
        for t in &self.tokens {
            if t.secret.matches(&digest) && found.is_none() {
                found = Some(t);
            }
        }
        if let Some(t) = found {
            return Ok(Some(Identity {
                subject: t.name.clone(),
                namespace: t.namespace.clone(),
                kind: IdentityKind::Token,
                valid_until: None,
            }));
        }
        match &self.jwt {
            Some(verifier) if !verifier.is_empty() && looks_like_jwt(token) => {
                let claims = verifier
                    .verify(token, audience)
                    .map_err(|e| AuthError::Jwt(e.to_string()))?;
                Ok(Some(Identity {
                    namespace: Identity::namespace_of(&claims.subject),
                    valid_until: Some(claims.valid_until),
                    subject: claims.subject,
                    kind: IdentityKind::Jwt {
                        issuer: claims.issuer,
                    },
                }))
            }
            _ => Err(AuthError::UnknownToken),
        }
    }

    /// Stamps the sender on accepted events when the server config asks for it
    /// (`auth.authcontext`), replacing whatever the producer wrote there: the
    /// CloudEvents authcontext extension (`authtype`, `authid`).
    pub fn stamp(&self, events: &mut [Event], who: Option<&Identity>) {
        if !self.authcontext {
            return;
        }
        let (kind, id) = match who {
            Some(i) => match i.kind {
                IdentityKind::Token => ("api_key", Some(i.subject.as_str())),
                IdentityKind::Jwt { .. } => ("service_account", Some(i.subject.as_str())),
            },
            None => ("unauthenticated", None),
        };
        for e in events {
            e.remove_extension("authclaims");
            e.set_extension(AUTHTYPE, AttributeValue::String(kind.to_owned()));
            match id {
                Some(id) => e.set_extension(AUTHID, AttributeValue::String(id.to_owned())),
                None => {
                    e.remove_extension(AUTHID);
                }
            }
        }
    }
}

/// The authcontext extension's attributes.
pub const AUTHTYPE: &str = "authtype";
pub const AUTHID: &str = "authid";

fn bearer(header: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = s.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// What a broker accepts when no `EventPolicy` selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultMode {
    /// Anyone (today's behaviour).
    #[default]
    AllowAll,
    /// No one: every broker needs a policy.
    DenyAll,
    /// Authenticated senders of the broker's namespace.
    AllowSameNamespace,
}

impl DefaultMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultMode::AllowAll => "allow-all",
            DefaultMode::DenyAll => "deny-all",
            DefaultMode::AllowSameNamespace => "allow-same-namespace",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow-all" => Some(DefaultMode::AllowAll),
            "deny-all" => Some(DefaultMode::DenyAll),
            "allow-same-namespace" => Some(DefaultMode::AllowSameNamespace),
            _ => None,
        }
    }
}

/// An `EventPolicy`'s filters, compiled by the control plane (the Subscriptions API
/// dialect lives with the dispatcher's filters).
pub trait EventCheck: fmt::Debug + Send + Sync {
    fn allows(&self, event: &Event) -> bool;
}

/// A subject pattern of `from.sub`: exact, or a prefix when it ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        SubjectPattern(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, subject: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => subject.starts_with(prefix),
            None => self.0 == subject,
        }
    }
}

/// One `EventPolicy` as the ingress applies it.
#[derive(Debug)]
pub struct Policy {
    /// `namespace/name`.
    pub name: String,
    pub from: Vec<SubjectPattern>,
    /// Every filter must pass; `None`: no filters.
    pub filters: Option<Arc<dyn EventCheck>>,
}

/// Who may send to one broker.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The broker's OIDC audience.
    pub audience: String,
    /// The policies that select the broker; empty: `default` decides.
    pub policies: Vec<Arc<Policy>>,
    pub default: DefaultMode,
}

/// Why a sender or an event was not allowed (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

/// The decision on a request's sender: the policies whose `from` it matched, whose
/// filters its events must then pass.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    /// `None`: nothing more to check (no policy applies and the default allowed it).
    policies: Option<Vec<Arc<Policy>>>,
    pub who: Option<Identity>,
}

/// Why a request is refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(AuthError),
    Forbidden(Denied),
}

impl Access {
    /// Knative's audience of a broker.
    pub fn broker_audience(namespace: &str, name: &str) -> String {
        format!("eventing.knative.dev/broker/{namespace}/{name}").to_ascii_lowercase()
    }

    /// Checks the sender: 401 for a missing credential where one is needed, 403 for
    /// a sender no policy (or the default) allows.
    pub fn admit(&self, broker: &BrokerKey, who: Option<Identity>) -> Result<Admitted, Refusal> {
        if self.policies.is_empty() {
            return match (self.default, &who) {
                (DefaultMode::AllowAll, _) => Ok(Admitted {
                    policies: None,
                    who,
                }),
                (_, None) => Err(Refusal::Unauthenticated(AuthError::Missing)),
                (DefaultMode::DenyAll, Some(_)) => Err(Refusal::Forbidden(Denied(format!(
                    "broker {broker} accepts no sender: no EventPolicy selects it and the default authorization mode is deny-all"
                )))),
                (DefaultMode::AllowSameNamespace, Some(i)) => {
                    if i.namespace.as_deref() == Some(broker.namespace.as_str()) {
                        Ok(Admitted {
                            policies: None,
                            who,
                        })
                    } else {
                        Err(Refusal::Forbidden(Denied(format!(
                            "broker {broker} accepts senders of namespace {} only (no EventPolicy selects it and the default authorization mode is allow-same-namespace); {} is {}",
                            broker.namespace,
                            i.subject,
                            i.namespace.as_deref().map_or("of no namespace".to_owned(), |n| format!("of namespace {n}")),
                        ))))
                    }
                }
            };
        }
        let Some(i) = &who else {
            return Err(Refusal::Unauthenticated(AuthError::Missing));
        };
        let matching: Vec<_> = self
            .policies
            .iter()
            .filter(|p| p.from.iter().any(|f| f.matches(&i.subject)))
            .cloned()
            .collect();
        if matching.is_empty() {
            return Err(Refusal::Forbidden(Denied(format!(
                "{} may not send to broker {broker}: no EventPolicy that selects it ({}) names this subject in spec.from",
                i.subject,
                self.policy_names(&self.policies)
            ))));
        }
        Ok(Admitted {
            policies: Some(matching),
            who,
        })
    }

    fn policy_names(&self, policies: &[Arc<Policy>]) -> String {
        policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks each event against the filters of the policies the sender matched:
    /// one of them must pass it. The error names the event (and its index in a batch).
    pub fn check_events(
        &self,
        broker: &BrokerKey,
        admitted: &Admitted,
        events: &[Event],
        batch: bool,
    ) -> Result<(), Denied> {
        let Some(policies) = &admitted.policies else {
            return Ok(());
        };
        if policies.iter().any(|p| p.filters.is_none()) {
            return Ok(());
        }
        for (i, e) in events.iter().enumerate() {
            let allowed = policies
                .iter()
                .any(|p| p.filters.as_ref().is_none_or(|f| f.allows(e)));
            if !allowed {
                let at = if batch {
                    format!("event {i} of the batch (id {:?}, type {:?})", e.id, e.ty)
                } else {
                    format!("the event (id {:?}, type {:?})", e.id, e.ty)
                };
                return Err(Denied(format!(
                    "{at} may not be sent to broker {broker}: the filters of {} do not allow it",
                    self.policy_names(policies)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(tokens: &[(&str, &str, Option<&str>)]) -> Authenticator {
        Authenticator::new(
            tokens
                .iter()
                .map(|(name, secret, ns)| StaticToken {
                    name: (*name).to_owned(),
                    secret: Secret::new(secret.as_bytes()),
                    namespace: ns.map(str::to_owned),
                })
                .collect(),
            None,
            true,
        )
    }

    #[test]
    fn static_tokens_identify_their_sender_and_anything_else_is_refused() {
        let a = auth(&[("orders", "s3cret", Some("shop")), ("ops", "other", None)]);
        let who = a
            .authenticate(Some(b"Bearer s3cret"), "aud")
            .unwrap()
            .unwrap();
        assert_eq!(who.subject, "orders");
        assert_eq!(who.namespace.as_deref(), Some("shop"));
        assert_eq!(
            a.authenticate(Some(b"bearer  other "), "aud")
                .unwrap()
                .unwrap()
                .subject,
            "ops"
        );
        assert_eq!(a.authenticate(None, "aud"), Ok(None));
        assert_eq!(
            a.authenticate(Some(b"Bearer s3cre"), "aud"),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            a.authenticate(Some(b"Basic czNjcmV0"), "aud"),
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            a.authenticate(Some(b"Bearer "), "aud"),
            Err(AuthError::NotBearer)
        );
        // No JWT issuer configured: a JWT-shaped token is just unknown.
        let none = Authenticator::default();
        assert_eq!(none.authenticate(Some(b"Bearer whatever"), "aud"), Ok(None));
        assert_eq!(
            a.authenticate(Some(b"Bearer a.b.c"), "aud"),
            Err(AuthError::UnknownToken)
        );
        assert!(!format!("{:?}", a.tokens).contains("s3cret"));
    }

    #[test]
    fn service_account_subjects_name_their_namespace() {
        assert_eq!(
            Identity::namespace_of("system:serviceaccount:shop:orders").as_deref(),
            Some("shop")
        );
        assert_eq!(Identity::namespace_of("orders"), None);
        assert_eq!(Identity::namespace_of("system:serviceaccount::x"), None);
    }

    #[test]
    fn sub_patterns_take_a_suffix_wildcard() {
        let p = SubjectPattern::new("system:serviceaccount:shop:*");
        assert!(p.matches("system:serviceaccount:shop:orders"));
        assert!(!p.matches("system:serviceaccount:other:orders"));
        assert!(SubjectPattern::new("*").matches("anyone"));
        assert!(SubjectPattern::new("orders").matches("orders"));
        assert!(!SubjectPattern::new("orders").matches("orders2"));
    }

    fn who(subject: &str, ns: Option<&str>) -> Option<Identity> {
        Some(Identity {
            subject: subject.into(),
            namespace: ns.map(str::to_owned),
            kind: IdentityKind::Token,
            valid_until: None,
        })
    }

    fn shop_b() -> BrokerKey {
        BrokerKey::new("shop", "b")
    }

    #[derive(Debug)]
    struct TypeIs(&'static str);
    impl EventCheck for TypeIs {
        fn allows(&self, e: &Event) -> bool {
            e.ty == self.0
        }
    }

    #[test]
    fn default_modes() {
        let mut a = Access {
            ..Access::default()
        };
        assert!(a.admit(&shop_b(), None).is_ok());
        a.default = DefaultMode::DenyAll;
        assert!(matches!(
            a.admit(&shop_b(), None),
            Err(Refusal::Unauthenticated(AuthError::Missing))
        ));
        assert!(matches!(
            a.admit(&shop_b(), who("x", Some("shop"))),
            Err(Refusal::Forbidden(_))
        ));
        a.default = DefaultMode::AllowSameNamespace;
        assert!(a.admit(&shop_b(), who("x", Some("shop"))).is_ok());
        let Err(Refusal::Forbidden(Denied(why))) = a.admit(&shop_b(), who("x", Some("other")))
        else {
            panic!("another namespace is forbidden");
        };
        assert!(why.contains("namespace other"), "{why}");
    }

    #[test]
    fn policies_match_the_sender_then_filter_each_event() {
        let orders = Arc::new(Policy {
            name: "shop/orders-only".into(),
            from: vec![SubjectPattern::new("orders")],
            filters: Some(Arc::new(TypeIs("order.created"))),
        });
        let a = Access {
            policies: vec![orders],
            // A policy applies: the default no longer matters.
            default: DefaultMode::AllowAll,
            ..Access::default()
        };
        assert!(matches!(
            a.admit(&shop_b(), None),
            Err(Refusal::Unauthenticated(_))
        ));
        let Err(Refusal::Forbidden(Denied(why))) = a.admit(&shop_b(), who("billing", None)) else {
            panic!("billing is not named");
        };
        assert!(
            why.contains("billing") && why.contains("shop/orders-only"),
            "{why}"
        );
        let ok = a.admit(&shop_b(), who("orders", None)).unwrap();
        let good = Event::new("1", "/s", "order.created");
        let bad = Event::new("2", "/s", "order.deleted");
        assert!(a
            .check_events(&shop_b(), &ok, std::slice::from_ref(&good), false)
            .is_ok());
        let Err(Denied(why)) = a.check_events(&shop_b(), &ok, &[good, bad], true) else {
            panic!("the second event is filtered out");
        };
        assert!(
            why.contains("event 1 of the batch") && why.contains("order.deleted"),
            "{why}"
        );
    }

    #[test]
    fn authcontext_replaces_what_the_producer_claimed() {
        let a = auth(&[("orders", "s3cret", None)]);
        let mut e = Event::new("1", "/s", "t");
        e.set_extension(AUTHID, AttributeValue::String("forged".into()));
        e.set_extension("authclaims", AttributeValue::String("forged".into()));
        let who = a
            .authenticate(Some(b"Bearer s3cret"), "aud")
            .unwrap()
            .unwrap();
        a.stamp(std::slice::from_mut(&mut e), Some(&who));
        assert_eq!(
            e.extension(AUTHID),
            Some(&AttributeValue::String("orders".into()))
        );
        assert_eq!(e.extension("authclaims"), None);
        a.stamp(std::slice::from_mut(&mut e), None);
        assert_eq!(e.extension(AUTHID), None);
        assert_eq!(
            e.extension(AUTHTYPE),
            Some(&AttributeValue::String("unauthenticated".into()))
        );
    }
}
