//! JWTs from OIDC issuers: the sender identities of Knative's OIDC feature and of
//! any identity provider (Kubernetes service account tokens, Keycloak, Dex, ...).
//!
//! A token is accepted when it is signed by a key of its issuer's JWKS with RS256,
//! RS384, RS512, ES256, ES384 or EdDSA (asymmetric only: `alg: none` and HS* would
//! let anyone who knows a public key sign), the algorithm fits the key's type (and
//! the key's own `alg`, when it states one), `iss` names a configured issuer exactly,
//! `aud` holds the target's audience or one the issuer allows, `exp` has not passed
//! and `nbf` has (both within a leeway), and `sub` is set.
//!
//! Keys live in an [`ArcSwap`], so verifying takes no lock and no I/O. A task per
//! issuer reads them again: a file when its modification time changes (looked at
//! every second), a URL every `refresh`; a token naming an unknown `kid` wakes it at
//! most once per [`UNKNOWN_KID_PAUSE`], so a rotated key is picked up at its first
//! use (that token is refused; the next one passes). A read that fails keeps the
//! keys there are. `jsonwebtoken` checks signatures and claims; choosing the key and
//! keeping keys fresh is what it leaves to its caller.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Notify;

/// Wake-ups for unknown key ids are at least this far apart per issuer.
pub const UNKNOWN_KID_PAUSE: Duration = Duration::from_secs(10);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Keys tried for a token without `kid`.
const MAX_TRIES: usize = 8;

/// One issuer as the server config names it.
#[derive(Debug, Clone)]
pub struct JwtIssuerConfig {
    pub issuer: String,
    /// Audiences accepted besides the target's own.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often a URL's keys are read again.
    pub refresh: Duration,
}

/// Where an issuer's JWKS is.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "jwks_file {}", p.display()),
            KeySource::Url(u) => write!(f, "jwks_url {u}"),
        }
    }
}

/// Who a valid token says sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub issuer: String,
    pub subject: String,
}

/// Why a token was refused; shown to the client, so it never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a JWT (header.payload.signature, base64url JSON)")]
    Malformed,
    #[error("alg {0} is not allowed: use RS256, ES256 or EdDSA")]
    AlgorithmNotAllowed(String),
    #[error("the issuer {0:?} is not one this server trusts")]
    UnknownIssuer(String),
    #[error("no key {kid:?} in the keys of issuer {issuer}")]
    UnknownKey { issuer: String, kid: String },
    #[error("alg {alg} does not fit the key it names")]
    AlgorithmMismatch { alg: String },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience does not include {audience}")]
    WrongAudience { audience: String },
    #[error("the token has no {0} claim")]
    MissingClaim(String),
}

/// Why start-up cannot read an issuer's keys.
#[derive(Debug, thiserror::Error)]
#[error("issuer {issuer}: {location}: {message}")]
pub struct JwtConfigError {
    pub issuer: String,
    /// `jwks_file PATH` or `jwks_url URL`.
    pub location: String,
    pub message: String,
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    family: Family,
    /// The key's own `alg`, when its JWK states one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                Family::Rsa,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
            ) | (Family::P256, Algorithm::ES256)
                | (Family::P384, Algorithm::ES384)
                | (Family::Ed25519, Algorithm::EdDSA)
        )
    }
}

struct Issuer {
    config: JwtIssuerConfig,
    keys: ArcSwap<Vec<Key>>,
    /// Wakes the refresh task (an unknown `kid`).
    wake: Notify,
    /// Milliseconds since `epoch` of the last wake-up.
    last_wake: AtomicU64,
    epoch: Instant,
}

