//! The broker's long-lived keys, created once in the data dir: the SSH host key (ed25519, so
//! agents can pin it) and the HTTPS certificate (self-signed unless the operator gives one).
//!
//! The self-signed certificate is named after the broker's host (the public URL's host, else
//! the machine's name; `localhost`, `127.0.0.1` and `::1` as further names), valid for a year,
//! and renewed at start when under 30 days are left, when it names another host, or when an
//! older version made it for centuries. A certificate given with `--tls-cert` is never touched.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rand::RngCore as _;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

use crate::secrets::write_private_file;
use crate::server_cert::{CertFiles, ServerCert};

/// File name of the host key inside the data dir.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Loads the host key, creating it on first start.
pub fn load_or_create_host_key(data_dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = data_dir.join(HOST_KEY_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading host key {}", path.display()))?;
        return PrivateKey::from_openssh(text)
            .with_context(|| format!("parsing host key {}", path.display()));
    }
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .context("encoding host key")?;
    write_private_file(&path, text.as_bytes())?;
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding host public key")?;
    crate::secrets::write_private(
        &data_dir.join(format!("{HOST_KEY_FILE}.pub")),
        format!("{public}\n").as_bytes(),
    )?;
    Ok(key)
}

/// `SHA256:...`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// `ssh-ed25519 AAAA...` without a comment.
pub fn public_openssh(key: &PrivateKey) -> String {
    let mut public = key.public_key().clone();
    public.set_comment("");
    public.to_openssh().unwrap_or_default().trim().to_owned()
}

/// A `known_hosts` line for agents: `[host]:port ssh-ed25519 AAAA...` (port 22 needs no brackets).
pub fn known_hosts_line(host: &str, port: u16, key: &PrivateKey) -> String {
    let host = if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    };
    format!("{host} {}", public_openssh(key))
}

/// The generated certificate and its key, in the data dir.
pub const TLS_CERT_FILE: &str = "tls-cert.pem";
/// See [`TLS_CERT_FILE`].
pub const TLS_KEY_FILE: &str = "tls-key.pem";

/// Loads PEM files, or the self-signed pair in the data dir when `files` is `None` (made or
/// renewed for the machine's name first). Blocking.
pub fn load_tls(data_dir: &Path, files: Option<(&Path, &Path)>) -> anyhow::Result<Arc<ServerCert>> {
    load_tls_for(data_dir, files, None)
}

/// [`load_tls`], with the self-signed certificate named after `host` (the public URL's host).
pub fn load_tls_for(
    data_dir: &Path,
    files: Option<(&Path, &Path)>,
    host: Option<&str>,
) -> anyhow::Result<Arc<ServerCert>> {
    let files = match files {
        Some((cert, key)) => CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        None => {
            let (cert, key) = (data_dir.join(TLS_CERT_FILE), data_dir.join(TLS_KEY_FILE));
            crate::self_signed::ensure(&cert, &key, host, std::time::SystemTime::now())?;
            CertFiles { cert, key }
        }
    };
    Ok(ServerCert::load(files)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_host_key(dir.path()).unwrap();
        let b = load_or_create_host_key(dir.path()).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(fingerprint(&a).starts_with("SHA256:"));
        assert!(known_hosts_line("example", 2222, &a).starts_with("[example]:2222 ssh-ed25519 "));
    }

    #[test]
    fn self_signed_certificate_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_tls(dir.path(), None).unwrap();
        let b = load_tls(dir.path(), None).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }
}
