//! RDP settings of agents and tenants: the login injected into sessions over TLS (its password
//! sealed like VNC passwords, write-only through the API), and each agent's pinned RDP server
//! certificate (trust on first use; a change is refused until an admin resets it).

use anyhow::Context as _;
use passerelle_proto::ids::AgentId;
use passerelle_proto::rdp::Credentials;

use super::sql::{Exec as _, OptionalExtension as _, ToValue, params};

use super::agents::Invalid;
use super::{Store, TenantId, now_ms};

/// Longest login or password accepted (the Client Info PDU carries 256 UTF-16 units).
const MAX_CHARS: usize = 255;

/// Checks a login and a password before storing them.
pub fn check(username: Option<&str>, password: Option<&str>) -> Result<(), Invalid> {
    if let Some(u) = username
        && (u.chars().count() > MAX_CHARS || u.chars().any(char::is_control))
    {
        return Err(Invalid(format!(
            "rdp_username must be at most {MAX_CHARS} printable characters"
        )));
    }
    if let Some(p) = password
        && (p.chars().count() > MAX_CHARS || p.contains('\0'))
    {
        return Err(Invalid(format!(
            "rdp_password must be at most {MAX_CHARS} characters, without NUL"
        )));
    }
    Ok(())
}

/// What the pin check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// Nothing was pinned: this certificate now is.
    Pinned,
    /// The pinned certificate.
    Matches,
    /// Another certificate is pinned (its hex SHA-256): someone pinned first, or it changed.
    Differs(String),
}

impl Store {
    fn set_rdp(
        &self,
        table: &str,
        key: &str,
        args: &[&dyn ToValue],
        username: Option<&str>,
        password: Option<&str>,
    ) -> anyhow::Result<()> {
        check(username, password)?;
        let conn = self.conn()?;
        let n = args.len();
        if let Some(u) = username {
            let value = (!u.is_empty()).then_some(u);
            let mut all: Vec<&dyn ToValue> = args.to_vec();
            all.push(&value);
            conn.execute(
                &format!("UPDATE {table} SET rdp_username = ?{} WHERE {key}", n + 1),
                all.as_slice(),
            )?;
        }
        if let Some(p) = password {
            let sealed = (!p.is_empty()).then(|| self.secret_box().seal(p.as_bytes()));
            let mut all: Vec<&dyn ToValue> = args.to_vec();
            all.push(&sealed);
            conn.execute(
                &format!("UPDATE {table} SET rdp_password = ?{} WHERE {key}", n + 1),
                all.as_slice(),
            )?;
        }
        Ok(())
    }

    /// Sets an agent's RDP login and/or password (`None` leaves one alone, an empty string
    /// clears it).
    pub fn set_agent_rdp(
        &self,
        tenant_id: TenantId,
        id: &AgentId,
        username: Option<&str>,
        password: Option<&str>,
    ) -> anyhow::Result<()> {
        self.set_rdp(
            "agents",
            "tenant_id = ?1 AND id = ?2",
            &[&tenant_id, &id.as_str()],
            username,
            password,
        )
    }

    /// Sets a tenant's default RDP login and/or password.
    pub fn set_tenant_rdp(
        &self,
        tenant_id: TenantId,
        username: Option<&str>,
        password: Option<&str>,
    ) -> anyhow::Result<()> {
        self.set_rdp("tenants", "id = ?1", &[&tenant_id], username, password)
    }