/// Verifies JWTs of the configured issuers.
pub struct JwtVerifier {
    issuers: Vec<Arc<Issuer>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.config.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

fn allowed(alg: &str) -> Option<Algorithm> {
    match alg {
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl JwtVerifier {
    /// Loads every issuer's keys; errors name the issuer and where its keys are.
    pub async fn new(
        issuers: Vec<JwtIssuerConfig>,
        http: reqwest::Client,
    ) -> Result<Arc<Self>, JwtConfigError> {
        let mut out = Vec::with_capacity(issuers.len());
        for config in issuers {
            let keys = load(&config.keys, &http)
                .await
                .map_err(|message| JwtConfigError {
                    issuer: config.issuer.clone(),
                    location: config.keys.to_string(),
                    message,
                })?;
            out.push(Arc::new(Issuer {
                config,
                keys: ArcSwap::from_pointee(keys),
                wake: Notify::new(),
                last_wake: AtomicU64::new(0),
                epoch: Instant::now(),
            }));
        }
        Ok(Arc::new(JwtVerifier { issuers: out, http }))
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Starts one refresh task per issuer on the current runtime; each ends when the
    /// verifier is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) {
        for (index, _) in self.issuers.iter().enumerate() {
            let weak = Arc::downgrade(self);
            tokio::spawn(refresh_loop(weak, index));
        }
    }

    /// Verifies `token` (what follows `Bearer `) for a target of `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Result<JwtClaims, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: RawHeader = decode_part(h)?;
        let alg_name = header.alg.unwrap_or_default();
        let alg = allowed(&alg_name).ok_or(JwtError::AlgorithmNotAllowed(alg_name.clone()))?;
        let iss = decode_part::<RawClaims>(p)?
            .iss
            .ok_or_else(|| JwtError::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(JwtError::UnknownIssuer(iss))?;
        let keys = issuer.keys.load();
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let found: Vec<&Key> = keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if found.is_empty() {
                    issuer.wake_up();
                    return Err(JwtError::UnknownKey {
                        issuer: issuer.config.issuer.clone(),
                        kid: kid.clone(),
                    });
                }
                found
            }
            None => keys.iter().filter(|k| k.family.fits(alg)).collect(),
        };
        let usable: Vec<&Key> = candidates
            .into_iter()
            .filter(|k| k.family.fits(alg) && k.alg.is_none_or(|a| a == alg))
            .take(MAX_TRIES)
            .collect();
        if usable.is_empty() {
            return Err(JwtError::AlgorithmMismatch { alg: alg_name });
        }
        let mut validation = Validation::new(alg);
        validation.leeway = issuer.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.config.issuer]);
        let mut audiences = vec![audience.to_owned()];
        audiences.extend(issuer.config.audiences.iter().cloned());
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let mut last = JwtError::BadSignature;
        for key in usable {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let subject = data
                        .claims
                        .sub
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| JwtError::MissingClaim("sub".into()))?;
                    return Ok(JwtClaims {
                        issuer: issuer.config.issuer.clone(),
                        subject,
                    });
                }
                Err(e) => {
                    last = classify(e.into_kind(), audience);
                    if last != JwtError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn classify(kind: jsonwebtoken::errors::ErrorKind, audience: &str) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidAudience => JwtError::WrongAudience {
            audience: audience.to_owned(),
        },
        K::InvalidIssuer => JwtError::UnknownIssuer(String::new()),
        K::MissingRequiredClaim(c) => JwtError::MissingClaim(c),
        K::InvalidSignature => JwtError::BadSignature,
        K::InvalidAlgorithm => JwtError::AlgorithmMismatch { alg: String::new() },
        _ => JwtError::Malformed,
    }
}

impl Issuer {
    /// Asks the refresh task for the keys again, at most once per pause.
    fn wake_up(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_wake.load(Ordering::Relaxed);
        let pause = UNKNOWN_KID_PAUSE.as_millis() as u64;
        if (last == 0 || now.saturating_sub(last) >= pause)
            && self
                .last_wake
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }
}

