//! A tenant's OpenID Connect settings for console sign-in, and the console's browser sessions.
//!
//! The client secret is sealed with the store's [`crate::secrets::SecretBox`] like other stored
//! passwords. A browser session's cookie is `pcs_<id>_<secret>` (the shape of an API key): the
//! id is public and names the session in the audit, only the SHA-256 of the whole text is kept,
//! compared in constant time. Sessions expire; expired rows are deleted as new ones are made.
//! Removing a tenant's settings ends its browser sessions.

use std::collections::BTreeMap;

use passerelle_proto::api::Role;

use super::sql::{Exec as _, OptionalExtension as _, params};
use super::{Store, TenantId, now_ms};
use crate::secrets::{self, ApiKey};

/// Schema: the settings (one row per tenant) and the browser sessions.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE oidc_settings (
    tenant_id INTEGER PRIMARY KEY REFERENCES tenants(id),
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret BLOB NOT NULL,
    role_claim TEXT NOT NULL,
    roles TEXT NOT NULL,
    display_name TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    hash BLOB NOT NULL,
    subject TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions(expires_at);
"#;

/// What console session cookies start with.
pub(crate) const SESSION_PREFIX: &str = "pcs_";

/// A tenant's provider settings, the secret opened.
#[derive(Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub role_claim: String,
    pub roles: BTreeMap<String, Role>,
    pub display_name: String,
    pub updated_at: i64,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("role_claim", &self.role_claim)
            .finish_non_exhaustive()
    }
}

/// A signed-in person's browser session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Public id (12 hex digits).
    pub id: String,
    pub tenant_id: TenantId,
    /// The provider's `sub`.
    pub subject: String,
    /// The name recorded as the operator.
    pub name: String,
    pub role: Role,
    /// ms since the epoch.
    pub expires_at: i64,
}

