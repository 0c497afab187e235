//! Registered agents: their public keys and sealed VNC passwords.
//!
//! A key is unique within a tenant (one key, one agent). Across tenants nothing is unique, so
//! that registering a key says nothing of other tenants; what must stay unambiguous is the SSH
//! login, (agent id, key), which names at most one *active* registration. A registration whose
//! (id, key) is already active in another tenant is stored *shadowed*: it is listed like any
//! agent but never authenticates (the first registration keeps the workstation; nobody can take
//! it over, or lock it out, by registering its public key too), and its tenant is not told why.

use super::sql::{self, Exec, OptionalExtension as _, Row, params};
use anyhow::Context as _;
use passerelle_proto::ids::AgentId;
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
    /// When its last connection ended (ms since the epoch), once it has connected.
    pub last_seen: Option<i64>,
    /// The enrolment token it registered itself with, if it did.
    pub enrolled_by: Option<String>,
    /// Certificate-based: the fingerprint of the CA that signed its certificate (it signs in
    /// with a certificate only).
    pub ssh_ca: Option<String>,
}

pub(super) const COLUMNS: &str = "tenant_id, id, public_key, key_fingerprint, \
     vnc_password IS NOT NULL, created_at, rdp_username, rdp_password IS NOT NULL, \
     rdp_cert_sha256, rdp_cert_pinned_at, last_seen, enrolled_by, ssh_ca";

/// What a bare key signs in as ([`Store::key_login`]).
#[derive(Debug, Clone)]
pub enum KeyLogin {
    Agent(AgentRecord),
    /// Certificate-based agents (tenant, id) whose key it is: refused without a certificate.
    CertificateOnly(Vec<(TenantId, AgentId)>),
    Unknown,
}

/// A row of [`COLUMNS`], before its id is checked.
pub(super) struct RawRow {
    tenant_id: TenantId,
    id: String,
    public_key: String,
    pub(super) key_fingerprint: String,
    has_vnc_password: bool,
    created_at: i64,
    rdp_username: Option<String>,
    has_rdp_password: bool,
    rdp_cert_sha256: Option<String>,
    rdp_cert_pinned_at: Option<i64>,
    last_seen: Option<i64>,
    enrolled_by: Option<String>,
    pub(super) ssh_ca: Option<String>,
}

pub(super) fn from_row(r: &Row) -> sql::Result<RawRow> {
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
        last_seen: r.get(10)?,
        enrolled_by: r.get(11)?,
        ssh_ca: r.get(12)?,
    })
}

pub(super) fn record(row: RawRow) -> anyhow::Result<AgentRecord> {
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
        last_seen: row.last_seen,
        enrolled_by: row.enrolled_by,
        ssh_ca: row.ssh_ca,
    })
}

