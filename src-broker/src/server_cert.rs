//! The certificate and key the HTTPS listener presents, replaceable while the broker runs.
//!
//! [`ServerCert`] is the listener's rustls certificate resolver: every new handshake reads the
//! pair it holds now, so [`ServerCert::reload`] (SIGHUP, `systemctl reload`) puts a renewed
//! certificate in service at once while connections already open (viewers' WebSockets, API
//! keep-alives, the node link) keep the one they were made with. A new pair is read from the
//! same two files as at start and checked whole before it replaces anything: a file that
//! cannot be read, is not PEM, holds no certificate or key, or a key that does not belong to
//! the certificate is refused with a [`PairError`] naming the file, and the previous pair stays.
//! Errors never quote the key file's content. A new pair also empties the store of TLS sessions,
//! so that no client resumes one made with the old certificate.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

/// The largest certificate or key file read (a chain of a few certificates is a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The two files a pair is read from, at start and at each reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate, then its chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a pair was refused. Each names the file at fault; none quotes the key's content.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is larger than {MAX_FILE_BYTES} bytes", .path.display())]
    TooLarge { path: PathBuf },
    #[error("{} is not PEM: {reason}", .path.display())]
    NotPem { path: PathBuf, reason: String },
    #[error("{} holds no PEM certificate", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key", .path.display())]
    NoKey { path: PathBuf },
    #[error("the certificate in {} cannot be used: {reason}", .path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("the key in {} cannot be used: {reason}", .path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {} does not match the certificate in {}", .key.display(), .cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// One loaded pair: what handshakes present, and what logs and launch URLs show of it.
pub struct Pair {
    certified: Arc<CertifiedKey>,
    sha256: [u8; 32],
    not_after: time::OffsetDateTime,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("sha256", &self.fingerprint())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Pair {
    /// Hex SHA-256 of the leaf certificate (DER): what the desktop helper pins.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The leaf certificate's notAfter.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.not_after
    }
}

/// Reads `path` whole, refusing one over [`MAX_FILE_BYTES`]. Blocking.
fn read_capped(path: &Path) -> Result<Vec<u8>, PairError> {
    let read = |source| PairError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(PairError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Reads and checks the pair in `files`. Blocking (file reads): call it off the async threads.
pub fn load_pair(files: &CertFiles) -> Result<Pair, PairError> {
    let (cert_path, key_path) = (&files.cert, &files.key);
    let cert_pem = read_capped(cert_path)?;
    let key_pem = read_capped(key_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PairError::NotPem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(PairError::NoCertificate {
            path: cert_path.clone(),
        });
    };
    let bad_cert = |reason: String| PairError::BadCertificate {
        path: cert_path.clone(),
        reason,
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| bad_cert(e.to_string()))?;
    let not_after = parsed.validity().not_after.to_datetime();
    let sha256: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PairError::NoKey {
            path: key_path.clone(),
        },
        // The decoder's own message may quote bytes of the key: say what, not where.
        _ => PairError::NotPem {
            path: key_path.clone(),
            reason: "a PEM section is malformed".to_owned(),
        },
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| PairError::BadKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(PairError::Mismatch {
                cert: cert_path.clone(),
                key: key_path.clone(),
            });
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(PairError::BadKey {
                path: key_path.clone(),
                reason: "its public half cannot be compared with the certificate's".to_owned(),
            });
        }
        Err(e) => return Err(bad_cert(e.to_string())),
    }
    Ok(Pair {
        certified: Arc::new(certified),
        sha256,
        not_after,
    })
}

/// What a successful [`ServerCert::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold another certificate: new handshakes present it.
    Replaced {
        /// Hex SHA-256 of the certificate served before.
        previous: String,
        /// Hex SHA-256 of the one served now.
        fingerprint: String,
    },
    /// The files hold the certificate already served.
    Unchanged { fingerprint: String },
}

/// How many TLS sessions the listener keeps for resumption (rustls's default).
const SESSIONS: usize = 256;

