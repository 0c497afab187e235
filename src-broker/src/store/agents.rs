//! Registered agents: their public keys (one per agent, unique across tenants) and sealed VNC
//! passwords.

use anyhow::Context as _;
use passerelle_proto::ids::AgentId;
use rusqlite::{OptionalExtension as _, Row, params};
use russh::keys::{HashAlg, PublicKey};

use super::{Store, TenantId, now_ms};

/// A refusal that the API answers with 409.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);

/// A refusal that the API answers with 400.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// An agent as stored.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub tenant_id: TenantId,
    pub id: AgentId,
    pub public_key: String,
    pub key_fingerprint: String,
    pub has_vnc_password: bool,
    pub created_at: i64,
    /// The agent's own RDP login (the tenant's applies otherwise).
    pub rdp_username: Option<String>,
    pub has_rdp_password: bool,
    /// Hex SHA-256 of the pinned RDP server certificate, and when it was pinned.
    pub rdp_cert_sha256: Option<String>,
    pub rdp_cert_pinned_at: Option<i64>,
}

const COLUMNS: &str = "tenant_id, id, public_key, key_fingerprint, vnc_password IS NOT NULL, \
     created_at, rdp_username, rdp_password IS NOT NULL, rdp_cert_sha256, rdp_cert_pinned_at";

/// A row as read, before its id is checked.
struct RawRow {
    tenant_id: TenantId,
    id: String,
    public_key: String,
    key_fingerprint: String,
    has_vnc_password: bool,
    created_at: i64,
    rdp_username: Option<String>,
    has_rdp_password: bool,
    rdp_cert_sha256: Option<String>,
    rdp_cert_pinned_at: Option<i64>,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        tenant_id: r.get(0)?,
        id: r.get(1)?,
        public_key: r.get(2)?,
        key_fingerprint: r.get(3)?,
        has_vnc_password: r.get(4)?,
        created_at: r.get(5)?,
        rdp_username: r.get(6)?,
        has_rdp_password: r.get(7)?,
        rdp_cert_sha256: r.get(8)?,
        rdp_cert_pinned_at: r.get(9)?,
    })
}

fn record(row: RawRow) -> anyhow::Result<AgentRecord> {
    Ok(AgentRecord {
        tenant_id: row.tenant_id,
        id: AgentId::new(row.id)?,
        public_key: row.public_key,
        key_fingerprint: row.key_fingerprint,
        has_vnc_password: row.has_vnc_password,
        created_at: row.created_at,
        rdp_username: row.rdp_username,
        has_rdp_password: row.has_rdp_password,
        rdp_cert_sha256: row.rdp_cert_sha256,
        rdp_cert_pinned_at: row.rdp_cert_pinned_at,
    })
}

