//! Tenants' SSH certificate authorities, their revocation lists, and the agents that sign in
//! with certificates.
//!
//! A CA key belongs to one tenant at most (its fingerprint is unique): the CA that signed a
//! certificate names the tenant of the agent presenting it, so agents of the same id in two
//! tenants are never confused. Certificate-based agents are registered on their first
//! connection and marked with their CA's fingerprint (`agents.ssh_ca`); they sign in with a
//! certificate only, never with their bare key (that would outlive the certificate's expiry and
//! revocation). A generated CA's private half is sealed like every other secret of the store.

use anyhow::Context as _;
use passerelle_proto::ids::AgentId;
use passerelle_proto::ssh_ca::{RevokedEntry, RevokedKind, SshCaInfo};
use rand::RngCore as _;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};

use super::agents::{COLUMNS, Conflict, from_row, is_unique_violation};
use super::sql::{self, Exec as _, OptionalExtension as _, Row, params};
use super::{AgentRecord, Store, TenantId, now_ms, rfc3339};

/// Schema: the CAs, the revocation lists, and which agents are certificate-based.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE ssh_cas (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    private_key BLOB,
    next_serial INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE INDEX ssh_cas_by_tenant ON ssh_cas(tenant_id);
CREATE TABLE ssh_ca_revoked (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kind, value)
);
ALTER TABLE agents ADD COLUMN ssh_ca TEXT;
"#;

/// A CA as stored (never its private half).
#[derive(Debug, Clone)]
pub struct CaRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub public_key: String,
    pub fingerprint: String,
    pub generated: bool,
    pub created_at: i64,
}

impl CaRecord {
    pub fn info(&self) -> SshCaInfo {
        SshCaInfo {
            id: self.id.clone(),
            public_key: self.public_key.clone(),
            fingerprint: self.fingerprint.clone(),
            generated: self.generated,
            created_at: rfc3339(self.created_at),
        }
    }
}

const CA_COLUMNS: &str =
    "id, tenant_id, public_key, fingerprint, private_key IS NOT NULL, created_at";

fn ca_row(r: &Row) -> sql::Result<CaRecord> {
    Ok(CaRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        public_key: r.get(2)?,
        fingerprint: r.get(3)?,
        generated: r.get(4)?,
        created_at: r.get(5)?,
    })
}

/// What a certificate's CA says about the agent presenting it.
#[derive(Debug, Clone)]
pub struct CertSignIn {
    pub ca: CaRecord,
    /// Which of the certificate's serial and key the tenant revoked, if any.
    pub revoked: Option<RevokedKind>,
}

/// A certificate-based agent after its sign-in was recorded.
#[derive(Debug, Clone)]
pub struct CertAgent {
    pub record: AgentRecord,
    /// It was registered by this sign-in.
    pub registered: bool,
    /// Its key changed (a new certificate for a reinstalled workstation).
    pub rekeyed: bool,
}

/// A certificate that is fine but cannot be this tenant's agent.
#[derive(Debug, thiserror::Error)]
pub enum CertAgentRefused {
    #[error("this tenant has {0} agents, the most allowed (max_agents_per_tenant)")]
    TooManyAgents(usize),
    #[error("the certificate's key is registered for another agent of this tenant")]
    KeyTaken,
}

fn new_id() -> String {
    let mut id = [0u8; 6];
    rand::rng().fill_bytes(&mut id);
    format!("ca_{}", hex::encode(id))
}

impl Store {
    /// Trusts a CA (the caller checked the proof). 409 when a tenant already trusts it.
    pub fn add_ssh_ca(&self, tenant_id: TenantId, public_key: &str) -> anyhow::Result<CaRecord> {
        self.insert_ca(tenant_id, public_key, None)
    }

