//! Enrolment tokens and enrolment: a workstation registers its own key with a token an admin
//! made, instead of an admin registering each key.
//!
//! A token is `pet_<id>_<secret>` (the shape of an API key): the id is public and names the token
//! in the audit; only the SHA-256 hash of the whole text is stored, compared in constant time.
//! One enrolment is one write transaction (SQLite's `BEGIN IMMEDIATE`, so a CLI process writing
//! the same file waits its turn; on PostgreSQL the store's write lock, so other nodes do too): the token's checks, the agent's insert (or key
//! replacement) and the use counted all happen or none does, so a token of N uses enrols at most
//! N agents however many try at once.

use passerelle_proto::enroll::{EnrollmentTokenInfo, IdPattern};
use passerelle_proto::ids::AgentId;

use super::sql::{self, Exec as _, OptionalExtension as _, Row, params};

use super::agents::{Invalid, is_unique_violation, parse_public_key, shadowed_login};
use super::{AgentRecord, Store, TenantId, now_ms, rfc3339};
use crate::secrets::{self, ApiKey, ENROLL_TOKEN_PREFIX};

/// Schema: the tokens; when an agent's last connection ended (the console shows offline agents
/// with it) and which token enrolled it.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    hash BLOB NOT NULL,
    uses INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    id_pattern TEXT,
    reenrol INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX enrollment_tokens_by_tenant ON enrollment_tokens(tenant_id, created_at);
ALTER TABLE agents ADD COLUMN last_seen INTEGER;
ALTER TABLE agents ADD COLUMN enrolled_by TEXT;
"#;

/// A token to make.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub uses: u32,
    /// ms since the epoch.
    pub expires_at: Option<i64>,
    pub id_pattern: Option<IdPattern>,
    pub reenrol: bool,
}

/// A token as stored (no secret, no hash).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub uses: u32,
    pub used: u32,
    pub expires_at: Option<i64>,
    pub id_pattern: Option<IdPattern>,
    pub reenrol: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl TokenRecord {
    /// As the API shows it.
    pub fn info(&self) -> EnrollmentTokenInfo {
        EnrollmentTokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            uses: self.uses,
            used: self.used,
            expires_at: self.expires_at.map(rfc3339),
            id_pattern: self.id_pattern.clone(),
            reenrol: self.reenrol,
            created_at: rfc3339(self.created_at),
            revoked_at: self.revoked_at.map(rfc3339),
        }
    }
}

/// Why an enrolment was refused. The API answers each with its own status and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Malformed, unknown, or a wrong secret: a guess (counted toward the address's lockout).
    #[error("unknown enrolment token")]
    Unknown,
    #[error("this enrolment token was revoked")]
    Revoked,
    #[error("this enrolment token expired at {0}")]
    Expired(String),
    #[error("this enrolment token has been used all {0} times")]
    Spent(u32),
    #[error("agent id {id} does not match this token's id_pattern {pattern}")]
    IdNotAllowed { id: AgentId, pattern: IdPattern },
    #[error("agent {0} is already registered, and this token does not allow re-enrolment")]
    IdTaken(AgentId),
    #[error("this public key is already registered for another agent of this tenant")]
    KeyTaken,
    #[error("{0}")]
    BadKey(String),
    #[error("this tenant has {0} agents, the most allowed (max_agents_per_tenant)")]
    Quota(usize),
}

/// A refusal, with the token it concerns when the token's id was found (to audit it in its
/// tenant).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub token: Option<(TenantId, String)>,
    pub why: Refused,
}

/// An enrolment done.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub agent: AgentRecord,
    pub token_id: String,
    pub token_name: String,
    /// An existing registration was enrolled again.
    pub reenrolled: bool,
    /// Its key was replaced by another (its live connection, if any, must end).
    pub key_changed: bool,
}

const TOKEN_COLUMNS: &str =
    "id, tenant_id, name, uses, used, expires_at, id_pattern, reenrol, created_at, revoked_at";

fn token_row(r: &Row) -> sql::Result<TokenRecord> {
    let pattern: Option<String> = r.get(6)?;
    let id_pattern = pattern
        .map(IdPattern::new)
        .transpose()
        .map_err(|e| sql::Error::conversion(6, e.to_string()))?;
    Ok(TokenRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        uses: r.get(3)?,
        used: r.get(4)?,
        expires_at: r.get(5)?,
        id_pattern,
        reenrol: r.get(7)?,
        created_at: r.get(8)?,
        revoked_at: r.get(9)?,
    })
}

