//! cemesh as an OIDC issuer of its own deliveries (Knative's `Destination.audience`):
//! each delivery to such a destination carries a short-lived JWT (ES256, `iss` this
//! issuer, `sub` the trigger `namespace/name`, `aud` the destination's audience), and
//! the admin port serves the public keys as JWKS and OIDC discovery
//! (`/.well-known/openid-configuration`, `/.well-known/jwks.json`), so a subscriber
//! verifies with any OIDC library.
//!
//! Keys are P-256, generated on first start and kept in `<data-dir>/oidc/` (one
//! PKCS#8 file per key, named by its creation time, readable by the owner only). The
//! newest key signs; a new one is made when it is [`ROTATE_AFTER`] old, and the
//! previous stays published for another [`ROTATE_AFTER`], far beyond any token's
//! [`TOKEN_LIFETIME`], so a verifier that cached the old JWKS keeps working.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cemesh_dispatcher::TokenSource;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// How long a delivery token is valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Age at which the signing key is replaced.
pub const ROTATE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);
/// A cached token is minted again when less than this is left of it.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Why the signing keys cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("OIDC signing keys in {}: {message}", dir.display())]
pub struct SignerError {
    pub dir: PathBuf,
    pub message: String,
}

struct SigningKey {
    kid: String,
    created: u64,
    encoding: EncodingKey,
    jwk: Value,
}

/// The issuer: its keys and a cache of minted tokens.
pub struct Signer {
    issuer: String,
    dir: PathBuf,
    /// Newest first.
    keys: RwLock<Vec<SigningKey>>,
    cache: Mutex<HashMap<(String, String), (String, u64)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("issuer", &self.issuer)
            .finish()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Signer {
    /// Loads the keys under `data_dir/oidc`, making the first (or the next) one when
    /// due.
    pub fn open(data_dir: &Path, issuer: String) -> Result<Self, SignerError> {
        let dir = data_dir.join("oidc");
        let signer = Signer {
            issuer: issuer.trim_end_matches('/').to_owned(),
            dir,
            keys: RwLock::new(Vec::new()),
            cache: Mutex::default(),
        };
        signer.rotate_if_due()?;
        Ok(signer)
    }

    fn err(&self, message: impl Into<String>) -> SignerError {
        SignerError {
            dir: self.dir.clone(),
            message: message.into(),
        }
    }

    /// Reads the keys; makes a new one if the newest is [`ROTATE_AFTER`] old (or
    /// there is none); forgets keys no longer published.
    pub fn rotate_if_due(&self) -> Result<(), SignerError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.err(e.to_string()))?;
        let mut keys = self.load()?;
        let now = now();
        let rotate = ROTATE_AFTER.as_secs();
        if keys
            .first()
            .is_none_or(|k| now.saturating_sub(k.created) >= rotate)
        {
            keys.insert(0, self.generate(now)?);
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        // The newest signs; older ones stay published while tokens they signed may
        // still be cached by verifiers.
        let newest = keys[0].created;
        keys.retain(|k| k.created == newest || newest.saturating_sub(k.created) < 2 * rotate);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    fn load(&self) -> Result<Vec<SigningKey>, SignerError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| self.err(e.to_string()))?;
        let mut keys = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(created) = name
                .strip_prefix("es256-")
                .and_then(|n| n.strip_suffix(".pk8"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let der = std::fs::read(entry.path()).map_err(|e| self.err(format!("{name}: {e}")))?;
            keys.push(key_from(&der, created).map_err(|e| self.err(format!("{name}: {e}")))?);
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.created));
        Ok(keys)
    }

    fn generate(&self, created: u64) -> Result<SigningKey, SignerError> {
        let rng = ring::rand::SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| self.err("generating a P-256 key failed"))?;
        let path = self.dir.join(format!("es256-{created}.pk8"));
        write_private(&path, der.as_ref()).map_err(|e| self.err(e.to_string()))?;
        tracing::info!(path = %path.display(), "New OIDC signing key for deliveries");
        key_from(der.as_ref(), created).map_err(|e| self.err(e))
    }

    /// This issuer's URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The published keys (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    /// OIDC discovery (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    fn mint(&self, audience: &str, subject: &str, now: u64) -> Option<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.first()?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
        });
        jsonwebtoken::encode(&header, &claims, &key.encoding).ok()
    }
}

impl TokenSource for Signer {
    fn token(&self, audience: &str, subject: &str) -> Option<String> {
        let now = now();
        let key = (audience.to_owned(), subject.to_owned());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, expires)) = cache.get(&key) {
            if expires.saturating_sub(now) > RENEW_BEFORE.as_secs() {
                return Some(token.clone());
            }
        }
        let token = self.mint(audience, subject, now)?;
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, (token.clone(), now + TOKEN_LIFETIME.as_secs()));
        Some(token)
    }
}

/// A key and its JWK from PKCS#8.
fn key_from(der: &[u8], created: u64) -> Result<SigningKey, String> {
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        .map_err(|_| "not a P-256 PKCS#8 key".to_owned())?;
    let public = pair.public_key().as_ref();
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    let kid = b64(&digest.as_ref()[..12]);
    Ok(SigningKey {
        jwk: json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&public[1..33]), "y": b64(&public[33..65]),
        }),
        kid,
        created,
        encoding: EncodingKey::from_ec_der(der),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_rotate_with_overlap_and_tokens_verify() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::open(dir.path(), "https://cemesh.test/".into()).unwrap();
        assert_eq!(s.issuer(), "https://cemesh.test");
        let token = s.token("aud-1", "ns/t").unwrap();
        assert_eq!(s.token("aud-1", "ns/t").unwrap(), token, "cached");
        // Verified with the published JWKS, as a subscriber would.
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(s.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&["aud-1"]);
        v.set_issuer(&["https://cemesh.test"]);
        let data = jsonwebtoken::decode::<Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "ns/t");

        // The same key after a restart.
        let again = Signer::open(dir.path(), "https://cemesh.test".into()).unwrap();
        assert_eq!(again.jwks(), s.jwks());
        // A key past its age: a new one signs, the old one stays published.
        let old = dir.path().join("oidc");
        let file = std::fs::read_dir(&old)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let aged = old.join(format!("es256-{}.pk8", now() - ROTATE_AFTER.as_secs() - 10));
        std::fs::rename(&file, &aged).unwrap();
        let rotated = Signer::open(dir.path(), "https://cemesh.test".into()).unwrap();
        assert_eq!(rotated.jwks()["keys"].as_array().unwrap().len(), 2);
        // Past two periods, the old key is no longer published.
        let older = old.join(format!("es256-{}.pk8", now() - 3 * ROTATE_AFTER.as_secs()));
        std::fs::rename(&aged, &older).unwrap();
        let pruned = Signer::open(dir.path(), "https://cemesh.test".into()).unwrap();
        assert_eq!(pruned.jwks()["keys"].as_array().unwrap().len(), 1);
        let mode = std::fs::metadata(&older).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