/// The HTTPS listener's certificate: the files it comes from and the pair read from them last.
/// It is also the listener's store of TLS sessions for resumption, emptied when the pair is
/// replaced: a resumed handshake sends no certificate, so without that a client could go on
/// resuming a session of the old certificate, and a pinning client (the node link) would never
/// see the new one.
#[derive(Debug)]
pub struct ServerCert {
    files: CertFiles,
    current: RwLock<Arc<Pair>>,
    sessions: RwLock<Arc<ServerSessionMemoryCache>>,
}

impl ServerCert {
    /// Reads the pair in `files` (blocking, at start).
    pub fn load(files: CertFiles) -> Result<Arc<Self>, PairError> {
        let pair = load_pair(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(pair)),
            sessions: RwLock::new(ServerSessionMemoryCache::new(SESSIONS)),
        }))
    }

    /// The files the pair is read from.
    pub fn files(&self) -> &CertFiles {
        &self.files
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<Pair> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hex SHA-256 of the certificate served now.
    pub fn fingerprint(&self) -> String {
        self.current().fingerprint()
    }

    /// SHA-256 of the certificate served now.
    pub(crate) fn sha256(&self) -> [u8; 32] {
        self.current().sha256
    }

    /// The listener's TLS settings: this resolver and session store, TLS 1.2 and 1.3,
    /// HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = self.clone();
        Ok(Arc::new(config))
    }

    /// Reads the files again (on a blocking thread) and serves their pair from the next
    /// handshake on; a refused pair leaves the current one in service.
    pub async fn reload(&self) -> Result<Reloaded, PairError> {
        Ok(self.install(self.read_again().await?))
    }

    async fn read_again(&self) -> Result<Pair, PairError> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || load_pair(&files))
            .await
            .map_err(|e| PairError::Read {
                path: self.files.cert.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// [`Self::reload`], logged: INFO with the certificate's SHA-256, its notAfter and the
    /// previous SHA-256 (WARN too if it has expired), or ERROR with both files, the reason and
    /// the SHA-256 still served.
    pub async fn reload_logged(&self) -> Result<Reloaded, PairError> {
        let (cert, key) = (self.files.cert.display(), self.files.key.display());
        let pair = match self.read_again().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(
                    %cert,
                    %key,
                    error = %e,
                    still_serving = %self.fingerprint(),
                    "TLS certificate reload refused; the previous certificate stays in service"
                );
                return Err(e);
            }
        };
        let expired = pair.not_after < time::OffsetDateTime::now_utc();
        let not_after = pair
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| pair.not_after.to_string());
        let done = self.install(pair);
        match &done {
            Reloaded::Replaced {
                previous,
                fingerprint,
            } => tracing::info!(
                %cert,
                sha256 = %fingerprint,
                %not_after,
                %previous,
                "reloaded the TLS certificate: new connections get it"
            ),
            Reloaded::Unchanged { fingerprint } => tracing::info!(
                %cert,
                sha256 = %fingerprint,
                %not_after,
                "reloaded the TLS certificate: it is the one already served"
            ),
        }
        if expired {
            tracing::warn!(%cert, %not_after, "the TLS certificate served has expired");
        }
        Ok(done)
    }

    /// Serves `pair` from the next handshake on.
    fn install(&self, pair: Pair) -> Reloaded {
        let fingerprint = pair.fingerprint();
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let previous = current.fingerprint();
        if previous == fingerprint {
            return Reloaded::Unchanged { fingerprint };
        }
        *current = Arc::new(pair);
        // Sessions of the old certificate resume no more.
        *self.sessions.write().unwrap_or_else(|p| p.into_inner()) =
            ServerSessionMemoryCache::new(SESSIONS);
        Reloaded::Replaced {
            previous,
            fingerprint,
        }
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }
}

impl ServerCert {
    fn sessions(&self) -> Arc<ServerSessionMemoryCache> {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl StoresServerSessions for ServerCert {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.sessions().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[path = "server_cert_tests.rs"]
mod tests;
