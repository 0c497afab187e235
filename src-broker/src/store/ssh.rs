//! What `ssh` sessions in the browser need from the store: each tenant's SSH key pair (made by
//! the broker, its private half sealed with `secret.key`), login names, agents' sealed SSH
//! passwords, the workstation host key pinned per agent on first use, and the login name a
//! session was created with.

use anyhow::Context as _;
use passerelle_proto::ids::AgentId;
use rand::RngCore as _;

use super::sql::{Exec as _, OptionalExtension as _, params};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};

use super::agents_errors::Invalid;
use super::{Store, TenantId};

/// The tables (appended to the store's migrations).
pub(super) const MIGRATION: &str = r#"
CREATE TABLE tenant_ssh (
    tenant_id INTEGER PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    private_key BLOB,
    ssh_username TEXT,
    record_terminal_input INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE agent_ssh (
    tenant_id INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    ssh_username TEXT,
    ssh_password BLOB,
    host_key TEXT,
    PRIMARY KEY (tenant_id, agent_id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents(tenant_id, id) ON DELETE CASCADE
);
CREATE TABLE session_ssh (
    session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    ssh_user TEXT NOT NULL
);
"#;

/// Longest login name accepted (Windows names with a domain included).
pub(super) const MAX_SSH_USERNAME: usize = 256;
/// Longest stored SSH password.
pub(super) const MAX_SSH_PASSWORD: usize = 1024;

/// A tenant's settings for `ssh` sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSsh {
    pub ssh_username: Option<String>,
    pub record_terminal_input: bool,
    /// The public half of the tenant's key, once made.
    pub public_key: Option<String>,
}

/// An agent's settings for `ssh` sessions (no secret).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSsh {
    pub ssh_username: Option<String>,
    pub has_ssh_password: bool,
    /// The pinned host key, an OpenSSH public key line.
    pub host_key: Option<String>,
}

impl AgentSsh {
    /// The pinned host key's SHA256 fingerprint.
    pub fn host_key_fingerprint(&self) -> Option<String> {
        let key = PublicKey::from_openssh(self.host_key.as_deref()?).ok()?;
        Some(key.fingerprint(HashAlg::Sha256).to_string())
    }
}

/// Checks an agent's SSH settings before they are stored (empty strings clear them).
pub fn check_agent_ssh(
    ssh_username: Option<&str>,
    ssh_password: Option<&str>,
) -> Result<(), Invalid> {
    if let Some(name) = ssh_username.filter(|n| !n.is_empty()) {
        check_username(name)?;
    }
    if ssh_password.is_some_and(|p| p.len() > MAX_SSH_PASSWORD || p.contains('\0')) {
        return Err(Invalid(format!(
            "an SSH password is at most {MAX_SSH_PASSWORD} bytes without NUL"
        )));
    }
    Ok(())
}

/// Checks a login name: 1 to 256 bytes, no control character.
pub fn check_username(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > MAX_SSH_USERNAME || name.chars().any(char::is_control) {
        return Err(Invalid(format!(
            "an SSH user name is 1 to {MAX_SSH_USERNAME} bytes without control characters"
        )));
    }
    Ok(())
}

fn comment(tenant: &str) -> String {
    format!("passerelle-tenant-{tenant}")
}

impl Store {
    /// Makes the tenant's SSH key pair if it has none yet.
    pub fn ensure_tenant_ssh_key(&self, tenant_id: TenantId) -> anyhow::Result<()> {
        let has: Option<bool> = self
            .conn()?
            .query_row(
                "SELECT private_key IS NOT NULL FROM tenant_ssh WHERE tenant_id = ?1",
                [tenant_id],
                |r| r.get(0),
            )
            .optional()?;
        if has == Some(true) {
            return Ok(());
        }
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment(comment(self.tenant_name(tenant_id)?.as_str()));
        let text = key
            .to_openssh(LineEnding::LF)
            .context("encoding a tenant SSH key")?;
        let sealed = self.secret_box().seal(text.as_bytes());
        // Two callers at once keep the first key.
        self.conn()?.execute(
            "INSERT INTO tenant_ssh (tenant_id, private_key) VALUES (?1, ?2)
             ON CONFLICT(tenant_id) DO UPDATE SET private_key = excluded.private_key
             WHERE tenant_ssh.private_key IS NULL",
            params![tenant_id, sealed],
        )?;
        Ok(())
    }

    /// The tenant's SSH private key (made on first use). Keep it short-lived.
    pub fn tenant_ssh_key(&self, tenant_id: TenantId) -> anyhow::Result<PrivateKey> {
        self.ensure_tenant_ssh_key(tenant_id)?;
        let sealed: Vec<u8> = self.conn()?.query_row(
            "SELECT private_key FROM tenant_ssh WHERE tenant_id = ?1",
            [tenant_id],
            |r| r.get(0),
        )?;
        let text = self
            .secret_box()
            .open(&sealed)
            .context("the tenant's SSH key could not be opened (secret.key changed?)")?;
        PrivateKey::from_openssh(&text).context("the tenant's stored SSH key is unreadable")
    }