    /// Generates an Ed25519 CA for the tenant, its private half sealed.
    pub fn generate_ssh_ca(&self, tenant_id: TenantId) -> anyhow::Result<CaRecord> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment(format!(
            "passerelle-ca@{}",
            self.tenant_name(tenant_id)?.as_str()
        ));
        let private = key
            .to_openssh(LineEnding::LF)
            .context("encoding a CA key")?;
        let public = key.public_key().to_openssh().context("encoding a CA key")?;
        let sealed = self.secret_box().seal(private.as_bytes());
        self.insert_ca(tenant_id, &public, Some(sealed))
    }

    fn insert_ca(
        &self,
        tenant_id: TenantId,
        public_key: &str,
        sealed: Option<Vec<u8>>,
    ) -> anyhow::Result<CaRecord> {
        let (line, fingerprint) = super::agents::parse_public_key(public_key)?;
        let id = new_id();
        let result = self.conn()?.execute(
            "INSERT INTO ssh_cas (id, tenant_id, public_key, fingerprint, private_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, tenant_id, line, fingerprint, sealed, now_ms()],
        );
        match result {
            Err(e) if is_unique_violation(&e) => {
                return Err(Conflict("this CA key is already trusted by a tenant".into()).into());
            }
            other => {
                other?;
            }
        }
        self.ssh_ca(tenant_id, &id)?
            .context("CA vanished after insert")
    }

    /// One CA of a tenant.
    pub fn ssh_ca(&self, tenant_id: TenantId, id: &str) -> anyhow::Result<Option<CaRecord>> {
        let sql = format!("SELECT {CA_COLUMNS} FROM ssh_cas WHERE tenant_id = ?1 AND id = ?2");
        Ok(self
            .conn()?
            .query_row(&sql, params![tenant_id, id], ca_row)
            .optional()?)
    }

    /// A tenant's CAs, oldest first.
    pub fn ssh_cas(&self, tenant_id: TenantId) -> anyhow::Result<Vec<CaRecord>> {
        let sql = format!(
            "SELECT {CA_COLUMNS} FROM ssh_cas WHERE tenant_id = ?1 ORDER BY created_at, id"
        );
        Ok(self.conn()?.query_map(&sql, [tenant_id], ca_row)?)
    }

    /// Stops trusting a CA; its agents stay registered but can no longer sign in. The CA, if
    /// the tenant had it.
    pub fn delete_ssh_ca(&self, tenant_id: TenantId, id: &str) -> anyhow::Result<Option<CaRecord>> {
        let Some(ca) = self.ssh_ca(tenant_id, id)? else {
            return Ok(None);
        };
        self.conn()?.execute(
            "DELETE FROM ssh_cas WHERE tenant_id = ?1 AND id = ?2",
            params![tenant_id, id],
        )?;
        Ok(Some(ca))
    }

    /// The tenant's newest generated CA with its private half and the serial to give next
    /// (counted, so no two certificates share one).
    pub fn ssh_ca_signer(
        &self,
        tenant_id: TenantId,
    ) -> anyhow::Result<Option<(CaRecord, PrivateKey, u64)>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_immediate()?;
        let sql = format!(
            "SELECT {CA_COLUMNS}, private_key, next_serial FROM ssh_cas
             WHERE tenant_id = ?1 AND private_key IS NOT NULL ORDER BY created_at DESC LIMIT 1"
        );
        let found = tx
            .query_row(&sql, [tenant_id], |r| {
                Ok((ca_row(r)?, r.get::<Vec<u8>>(6)?, r.get::<i64>(7)?))
            })
            .optional()?;
        let Some((ca, sealed, serial)) = found else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE ssh_cas SET next_serial = next_serial + 1 WHERE id = ?1",
            [&ca.id],
        )?;
        tx.commit()?;
        let text = self
            .secret_box()
            .open(&sealed)
            .context("a stored CA key could not be opened (secret.key changed?)")?;
        let key = PrivateKey::from_openssh(&text).context("decoding a stored CA key")?;
        Ok(Some((ca, key, u64::try_from(serial).unwrap_or(0))))
    }

    /// Adds a serial or a key fingerprint to the tenant's revocation list; whether it is new.
    pub fn revoke_ssh_cert(
        &self,
        tenant_id: TenantId,
        kind: RevokedKind,
        value: &str,
    ) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "INSERT INTO ssh_ca_revoked (tenant_id, kind, value, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![tenant_id, kind_str(kind), value, now_ms()],
        )?;
        Ok(n > 0)
    }

    /// The tenant's revocation list, newest first.
    pub fn ssh_revoked(&self, tenant_id: TenantId) -> anyhow::Result<Vec<RevokedEntry>> {
        let rows = self.conn()?.query_map(
            "SELECT kind, value, created_at FROM ssh_ca_revoked WHERE tenant_id = ?1
             ORDER BY created_at DESC, value",
            [tenant_id],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)),
        )?;
        let mut out = Vec::new();
        for (kind, value, at) in rows {
            let kind = match kind.as_str() {
                "serial" => RevokedKind::Serial,
                _ => RevokedKind::Key,
            };
            out.push(RevokedEntry {
                kind,
                value,
                created_at: rfc3339(at),
            });
        }
        Ok(out)
    }

    /// The CA with this fingerprint, and whether its tenant revoked `serial` or the key with
    /// fingerprint `key`. One indexed lookup and one revocation probe.
    pub fn cert_sign_in(
        &self,
        ca_fingerprint: &str,
        serial: u64,
        key: &str,
    ) -> anyhow::Result<Option<CertSignIn>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {CA_COLUMNS} FROM ssh_cas WHERE fingerprint = ?1");
        let Some(ca) = conn.query_row(&sql, [ca_fingerprint], ca_row).optional()? else {
            return Ok(None);
        };
        let revoked: Option<String> = conn
            .query_row(
                "SELECT kind FROM ssh_ca_revoked WHERE tenant_id = ?1
                 AND ((kind = 'serial' AND value = ?2) OR (kind = 'key' AND value = ?3))
                 ORDER BY kind LIMIT 1",
                params![ca.tenant_id, serial.to_string(), key],
                |r| r.get(0),
            )
            .optional()?;
        let revoked = revoked.map(|k| {
            if k == "serial" {
                RevokedKind::Serial
            } else {
                RevokedKind::Key
            }
        });
        Ok(Some(CertSignIn { ca, revoked }))
    }

    /// The agent a valid certificate of `ca` for `id` with key (`line`, `fingerprint`) signs
    /// in as: the tenant's agent of that id (a certificate-based one follows its certificate's
    /// key), or a new certificate-based agent, within the tenant's cap.
    pub fn cert_agent(
        &self,
        ca: &CaRecord,
        id: &AgentId,
        line: &str,
        fingerprint: &str,
        max_agents: usize,
    ) -> anyhow::Result<Result<CertAgent, CertAgentRefused>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_immediate()?;
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE tenant_id = ?1 AND id = ?2");
        let found = tx
            .query_row(&sql, params![ca.tenant_id, id.as_str()], from_row)
            .optional()?;
        let (registered, rekeyed) = match found {
            Some(row) => {
                let rekey = row.ssh_ca.is_some() && row.key_fingerprint != fingerprint;
                if rekey {
                    let result = tx.execute(
                        "UPDATE agents SET public_key = ?1, key_fingerprint = ?2, ssh_ca = ?3
                         WHERE tenant_id = ?4 AND id = ?5",
                        params![line, fingerprint, ca.fingerprint, ca.tenant_id, id.as_str()],
                    );
                    match result {
                        Err(e) if is_unique_violation(&e) => {
                            return Ok(Err(CertAgentRefused::KeyTaken));
                        }
                        other => {
                            other?;
                        }
                    }
                }
                (false, rekey)
            }
            None => {
                let count: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM agents WHERE tenant_id = ?1",
                    [ca.tenant_id],
                    |r| r.get(0),
                )?;
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                if count >= max_agents {
                    return Ok(Err(CertAgentRefused::TooManyAgents(count)));
                }
                // Never shadowed: certificate-based agents are not found by their bare key.
                let result = tx.execute(
                    "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint, created_at,
                                         shadowed, ssh_ca)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                    params![
                        ca.tenant_id,
                        id.as_str(),
                        line,
                        fingerprint,
                        now_ms(),
                        ca.fingerprint
                    ],
                );
                match result {
                    Err(e) if is_unique_violation(&e) => {
                        return Ok(Err(CertAgentRefused::KeyTaken));
                    }
                    other => {
                        other?;
                    }
                }
                (true, false)
            }
        };
        tx.commit()?;
        drop(conn);
        let record = self
            .agent(ca.tenant_id, id)?
            .context("agent vanished after its sign-in")?;
        Ok(Ok(CertAgent {
            record,
            registered,
            rekeyed,
        }))
    }
}

fn kind_str(kind: RevokedKind) -> &'static str {
    match kind {
        RevokedKind::Serial => "serial",
        RevokedKind::Key => "key",
    }
}

/// A fingerprint of a key given as an OpenSSH line or as `SHA256:...`.
pub fn key_fingerprint_of(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if let Some(b64) = text.strip_prefix("SHA256:") {
        let ok = !b64.is_empty()
            && b64.len() <= 64
            && b64
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/'));
        anyhow::ensure!(
            ok,
            super::agents::Invalid("key_fingerprint is not a SHA256 fingerprint".into())
        );
        return Ok(text.to_owned());
    }
    Ok(super::agents::parse_public_key(text)?.1)
}

/// The SHA256 fingerprint of a key, as stored.
pub fn fingerprint(key: &russh::keys::ssh_key::public::KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