/// Parses an OpenSSH public key line; returns (canonical line without comment, SHA256 fingerprint).
pub(super) fn parse_public_key(text: &str) -> Result<(String, String), Invalid> {
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

/// How many agents a tenant has, on `exec` (a transaction's count is its own).
pub(super) fn agents_in(exec: &impl sql::Exec, tenant_id: TenantId) -> sql::Result<usize> {
    let n: i64 = exec.query_row(
        "SELECT COUNT(*) FROM agents WHERE tenant_id = ?1",
        [tenant_id],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub(super) fn is_unique_violation(e: &sql::Error) -> bool {
    e.is_unique_violation()
}

impl Store {
    /// Registers an agent. Conflicts (409): the id exists in the tenant, or the key belongs to
    /// another agent of the tenant. Nothing about other tenants changes the answer.
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
        let result = {
            // One write transaction for the check and the insert: no other registration comes
            // between (from any node, on PostgreSQL).
            let mut conn = self.conn()?;
            let tx = conn.transaction_immediate()?;
            shadowed_login(&tx, tenant_id, id.as_str(), &fingerprint).and_then(|shadowed| {
                tx.execute(
                    "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint, vnc_password,
                                         created_at, shadowed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        tenant_id,
                        id.as_str(),
                        line,
                        fingerprint,
                        sealed,
                        now_ms(),
                        shadowed
                    ],
                )?;
                tx.commit()
            })
        };
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                let taken = self.agent(tenant_id, id)?.is_some();
                let what = if taken {
                    format!("agent {id} is already registered")
                } else {
                    "this public key is already registered for another agent of this tenant"
                        .to_owned()
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
            .conn()?
            .query_row(&sql, params![tenant_id, id.as_str()], from_row)
            .optional()?;
        row.map(record).transpose()
    }

    /// A tenant's agents, by id.
    pub fn agents(&self, tenant_id: TenantId) -> anyhow::Result<Vec<AgentRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM agents WHERE tenant_id = ?1 ORDER BY id");
        let rows = self.conn()?.query_map(&sql, [tenant_id], from_row)?;
        rows.into_iter().map(record).collect()
    }

    /// The agent that SSH user `user` presenting a key with this fingerprint is, if any.
    pub fn agent_for_key(
        &self,
        user: &str,
        fingerprint: &str,
    ) -> anyhow::Result<Option<AgentRecord>> {
        Ok(match self.key_login(user, fingerprint)? {
            KeyLogin::Agent(record) => Some(record),
            KeyLogin::CertificateOnly(_) | KeyLogin::Unknown => None,
        })
    }

    /// What a signed request of SSH user `user` with a key of this fingerprint is, in one
    /// indexed query: the agent it logs in as (at most one active registration of that id and
    /// key), or the certificate-based agents whose bare key it is (they sign in with
    /// certificates only), or nobody.
    pub fn key_login(&self, user: &str, fingerprint: &str) -> anyhow::Result<KeyLogin> {
        let sql = format!(
            "SELECT {COLUMNS} FROM agents WHERE id = ?1 AND key_fingerprint = ?2 AND shadowed = 0
             LIMIT 17"
        );
        let rows = self
            .conn()?
            .query_map(&sql, params![user, fingerprint], from_row)?;
        let mut certificate_only = Vec::new();
        for row in rows {
            let row = record(row)?;
            if row.ssh_ca.is_none() {
                return Ok(KeyLogin::Agent(row));
            }
            certificate_only.push((row.tenant_id, row.id));
        }
        Ok(if certificate_only.is_empty() {
            KeyLogin::Unknown
        } else {
            KeyLogin::CertificateOnly(certificate_only)
        })
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
            let result = {
                let mut conn = self.conn()?;
                let tx = conn.transaction_immediate()?;
                shadowed_login(&tx, tenant_id, id.as_str(), &fingerprint).and_then(|shadowed| {
                    tx.execute(
                        "UPDATE agents SET public_key = ?1, key_fingerprint = ?2, shadowed = ?3,
                                           ssh_ca = NULL
                         WHERE tenant_id = ?4 AND id = ?5",
                        params![line, fingerprint, shadowed, tenant_id, id.as_str()],
                    )?;
                    tx.commit()
                })
            };
            match result {
                Err(e) if is_unique_violation(&e) => {
                    return Err(Conflict(
                        "this public key is already registered for another agent of this tenant"
                            .into(),
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
            self.conn()?.execute(
                "UPDATE agents SET vnc_password = ?1 WHERE tenant_id = ?2 AND id = ?3",
                params![sealed, tenant_id, id.as_str()],
            )?;
        }
        self.agent(tenant_id, id)
    }

    /// How many agents a tenant has.
    pub fn agent_count(&self, tenant_id: TenantId) -> anyhow::Result<usize> {
        Ok(agents_in(&self.conn()?, tenant_id)?)
    }

    /// Removes an agent; whether it existed.
    pub fn delete_agent(&self, tenant_id: TenantId, id: &AgentId) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
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
            .conn()?
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

/// Whether (`?1` id, `?2` key) is an active login in a tenant other than `?3`: a new
/// registration of it is then shadowed (see the module's header).
pub(super) const ACTIVE_ELSEWHERE: &str = "EXISTS(SELECT 1 FROM agents WHERE id = ?1
    AND key_fingerprint = ?2 AND shadowed = 0 AND ssh_ca IS NULL AND tenant_id != ?3)";

/// Whether (id, key) is already an active login in another tenant ([`ACTIVE_ELSEWHERE`]).
pub(super) fn shadowed_login(
    conn: &impl Exec,
    tenant_id: TenantId,
    id: &str,
    fingerprint: &str,
) -> sql::Result<bool> {
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {ACTIVE_ELSEWHERE}"));
    conn.query_row(&SQL, params![id, fingerprint, tenant_id], |r| r.get(0))
}

/// Where a refused SSH key offer is audited, and what its event may say there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferTarget {
    /// The key is registered for `owner` in this tenant (whatever the id it was offered for).
    KeyOwner { tenant_id: TenantId, owner: AgentId },
    /// The key is registered nowhere; this tenant has an agent with the id it was offered for.
    AgentId { tenant_id: TenantId },
}

/// At most this many tenants hear of one refused offer.
const MAX_OFFER_TARGETS: usize = 16;

impl Store {
    /// The tenants a refused offer of key `fingerprint` for SSH user `user` concerns: the
    /// tenants where the key is registered, else those with an agent named `user`. One indexed
    /// query. Each tenant is told only of its own registrations.
    pub fn offer_targets(&self, user: &str, fingerprint: &str) -> anyhow::Result<Vec<OfferTarget>> {
        let rows: Vec<(TenantId, String, bool)> = self.conn()?.query_map(
            "SELECT tenant_id, id, key_fingerprint = ?2 FROM agents
             WHERE key_fingerprint = ?2 OR id = ?1 LIMIT 64",
            params![user, fingerprint],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let owners: Vec<OfferTarget> = rows
            .iter()
            .filter(|(_, _, owns)| *owns)
            .filter_map(|(tenant_id, id, _)| {
                Some(OfferTarget::KeyOwner {
                    tenant_id: *tenant_id,
                    owner: AgentId::new(id).ok()?,
                })
            })
            .take(MAX_OFFER_TARGETS)
            .collect();
        if !owners.is_empty() {
            return Ok(owners);
        }
        Ok(rows
            .iter()
            .map(|(tenant_id, _, _)| OfferTarget::AgentId {
                tenant_id: *tenant_id,
            })
            .take(MAX_OFFER_TARGETS)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_fixtures::{KEY_A, KEY_B, tenants_one_two};

    fn fp(key: &str) -> String {
        parse_public_key(key).unwrap().1
    }

    #[test]
    fn a_key_in_another_tenant_is_no_conflict_and_cannot_take_the_login() {
        crate::store::test_backends::each(|store| {
            let (one, two) = tenants_one_two(store);
            let pc = AgentId::new("pc-1").unwrap();
            store.create_agent(one, &pc, KEY_A, None).unwrap();
            // Tenant two registers the same key under the same id: not refused (a refusal would
            // tell tenant two that another tenant has that key), but it does not get the login.
            store.create_agent(two, &pc, KEY_A, None).unwrap();
            let login = store.agent_for_key("pc-1", &fp(KEY_A)).unwrap().unwrap();
            assert_eq!(login.tenant_id, one);
            // Under different ids, both registrations of one key log in, each as its own agent.
            store
                .create_agent(two, &AgentId::new("pc-5").unwrap(), KEY_B, None)
                .unwrap();
            store
                .create_agent(one, &AgentId::new("pc-6").unwrap(), KEY_B, None)
                .unwrap();
            let five = store.agent_for_key("pc-5", &fp(KEY_B)).unwrap().unwrap();
            let six = store.agent_for_key("pc-6", &fp(KEY_B)).unwrap().unwrap();
            assert_eq!((five.tenant_id, six.tenant_id), (two, one));
            // Within a tenant, one key is one agent: that conflict is the tenant's own business.
            let err = store
                .create_agent(one, &AgentId::new("pc-3").unwrap(), KEY_A, None)
                .unwrap_err();
            assert!(err.downcast_ref::<Conflict>().is_some(), "{err}");
            // Once tenant one lets go, the shadowed registration does not wake up on its own.
            store.delete_agent(one, &pc).unwrap();
            assert!(store.agent_for_key("pc-1", &fp(KEY_A)).unwrap().is_none());
            // A fresh registration of that login is active again.
            store.create_agent(one, &pc, KEY_A, None).unwrap();
            assert!(store.agent_for_key("pc-1", &fp(KEY_A)).unwrap().is_some());
        });
    }

    #[test]
    fn the_key_migration_keeps_the_agents_of_older_stores() {
        // Stores of main before this migration (version 2) and from before the audit's api_key
        // column (version 1) both come through.
        for version in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            {
                let conn = rusqlite::Connection::open(dir.path().join("passerelle.db")).unwrap();
                for m in &crate::store::MIGRATIONS[..version] {
                    conn.execute_batch(m.sqlite()).unwrap();
                }
                conn.execute_batch(&format!(
                    "INSERT INTO tenants (id, name, created_at) VALUES (1, 'one', 0);
                     PRAGMA user_version = {version};"
                ))
                .unwrap();
                let (line, fingerprint) = parse_public_key(KEY_A).unwrap();
                conn.execute(
                    "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint, vnc_password,
                                         created_at) VALUES (1, 'pc-1', ?1, ?2, x'0102', 7)",
                    rusqlite::params![line, fingerprint],
                )
                .unwrap();
            }
            let store = Store::open(dir.path()).unwrap();
            let agent = store.agent_for_key("pc-1", &fp(KEY_A)).unwrap().unwrap();
            assert_eq!(
                (agent.tenant_id, agent.created_at),
                (1, 7),
                "from {version}"
            );
            assert!(agent.has_vnc_password);
            assert!(!store.tenant_info(1).unwrap().recording_required);
        }
    }

    #[test]
    fn refused_offers_are_routed_to_the_key_owner_or_the_named_agents_tenants() {
        crate::store::test_backends::each(|store| {
            let (one, two) = tenants_one_two(store);
            let pc = AgentId::new("pc-1").unwrap();
            store.create_agent(one, &pc, KEY_A, None).unwrap();
            store.create_agent(two, &pc, KEY_B, None).unwrap();
            // Tenant one's key offered for pc-7: tenant one only.
            assert_eq!(
                store.offer_targets("pc-7", &fp(KEY_A)).unwrap(),
                vec![OfferTarget::KeyOwner {
                    tenant_id: one,
                    owner: pc.clone()
                }]
            );
            // Tenant one's key offered for pc-1 (which tenant two also has): tenant one only.
            assert_eq!(store.offer_targets("pc-1", &fp(KEY_A)).unwrap().len(), 1);
            // An unknown key for pc-1: both tenants with a pc-1, neither told of the other.
            let unknown = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
            let mut targets = store.offer_targets("pc-1", unknown).unwrap();
            targets.sort_by_key(|t| match t {
                OfferTarget::AgentId { tenant_id } | OfferTarget::KeyOwner { tenant_id, .. } => {
                    *tenant_id
                }
            });
            assert_eq!(
                targets,
                vec![
                    OfferTarget::AgentId { tenant_id: one },
                    OfferTarget::AgentId { tenant_id: two }
                ]
            );
            assert!(store.offer_targets("pc-none", unknown).unwrap().is_empty());
        });
    }
}
