//! TLS for cemesh's listeners: rustls (TLS 1.2 and 1.3, the ring provider, so the
//! build needs no cmake), with the certificate and key re-read when their files
//! change. cert-manager and similar tools rotate certificates by rewriting the files
//! in place; each new handshake checks the files' modification times (at most once a
//! second) and takes the new pair, while open connections keep the one they started
//! with, so a rotation drops nothing. A pair that fails to load keeps the previous
//! one (and says so in the log) instead of breaking every new connection.
//!
//! With a client CA (`--tls-client-ca`), a listener asks every client for a
//! certificate and verifies any it gets against that CA; a client that sends none
//! still connects (health probes, JWKS readers and publishers share the ports), and
//! what needs one (the admin API) refuses callers without a [`PeerIdentity`] in
//! their request's extensions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
pub use tokio_rustls::TlsAcceptor;

/// How often a handshake may look at the files' modification times.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate or key could not be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {}: {message}", path.display())]
    Cert { path: PathBuf, message: String },
    #[error("TLS key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("TLS client CA {}: {message}", path.display())]
    ClientCa { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The CA that client certificates must chain to (`--tls-client-ca`).
#[derive(Clone)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCa")
    }
}

impl ClientCa {
    /// Loads the CA certificates in `path` (PEM). A client without a certificate is
    /// let in (see the module doc); one with a certificate the CA did not issue is not.
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let ca_err = |message: String| TlsError::ClientCa {
            path: path.to_owned(),
            message,
        };
        let certs = read_certs(path).map_err(|e| ca_err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| ca_err(e.to_string()))?;
        Ok(ClientCa { verifier })
    }
}

/// Who a verified client certificate names: its first URI SAN (a SPIFFE ID, say),
/// else its first DNS SAN, else its subject's common name. The subject the admin
/// API's roles (`auth.admin`) match when no bearer token is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub String);

/// The identity of the client certificate `conn` verified, if it got one.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<PeerIdentity> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let mut uri = None;
    let mut dns = None;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u) if uri.is_none() => {
                    uri = Some(u.to_string())
                }
                x509_parser::extensions::GeneralName::DNSName(d) if dns.is_none() => {
                    dns = Some(d.to_string())
                }
                _ => {}
            }
        }
    }
    let cn = || {
        parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    };
    // The certificate was verified, so a name-less one still proves something.
    Some(PeerIdentity(
        uri.or(dns)
            .or_else(cn)
            .unwrap_or_else(|| "unnamed-client-certificate".to_owned()),
    ))
}

/// An acceptor for `files`, offering `alpn` (e.g. `http/1.1`, or `h2` for gRPC),
/// asking clients for certificates from `client_ca` when given.
/// Loads the pair once now, so a bad file stops start-up with its name.
pub fn acceptor(
    files: &TlsFiles,
    alpn: &[&[u8]],
    client_ca: Option<&ClientCa>,
) -> Result<TlsAcceptor, TlsError> {
    let resolver = Arc::new(Reloading::new(files.clone())?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(ca.verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the TLS handshake of an accepted connection within `timeout` (the listener's
/// header read timeout); `None`, logged at debug, if it fails or takes longer.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
    listener: &'static str,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(listener, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener, "TLS handshake timed out");
            None
        }
    }
}

/// The issuers in the certificate file (every certificate after the first, or the
/// first itself when it stands alone), as DER: what a client of this process must
/// trust, e.g. its own dispatcher delivering to its own ingress.
pub fn issuers(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let from = usize::from(certs.len() > 1);
    Ok(certs[from..].iter().map(|c| c.to_vec()).collect())
}

/// Every PEM certificate in the file at `path` (at least one), or why not, naming it.
/// The CA bundles clients trust (`bench --cacert`) are read with it too.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: path.to_owned(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The current pair, re-read when the files change.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// When the files were last looked at, and their modification times then.
    seen: Mutex<(Instant, Stamp)>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl Reloading {
    fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = stamp(&files);
        let key = load(&files)?;
        Ok(Reloading {
            files,
            current: RwLock::new(key),
            seen: Mutex::new((Instant::now(), stamp)),
        })
    }

    /// Loads the pair again if a file changed since the last look.
    fn refresh(&self) {
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0.elapsed() < CHECK_EVERY {
                return;
            }
            let now = stamp(&self.files);
            let changed = now != seen.1;
            *seen = (Instant::now(), now);
            changed
        };
        if !changed {
            return;
        }
        match load(&self.files) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                // Half-written files (a rotation in progress) come right at the next
                // look: forget this stamp so it is retried.
                self.seen.lock().unwrap_or_else(|p| p.into_inner()).1 = (None, None);
                tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(&files.cert), mtime(&files.key))
}

fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let key_err = |message: String| TlsError::Key {
        path: files.key.clone(),
        message,
    };
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_err(e.to_string()))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        key_err(format!(
            "does not match the certificate {}: {e}",
            files.cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}
