//! The cluster's shared identity: one directory, written once by `passerelle cluster init` and
//! copied to every node, so that an agent or a browser cannot tell which node it reached. It
//! holds the SSH host key, the TLS certificate and key, the store's sealing key, the recordings'
//! signing key and the node-link secret.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::keys::{HOST_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE};
use crate::recording::KEY_FILE as RECORDING_KEY_FILE;

/// The store's sealing key (as in a data dir).
pub const SEAL_KEY_FILE: &str = "secret.key";
/// The secret the nodes sign their link requests with.
pub const LINK_KEY_FILE: &str = "node-link.key";

/// Every file of the identity.
const FILES: [&str; 6] = [
    HOST_KEY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    SEAL_KEY_FILE,
    RECORDING_KEY_FILE,
    LINK_KEY_FILE,
];

/// What `passerelle cluster init` made.
#[derive(Debug)]
pub struct Created {
    pub host_key_fingerprint: String,
    pub tls_fingerprint: String,
}

/// Writes a new identity into `dir` (created 0700); refuses a directory that already holds
/// one (replacing it would lock every agent out). `host` names the certificate (the load
/// balancer's name).
pub fn init(dir: &Path, host: Option<&str>) -> anyhow::Result<Created> {
    if dir.join(LINK_KEY_FILE).exists() || dir.join(HOST_KEY_FILE).exists() {
        bail!(
            "{} already holds a cluster identity; copy it to the nodes as it is",
            dir.display()
        );
    }
    crate::secrets::create_private_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let host_key = crate::keys::load_or_create_host_key(dir)?;
    let tls = crate::keys::load_tls_for(dir, None, host)?;
    crate::secrets::SecretBox::load_or_create(&dir.join(SEAL_KEY_FILE))?;
    crate::recording::SigningKey::load_or_create(dir)?;
    let mut link = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut link);
    crate::secrets::write_private_file(
        &dir.join(LINK_KEY_FILE),
        format!("{}\n", hex::encode(link)).as_bytes(),
    )?;
    Ok(Created {
        host_key_fingerprint: crate::keys::fingerprint(&host_key),
        tls_fingerprint: tls.fingerprint(),
    })
}

/// Checks that `dir` holds a whole identity (a node never makes up its own half).
pub fn check(dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&str> = FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "cluster_dir {} lacks {}: create it once with `passerelle cluster init DIR` and copy \
             it to every node",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The node-link secret.
pub fn link_key(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(LINK_KEY_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = hex::decode(text.trim()).with_context(|| format!("parsing {}", path.display()))?;
    if key.len() < 32 {
        bail!("{} is too short (32 bytes at least)", path.display());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_whole_identity_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster");
        assert!(check(&path).is_err());
        let made = init(&path, Some("broker.example")).unwrap();
        assert!(made.host_key_fingerprint.starts_with("SHA256:"));
        check(&path).unwrap();
        assert_eq!(link_key(&path).unwrap().len(), 32);
        let again = init(&path, None).unwrap_err().to_string();
        assert!(again.contains("already holds"), "{again}");
        std::fs::remove_file(path.join(SEAL_KEY_FILE)).unwrap();
        let err = check(&path).unwrap_err().to_string();
        assert!(
            err.contains("secret.key") && err.contains("cluster init"),
            "{err}"
        );
    }
}
