//! JWTs from OIDC issuers as sender credentials: Kubernetes service account tokens,
//! Knative's OIDC feature, or any identity provider (Keycloak, Dex, ...).
//!
//! **What is checked.** `iss` picks the issuer among the configured ones (exact
//! match); the signature must verify with a key of that issuer's JWKS (RFC 7517);
//! `aud` (a string or an array) must hold the target's audience or one the issuer's
//! config adds; `exp` is required and `nbf` checked when present, both within the
//! issuer's leeway; `sub` is required and not empty. Keys a token brings itself
//! (`jwk`, `jku`, `x5u` headers) are never used, and a header with `crit` is
//! refused: no extension is understood.
//!
//! **Why these algorithms.** Only asymmetric ones: RS256, RS384, RS512, ES256, ES384
//! and EdDSA (Ed25519), all verified by `ring`. `alg: none` needs no key, and HS*
//! uses the key as a shared secret, so with a *public* JWKS anyone could sign: both
//! are refused before any key is looked at. The token's `alg` must also fit the key's
//! type and the JWK's own `alg` when it states one, so a key is never used with an
//! algorithm its owner did not mean.
//!
//! **How keys refresh.** Each issuer's keys sit in an [`ArcSwap`], so `verify` takes
//! no lock and does no I/O. [`JwtVerifier::spawn_refresh`] starts a task per issuer
//! that reads the JWKS again every `refresh` and, for a file, as soon as its
//! modification time or size changes (looked at once a second). A token naming an
//! unknown `kid` is refused and wakes that task, at most once per
//! [`UNKNOWN_KID_PAUSE`] per issuer: a rotated key is fetched at its first use and
//! the next token passes. A read that fails keeps the keys there are and logs a
//! warning; at start-up ([`JwtVerifier::new`]) it is an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;
use tokio::sync::Notify;

/// The clock skew allowed on `exp` and `nbf` unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// How often keys are read again unless configured.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Refreshes woken by unknown key ids are at least this far apart per issuer.
pub const UNKNOWN_KID_PAUSE: Duration = Duration::from_secs(10);
/// The largest leeway accepted.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// How often the refresh task looks at a file and at whether the verifier is gone.
const TICK: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_TOKEN_BYTES: usize = 64 << 10;
/// Keys tried for one token (without `kid`, or with a `kid` several keys share).
const MAX_TRIES: usize = 8;
/// Characters of a token's own text (`iss`, `kid`, `alg`) an error repeats.
const MAX_ECHO: usize = 128;

/// One trusted issuer.
#[derive(Debug, Clone)]
pub struct JwtIssuerConfig {
    /// Compared exactly with the token's `iss`.
    pub issuer: String,
    /// Audiences accepted besides the target's own.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// Clock skew allowed on `exp` and `nbf` (at most [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// How often the keys are read again (at least once a second).
    pub refresh: Duration,
}

impl JwtIssuerConfig {
    /// An issuer with no extra audience and the default leeway and refresh.
    pub fn new(issuer: impl Into<String>, keys: KeySource) -> Self {
        JwtIssuerConfig {
            issuer: issuer.into(),
            audiences: Vec::new(),
            keys,
            leeway: DEFAULT_LEEWAY,
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// Where an issuer's JWKS is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    /// `https://` (or `http://`) URL.
    Url(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Url(url) => match reqwest::Url::parse(url) {
                // Credentials in a URL are not repeated.
                Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                    let _ = u.set_username("");
                    let _ = u.set_password(None);
                    write!(f, "URL {u}")
                }
                _ => write!(f, "URL {url}"),
            },
        }
    }
}

/// Who a valid token says sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub issuer: String,
    pub subject: String,
    /// When the token stops being accepted: `exp` plus the leeway (Unix seconds).
    pub valid_until: u64,
}

/// Why a token was refused. Shown to the client: never holds the token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a JWT (three base64url parts: JSON header, JSON claims, signature)")]
    Malformed,
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("alg {0} is not allowed: use RS256, ES256 or EdDSA")]
    AlgorithmNotAllowed(String),
    #[error("the token's header lists critical extensions (crit), which are not supported")]
    CriticalHeader,
    #[error("the token's issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("issuer {issuer} has no key {kid:?} (if it was just rotated, retry in a few seconds)")]
    UnknownKey { issuer: String, kid: String },
    #[error("issuer {issuer} has no key for alg {alg}")]
    NoKeyForAlgorithm { issuer: String, alg: String },
    #[error("alg {alg} does not fit key {kid:?} of issuer {issuer}")]
    AlgorithmMismatch {
        issuer: String,
        kid: String,
        alg: String,
    },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    #[error("the token's audience does not include {audience}")]
    WrongAudience { audience: String },
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
}

/// Why the verifier cannot start; names the issuer and where its keys are.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("JWT issuer {issuer}: cannot read its keys ({location}): {reason}")]
    Unreadable {
        issuer: String,
        location: String,
        reason: String,
    },
    #[error("JWT issuer {issuer}: its keys ({location}) are not a usable JWKS: {reason}")]
    InvalidJwks {
        issuer: String,
        location: String,
        reason: String,
    },
    #[error("JWT issuer {issuer:?}: {reason}")]
    InvalidConfig { issuer: String, reason: String },
    #[error("JWT issuer {issuer} is configured twice")]
    Duplicate { issuer: String },
}

/// Verifies the JWTs of the configured issuers.
pub struct JwtVerifier {
    issuers: Vec<Arc<Issuer>>,
    http: reqwest::Client,
    /// Whether the refresh tasks run.
    refreshing: AtomicBool,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let issuers: Vec<&str> = self
            .issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        f.debug_struct("JwtVerifier")
            .field("issuers", &issuers)
            .finish()
    }
}

