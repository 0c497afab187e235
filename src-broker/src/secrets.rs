//! Secrets: viewer tokens, API keys and the sealing of stored passwords.
//!
//! Tokens and API keys carry 256 bits from the OS's random source. Only their SHA-256 hashes are
//! kept (in memory for tokens, in the store for API keys), compared in constant time. Stored VNC
//! passwords are sealed with ChaCha20-Poly1305 under a key kept in `<data-dir>/secret.key`
//! (mode 0600), so a copy of the database alone reveals none of them. None of these types print
//! their secret in `Debug`.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use ring::aead;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// 32 random bytes, base64url: a viewer or launch token.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The hash under which a token is kept.
pub(crate) fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// An API key as issued: `psk_<id>_<secret>`, where the id (12 hex digits) is public and
/// names the key in logs and audit, and the secret is 256 random bits.
pub(crate) struct ApiKey {
    id: String,
    text: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}, <redacted>)", self.id)
    }
}

impl ApiKey {
    /// A fresh key.
    pub(crate) fn generate() -> Self {
        Self::generate_with(API_KEY_PREFIX)
    }

    /// A fresh secret of the same shape with another prefix (enrolment tokens: `pet_`).
    pub(crate) fn generate_with(prefix: &str) -> Self {
        let mut id = [0u8; 6];
        rand::rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        let text = format!("{prefix}{id}_{}", random_token());
        Self { id, text }
    }

    /// The public id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The hash to store.
    pub(crate) fn hash(&self) -> [u8; 32] {
        hash(&self.text)
    }

    /// The secret text, to show the user once.
    pub(crate) fn expose(&self) -> &str {
        &self.text
    }
}

/// Splits a presented API key into (id, hash of the whole key); `None` if malformed.
pub(crate) fn parse_api_key(text: &str) -> Option<(String, [u8; 32])> {
    parse_prefixed(API_KEY_PREFIX, text)
}

/// What API keys start with.
const API_KEY_PREFIX: &str = "psk_";
/// What enrolment tokens start with.
pub(crate) const ENROLL_TOKEN_PREFIX: &str = "pet_";

/// Splits a presented `<prefix><id>_<secret>` into (id, hash of the whole text); `None` if
/// malformed.
pub(crate) fn parse_prefixed(prefix: &str, text: &str) -> Option<(String, [u8; 32])> {
    let rest = text.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == 12
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| (id.to_owned(), hash(text)))
}

/// Seals and opens small secrets (VNC passwords) stored in the database.
pub(crate) struct SecretBox {
    key: aead::LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<redacted>)")
    }
}

impl SecretBox {
    /// Loads the key file, creating it (mode 0600) on first use.
    pub(crate) fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                write_private_file(path, &key)?;
                key.to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if bytes.len() != 32 {
            bail!("{} must hold exactly 32 bytes", path.display());
        }
        let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| anyhow::anyhow!("bad secret key"))?;
        Ok(Self {
            key: aead::LessSafeKey::new(unbound),
        })
    }

    /// Nonce (12 bytes) followed by ciphertext and tag.
    pub(crate) fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut buf = plain.to_vec();
        // Sealing only fails for inputs larger than ChaCha20's 256 GiB limit.
        let sealed = self.key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut buf,
        );
        debug_assert!(sealed.is_ok());
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// Opens what [`SecretBox::seal`] made; `None` if it was altered or sealed with another key.
    pub(crate) fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, body) = sealed.split_at_checked(12)?;
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::empty(), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Mode of every file the broker creates under its data dir: its owner's only.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every directory the broker creates under its data dir.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Options that create a file with mode 0600 from the start (never created wider and then
/// narrowed, which would leave a window). Add `write`/`create_new`/`truncate` as needed.
pub(crate) fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
    options
}

/// Creates a new file (it must not exist) with mode 0600, for writing.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    private_file_options()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Creates `dir` and its missing parents with mode 0700 (existing ones are left alone; the
/// start-up check in [`crate::file_modes`] narrows them).
pub(crate) fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    builder.create(dir)
}

/// Writes `bytes` to `path`, creating it with mode 0600 or truncating it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)
}

/// Writes a file readable by its owner only (created with mode 0600, never widened).
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file =
        create_private_file(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(ct_eq(&hash(&a), &hash(&a)));
        assert!(!ct_eq(&hash(&a), &hash(&b)));
        assert!(!ct_eq(b"ab", b"abc"));
    }

    #[test]
    fn api_keys_parse_and_hide() {
        let k = ApiKey::generate();
        let (id, h) = parse_api_key(k.expose()).unwrap();
        assert_eq!((id.as_str(), h), (k.id(), k.hash()));
        assert!(!format!("{k:?}").contains(&k.expose()[17..]));
        for bad in ["", "psk_", "psk_zz_x", "Bearer x", &k.expose()[..40]] {
            assert!(parse_api_key(bad).is_none(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn private_files_and_dirs_are_created_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a").join("b");
        create_private_dir_all(&sub).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&sub), 0o700);
        let f = sub.join("f");
        drop(create_private_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        // Never over an existing file.
        assert_eq!(
            create_private_file(&f).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        let g = sub.join("g");
        write_private(&g, b"long content").unwrap();
        write_private(&g, b"short").unwrap();
        assert_eq!(std::fs::read(&g).unwrap(), b"short");
        assert_eq!(mode(&g), 0o600);
        // The store, with its WAL and SHM files.
        let data = dir.path().join("data");
        let store = crate::Store::open(&data).unwrap();
        store
            .create_tenant(&passerelle_proto::ids::TenantName::new("t").unwrap())
            .unwrap();
        assert_eq!(mode(&data), 0o700);
        for name in [
            "passerelle.db",
            "passerelle.db-wal",
            "passerelle.db-shm",
            "secret.key",
        ] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn sealed_secrets_round_trip_and_detect_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let sb = SecretBox::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let sealed = sb.seal(b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(sb.open(&sealed).unwrap(), b"hunter2");
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(sb.open(&bad).is_none());
        // The same key file opens it again after a restart.
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"hunter2");
    }
}