    /// A tenant's default login and whether it has a password.
    pub fn tenant_rdp(&self, tenant_id: TenantId) -> anyhow::Result<(Option<String>, bool)> {
        Ok(self.conn()?.query_row(
            "SELECT rdp_username, rdp_password IS NOT NULL FROM tenants WHERE id = ?1",
            [tenant_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// The credentials to inject for an agent: its own login and password, else its tenant's
    /// (each field separately); `None` unless both a login and a password are stored.
    /// Decrypted: keep them short-lived.
    pub fn rdp_credentials(
        &self,
        tenant_id: TenantId,
        id: &AgentId,
    ) -> anyhow::Result<Option<Credentials>> {
        let row: Option<(Option<String>, Option<Vec<u8>>)> = self
            .conn()?
            .query_row(
                "SELECT COALESCE(a.rdp_username, t.rdp_username),
                        COALESCE(a.rdp_password, t.rdp_password)
                 FROM agents a JOIN tenants t ON t.id = a.tenant_id
                 WHERE a.tenant_id = ?1 AND a.id = ?2",
                params![tenant_id, id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((Some(login), Some(sealed))) = row else {
            return Ok(None);
        };
        let password = self
            .secret_box()
            .open(&sealed)
            .context("a stored RDP password could not be opened (secret.key changed?)")?;
        let password = String::from_utf8(password).context("a stored RDP password is not UTF-8")?;
        Ok(Some(Credentials::from_login(&login, &password)))
    }

    /// The SHA-256 pinned for an agent's RDP server, if any.
    pub fn rdp_pin(&self, tenant_id: TenantId, id: &AgentId) -> anyhow::Result<Option<[u8; 32]>> {
        let hex_pin: Option<String> = self
            .conn()?
            .query_row(
                "SELECT rdp_cert_sha256 FROM agents WHERE tenant_id = ?1 AND id = ?2",
                params![tenant_id, id.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        hex_pin
            .map(|h| {
                let bytes = hex::decode(&h).context("a pinned RDP certificate hash is not hex")?;
                <[u8; 32]>::try_from(bytes.as_slice())
                    .context("a pinned RDP certificate hash is not 32 bytes")
            })
            .transpose()
    }

    /// Pins `sha256` for an agent unless something is pinned already, atomically: two first
    /// connections cannot both pin.
    pub fn pin_rdp_certificate(
        &self,
        tenant_id: TenantId,
        id: &AgentId,
        sha256: &[u8; 32],
    ) -> anyhow::Result<PinCheck> {
        let presented = hex::encode(sha256);
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE agents SET rdp_cert_sha256 = ?1, rdp_cert_pinned_at = ?2
             WHERE tenant_id = ?3 AND id = ?4 AND rdp_cert_sha256 IS NULL",
            params![presented, now_ms(), tenant_id, id.as_str()],
        )?;
        if n == 1 {
            return Ok(PinCheck::Pinned);
        }
        let current: Option<String> = conn
            .query_row(
                "SELECT rdp_cert_sha256 FROM agents WHERE tenant_id = ?1 AND id = ?2",
                params![tenant_id, id.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(match current {
            Some(c) if c == presented => PinCheck::Matches,
            Some(c) => PinCheck::Differs(c),
            None => anyhow::bail!("agent {id} vanished while pinning its RDP certificate"),
        })
    }

    /// Forgets an agent's pinned RDP certificate; returns the hash that was pinned.
    pub fn reset_rdp_certificate(
        &self,
        tenant_id: TenantId,
        id: &AgentId,
    ) -> anyhow::Result<Option<String>> {
        let conn = self.conn()?;
        let old: Option<String> = conn
            .query_row(
                "SELECT rdp_cert_sha256 FROM agents WHERE tenant_id = ?1 AND id = ?2",
                params![tenant_id, id.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        conn.execute(
            "UPDATE agents SET rdp_cert_sha256 = NULL, rdp_cert_pinned_at = NULL
             WHERE tenant_id = ?1 AND id = ?2",
            params![tenant_id, id.as_str()],
        )?;
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::TenantName;

    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBDbjJ5Xz6Bj5ngErpfe2Kzf8GsfXdKtDrDppzZIVI8A";

    #[test]
    fn credentials_fall_back_to_the_tenant_and_stay_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantName::new("default").unwrap();
        store.create_tenant(&t).unwrap();
        let tid = store.tenant_id(&t).unwrap().unwrap();
        let id = AgentId::new("pc-1").unwrap();
        store.create_agent(tid, &id, KEY, None).unwrap();
        assert_eq!(store.rdp_credentials(tid, &id).unwrap(), None);
        store
            .set_tenant_rdp(tid, Some("CORP\\helpdesk"), Some("tenant-pw"))
            .unwrap();
        let c = store.rdp_credentials(tid, &id).unwrap().unwrap();
        assert_eq!(
            (c.domain.as_str(), c.username.as_str()),
            ("CORP", "helpdesk")
        );
        assert_eq!(c.password, "tenant-pw");
        store
            .set_agent_rdp(tid, &id, None, Some("agent-pw"))
            .unwrap();
        assert_eq!(
            store.rdp_credentials(tid, &id).unwrap().unwrap().password,
            "agent-pw"
        );
        assert_eq!(
            store.tenant_rdp(tid).unwrap(),
            (Some("CORP\\helpdesk".into()), true)
        );
        let raw = std::fs::read(dir.path().join("passerelle.db")).unwrap();
        assert!(!raw.windows(8).any(|w| w == b"agent-pw"), "sealed at rest");
        store.set_agent_rdp(tid, &id, Some(""), Some("")).unwrap();
        assert_eq!(
            store.rdp_credentials(tid, &id).unwrap().unwrap().password,
            "tenant-pw"
        );
        assert!(store.set_tenant_rdp(tid, Some("a\nb"), None).is_err());
        assert!(
            store
                .set_tenant_rdp(tid, None, Some(&"x".repeat(300)))
                .is_err()
        );
    }

    #[test]
    fn the_first_certificate_is_pinned_until_reset() {
        crate::store::test_backends::each(|store| {
            let t = TenantName::new("default").unwrap();
            store.create_tenant(&t).unwrap();
            let tid = store.tenant_id(&t).unwrap().unwrap();
            let id = AgentId::new("pc-1").unwrap();
            store.create_agent(tid, &id, KEY, None).unwrap();
            assert_eq!(store.rdp_pin(tid, &id).unwrap(), None);
            assert_eq!(
                store.pin_rdp_certificate(tid, &id, &[1; 32]).unwrap(),
                PinCheck::Pinned
            );
            assert_eq!(
                store.pin_rdp_certificate(tid, &id, &[1; 32]).unwrap(),
                PinCheck::Matches
            );
            assert_eq!(
                store.pin_rdp_certificate(tid, &id, &[2; 32]).unwrap(),
                PinCheck::Differs(hex::encode([1; 32]))
            );
            assert_eq!(store.rdp_pin(tid, &id).unwrap(), Some([1; 32]));
            assert_eq!(
                store.reset_rdp_certificate(tid, &id).unwrap(),
                Some(hex::encode([1; 32]))
            );
            assert_eq!(
                store.pin_rdp_certificate(tid, &id, &[2; 32]).unwrap(),
                PinCheck::Pinned
            );
        });
    }
}