impl JwtVerifier {
    /// Loads every issuer's keys; errors name the issuer and where its keys are.
    pub async fn new(
        issuers: Vec<JwtIssuerConfig>,
        http: reqwest::Client,
    ) -> Result<Arc<Self>, JwtConfigError> {
        let mut loaded: Vec<Arc<Issuer>> = Vec::with_capacity(issuers.len());
        for config in issuers {
            check_config(&config)?;
            if loaded.iter().any(|i| i.config.issuer == config.issuer) {
                return Err(JwtConfigError::Duplicate {
                    issuer: config.issuer,
                });
            }
            let issuer = Issuer::new(config);
            if let Err(e) = issuer.refresh(&http).await {
                let (issuer, location) =
                    (issuer.config.issuer.clone(), issuer.config.keys.to_string());
                return Err(match e {
                    LoadError::Unreadable(reason) => JwtConfigError::Unreadable {
                        issuer,
                        location,
                        reason,
                    },
                    LoadError::Invalid(reason) => JwtConfigError::InvalidJwks {
                        issuer,
                        location,
                        reason,
                    },
                });
            }
            loaded.push(Arc::new(issuer));
        }
        Ok(Arc::new(JwtVerifier {
            issuers: loaded,
            http,
            refreshing: AtomicBool::new(false),
        }))
    }

    /// Starts the refresh tasks (on the current tokio runtime); they stop when the
    /// verifier is dropped. A second call does nothing.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: JWT issuer keys will not be refreshed");
            return;
        };
        if self.refreshing.swap(true, Ordering::Relaxed) {
            return;
        }
        for issuer in &self.issuers {
            runtime.spawn(refresh_loop(Arc::downgrade(self), issuer.clone()));
        }
    }

    /// Verifies `token` (the part after "Bearer ") for `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Result<JwtClaims, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: PeekHeader = decode_json(header)?;
        if header.crit.is_some() {
            return Err(JwtError::CriticalHeader);
        }
        let alg_name = header.alg.ok_or(JwtError::Malformed)?;
        let alg = allowed_alg(&alg_name)
            .ok_or_else(|| JwtError::AlgorithmNotAllowed(echo(&alg_name, 16)))?;
        let iss = decode_json::<PeekClaims>(payload)?
            .iss
            .ok_or(JwtError::MissingClaim("iss"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| JwtError::UnknownIssuer(echo(&iss, MAX_ECHO)))?;
        issuer.verify(token, alg, &alg_name, header.kid.as_deref(), audience)
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Reads every issuer's keys again, as the refresh tasks do.
    #[cfg(test)]
    async fn refresh_now(&self) -> Result<(), LoadError> {
        for issuer in &self.issuers {
            issuer.refresh(&self.http).await?;
        }
        Ok(())
    }
}

fn check_config(config: &JwtIssuerConfig) -> Result<(), JwtConfigError> {
    let invalid = |reason: String| JwtConfigError::InvalidConfig {
        issuer: config.issuer.clone(),
        reason,
    };
    if config.issuer.is_empty() {
        return Err(invalid("the issuer is empty".into()));
    }
    if config.leeway > MAX_LEEWAY {
        return Err(invalid(format!(
            "leeway {}s is more than {}s",
            config.leeway.as_secs(),
            MAX_LEEWAY.as_secs()
        )));
    }
    if let KeySource::Url(url) = &config.keys {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| invalid(format!("{} is not a URL: {e}", config.keys)))?;
        match parsed.scheme() {
            "https" => {}
            "http" => tracing::warn!(
                issuer = %config.issuer,
                keys = %config.keys,
                "JWT issuer keys are fetched over plain http: anyone on the path can replace them"
            ),
            scheme => {
                return Err(invalid(format!(
                    "{} has scheme {scheme}: use https or http",
                    config.keys
                )))
            }
        }
    }
    Ok(())
}

/// The header fields looked at before a key is chosen.
#[derive(Deserialize)]
struct PeekHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

/// The claim that picks the issuer (unverified until the signature is).
#[derive(Deserialize)]
struct PeekClaims {
    iss: Option<String>,
}

/// The claims read from a verified token.
#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    /// Required and checked by jsonwebtoken; kept to know when a stream's sender
    /// must prove itself again.
    exp: Option<serde_json::Value>,
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

fn allowed_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A token's own text as an error repeats it: printable and short.
fn echo(text: &str, max: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyType::Rsa,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
            ) | (KeyType::P256, Algorithm::ES256)
                | (KeyType::P384, Algorithm::ES384)
                | (KeyType::Ed25519, Algorithm::EdDSA)
        )
    }
}

struct Key {
    kid: Option<String>,
    kind: KeyType,
    /// The JWK's own `alg`, when it states one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// What a file looked like when it was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

async fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = tokio::fs::metadata(path).await?;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

struct Issuer {
    config: JwtIssuerConfig,
    keys: ArcSwap<Vec<Key>>,
    /// Wakes the refresh task (an unknown `kid`).
    wake: Notify,
    /// 1 + milliseconds since `epoch` of the last wake-up; 0 for never.
    last_wake: AtomicU64,
    epoch: Instant,
    /// The file as last read (file sources).
    stamp: Mutex<Option<FileStamp>>,
}

impl Issuer {
    fn new(config: JwtIssuerConfig) -> Self {
        Issuer {
            config,
            keys: ArcSwap::from_pointee(Vec::new()),
            wake: Notify::new(),
            last_wake: AtomicU64::new(0),
            epoch: Instant::now(),
            stamp: Mutex::new(None),
        }
    }

    fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        alg_name: &str,
        kid: Option<&str>,
        audience: &str,
    ) -> Result<JwtClaims, JwtError> {
        let keys = self.keys.load();
        let candidates: Vec<&Key> = match kid {
            // A JWKS without key ids is searched as for a token without one.
            Some(kid) if keys.iter().any(|k| k.kid.is_some()) => {
                let named: Vec<&Key> = keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    self.wake_up();
                    return Err(JwtError::UnknownKey {
                        issuer: self.config.issuer.clone(),
                        kid: echo(kid, MAX_ECHO),
                    });
                }
                let fitting: Vec<&Key> = named.into_iter().filter(|k| k.accepts(alg)).collect();
                if fitting.is_empty() {
                    return Err(JwtError::AlgorithmMismatch {
                        issuer: self.config.issuer.clone(),
                        kid: echo(kid, MAX_ECHO),
                        alg: alg_name.to_owned(),
                    });
                }
                fitting
            }
            _ => {
                let fitting: Vec<&Key> = keys.iter().filter(|k| k.accepts(alg)).collect();
                if fitting.is_empty() {
                    self.wake_up();
                    return Err(JwtError::NoKeyForAlgorithm {
                        issuer: self.config.issuer.clone(),
                        alg: alg_name.to_owned(),
                    });
                }
                fitting
            }
        };

        let mut validation = Validation::new(alg);
        validation.leeway = self.config.leeway.min(MAX_LEEWAY).as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        let mut audiences: Vec<&str> = Vec::with_capacity(1 + self.config.audiences.len());
        if !audience.is_empty() {
            audiences.push(audience);
        }
        audiences.extend(self.config.audiences.iter().map(String::as_str));
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

        for key in candidates.into_iter().take(MAX_TRIES) {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let Some(serde_json::Value::String(subject)) = data.claims.sub else {
                        return Err(JwtError::MissingClaim("sub"));
                    };
                    if subject.is_empty() {
                        return Err(JwtError::MissingClaim("sub"));
                    }
                    return Ok(JwtClaims {
                        issuer: self.config.issuer.clone(),
                        subject,
                        valid_until: data
                            .claims
                            .exp
                            .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64)))
                            .unwrap_or(0)
                            .saturating_add(validation.leeway),
                    });
                }
                Err(e) => match self.classify(e.into_kind(), audience) {
                    JwtError::BadSignature => continue,
                    other => return Err(other),
                },
            }
        }
        Err(JwtError::BadSignature)
    }

    /// `jsonwebtoken` checks the signature before the claims, so a claim error means
    /// the token is genuine.
    fn classify(&self, kind: ErrorKind, audience: &str) -> JwtError {
        match kind {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::WrongAudience {
                audience: audience.to_owned(),
            },
            ErrorKind::MissingRequiredClaim(claim) => {
                JwtError::MissingClaim(match claim.as_str() {
                    "exp" => "exp",
                    "iss" => "iss",
                    "aud" => "aud",
                    "sub" => "sub",
                    _ => "required",
                })
            }
            ErrorKind::InvalidIssuer => JwtError::UnknownIssuer(self.config.issuer.clone()),
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidAlgorithm => JwtError::BadSignature,
            _ => JwtError::Malformed,
        }
    }

    /// Asks the refresh task for the keys again, at most once per pause.
    fn wake_up(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let pause = u64::try_from(UNKNOWN_KID_PAUSE.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_wake.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < pause {
            return;
        }
        if self
            .last_wake
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::debug!(issuer = %self.config.issuer, "a JWT names an unknown key; reading the keys again");
            self.wake.notify_one();
        }
    }

    /// Reads the keys again; on failure the old ones stay.
    async fn refresh(&self, http: &reqwest::Client) -> Result<usize, LoadError> {
        if let KeySource::File(path) = &self.config.keys {
            // Taken before reading: a change while reading is seen next tick.
            let stamp = file_stamp(path).await.ok();
            *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        }
        let bytes = match &self.config.keys {
            KeySource::File(path) => read_file(path).await?,
            KeySource::Url(url) => fetch(http, url).await?,
        };
        let keys = parse_jwks(&bytes)?;
        let count = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(count)
    }

    /// Whether the key file differs from when it was last read.
    async fn file_changed(&self) -> bool {
        let KeySource::File(path) = &self.config.keys else {
            return false;
        };
        let Ok(now) = file_stamp(path).await else {
            return false;
        };
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) != Some(now)
    }
}

/// Keeps one issuer's keys fresh until the verifier is gone.
async fn refresh_loop(verifier: Weak<JwtVerifier>, issuer: Arc<Issuer>) {
    let period = issuer.config.refresh.max(TICK);
    let mut last_read = Instant::now();
    loop {
        let (http, woken) = {
            let Some(v) = verifier.upgrade() else { return };
            let http = v.http.clone();
            drop(v);
            let woken = tokio::select! {
                () = issuer.wake.notified() => true,
                () = tokio::time::sleep(TICK) => false,
            };
            (http, woken)
        };
        if verifier.strong_count() == 0 {
            return;
        }
        if woken || last_read.elapsed() >= period || issuer.file_changed().await {
            last_read = Instant::now();
            match issuer.refresh(&http).await {
                Ok(count) => {
                    tracing::debug!(issuer = %issuer.config.issuer, keys = count, "JWT issuer keys read")
                }
                Err(e) => tracing::warn!(
                    issuer = %issuer.config.issuer,
                    keys = %issuer.config.keys,
                    error = %e,
                    "reading a JWT issuer's keys failed; the previous keys stay"
                ),
            }
        }
    }
}