impl Store {
    /// The tenant's settings, if it has any (`None` also when the secret no longer opens).
    pub fn oidc_settings(&self, tenant_id: TenantId) -> anyhow::Result<Option<OidcSettings>> {
        type Raw = (String, String, Vec<u8>, String, String, String, i64);
        let row: Option<Raw> = self
            .conn()?
            .query_row(
                "SELECT issuer, client_id, client_secret, role_claim, roles, display_name, updated_at
                 FROM oidc_settings WHERE tenant_id = ?1",
                [tenant_id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((issuer, client_id, sealed, role_claim, roles, display_name, updated_at)) = row
        else {
            return Ok(None);
        };
        let Some(secret) = self.secret_box().open(&sealed) else {
            tracing::warn!(tenant_id, "the tenant's OIDC client secret does not open");
            return Ok(None);
        };
        Ok(Some(OidcSettings {
            issuer,
            client_id,
            client_secret: String::from_utf8_lossy(&secret).into_owned(),
            role_claim,
            roles: serde_json::from_str(&roles)?,
            display_name,
            updated_at,
        }))
    }

    /// Replaces the tenant's settings.
    pub fn set_oidc_settings(&self, tenant_id: TenantId, s: &OidcSettings) -> anyhow::Result<()> {
        let sealed = self.secret_box().seal(s.client_secret.as_bytes());
        let roles = serde_json::to_string(&s.roles)?;
        self.conn()?.execute(
            "INSERT INTO oidc_settings
                 (tenant_id, issuer, client_id, client_secret, role_claim, roles, display_name, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(tenant_id) DO UPDATE SET issuer = excluded.issuer,
                 client_id = excluded.client_id, client_secret = excluded.client_secret,
                 role_claim = excluded.role_claim, roles = excluded.roles,
                 display_name = excluded.display_name, updated_at = excluded.updated_at",
            params![
                tenant_id,
                s.issuer,
                s.client_id,
                sealed,
                s.role_claim,
                roles,
                s.display_name,
                s.updated_at
            ],
        )?;
        Ok(())
    }

    /// Removes the tenant's settings and ends its browser sessions; whether there were settings.
    pub fn delete_oidc_settings(&self, tenant_id: TenantId) -> anyhow::Result<bool> {
        let conn = self.conn()?;
        conn.execute(
            "DELETE FROM console_sessions WHERE tenant_id = ?1",
            [tenant_id],
        )?;
        let n = conn.execute(
            "DELETE FROM oidc_settings WHERE tenant_id = ?1",
            [tenant_id],
        )?;
        Ok(n > 0)
    }

    /// Opens a browser session for `ttl_ms`; the session and the cookie's secret text (shown
    /// to the browser once). Deletes expired sessions on the way.
    pub fn create_console_session(
        &self,
        tenant_id: TenantId,
        subject: &str,
        name: &str,
        role: Role,
        ttl_ms: i64,
    ) -> anyhow::Result<(ConsoleSession, String)> {
        let now = now_ms();
        let key = ApiKey::generate_with(SESSION_PREFIX);
        let expires_at = now.saturating_add(ttl_ms);
        let conn = self.conn()?;
        conn.execute("DELETE FROM console_sessions WHERE expires_at <= ?1", [now])?;
        conn.execute(
            "INSERT INTO console_sessions
                 (id, tenant_id, hash, subject, name, role, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                key.id(),
                tenant_id,
                key.hash().to_vec(),
                subject,
                name,
                role.as_str(),
                now,
                expires_at
            ],
        )?;
        let session = ConsoleSession {
            id: key.id().to_owned(),
            tenant_id,
            subject: subject.to_owned(),
            name: name.to_owned(),
            role,
            expires_at,
        };
        Ok((session, key.expose().to_owned()))
    }

    /// The live session a cookie names: `None` when malformed, unknown, a wrong secret, or
    /// expired.
    pub fn console_session(&self, text: &str) -> anyhow::Result<Option<ConsoleSession>> {
        let Some((id, hash)) = secrets::parse_prefixed(SESSION_PREFIX, text) else {
            return Ok(None);
        };
        type Raw = (TenantId, Vec<u8>, String, String, String, i64);
        let row: Option<Raw> = self
            .conn()?
            .query_row(
                "SELECT tenant_id, hash, subject, name, role, expires_at
                 FROM console_sessions WHERE id = ?1",
                [id.as_str()],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((tenant_id, stored, subject, name, role, expires_at)) = row else {
            return Ok(None);
        };
        if !secrets::ct_eq(&stored, &hash) || expires_at <= now_ms() {
            return Ok(None);
        }
        // Roles are written by this code only; an unknown one reads as the least powerful.
        let role = Role::parse(&role).unwrap_or(Role::Auditor);
        Ok(Some(ConsoleSession {
            id,
            tenant_id,
            subject,
            name,
            role,
            expires_at,
        }))
    }

    /// Ends the session a cookie names (sign-out); the session ended, if it was live.
    pub fn end_console_session(&self, text: &str) -> anyhow::Result<Option<ConsoleSession>> {
        let Some(session) = self.console_session(text)? else {
            return Ok(None);
        };
        self.conn()?.execute(
            "DELETE FROM console_sessions WHERE id = ?1",
            [session.id.as_str()],
        )?;
        Ok(Some(session))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use passerelle_proto::api::Role;
    use passerelle_proto::ids::TenantName;

    use super::*;

    fn tenant(store: &Store, name: &str) -> TenantId {
        let name = TenantName::new(name).unwrap();
        store.create_tenant(&name).unwrap();
        store.tenant_id(&name).unwrap().unwrap()
    }

    fn settings() -> OidcSettings {
        OidcSettings {
            issuer: "https://login.example".into(),
            client_id: "passerelle".into(),
            client_secret: "s3cret".into(),
            role_claim: "groups".into(),
            roles: BTreeMap::from([("it".to_owned(), Role::Helpdesk)]),
            display_name: "Example".into(),
            updated_at: 1,
        }
    }

    #[test]
    fn settings_are_per_tenant_sealed_and_removable() {
        crate::store::test_backends::each(|store| {
            let (a, b) = (tenant(store, "a"), tenant(store, "b"));
            assert!(store.oidc_settings(a).unwrap().is_none());
            store.set_oidc_settings(a, &settings()).unwrap();
            let got = store.oidc_settings(a).unwrap().unwrap();
            assert_eq!(got.client_secret, "s3cret");
            assert_eq!(got.roles.get("it"), Some(&Role::Helpdesk));
            assert!(store.oidc_settings(b).unwrap().is_none());
            // Replaced in place.
            let mut changed = settings();
            changed.client_id = "other".into();
            store.set_oidc_settings(a, &changed).unwrap();
            assert_eq!(store.oidc_settings(a).unwrap().unwrap().client_id, "other");
            // The secret is not stored in clear.
            let raw: Vec<u8> = store
                .conn()
                .unwrap()
                .query_row(
                    "SELECT client_secret FROM oidc_settings WHERE tenant_id = ?1",
                    [a],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(!raw.windows(6).any(|w| w == b"s3cret"));
            let (_, cookie) = store
                .create_console_session(a, "sub", "Alice", Role::Admin, 60_000)
                .unwrap();
            assert!(store.delete_oidc_settings(a).unwrap());
            assert!(!store.delete_oidc_settings(a).unwrap());
            assert!(store.oidc_settings(a).unwrap().is_none());
            assert_eq!(store.console_session(&cookie).unwrap(), None);
        });
    }

    #[test]
    fn console_sessions_check_secret_and_expiry_and_end() {
        crate::store::test_backends::each(|store| {
            let t = tenant(store, "t");
            let (s, cookie) = store
                .create_console_session(t, "sub-1", "Alice Martin", Role::Helpdesk, 60_000)
                .unwrap();
            assert!(cookie.starts_with(SESSION_PREFIX) && cookie.contains(&s.id));
            assert_eq!(store.console_session(&cookie).unwrap(), Some(s.clone()));
            // A wrong secret with the right id, garbage: nobody.
            let mut wrong = cookie.clone();
            let last = wrong.pop().unwrap();
            wrong.push(if last == 'A' { 'B' } else { 'A' });
            assert_eq!(store.console_session(&wrong).unwrap(), None);
            assert_eq!(store.console_session("pcs_nope").unwrap(), None);
            // Expired: refused, and swept by the next creation.
            let (_, old) = store
                .create_console_session(t, "sub-2", "Bob", Role::Admin, -1)
                .unwrap();
            assert_eq!(store.console_session(&old).unwrap(), None);
            // Sign-out ends it once.
            assert_eq!(store.end_console_session(&cookie).unwrap(), Some(s));
            assert_eq!(store.console_session(&cookie).unwrap(), None);
            assert_eq!(store.end_console_session(&cookie).unwrap(), None);
            store
                .create_console_session(t, "sub-3", "Carol", Role::Auditor, 60_000)
                .unwrap();
            let rows: i64 = store
                .conn()
                .unwrap()
                .query_row("SELECT COUNT(*) FROM console_sessions", (), |r| r.get(0))
                .unwrap();
            assert_eq!(rows, 1, "the expired row was swept");
        });
    }
}