/// Keeps one issuer's keys fresh until the verifier is gone.
async fn refresh_loop(verifier: Weak<JwtVerifier>, index: usize) {
    let mut mtime = None;
    let mut last_fetch = Instant::now();
    loop {
        let Some((issuer, http)) = verifier
            .upgrade()
            .map(|v| (v.issuers[index].clone(), v.http.clone()))
        else {
            return;
        };
        let woken = tokio::select! {
            _ = issuer.wake.notified() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let due = match &issuer.config.keys {
            KeySource::File(path) => {
                let now = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let changed = mtime.is_some() && now != mtime;
                if mtime.is_none() {
                    mtime = now;
                }
                if changed {
                    mtime = now;
                }
                woken || changed
            }
            KeySource::Url(_) => woken || last_fetch.elapsed() >= issuer.config.refresh,
        };
        if due {
            refresh(&issuer, &http).await;
            last_fetch = Instant::now();
        }
    }
}

async fn refresh(issuer: &Issuer, http: &reqwest::Client) {
    match load(&issuer.config.keys, http).await {
        Ok(keys) => {
            tracing::debug!(issuer = %issuer.config.issuer, keys = keys.len(), "OIDC keys read");
            issuer.keys.store(Arc::new(keys));
        }
        Err(e) => tracing::warn!(
            issuer = %issuer.config.issuer,
            source = %issuer.config.keys,
            error = %e,
            "Reading the OIDC keys failed; the previous keys stay"
        ),
    }
}

/// Reads a JWKS and keeps its signing keys cemesh can use.
async fn load(source: &KeySource, http: &reqwest::Client) -> Result<Vec<Key>, String> {
    let bytes = match source {
        KeySource::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        }
        KeySource::Url(url) => {
            let resp = http
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| cemesh_proto_error(&e))?;
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            bytes.to_vec()
        }
    };
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let set: JwkSet = serde_json::from_slice(&bytes)
        .map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    let keys: Vec<Key> = set.keys.iter().filter_map(key_of).collect();
    if keys.is_empty() {
        return Err("no RSA, P-256, P-384 or Ed25519 signing key in it".into());
    }
    Ok(keys)
}

fn cemesh_proto_error(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

fn key_of(jwk: &Jwk) -> Option<Key> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature))
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Family::Ed25519,
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            _ => return None,
        }),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        key,
    })
}

