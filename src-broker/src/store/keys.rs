//! API keys as objects: named, with an optional expiry, listed and revoked per tenant.
//!
//! Only the SHA-256 of a key is stored (see [`crate::secrets::ApiKey`]); its public id names it
//! in lists and in the audit. A revoked or expired key stops working at the next request, since
//! every request checks the store ([`Store::check_api_key`]). Revocation keeps the row, so that
//! the audit's key ids stay explainable.

use passerelle_proto::api::Role;
use passerelle_proto::api_keys::ApiKeyInfo;

use super::sql::{self, Exec as _, OptionalExtension as _, Row, params};

use super::{Store, TenantId, now_ms, rfc3339};
use crate::secrets::{self, ApiKey};

/// Why a presented API key was not accepted, for the throttle and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The whole key is right, but it was revoked: not a guess.
    Revoked { tenant: TenantId, id: String },
    /// The whole key is right, but it has expired: not a guess.
    Expired { tenant: TenantId, id: String },
    /// Malformed, unknown, or a known id with a wrong secret: a guess. `owner` is the tenant and
    /// id the text names, when that id exists.
    Unknown { owner: Option<(TenantId, String)> },
}

/// Why a key could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No key with that id in the tenant (another tenant's key is not found either).
    #[error("API key not found")]
    NotFound,
    /// It is the tenant's last active admin key: revoking it would leave nobody able to manage
    /// the tenant through the API.
    #[error(
        "this is the tenant's last active admin key: create another admin key first \
         (or revoke it with `passerelle api-key revoke` on the broker)"
    )]
    LastAdmin,
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sql::Error> for RevokeError {
    fn from(e: sql::Error) -> Self {
        Self::Store(e.into())
    }
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now(ApiKeyInfo),
    /// It was already revoked; nothing changed.
    Already(ApiKeyInfo),
}

const COLUMNS: &str = "id, name, role, created_at, expires_at, revoked_at";

type RawKey = (String, String, String, i64, Option<i64>, Option<i64>);

fn raw(r: &Row) -> sql::Result<RawKey> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn info((id, name, role, created, expires, revoked): RawKey, now: i64) -> ApiKeyInfo {
    ApiKeyInfo {
        active: revoked.is_none() && expires.is_none_or(|e| e > now),
        id,
        name,
        // Roles are written by this code only; an unknown one reads as the least powerful.
        role: Role::parse(&role).unwrap_or(Role::Auditor),
        created_at: rfc3339(created),
        expires_at: expires.map(rfc3339),
        revoked_at: revoked.map(rfc3339),
    }
}