    /// The tenant's settings for `ssh` sessions.
    pub fn tenant_ssh(&self, tenant_id: TenantId) -> anyhow::Result<TenantSsh> {
        let row: Option<(Option<Vec<u8>>, Option<String>, bool)> = self
            .conn()?
            .query_row(
                "SELECT private_key, ssh_username, record_terminal_input FROM tenant_ssh
                 WHERE tenant_id = ?1",
                [tenant_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((sealed, ssh_username, record_terminal_input)) = row else {
            return Ok(TenantSsh::default());
        };
        let public_key = match sealed {
            Some(sealed) => {
                let text = self
                    .secret_box()
                    .open(&sealed)
                    .context("the tenant's SSH key could not be opened (secret.key changed?)")?;
                let key = PrivateKey::from_openssh(&text)?;
                Some(key.public_key().to_openssh()?.trim().to_owned())
            }
            None => None,
        };
        Ok(TenantSsh {
            ssh_username,
            record_terminal_input,
            public_key,
        })
    }

    /// Changes the tenant's login name (an empty string clears it) and input recording.
    pub fn patch_tenant_ssh(
        &self,
        tenant_id: TenantId,
        ssh_username: Option<&str>,
        record_terminal_input: Option<bool>,
    ) -> anyhow::Result<()> {
        if let Some(name) = ssh_username.filter(|n| !n.is_empty()) {
            check_username(name)?;
        }
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO tenant_ssh (tenant_id) VALUES (?1) ON CONFLICT DO NOTHING",
            [tenant_id],
        )?;
        if let Some(name) = ssh_username {
            conn.execute(
                "UPDATE tenant_ssh SET ssh_username = ?1 WHERE tenant_id = ?2",
                params![(!name.is_empty()).then_some(name), tenant_id],
            )?;
        }
        if let Some(on) = record_terminal_input {
            conn.execute(
                "UPDATE tenant_ssh SET record_terminal_input = ?1 WHERE tenant_id = ?2",
                params![on, tenant_id],
            )?;
        }
        Ok(())
    }

    /// An agent's settings for `ssh` sessions.
    pub fn agent_ssh(&self, tenant_id: TenantId, agent: &AgentId) -> anyhow::Result<AgentSsh> {
        let row = self
            .conn()?
            .query_row(
                "SELECT ssh_username, ssh_password IS NOT NULL, host_key FROM agent_ssh
                 WHERE tenant_id = ?1 AND agent_id = ?2",
                params![tenant_id, agent.as_str()],
                |r| {
                    Ok(AgentSsh {
                        ssh_username: r.get(0)?,
                        has_ssh_password: r.get(1)?,
                        host_key: r.get(2)?,
                    })
                },
            )
            .optional()?;
        Ok(row.unwrap_or_default())
    }

    /// Changes an agent's login name and password (`None` leaves one alone, an empty string
    /// clears it). The agent must exist.
    pub fn set_agent_ssh(
        &self,
        tenant_id: TenantId,
        agent: &AgentId,
        ssh_username: Option<&str>,
        ssh_password: Option<&str>,
    ) -> anyhow::Result<()> {
        check_agent_ssh(ssh_username, ssh_password)?;
        if ssh_username.is_none() && ssh_password.is_none() {
            return Ok(());
        }
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO agent_ssh (tenant_id, agent_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![tenant_id, agent.as_str()],
        )?;
        if let Some(name) = ssh_username {
            conn.execute(
                "UPDATE agent_ssh SET ssh_username = ?1 WHERE tenant_id = ?2 AND agent_id = ?3",
                params![
                    (!name.is_empty()).then_some(name),
                    tenant_id,
                    agent.as_str()
                ],
            )?;
        }
        if let Some(pw) = ssh_password {
            let sealed = (!pw.is_empty()).then(|| self.secret_box().seal(pw.as_bytes()));
            conn.execute(
                "UPDATE agent_ssh SET ssh_password = ?1 WHERE tenant_id = ?2 AND agent_id = ?3",
                params![sealed, tenant_id, agent.as_str()],
            )?;
        }
        Ok(())
    }

    /// The agent's stored SSH password, opened. Keep it short-lived.
    pub fn agent_ssh_password(
        &self,
        tenant_id: TenantId,
        agent: &AgentId,
    ) -> anyhow::Result<Option<String>> {
        let sealed: Option<Vec<u8>> = self
            .conn()?
            .query_row(
                "SELECT ssh_password FROM agent_ssh WHERE tenant_id = ?1 AND agent_id = ?2",
                params![tenant_id, agent.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        sealed
            .map(|s| {
                let bytes = self
                    .secret_box()
                    .open(&s)
                    .context("a stored SSH password could not be opened (secret.key changed?)")?;
                String::from_utf8(bytes).context("a stored SSH password is not UTF-8")
            })
            .transpose()
    }

    /// Pins the workstation's host key for the agent if none is pinned; returns whether this
    /// call pinned it.
    pub fn pin_ssh_host_key(
        &self,
        tenant_id: TenantId,
        agent: &AgentId,
        key: &PublicKey,
    ) -> anyhow::Result<bool> {
        let mut key = key.clone();
        key.set_comment("");
        let line = key.to_openssh()?.trim().to_owned();
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO agent_ssh (tenant_id, agent_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![tenant_id, agent.as_str()],
        )?;
        let n = conn.execute(
            "UPDATE agent_ssh SET host_key = ?1
             WHERE tenant_id = ?2 AND agent_id = ?3 AND host_key IS NULL",
            params![line, tenant_id, agent.as_str()],
        )?;
        Ok(n == 1)
    }

    /// Forgets the agent's pinned host key (the next session pins again); whether one was.
    pub fn reset_ssh_host_key(&self, tenant_id: TenantId, agent: &AgentId) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE agent_ssh SET host_key = NULL
             WHERE tenant_id = ?1 AND agent_id = ?2 AND host_key IS NOT NULL",
            params![tenant_id, agent.as_str()],
        )?;
        Ok(n == 1)
    }

    /// Remembers the login name a session was created with.
    pub fn set_session_ssh_user(&self, session: &str, user: &str) -> anyhow::Result<()> {
        check_username(user)?;
        self.conn()?.execute(
            "INSERT INTO session_ssh (session_id, ssh_user) VALUES (?1, ?2)
             ON CONFLICT (session_id) DO UPDATE SET ssh_user = excluded.ssh_user",
            params![session, user],
        )?;
        Ok(())
    }

    /// The login name a session was created with, if any.
    pub fn session_ssh_user(&self, session: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT ssh_user FROM session_ssh WHERE session_id = ?1",
                [session],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The service of a session, whatever its tenant (to choose a page).
    pub fn session_service(&self, session: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT service FROM sessions WHERE id = ?1",
                [session],
                |r| r.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::TenantName;

    use super::*;

    fn store_with_agent() -> (tempfile::TempDir, Store, TenantId, AgentId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (t, id) = with_agent(&store);
        (dir, store, t, id)
    }

    fn with_agent(store: &Store) -> (TenantId, AgentId) {
        store.create_tenant(&TenantName::new("t").unwrap()).unwrap();
        let t = store
            .tenant_id(&TenantName::new("t").unwrap())
            .unwrap()
            .unwrap();
        let id = AgentId::new("pc1").unwrap();
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvBvH/lAtwXOyzf4xGiV8hb0W4P8ifHfzZR4U24Y1Wz";
        store.create_agent(t, &id, key, None).unwrap();
        (t, id)
    }

    #[test]
    fn the_tenant_key_is_made_once_and_sealed() {
        let (dir, store, t, _) = store_with_agent();
        let a = store.tenant_ssh_key(t).unwrap();
        let b = store.tenant_ssh_key(t).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let info = store.tenant_ssh(t).unwrap();
        let public = info.public_key.unwrap();
        assert!(public.starts_with("ssh-ed25519 ") && public.ends_with(" passerelle-tenant-t"));
        // The database holds no private key in the clear.
        drop(store);
        let db = std::fs::read(dir.path().join("passerelle.db")).unwrap();
        let needle = b"OPENSSH PRIVATE KEY";
        assert!(!db.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn agent_credentials_are_write_only_and_the_pin_is_set_once() {
        crate::store::test_backends::each(|store| {
            let (t, id) = with_agent(store);
            assert_eq!(store.agent_ssh(t, &id).unwrap(), AgentSsh::default());
            store
                .set_agent_ssh(t, &id, Some("bob"), Some("s3cret"))
                .unwrap();
            let info = store.agent_ssh(t, &id).unwrap();
            assert_eq!(info.ssh_username.as_deref(), Some("bob"));
            assert!(info.has_ssh_password);
            assert_eq!(
                store.agent_ssh_password(t, &id).unwrap().as_deref(),
                Some("s3cret")
            );
            store.set_agent_ssh(t, &id, None, Some("")).unwrap();
            assert!(!store.agent_ssh(t, &id).unwrap().has_ssh_password);
            assert!(store.set_agent_ssh(t, &id, Some("a\nb"), None).is_err());

            let k1 = store.tenant_ssh_key(t).unwrap().public_key().clone();
            let k2 = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]))
                .public_key()
                .clone();
            assert!(store.pin_ssh_host_key(t, &id, &k1).unwrap());
            assert!(!store.pin_ssh_host_key(t, &id, &k2).unwrap(), "pinned once");
            let pinned = store.agent_ssh(t, &id).unwrap();
            assert_eq!(
                pinned.host_key_fingerprint(),
                Some(k1.fingerprint(HashAlg::Sha256).to_string())
            );
            assert!(store.reset_ssh_host_key(t, &id).unwrap());
            assert!(!store.reset_ssh_host_key(t, &id).unwrap());
            assert!(store.pin_ssh_host_key(t, &id, &k2).unwrap());
            // Deleting the agent forgets all of it.
            store.delete_agent(t, &id).unwrap();
            assert_eq!(store.agent_ssh(t, &id).unwrap(), AgentSsh::default());
        });
    }
}