/// Seconds since the Unix epoch (for tests building claims).
#[cfg(test)]
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    use serde_json::{json, Value};

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "eventing.knative.dev/broker/ns/b";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    struct Signer {
        key: EncodingKey,
        alg: Algorithm,
        jwk: Value,
        public: Vec<u8>,
    }

    fn es256(kid: &str) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        Signer {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            alg: Algorithm::ES256,
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                "x": b64(&public[1..33]), "y": b64(&public[33..])}),
            public,
        }
    }

    fn eddsa(kid: &str) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        Signer {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            alg: Algorithm::EdDSA,
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&public)}),
            public,
        }
    }

    impl Signer {
        fn sign(&self, kid: Option<&str>, claims: Value) -> String {
            let mut h = Header::new(self.alg);
            h.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
        }
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"iss": ISS, "sub": "system:serviceaccount:ns:app", "aud": AUD,
            "exp": now() + 300});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    async fn verifier(
        dir: &std::path::Path,
        keys: &[&Signer],
        audiences: &[&str],
    ) -> Arc<JwtVerifier> {
        let file = dir.join("jwks.json");
        write_jwks(&file, keys);
        JwtVerifier::new(
            vec![JwtIssuerConfig {
                issuer: ISS.into(),
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                keys: KeySource::File(file),
                leeway: Duration::from_secs(5),
                refresh: Duration::from_secs(300),
            }],
            reqwest::Client::new(),
        )
        .await
        .unwrap()
    }

    fn write_jwks(file: &std::path::Path, keys: &[&Signer]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        std::fs::write(file, set.to_string()).unwrap();
    }

    #[tokio::test]
    async fn valid_tokens_pass_and_every_bad_one_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (ec, ed) = (es256("ec"), eddsa("ed"));
        let v = verifier(dir.path(), &[&ec, &ed], &["cemesh"]).await;
        let ok = |t: &str| v.verify(t, AUD);
        assert_eq!(
            ok(&ec.sign(Some("ec"), claims(json!({})))).unwrap().subject,
            "system:serviceaccount:ns:app"
        );
        assert!(ok(&ed.sign(Some("ed"), claims(json!({})))).is_ok());
        // No kid: the key of the fitting type is found.
        assert!(ok(&ed.sign(None, claims(json!({})))).is_ok());
        // A configured extra audience, in an array.
        assert!(ok(&ec.sign(Some("ec"), claims(json!({"aud": ["x", "cemesh"]})))).is_ok());

        let cases = [
            (
                ec.sign(Some("ec"), claims(json!({"exp": now() - 60}))),
                JwtError::Expired,
            ),
            (
                ec.sign(Some("ec"), claims(json!({"nbf": now() + 60}))),
                JwtError::NotYetValid,
            ),
            (
                ec.sign(Some("ec"), claims(json!({"aud": "other"}))),
                JwtError::WrongAudience {
                    audience: AUD.into(),
                },
            ),
            (
                ec.sign(Some("ec"), claims(json!({"iss": "https://evil"}))),
                JwtError::UnknownIssuer("https://evil".into()),
            ),
            (
                ec.sign(Some("nope"), claims(json!({}))),
                JwtError::UnknownKey {
                    issuer: ISS.into(),
                    kid: "nope".into(),
                },
            ),
            (
                ec.sign(Some("ec"), claims(json!({"exp": null}))),
                JwtError::MissingClaim("exp".into()),
            ),
            (
                ec.sign(Some("ec"), claims(json!({"sub": ""}))),
                JwtError::MissingClaim("sub".into()),
            ),
            // Signed by another key under the same kid.
            (
                es256("ec").sign(Some("ec"), claims(json!({}))),
                JwtError::BadSignature,
            ),
            // The EC key named for an EdDSA token.
            (
                ed.sign(Some("ec"), claims(json!({}))),
                JwtError::AlgorithmMismatch {
                    alg: "EdDSA".into(),
                },
            ),
        ];
        for (token, want) in cases {
            assert_eq!(ok(&token), Err(want.clone()), "{want}");
            assert!(!want.to_string().contains(&token));
        }
        // alg none, and HS256 keyed with the public key.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims(json!({})).to_string().as_bytes())
        );
        assert_eq!(ok(&none), Err(JwtError::AlgorithmNotAllowed("none".into())));
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(&ec.public),
        )
        .unwrap();
        assert_eq!(ok(&hs), Err(JwtError::AlgorithmNotAllowed("HS256".into())));
        for garbage in ["", "a.b", "a.b.c", "....", "x.eyJ9.y", "🦀.🦀.🦀"] {
            assert!(ok(garbage).is_err(), "{garbage}");
        }
    }

    #[tokio::test]
    async fn a_rotated_key_file_is_taken_after_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (es256("old"), es256("new"));
        let v = verifier(dir.path(), &[&old], &[]).await;
        let token = new.sign(Some("new"), claims(json!({})));
        assert!(matches!(
            v.verify(&token, AUD),
            Err(JwtError::UnknownKey { .. })
        ));
        write_jwks(&dir.path().join("jwks.json"), &[&old, &new]);
        refresh(&v.issuers[0], &v.http).await;
        assert!(v.verify(&token, AUD).is_ok());
        // A broken file keeps the keys there are.
        std::fs::write(dir.path().join("jwks.json"), "{").unwrap();
        refresh(&v.issuers[0], &v.http).await;
        assert!(v.verify(&token, AUD).is_ok());
    }

    #[tokio::test]
    async fn keys_at_a_url_are_fetched_and_an_unknown_kid_wakes_a_refresh() {
        use std::sync::Mutex;
        let jwks = Arc::new(Mutex::new(String::new()));
        let (a, b) = (eddsa("a"), eddsa("b"));
        *jwks.lock().unwrap() = json!({"keys": [a.jwk]}).to_string();
        let served = jwks.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let served = served.clone();
                async move { served.lock().unwrap().clone() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let v = JwtVerifier::new(
            vec![JwtIssuerConfig {
                issuer: ISS.into(),
                audiences: vec![],
                keys: KeySource::Url(format!("http://{addr}/jwks")),
                leeway: Duration::from_secs(5),
                refresh: Duration::from_secs(3600),
            }],
            reqwest::Client::new(),
        )
        .await
        .unwrap();
        v.spawn_refresh();
        assert!(v.verify(&a.sign(Some("a"), claims(json!({}))), AUD).is_ok());
        *jwks.lock().unwrap() = json!({"keys": [a.jwk, b.jwk]}).to_string();
        let token = b.sign(Some("b"), claims(json!({})));
        assert!(matches!(
            v.verify(&token, AUD),
            Err(JwtError::UnknownKey { .. })
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while v.verify(&token, AUD).is_err() {
            assert!(Instant::now() < deadline, "the new key was never fetched");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Start-up names the issuer and the URL that failed.
        let err = JwtVerifier::new(
            vec![JwtIssuerConfig {
                issuer: ISS.into(),
                audiences: vec![],
                keys: KeySource::Url(format!("http://{addr}/missing")),
                leeway: Duration::from_secs(5),
                refresh: Duration::from_secs(300),
            }],
            reqwest::Client::new(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!("issuer {ISS}: jwks_url http://{addr}/missing: ")),
            "{err}"
        );
    }
}