impl Store {
    /// Creates a named API key in a tenant, expiring at `expires_at` (ms since the epoch) if
    /// given. Returns what lists show and the secret text (shown once, never stored).
    pub fn create_named_api_key(
        &self,
        tenant_id: TenantId,
        role: Role,
        name: &str,
        expires_at: Option<i64>,
    ) -> anyhow::Result<(ApiKeyInfo, String)> {
        let key = ApiKey::generate();
        let now = now_ms();
        self.conn()?.execute(
            "INSERT INTO api_keys (id, tenant_id, role, hash, created_at, name, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.id(),
                tenant_id,
                role.as_str(),
                key.hash().to_vec(),
                now,
                name,
                expires_at
            ],
        )?;
        let row = (
            key.id().to_owned(),
            name.to_owned(),
            role.as_str().to_owned(),
            now,
            expires_at,
            None,
        );
        Ok((info(row, now), key.expose().to_owned()))
    }

    /// A tenant's keys, revoked and expired ones included, oldest first.
    pub fn api_keys(&self, tenant_id: TenantId) -> anyhow::Result<Vec<ApiKeyInfo>> {
        let now = now_ms();
        let rows = self.conn()?.query_map(
            &format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at, id"),
            [tenant_id],
            raw,
        )?;
        Ok(rows.into_iter().map(|r| info(r, now)).collect())
    }

    /// One key of a tenant.
    pub fn api_key_info(
        &self,
        tenant_id: TenantId,
        id: &str,
    ) -> anyhow::Result<Option<ApiKeyInfo>> {
        let row = self
            .conn()?
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = ?1 AND id = ?2"),
                params![tenant_id, id],
                raw,
            )
            .optional()?;
        Ok(row.map(|r| info(r, now_ms())))
    }

    /// Revokes a tenant's key. With `keep_last_admin`, refuses to revoke the tenant's last
    /// active admin key (the API's rule; the command line may). Checked and done under one
    /// lock, so two revocations at once cannot both pass the check.
    pub fn revoke_api_key(
        &self,
        tenant_id: TenantId,
        id: &str,
        keep_last_admin: bool,
    ) -> Result<Revoked, RevokeError> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let conn = conn.transaction_immediate()?;
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = ?1 AND id = ?2"),
                params![tenant_id, id],
                raw,
            )
            .optional()?
            .ok_or(RevokeError::NotFound)?;
        let before = info(row, now);
        if before.revoked_at.is_some() {
            return Ok(Revoked::Already(before));
        }
        if keep_last_admin && before.active && before.role == Role::Admin {
            let admins: i64 = conn.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE tenant_id = ?1 AND role = 'admin'
                 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
                params![tenant_id, now],
                |r| r.get(0),
            )?;
            if admins <= 1 {
                return Err(RevokeError::LastAdmin);
            }
        }
        conn.execute(
            "UPDATE api_keys SET revoked_at = ?1 WHERE tenant_id = ?2 AND id = ?3",
            params![now, tenant_id, id],
        )?;
        conn.commit()?;
        Ok(Revoked::Now(ApiKeyInfo {
            active: false,
            revoked_at: Some(rfc3339(now)),
            ..before
        }))
    }

    /// Why `text` is not a valid key (call it after [`Store::check_api_key`] said no). A
    /// revoked or expired key counts as such only when its whole secret is right; anything else
    /// is [`KeyRefusal::Unknown`].
    pub fn refused_api_key(&self, text: &str) -> anyhow::Result<KeyRefusal> {
        let Some((id, hash)) = secrets::parse_api_key(text) else {
            return Ok(KeyRefusal::Unknown { owner: None });
        };
        // (tenant, hash, expires_at, revoked_at)
        type KeyRow = (TenantId, Vec<u8>, Option<i64>, Option<i64>);
        let row: Option<KeyRow> = self
            .conn()?
            .query_row(
                "SELECT tenant_id, hash, expires_at, revoked_at FROM api_keys WHERE id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((tenant, stored, expires, revoked)) = row else {
            return Ok(KeyRefusal::Unknown { owner: None });
        };
        if !secrets::ct_eq(&stored, &hash) {
            return Ok(KeyRefusal::Unknown {
                owner: Some((tenant, id)),
            });
        }
        if revoked.is_some() {
            return Ok(KeyRefusal::Revoked { tenant, id });
        }
        if expires.is_some_and(|e| e <= now_ms()) {
            return Ok(KeyRefusal::Expired { tenant, id });
        }
        // Valid after all (e.g. it expired between the two lookups' clocks): call it unknown
        // rather than guess; the caller answers 401 either way.
        Ok(KeyRefusal::Unknown {
            owner: Some((tenant, id)),
        })
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::TenantName;

    use super::*;

    fn tenants_in(store: &Store, tenants: &[&str]) -> Vec<TenantId> {
        tenants
            .iter()
            .map(|t| {
                let name = TenantName::new(*t).unwrap();
                store.create_tenant(&name).unwrap();
                store.tenant_id(&name).unwrap().unwrap()
            })
            .collect()
    }

    #[test]
    fn keys_are_listed_per_tenant_and_revoked_at_once() {
        crate::store::test_backends::each(|store| {
            let t = tenants_in(store, &["a", "b"]);
            let (ci, ci_text) = store
                .create_named_api_key(t[0], Role::Helpdesk, "ci", None)
                .unwrap();
            store
                .create_named_api_key(t[1], Role::Admin, "other", None)
                .unwrap();
            assert!(ci.active && ci.name == "ci" && ci.role == Role::Helpdesk);
            assert_eq!(store.api_keys(t[0]).unwrap(), vec![ci.clone()]);
            assert!(store.check_api_key(&ci_text).unwrap().is_some());
            // Another tenant's key is not found.
            assert!(matches!(
                store.revoke_api_key(t[1], &ci.id, true),
                Err(RevokeError::NotFound)
            ));
            let Revoked::Now(after) = store.revoke_api_key(t[0], &ci.id, true).unwrap() else {
                panic!("revoked now");
            };
            assert!(!after.active && after.revoked_at.is_some());
            assert!(store.check_api_key(&ci_text).unwrap().is_none());
            assert_eq!(
                store.refused_api_key(&ci_text).unwrap(),
                KeyRefusal::Revoked {
                    tenant: t[0],
                    id: ci.id.clone()
                }
            );
            assert!(matches!(
                store.revoke_api_key(t[0], &ci.id, true).unwrap(),
                Revoked::Already(_)
            ));
            // A wrong secret for a known id is a guess, whatever the key's state.
            let mut forged = ci_text.clone();
            forged.pop();
            forged.push(if ci_text.ends_with('A') { 'B' } else { 'A' });
            assert_eq!(
                store.refused_api_key(&forged).unwrap(),
                KeyRefusal::Unknown {
                    owner: Some((t[0], ci.id))
                }
            );
            assert_eq!(
                store.refused_api_key("psk_nonsense").unwrap(),
                KeyRefusal::Unknown { owner: None }
            );
        });
    }

    #[test]
    fn expired_keys_fail_and_say_so() {
        crate::store::test_backends::each(|store| {
            let t = tenants_in(store, &["a"]);
            let past = now_ms() - 1;
            let (info, text) = store
                .create_named_api_key(t[0], Role::Auditor, "old", Some(past))
                .unwrap();
            assert!(!info.active);
            assert!(store.check_api_key(&text).unwrap().is_none());
            assert!(matches!(
                store.refused_api_key(&text).unwrap(),
                KeyRefusal::Expired { .. }
            ));
            let (_, later) = store
                .create_named_api_key(t[0], Role::Auditor, "new", Some(now_ms() + 60_000))
                .unwrap();
            assert!(store.check_api_key(&later).unwrap().is_some());
        });
    }

    #[test]
    fn the_last_active_admin_key_is_kept_unless_asked() {
        crate::store::test_backends::each(|store| {
            let t = tenants_in(store, &["a"]);
            let (first, _) = store
                .create_named_api_key(t[0], Role::Admin, "first", None)
                .unwrap();
            // An expired admin key does not count as another admin.
            store
                .create_named_api_key(t[0], Role::Admin, "gone", Some(now_ms() - 1))
                .unwrap();
            assert!(matches!(
                store.revoke_api_key(t[0], &first.id, true),
                Err(RevokeError::LastAdmin)
            ));
            let (second, _) = store
                .create_named_api_key(t[0], Role::Admin, "second", None)
                .unwrap();
            assert!(matches!(
                store.revoke_api_key(t[0], &first.id, true).unwrap(),
                Revoked::Now(_)
            ));
            assert!(matches!(
                store.revoke_api_key(t[0], &second.id, true),
                Err(RevokeError::LastAdmin)
            ));
            // The command line may.
            assert!(matches!(
                store.revoke_api_key(t[0], &second.id, false).unwrap(),
                Revoked::Now(_)
            ));
        });
    }

    #[test]
    fn keys_made_before_names_existed_list_with_an_empty_name() {
        crate::store::test_backends::each(|store| {
            let t = tenants_in(store, &["a"]);
            let text = store
                .create_api_key(&TenantName::new("a").unwrap(), Role::Admin)
                .unwrap();
            let keys = store.api_keys(t[0]).unwrap();
            assert_eq!(keys.len(), 1);
            assert_eq!((keys[0].name.as_str(), keys[0].active), ("", true));
            assert!(text.contains(&keys[0].id));
        });
    }

    #[test]
    fn a_store_from_before_key_names_and_frame_ancestors_opens_and_keeps_its_keys() {
        // main's last schema before this branch's migrations (key names and expiry, then the
        // tenants' frame ancestors), with a tenant and an admin key in it.
        let before = crate::store::MIGRATIONS
            .iter()
            .position(|m| m.contains("ADD COLUMN expires_at"))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = crate::secrets::ApiKey::generate();
        {
            let conn = rusqlite::Connection::open(dir.path().join("passerelle.db")).unwrap();
            for m in &crate::store::MIGRATIONS[..before] {
                conn.execute_batch(m.sqlite()).unwrap();
            }
            conn.execute_batch(&format!(
                "INSERT INTO tenants (id, name, created_at) VALUES (1, 'one', 0);
                 PRAGMA user_version = {before};"
            ))
            .unwrap();
            conn.execute(
                "INSERT INTO api_keys (id, tenant_id, role, hash, created_at)
                 VALUES (?1, 1, 'admin', ?2, 5)",
                rusqlite::params![key.id(), key.hash().to_vec()],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (tenant, id, role) = store.check_api_key(key.expose()).unwrap().unwrap();
        assert_eq!((tenant, id.as_str(), role), (1, key.id(), Role::Admin));
        let keys = store.api_keys(1).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].name.as_str(), keys[0].active), ("", true));
        assert!(keys[0].expires_at.is_none());
        assert!(store.tenant_info(1).unwrap().frame_ancestors.is_empty());
    }
}