/// Parses an OpenSSH public key line; returns (canonical line without comment, SHA256 fingerprint).
pub fn parse_public_key(text: &str) -> Result<(String, String), Invalid> {
    let key = PublicKey::from_openssh(text.trim())
        .map_err(|e| Invalid(format!("public_key is not an OpenSSH public key: {e}")))?;
    let mut key = key;
    key.set_comment("");
    let line = key
        .to_openssh()
        .map_err(|e| Invalid(format!("public_key: {e}")))?;
    Ok((
        line.trim().to_owned(),
        key.fingerprint(HashAlg::Sha256).to_string(),
    ))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

impl Store {
    /// Registers an agent. Conflicts: the id exists in the tenant, or the key belongs to another.
    pub fn create_agent(
        &self,
        tenant_id: TenantId,
        id: &AgentId,
        public_key: &str,
        vnc_password: Option<&str>,
    ) -> anyhow::Result<AgentRecord> {
        let (line, fingerprint) = parse_public_key(public_key)?;
        let sealed = vnc_password
            .filter(|p| !p.is_empty())
            .map(|p| self.secret_box().seal(p.as_bytes()));
        let result = self.conn().execute(
            "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint, vnc_password, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![tenant_id, id.as_str(), line, fingerprint, sealed, now_ms()],
        );
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                let taken = self.agent(tenant_id, id)?.is_some();
                let what = if taken {
                    format!("agent {id} is already registered")
                } else {
                    "this public key is already registered for another agent".to_owned()
                };
                return Err(Conflict(what).into());
            }
            Err(e) => return Err(e.into()),
        }
        self.agent(tenant_id, id)?
            .context("agent vanished after insert")
    }

    /// One agent of a tenant.
    pub fn agent(&self, tenant_id: TenantId, id: &AgentId) -> anyhow::Result<Option<AgentRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE tenant_id = ?1 AND id = ?2");
        let row = self
            .conn()
            .query_row(&sql, params![tenant_id, id.as_str()], from_row)
            .optional()?;
        row.map(record).transpose()
    }

    /// A tenant's agents, by id.
    pub fn agents(&self, tenant_id: TenantId) -> anyhow::Result<Vec<AgentRecord>> {
        let conn = self.conn();
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE tenant_id = ?1 ORDER BY id");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map([tenant_id], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(record).collect()
    }

    /// The agent that SSH user `user` presenting a key with this fingerprint is, if any.
    pub fn agent_for_key(
        &self,
        user: &str,
        fingerprint: &str,
    ) -> anyhow::Result<Option<AgentRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = ?1 AND key_fingerprint = ?2");
        let row = self
            .conn()
            .query_row(&sql, params![user, fingerprint], from_row)
            .optional()?;
        row.map(record).transpose()
    }

    /// Changes an agent's key and/or VNC password (an empty password clears it).
    pub fn update_agent(
        &self,
        tenant_id: TenantId,
        id: &AgentId,
        public_key: Option<&str>,
        vnc_password: Option<&str>,
    ) -> anyhow::Result<Option<AgentRecord>> {
        if self.agent(tenant_id, id)?.is_none() {
            return Ok(None);
        }
        if let Some(text) = public_key {
            let (line, fingerprint) = parse_public_key(text)?;
            let result = self.conn().execute(
                "UPDATE agents SET public_key = ?1, key_fingerprint = ?2 WHERE tenant_id = ?3 AND id = ?4",
                params![line, fingerprint, tenant_id, id.as_str()],
            );
            match result {
                Err(e) if is_unique_violation(&e) => {
                    return Err(Conflict(
                        "this public key is already registered for another agent".into(),
                    )
                    .into());
                }
                other => {
                    other?;
                }
            }
        }
        if let Some(pw) = vnc_password {
            let sealed = (!pw.is_empty()).then(|| self.secret_box().seal(pw.as_bytes()));
            self.conn().execute(
                "UPDATE agents SET vnc_password = ?1 WHERE tenant_id = ?2 AND id = ?3",
                params![sealed, tenant_id, id.as_str()],
            )?;
        }
        self.agent(tenant_id, id)
    }

    /// Removes an agent; whether it existed.
    pub fn delete_agent(&self, tenant_id: TenantId, id: &AgentId) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM agents WHERE tenant_id = ?1 AND id = ?2",
            params![tenant_id, id.as_str()],
        )?;
        Ok(n > 0)
    }

    /// The VNC password for an agent: its own, else its tenant's. Decrypted; keep it short-lived.
    pub fn vnc_password(
        &self,
        tenant_id: TenantId,
        id: &AgentId,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let sealed: Option<Vec<u8>> = self
            .conn()
            .query_row(
                "SELECT COALESCE(a.vnc_password, t.vnc_password) FROM agents a
                 JOIN tenants t ON t.id = a.tenant_id WHERE a.tenant_id = ?1 AND a.id = ?2",
                params![tenant_id, id.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        sealed
            .map(|s| {
                self.secret_box()
                    .open(&s)
                    .context("a stored VNC password could not be opened (secret.key changed?)")
            })
            .transpose()
    }
}

impl Store {
    /// The tenants that have an agent with this id.
    pub fn tenants_with_agent(&self, id: &str) -> anyhow::Result<Vec<TenantId>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT tenant_id FROM agents WHERE id = ?1")?;
        let rows = stmt.query_map([id], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The agent a key belongs to, whatever its id (to tell "wrong agent" from "unknown key").
    pub fn agent_for_fingerprint(&self, fingerprint: &str) -> anyhow::Result<Option<AgentRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE key_fingerprint = ?1");
        let row = self
            .conn()
            .query_row(&sql, [fingerprint], from_row)
            .optional()?;
        row.map(record).transpose()
    }
}
