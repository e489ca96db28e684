//! What lets a subscriber tell a delivery from cemesh from a forged one.
//!
//! - **OIDC** (Knative's `Destination.audience`): each delivery carries
//!   `Authorization: Bearer <JWT>` minted for that audience by a [`TokenSource`] (the
//!   control plane's signer, whose keys it publishes as JWKS); any OIDC library
//!   verifies it.
//! - **Standard Webhooks** (`cemesh.dev/webhook-secret-file`): `webhook-id`,
//!   `webhook-timestamp` and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
//!   `id.timestamp.body` under a shared secret), for subscribers with no OIDC library.
//!   Written here because it is twenty lines over `ring`'s HMAC; the e2e test checks
//!   it against the reference verifier.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

/// Mints delivery tokens: a JWT for `audience` whose subject is `subject`.
pub trait TokenSource: fmt::Debug + Send + Sync {
    fn token(&self, audience: &str, subject: &str) -> Option<String>;
}

/// How a trigger's deliveries prove where they come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryAuth {
    /// `Destination.audience`: send a JWT for it.
    pub audience: Option<String>,
    /// Sign each delivery per Standard Webhooks.
    pub webhook: Option<WebhookSecret>,
    /// Knative's `Destination.CACerts`: the subscriber's certificate may also be
    /// issued by these.
    pub ca_certs: Option<CaCerts>,
}

/// PEM CA certificates a destination's server certificate may chain to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CaCerts(Arc<str>);

impl fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCerts({} certificates)", self.certificates().len())
    }
}

impl CaCerts {
    /// Checks that `pem` holds at least one certificate.
    pub fn parse(pem: &str) -> Result<Self, String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("no -----BEGIN CERTIFICATE----- block".into());
        }
        Ok(CaCerts(pem.into()))
    }

    pub fn certificates(&self) -> Vec<reqwest::Certificate> {
        reqwest::Certificate::from_pem_bundle(self.0.as_bytes()).unwrap_or_default()
    }

    /// The certificates as DER (the unreadable ones left out; `parse` checked them).
    pub fn certificate_ders(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::pem_slice_iter(self.0.as_bytes())
            .filter_map(Result::ok)
            .collect()
    }
}

impl DeliveryAuth {
    /// Whether nothing is added to a delivery's headers.
    pub fn is_none(&self) -> bool {
        self.audience.is_none() && self.webhook.is_none()
    }
}

/// A Standard Webhooks secret: `whsec_` + base64, or raw bytes. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Arc<[u8]>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The fewest secret bytes taken (Standard Webhooks asks for 24 to 64).
pub const MIN_WEBHOOK_SECRET: usize = 24;

impl WebhookSecret {
    /// Reads a secret as written in a file (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = match text.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "the text after whsec_ is not base64".to_owned())?,
            None => text.as_bytes().to_vec(),
        };
        if bytes.len() < MIN_WEBHOOK_SECRET {
            return Err(format!(
                "the secret is {} bytes; at least {MIN_WEBHOOK_SECRET} are needed (whsec_ + base64 of 32 random bytes: openssl rand -base64 32)",
                bytes.len()
            ));
        }
        Ok(WebhookSecret(bytes.into()))
    }

    /// `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        let tag = ctx.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

/// Adds the headers `auth` asks for to one delivery of `body`.
pub(crate) fn sign(
    auth: &DeliveryAuth,
    tokens: Option<&dyn TokenSource>,
    subject: &str,
    event_id: &str,
    body: &[u8],
    headers: &mut HeaderMap,
) {
    if let (Some(audience), Some(tokens)) = (&auth.audience, tokens) {
        match tokens
            .token(audience, subject)
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            Some(mut v) => {
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
            None => {
                tracing::warn!(%audience, "No delivery token could be minted; delivering without one")
            }
        }
    }
    if let Some(secret) = &auth.webhook {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = secret.sign(event_id, now, body);
        for (name, value) in [
            ("webhook-id", event_id.to_owned()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", signature),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_and_sign_as_the_standard_says() {
        // The example of the Standard Webhooks specification.
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(WebhookSecret::parse("short").is_err());
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
        assert!(!format!("{s:?}").contains("MfKQ"));
    }
}