impl Store {
    /// Makes a token; returns it and its secret text (shown once).
    pub fn create_enrollment_token(
        &self,
        tenant_id: TenantId,
        new: &NewToken,
    ) -> anyhow::Result<(TokenRecord, String)> {
        let secret = ApiKey::generate_with(ENROLL_TOKEN_PREFIX);
        self.conn()?.execute(
            "INSERT INTO enrollment_tokens (id, tenant_id, name, hash, uses, expires_at,
                                            id_pattern, reenrol, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                secret.id(),
                tenant_id,
                new.name.trim(),
                secret.hash().to_vec(),
                new.uses,
                new.expires_at,
                new.id_pattern.as_ref().map(IdPattern::as_str),
                new.reenrol,
                now_ms()
            ],
        )?;
        let record = self
            .enrollment_token(tenant_id, secret.id())?
            .ok_or_else(|| anyhow::anyhow!("token vanished after insert"))?;
        Ok((record, secret.expose().to_owned()))
    }

    /// One token of a tenant.
    pub fn enrollment_token(
        &self,
        tenant_id: TenantId,
        id: &str,
    ) -> anyhow::Result<Option<TokenRecord>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE tenant_id = ?1 AND id = ?2"
        );
        Ok(self
            .conn()?
            .query_row(&sql, params![tenant_id, id], token_row)
            .optional()?)
    }

    /// A tenant's tokens, newest first.
    pub fn enrollment_tokens(&self, tenant_id: TenantId) -> anyhow::Result<Vec<TokenRecord>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE tenant_id = ?1
             ORDER BY created_at DESC, id"
        );
        Ok(self.conn()?.query_map(&sql, [tenant_id], token_row)?)
    }

    /// Revokes a token (the agents it enrolled stay); `None` if the tenant has no such token.
    pub fn revoke_enrollment_token(
        &self,
        tenant_id: TenantId,
        id: &str,
    ) -> anyhow::Result<Option<TokenRecord>> {
        self.conn()?.execute(
            "UPDATE enrollment_tokens SET revoked_at = ?1
             WHERE tenant_id = ?2 AND id = ?3 AND revoked_at IS NULL",
            params![now_ms(), tenant_id, id],
        )?;
        self.enrollment_token(tenant_id, id)
    }

    /// Enrols agent `id` with `public_key` under the token `text` (see the module's header).
    /// `Ok(Err(_))` is a refusal; `Err(_)` a store failure.
    pub fn enroll(
        &self,
        text: &str,
        id: &AgentId,
        public_key: &str,
        max_agents: usize,
    ) -> anyhow::Result<Result<Enrollment, Refusal>> {
        let unknown = |token| {
            Ok(Err(Refusal {
                token,
                why: Refused::Unknown,
            }))
        };
        let Some((token_id, hash)) = secrets::parse_prefixed(ENROLL_TOKEN_PREFIX, text.trim())
        else {
            return unknown(None);
        };
        let done = {
            let mut conn = self.conn()?;
            let tx = conn.transaction_immediate()?;
            let sql = format!("SELECT {TOKEN_COLUMNS}, hash FROM enrollment_tokens WHERE id = ?1");
            let found = tx
                .query_row(&sql, [&token_id], |r| {
                    Ok((token_row(r)?, r.get::<Vec<u8>>(10)?))
                })
                .optional()?;
            let Some((token, stored)) = found else {
                return unknown(None);
            };
            let refuse = |why| {
                Ok(Err(Refusal {
                    token: Some((token.tenant_id, token.id.clone())),
                    why,
                }))
            };
            if !secrets::ct_eq(&stored, &hash) {
                return refuse(Refused::Unknown);
            }
            if token.revoked_at.is_some() {
                return refuse(Refused::Revoked);
            }
            if let Some(at) = token.expires_at.filter(|at| *at <= now_ms()) {
                return refuse(Refused::Expired(rfc3339(at)));
            }
            if token.used >= token.uses {
                return refuse(Refused::Spent(token.uses));
            }
            if let Some(pattern) = token.id_pattern.as_ref().filter(|p| !p.matches(id)) {
                return refuse(Refused::IdNotAllowed {
                    id: id.clone(),
                    pattern: pattern.clone(),
                });
            }
            let (line, fingerprint) = match parse_public_key(public_key) {
                Ok(parsed) => parsed,
                Err(Invalid(why)) => return refuse(Refused::BadKey(why)),
            };
            let tenant_id = token.tenant_id;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT key_fingerprint FROM agents WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant_id, id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            let shadowed = shadowed_login(&tx, tenant_id, id.as_str(), &fingerprint)?;
            let written = match &existing {
                Some(_) if !token.reenrol => return refuse(Refused::IdTaken(id.clone())),
                Some(_) => tx.execute(
                    "UPDATE agents SET public_key = ?1, key_fingerprint = ?2, shadowed = ?3,
                                       enrolled_by = ?4, ssh_ca = NULL
                     WHERE tenant_id = ?5 AND id = ?6",
                    params![
                        line,
                        fingerprint,
                        shadowed,
                        token.id,
                        tenant_id,
                        id.as_str()
                    ],
                ),
                None => {
                    let count = super::agents::agents_in(&tx, tenant_id)?;
                    if count >= max_agents {
                        return refuse(Refused::Quota(count));
                    }
                    tx.execute(
                        "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint,
                                             created_at, shadowed, enrolled_by)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            tenant_id,
                            id.as_str(),
                            line,
                            fingerprint,
                            now_ms(),
                            shadowed,
                            token.id
                        ],
                    )
                }
            };
            match written {
                Err(e) if is_unique_violation(&e) => return refuse(Refused::KeyTaken),
                other => other?,
            };
            let counted = tx.execute(
                "UPDATE enrollment_tokens SET used = used + 1 WHERE id = ?1 AND used < uses",
                [&token.id],
            )?;
            if counted != 1 {
                return refuse(Refused::Spent(token.uses));
            }
            tx.commit()?;
            (token, existing, fingerprint, tenant_id)
        };
        let (token, existing, fingerprint, tenant_id) = done;
        let agent = self
            .agent(tenant_id, id)?
            .ok_or_else(|| anyhow::anyhow!("agent vanished after enrolment"))?;
        Ok(Ok(Enrollment {
            agent,
            token_id: token.id,
            token_name: token.name,
            reenrolled: existing.is_some(),
            key_changed: existing.is_some_and(|old| old != fingerprint),
        }))
    }
}

#[cfg(test)]
#[path = "enroll_tests.rs"]
mod tests;