#[derive(Debug)]
enum LoadError {
    /// The file or URL could not be read.
    Unreadable(String),
    /// What was read is not a JWKS with a usable key.
    Invalid(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Unreadable(e) => write!(f, "cannot read: {e}"),
            LoadError::Invalid(e) => write!(f, "not a usable JWKS: {e}"),
        }
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let unreadable = |e: std::io::Error| LoadError::Unreadable(e.to_string());
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(LoadError::Invalid(format!(
            "larger than {MAX_JWKS_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, LoadError> {
    let unreadable = |e: reqwest::Error| LoadError::Unreadable(error_chain(&e.without_url()));
    let mut resp = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(unreadable)?;
    if !resp.status().is_success() {
        return Err(LoadError::Unreadable(format!("HTTP {}", resp.status())));
    }
    let too_large = || LoadError::Invalid(format!("larger than {MAX_JWKS_BYTES} bytes"));
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreadable)? {
        if bytes.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// An error and its causes on one line ("connection refused" is a cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[derive(Deserialize)]
struct JwkSetDoc {
    keys: Vec<serde_json::Value>,
}

/// The JWK members used; others are ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
}

/// The signing keys of a JWKS that can verify an allowed algorithm; others
/// (encryption keys, other curves, HMAC secrets) are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, LoadError> {
    let doc: JwkSetDoc = serde_json::from_slice(bytes)
        .map_err(|e| LoadError::Invalid(format!("not a JWKS ({{\"keys\": [...]}}): {e}")))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, value) in doc.keys.into_iter().enumerate() {
        match serde_json::from_value::<RawJwk>(value)
            .map_err(|e| format!("not a JWK: {e}"))
            .and_then(key_of)
        {
            Ok(key) => keys.push(key),
            Err(reason) => {
                tracing::debug!(index, %reason, "JWKS key skipped");
                skipped.push(format!("key {index}: {reason}"));
            }
        }
    }
    if keys.is_empty() {
        let mut reason = String::from("no RSA, P-256, P-384 or Ed25519 signing key");
        if !skipped.is_empty() {
            reason.push_str(" (");
            reason.push_str(&skipped[..skipped.len().min(3)].join("; "));
            reason.push(')');
        }
        return Err(LoadError::Invalid(reason));
    }
    Ok(keys)
}

fn key_of(jwk: RawJwk) -> Result<Key, String> {
    if let Some(u) = jwk.use_.as_deref().filter(|u| *u != "sig") {
        return Err(format!("use {u:?} is not sig"));
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("key_ops lacks verify".into());
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(a) => Some(allowed_alg(a).ok_or_else(|| format!("alg {a:?} is not allowed"))?),
    };
    let b64 = |field: &str, value: &Option<String>| -> Result<Vec<u8>, String> {
        let value = value.as_deref().ok_or_else(|| format!("no {field}"))?;
        URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| format!("{field} is not base64url"))
    };
    let (kind, key) = match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
        (Some("RSA"), _) => {
            let n = b64("n", &jwk.n)?;
            let e = b64("e", &jwk.e)?;
            let n = strip_zeros(&n);
            let e = strip_zeros(&e);
            let bits = n
                .first()
                .map_or(0, |b| (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize));
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA key of {bits} bits (2048 to 8192 are verified)"
                ));
            }
            if e.is_empty() {
                return Err("RSA exponent is 0".into());
            }
            (KeyType::Rsa, DecodingKey::from_rsa_raw_components(n, e))
        }
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" {
                (KeyType::P256, 32)
            } else {
                (KeyType::P384, 48)
            };
            let x = b64("x", &jwk.x)?;
            let y = b64("y", &jwk.y)?;
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates are not {len} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // `ring` takes the uncompressed point where `jsonwebtoken` says DER.
            (kind, DecodingKey::from_ec_der(&point))
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = b64("x", &jwk.x)?;
            if x.len() != 32 {
                return Err("Ed25519 key is not 32 bytes".into());
            }
            (KeyType::Ed25519, DecodingKey::from_ed_der(&x))
        }
        (Some(kty), crv) => {
            return Err(match crv {
                Some(crv) => format!("kty {kty:?} crv {crv:?} is not supported"),
                None => format!("kty {kty:?} is not supported"),
            })
        }
        (None, _) => return Err("no kty".into()),
    };
    if let Some(a) = alg.filter(|a| !kind.fits(*a)) {
        return Err(format!("alg {a:?} does not fit a {kind:?} key"));
    }
    Ok(Key {
        kid: jwk.kid,
        kind,
        alg,
        key,
    })
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    use serde_json::{json, Value};
    use std::sync::atomic::AtomicUsize;

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "eventing.knative.dev/broker/ns/b";

    /// TEST KEY ONLY, never used anywhere else: a 2048-bit RSA key (PKCS#1 DER,
    /// base64) made once with `openssl genrsa -traditional 2048` for these tests,
    /// since `ring` cannot generate RSA keys.
    const TEST_ONLY_RSA_KEY: &str = concat!(
        "MIIEogIBAAKCAQEAr7t4BHE0B1ORlxjjy4vMzTqm/V/9XAqWkgRQ3RK8L+VenZhM",
        "Q175pgOAgGv+44Pf9NsHLaitnwwr+c1BVqAiHXgZJwOMTn2yOz1wfqnnlk+2FaKv",
        "w0w6CjWfCkgU3Z+RP8rFf0kd+2st/s0aP03NmwXgsKGaNiQ2CXVWsswbwHdTxlCd",
        "aERjK031etfGV8WjBsxUAIN6+gAON1fd74OZ2e87G/tTX0S0WxIhDFYtxt8JK2Sj",
        "TLsK/TOPD8WGwjhbPgqhFszB7tl9pSGwkUuWNkEHUkD8cFPk1ga/P9VbnZmdqSsb",
        "Q5LhDqZfuVp6SiyU6WSa6Mk5PYgHKl14mHdP0QIDAQABAoIBAAGJ2N5jFlNFGEZ0",
        "HZRr3CZkz87yju+GGTTcjE+vKQ4bSjWDfpFtbK6XI8IcD+5yely0qS6tZh25F853",
        "TU3il4HeCgxVI96RC6Uon8pAFwqyFnRAiRzi1zQ9LXAD2wjoq3cdQZbgbz6C/PNY",
        "3NS2i+kCR2oMdCLqtL1m9VQZ5NlNvmPttIklgPbdlvzR0UJULDIjiVNBCbqyIPWV",
        "RfHDLsmhW2CqXzUIHWNbPkWHRzRaQz8uujNwEZuDN6BNKuopBlFeZ90Wyl2d0rYZ",
        "+Hw4Mf5eh6I67+MeGqyRQHUiA3FgNO+VFBmX5KmTnPmeUlJ9yEJwG8+aUUcXzytf",
        "V+Qu9XECgYEA8Kxngw/KiAwKGVgjvyLTF1nlZ3dPoBW33a1w7r9zgkwIY/d5YP2U",
        "ypyNqaJBz7NhKy1S+/8pMW/f9Wm3LVjo9rTkWzIBDBOWWvZJLglaT7sN+k2q90uf",
        "N8HHJGO3DtUWfFc08eLCC2GKQN54lQKgTl6YPhAgVfpvl9kBl+i/3CkCgYEAuuxb",
        "V8M1baQ0a6AOrj0e7iTSo3Rngjgd9KexYSw2qjXTppwWBrnje8WZC6aECJKrcgog",
        "px4nTWm1sxKu4VoqtB29337/Csj+8hUNkUgrL0AuQMVrPsnpFaIrStIXksXEsTK4",
        "11CIcC6atABXYYO8kzArZq391AUl7SxR1RLWS2kCgYA3x21SJdXFxCyPBSt7wAF2",
        "dwJBAZj1vDLZ8Lmsy7hkqWSEbrW18e+LKc93UkC4d5V8oUuLVe7hI1Gfmjm3C9Uq",
        "YHBQZn1xpBSDznLVdZt1wR+TNG78U416KbISz/18NYy5kqiVqv1YD+ov8J+3wV0P",
        "7MKSF8C2zI0Sf1vsLihRSQKBgGzZA9vYRb2B+DCP9NyLpP5CHRKnzzqqGO+F0ynl",
        "yDNXwtbrX3wtNQW3LAb3wT0Iw6NVuGv4iCRxISiVAZcinWljRFToK/YI00T+83ad",
        "UuBh/E0laO0YQI2jcJhSPP3wAji5c5+WOs0wpk+ZP0j+oIoJa8yQFxYmpU42F7T/",
        "EiC5AoGAc1/06iCyEvy9g9CZrtlWTlK3ng7p66EwkIIAXynjvNfoqPwi5grUuShC",
        "Jk2u8lVVYwUYHGo33h6CF0t1NbOnFjNXqBg034tULesG7gC9cRMuafg7x5tJK0/D",
        "YusjvKtca2H5u7aGmyowTvbLRYFKwFFzM5eHIxN4z5axahAeRR4=",
    );

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Signer {
        key: EncodingKey,
        alg: Algorithm,
        jwk: Value,
        /// The public key's bytes, for the HS256 attack.
        public: Vec<u8>,
    }

    impl Signer {
        fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
            self.sign_as(self.alg, kid, claims)
        }

        fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
            let mut header = Header::new(alg);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &self.key).unwrap()
        }
    }

    fn ec(kid: &str, alg: Algorithm) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let (signing, crv) = match alg {
            Algorithm::ES384 => (&ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
            _ => (&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let half = (public.len() - 1) / 2;
        Signer {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            alg,
            jwk: json!({"kty": "EC", "crv": crv, "kid": kid, "use": "sig",
                "x": b64(&public[1..=half]), "y": b64(&public[1 + half..])}),
            public,
        }
    }

    fn ed(kid: &str) -> Signer {
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

    /// The test RSA key; `jwk_alg` is the JWK's `alg`.
    fn rsa(kid: &str, jwk_alg: &str) -> Signer {
        let der = base64::engine::general_purpose::STANDARD
            .decode(TEST_ONLY_RSA_KEY)
            .unwrap();
        let pair = ring::signature::RsaKeyPair::from_der(&der).unwrap();
        let public: ring::signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
        Signer {
            key: EncodingKey::from_rsa_der(&der),
            alg: Algorithm::RS256,
            jwk: json!({"kty": "RSA", "kid": kid, "alg": jwk_alg,
                "n": b64(&public.n), "e": b64(&public.e)}),
            public: public.n,
        }
    }

    /// Valid claims, with `changes` set over them (`null` removes one).
    fn claims(changes: Value) -> Value {
        let mut c = json!({"iss": ISS, "sub": "system:serviceaccount:ns:app", "aud": AUD,
            "exp": now() + 300, "iat": now()});
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn write_jwks(file: &Path, keys: &[&Signer]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        std::fs::write(file, set.to_string()).unwrap();
    }

    fn issuer(keys: KeySource, audiences: &[&str]) -> JwtIssuerConfig {
        JwtIssuerConfig {
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            leeway: Duration::from_secs(5),
            ..JwtIssuerConfig::new(ISS, keys)
        }
    }

    async fn file_verifier(dir: &Path, keys: &[&Signer], audiences: &[&str]) -> Arc<JwtVerifier> {
        let file = dir.join("jwks.json");
        write_jwks(&file, keys);
        JwtVerifier::new(
            vec![issuer(KeySource::File(file), audiences)],
            reqwest::Client::new(),
        )
        .await
        .unwrap()
    }

    /// Refused with `want`, and the message repeats no part of the token.
    fn refused(v: &JwtVerifier, token: &str, want: JwtError) {
        let got = v.verify(token, AUD);
        assert_eq!(got, Err(want), "{token}");
        let message = got.unwrap_err().to_string();
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!message.contains(part), "{message}");
        }
    }

    #[tokio::test]
    async fn valid_es256_es384_eddsa_and_rs256_tokens_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (p256, p384, edk, rsk) = (
            ec("p256", Algorithm::ES256),
            ec("p384", Algorithm::ES384),
            ed("ed"),
            rsa("rsa", "RS256"),
        );
        let v = file_verifier(dir.path(), &[&p256, &p384, &edk, &rsk], &[]).await;
        assert!(!v.is_empty());
        for (signer, kid) in [
            (&p256, "p256"),
            (&p384, "p384"),
            (&edk, "ed"),
            (&rsk, "rsa"),
        ] {
            let exp = now() + 300;
            let got = v.verify(&signer.sign(Some(kid), &claims(json!({"exp": exp}))), AUD);
            assert_eq!(
                got,
                Ok(JwtClaims {
                    issuer: ISS.into(),
                    subject: "system:serviceaccount:ns:app".into(),
                    // exp plus the 5 s leeway of the test issuer.
                    valid_until: exp + 5,
                }),
                "{kid}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_without_kid_is_tried_on_the_keys_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, edk) = (
            ec("a", Algorithm::ES256),
            ec("b", Algorithm::ES256),
            ed("ed"),
        );
        let v = file_verifier(dir.path(), &[&a, &b, &edk], &[]).await;
        assert!(v.verify(&b.sign(None, &claims(json!({}))), AUD).is_ok());
        assert!(v.verify(&edk.sign(None, &claims(json!({}))), AUD).is_ok());
        // No key fits: an RS256 token.
        refused(
            &v,
            &rsa("r", "RS256").sign(None, &claims(json!({}))),
            JwtError::NoKeyForAlgorithm {
                issuer: ISS.into(),
                alg: "RS256".into(),
            },
        );
        // A JWKS without key ids still serves a token naming one.
        let keyless = ed("x");
        let mut jwk = keyless.jwk.clone();
        jwk.as_object_mut().unwrap().remove("kid");
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({"keys": [jwk]}).to_string(),
        )
        .unwrap();
        v.refresh_now().await.unwrap();
        assert!(v
            .verify(&keyless.sign(Some("any"), &claims(json!({}))), AUD)
            .is_ok());
    }

    #[tokio::test]
    async fn the_audience_is_the_targets_or_one_the_issuer_adds() {
        let dir = tempfile::tempdir().unwrap();
        let k = ec("k", Algorithm::ES256);
        let v = file_verifier(dir.path(), &[&k], &["cemesh"]).await;
        let ok = |aud: Value| v.verify(&k.sign(Some("k"), &claims(json!({"aud": aud}))), AUD);
        assert!(ok(json!([AUD])).is_ok());
        assert!(ok(json!("cemesh")).is_ok());
        assert!(ok(json!(["other", "cemesh"])).is_ok());
        let wrong = JwtError::WrongAudience {
            audience: AUD.into(),
        };
        assert_eq!(ok(json!("other")), Err(wrong.clone()));
        assert_eq!(ok(json!([])), Err(wrong.clone()));
        assert_eq!(
            wrong.to_string(),
            "the token's audience does not include eventing.knative.dev/broker/ns/b"
        );
        refused(
            &v,
            &k.sign(Some("k"), &claims(json!({"aud": null}))),
            JwtError::MissingClaim("aud"),
        );
    }

    #[tokio::test]
    async fn exp_and_nbf_are_checked_with_the_leeway() {
        let dir = tempfile::tempdir().unwrap();
        let k = ed("k");
        let v = file_verifier(dir.path(), &[&k], &[]).await;
        let t = |c: Value| k.sign(Some("k"), &claims(c));
        // Within the 5 s leeway.
        assert!(v.verify(&t(json!({"exp": now() - 2})), AUD).is_ok());
        assert!(v.verify(&t(json!({"nbf": now() + 2})), AUD).is_ok());
        refused(&v, &t(json!({"exp": now() - 60})), JwtError::Expired);
        assert_eq!(JwtError::Expired.to_string(), "the token expired");
        refused(&v, &t(json!({"nbf": now() + 60})), JwtError::NotYetValid);
        refused(&v, &t(json!({"exp": null})), JwtError::MissingClaim("exp"));
        refused(
            &v,
            &t(json!({"exp": "soon"})),
            JwtError::MissingClaim("exp"),
        );
    }

    #[tokio::test]
    async fn issuer_and_subject_are_required() {
        let dir = tempfile::tempdir().unwrap();
        let k = ec("k", Algorithm::ES256);
        let v = file_verifier(dir.path(), &[&k], &[]).await;
        let t = |c: Value| k.sign(Some("k"), &claims(c));
        refused(
            &v,
            &t(json!({"iss": "https://evil.test"})),
            JwtError::UnknownIssuer("https://evil.test".into()),
        );
        // Exact match only.
        refused(
            &v,
            &t(json!({"iss": "https://issuer.test/"})),
            JwtError::UnknownIssuer("https://issuer.test/".into()),
        );
        refused(&v, &t(json!({"iss": null})), JwtError::MissingClaim("iss"));
        refused(&v, &t(json!({"sub": null})), JwtError::MissingClaim("sub"));
        refused(&v, &t(json!({"sub": ""})), JwtError::MissingClaim("sub"));
        refused(&v, &t(json!({"sub": 42})), JwtError::MissingClaim("sub"));
    }

    #[tokio::test]
    async fn keys_and_algorithms_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let (k, edk, r384) = (ec("k", Algorithm::ES256), ed("ed"), rsa("r384", "RS384"));
        let v = file_verifier(dir.path(), &[&k, &edk, &r384], &[]).await;
        refused(
            &v,
            &k.sign(Some("nope"), &claims(json!({}))),
            JwtError::UnknownKey {
                issuer: ISS.into(),
                kid: "nope".into(),
            },
        );
        // Another key under a known kid.
        refused(
            &v,
            &ec("k", Algorithm::ES256).sign(Some("k"), &claims(json!({}))),
            JwtError::BadSignature,
        );
        // An EdDSA token naming the P-256 key.
        refused(
            &v,
            &edk.sign(Some("k"), &claims(json!({}))),
            JwtError::AlgorithmMismatch {
                issuer: ISS.into(),
                kid: "k".into(),
                alg: "EdDSA".into(),
            },
        );
        // The JWK says RS384: RS256 is refused, RS384 accepted.
        refused(
            &v,
            &r384.sign(Some("r384"), &claims(json!({}))),
            JwtError::AlgorithmMismatch {
                issuer: ISS.into(),
                kid: "r384".into(),
                alg: "RS256".into(),
            },
        );
        assert!(v
            .verify(
                &r384.sign_as(Algorithm::RS384, Some("r384"), &claims(json!({}))),
                AUD
            )
            .is_ok());
        // PS256 is not on the list, even with a fitting RSA key.
        refused(
            &v,
            &r384.sign_as(Algorithm::PS256, Some("r384"), &claims(json!({}))),
            JwtError::AlgorithmNotAllowed("PS256".into()),
        );
    }

    #[tokio::test]
    async fn alg_none_and_hmac_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (k, r) = (ec("k", Algorithm::ES256), rsa("r", "RS256"));
        let v = file_verifier(dir.path(), &[&k, &r], &[]).await;
        let body = b64(claims(json!({})).to_string().as_bytes());
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "none", "kid": "k"}),
        ] {
            let none = format!("{}.{body}.", b64(header.to_string().as_bytes()));
            refused(&v, &none, JwtError::AlgorithmNotAllowed("none".into()));
        }
        // HS256 keyed with the public key, in each encoding an attacker might try.
        let jwks = std::fs::read(dir.path().join("jwks.json")).unwrap();
        let jwk = k.jwk.to_string();
        let secrets: [&[u8]; 4] = [&k.public, &r.public, &jwks, jwk.as_bytes()];
        for secret in secrets {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let mut header = Header::new(alg);
                header.kid = Some("k".into());
                let token = jsonwebtoken::encode(
                    &header,
                    &claims(json!({})),
                    &EncodingKey::from_secret(secret),
                )
                .unwrap();
                refused(
                    &v,
                    &token,
                    JwtError::AlgorithmNotAllowed(format!("{alg:?}")),
                );
            }
        }
        assert_eq!(
            JwtError::AlgorithmNotAllowed("HS256".into()).to_string(),
            "alg HS256 is not allowed: use RS256, ES256 or EdDSA"
        );
    }

    #[tokio::test]
    async fn garbage_is_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let k = ec("k", Algorithm::ES256);
        let v = file_verifier(dir.path(), &[&k], &[]).await;
        let good = k.sign(Some("k"), &claims(json!({})));
        let (h, p) = {
            let mut parts = good.split('.');
            (parts.next().unwrap(), parts.next().unwrap())
        };
        let enc = |v: Value| b64(v.to_string().as_bytes());
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        let cases: Vec<String> = vec![
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "a.b".into(),
            "a.b.c".into(),
            "a.b.c.d".into(),
            "🦀.🦀.🦀".into(),
            format!("{h}.{p}"),
            format!("{h}.{p}.!!!"),
            format!("{h}.{p}.{}", b64(&[0; 64])),
            format!("{h}=.{p}.x"),
            format!("{}.{p}.x", enc(json!({}))),
            format!("{}.{p}.x", enc(json!({"alg": 5}))),
            format!("{}.{p}.x", enc(json!({"alg": "ES256", "kid": 7}))),
            format!("{}.{p}.x", enc(json!([1, 2]))),
            format!("{h}.{}.x", enc(json!("str"))),
            format!("{h}.{}.x", enc(json!({"iss": ["a"]}))),
            format!("{h}.{}.x", b64(b"\xff\xfe")),
            format!("{}.{p}.x", enc(json!({"alg": "x".repeat(500)}))),
            long,
        ];
        for token in &cases {
            let got = v.verify(token, AUD);
            assert!(got.is_err(), "{token:?}");
            let message = got.unwrap_err().to_string();
            assert!(message.len() < 300, "{message}");
        }
        // A forged signature under a valid header and claims.
        refused(
            &v,
            &format!("{h}.{p}.{}", b64(&[1; 64])),
            JwtError::BadSignature,
        );
        refused(
            &v,
            &format!(
                "{}.{p}.x",
                enc(json!({"alg": "ES256", "kid": "k", "crit": ["b64"]}))
            ),
            JwtError::CriticalHeader,
        );
        // Other claims under a genuine signature.
        let sig = good.rsplit('.').next().unwrap();
        refused(
            &v,
            &format!("{h}.{}.{sig}", enc(claims(json!({"sub": "admin"})))),
            JwtError::BadSignature,
        );
    }

    #[tokio::test]
    async fn a_rotated_key_file_is_taken_after_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let (old, new) = (ec("old", Algorithm::ES256), ed("new"));
        let v = file_verifier(dir.path(), &[&old], &[]).await;
        let token = new.sign(Some("new"), &claims(json!({})));
        assert!(matches!(
            v.verify(&token, AUD),
            Err(JwtError::UnknownKey { .. })
        ));
        write_jwks(&file, &[&new]);
        v.refresh_now().await.unwrap();
        assert!(v.verify(&token, AUD).is_ok());
        // The old key is gone with the old file.
        assert!(v
            .verify(&old.sign(Some("old"), &claims(json!({}))), AUD)
            .is_err());
        // A broken or missing file keeps the keys there are.
        std::fs::write(&file, "{").unwrap();
        assert!(matches!(v.refresh_now().await, Err(LoadError::Invalid(_))));
        assert!(v.verify(&token, AUD).is_ok());
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            v.refresh_now().await,
            Err(LoadError::Unreadable(_))
        ));
        assert!(v.verify(&token, AUD).is_ok());
    }

    #[tokio::test]
    async fn the_refresh_task_sees_a_changed_file_and_ends_with_the_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let (old, new) = (ed("old"), ed("new"));
        let v = file_verifier(dir.path(), &[&old], &[]).await;
        v.spawn_refresh();
        // Let the unknown kid's wake-up pass, so the file change alone must be seen.
        let token = new.sign(Some("new"), &claims(json!({})));
        assert!(v.verify(&token, AUD).is_err());
        tokio::time::sleep(Duration::from_millis(200)).await;
        write_jwks(&file, &[&old, &new]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while v.verify(&token, AUD).is_err() {
            assert!(Instant::now() < deadline, "the changed file was not read");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let issuer = Arc::downgrade(&v.issuers[0]);
        drop(v);
        let deadline = Instant::now() + Duration::from_secs(5);
        while issuer.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the refresh task outlived the verifier"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn keys_at_a_url_are_fetched_and_an_unknown_kid_wakes_one_refresh() {
        use std::sync::Mutex;
        let jwks = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (a, b, c) = (ed("a"), ec("b", Algorithm::ES256), rsa("c", "RS256"));
        *jwks.lock().unwrap() = json!({"keys": [a.jwk]}).to_string();
        let (served, counted) = (jwks.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let body = served.lock().unwrap().clone();
                counted.fetch_add(1, Ordering::SeqCst);
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/jwks");
        let config = JwtIssuerConfig {
            refresh: Duration::from_secs(3600),
            ..issuer(KeySource::Url(url), &[])
        };
        let v = JwtVerifier::new(vec![config], reqwest::Client::new())
            .await
            .unwrap();
        v.spawn_refresh();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert!(v
            .verify(&a.sign(Some("a"), &claims(json!({}))), AUD)
            .is_ok());

        // A new key: the first token is refused and fetches the keys again.
        *jwks.lock().unwrap() = json!({"keys": [a.jwk, b.jwk]}).to_string();
        let token = b.sign(Some("b"), &claims(json!({})));
        refused(
            &v,
            &token,
            JwtError::UnknownKey {
                issuer: ISS.into(),
                kid: "b".into(),
            },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while v.verify(&token, AUD).is_err() {
            assert!(Instant::now() < deadline, "the new key was never fetched");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        // Within the pause, unknown kids fetch nothing more.
        *jwks.lock().unwrap() = json!({"keys": [a.jwk, b.jwk, c.jwk]}).to_string();
        let token = c.sign(Some("c"), &claims(json!({})));
        for _ in 0..5 {
            assert!(matches!(
                v.verify(&token, AUD),
                Err(JwtError::UnknownKey { .. })
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        v.refresh_now().await.unwrap();
        assert!(v.verify(&token, AUD).is_ok());

        // A body that is not a JWKS keeps the keys there are.
        *jwks.lock().unwrap() = "<html>".into();
        assert!(v.refresh_now().await.is_err());
        assert!(v.verify(&token, AUD).is_ok());
    }

    #[tokio::test]
    async fn start_up_fails_naming_the_issuer_and_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let start = |configs: Vec<JwtIssuerConfig>| async move {
            JwtVerifier::new(configs, reqwest::Client::new())
                .await
                .unwrap_err()
                .to_string()
        };
        let missing = dir.path().join("missing.json");
        let err = start(vec![issuer(KeySource::File(missing.clone()), &[])]).await;
        assert!(
            err.contains(ISS) && err.contains(&missing.display().to_string()),
            "{err}"
        );

        let invalid = dir.path().join("invalid.json");
        std::fs::write(&invalid, "not json").unwrap();
        let err = start(vec![issuer(KeySource::File(invalid.clone()), &[])]).await;
        assert!(
            err.contains(ISS) && err.contains(&invalid.display().to_string()),
            "{err}"
        );
        assert!(err.contains("not a usable JWKS"), "{err}");

        // Only keys that cannot sign, or cannot be used.
        let useless = dir.path().join("useless.json");
        std::fs::write(
            &useless,
            json!({"keys": [
                {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"},
                {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
                {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
                {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
                "nonsense",
            ]})
            .to_string(),
        )
        .unwrap();
        let err = start(vec![issuer(KeySource::File(useless), &[])]).await;
        assert!(
            err.contains("no RSA, P-256, P-384 or Ed25519 signing key"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");

        // Nothing listens on a port just freed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/jwks");
        let err = start(vec![issuer(KeySource::Url(url.clone()), &[])]).await;
        assert!(err.contains(ISS) && err.contains(&url), "{err}");

        let err = start(vec![issuer(KeySource::Url("ftp://x/jwks".into()), &[])]).await;
        assert!(err.contains("use https or http"), "{err}");

        let good = dir.path().join("good.json");
        write_jwks(&good, &[&ed("k")]);
        let err = start(vec![
            issuer(KeySource::File(good.clone()), &[]),
            issuer(KeySource::File(good), &[]),
        ])
        .await;
        assert!(err.contains("configured twice"), "{err}");

        // No issuer at all is a valid, empty verifier.
        let v = JwtVerifier::new(vec![], reqwest::Client::new())
            .await
            .unwrap();
        assert!(v.is_empty());
        assert!(matches!(v.verify("a.b.c", AUD), Err(JwtError::Malformed)));
    }

    #[test]
    fn a_url_with_credentials_is_shown_without_them() {
        let source = KeySource::Url("https://user:pw@idp.test/jwks".into());
        assert_eq!(source.to_string(), "URL https://idp.test/jwks");
    }
}
