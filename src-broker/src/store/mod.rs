//! The store: SQLite in the data dir (the default), or PostgreSQL (`store_url`); schema
//! migrations applied at start.
//!
//! On SQLite, one connection behind a mutex: every statement is short (indexed lookups and
//! single-row writes), WAL mode keeps readers of other processes (the CLI subcommands) from
//! blocking. On PostgreSQL, a small pool of clients (see [`sql`]). Both run the same SQL
//! through [`sql::Exec`]. The store knows tenants, API keys, agents, sessions and the audit
//! log; live state (who is online, which viewer is bridged) is in memory, in
//! [`crate::registry`] and [`crate::sessions`].

mod agents;
mod agents_import;
mod audit;
mod audit_retention;
mod ca;
pub mod cluster;
mod db;
mod embedding;
mod enroll;
mod fleet;
mod keys;
mod oidc;
mod open;
#[cfg(test)]
mod pg_tests;
mod rdp;
mod search;
mod sessions;
pub mod sql;
mod ssh;
#[cfg(test)]
pub(crate) mod test_backends;
#[cfg(test)]
pub(crate) mod test_fixtures;

use std::sync::Mutex;

use anyhow::{Context as _, bail};
use passerelle_proto::api::{RecordingPolicy, Role, TenantInfo};
use passerelle_proto::ids::TenantName;
use rusqlite::Connection;

pub use sql::PgUrl;
use sql::{Exec as _, OptionalExtension as _, params};

pub use agents::{AgentRecord, KeyLogin, OfferTarget};
pub use agents_import::{
    ImportOptions, ImportRefused, Imported, ItemError, ItemFault, NewAgent, key_fingerprint,
};
/// The errors store calls return that the API maps to 400 and 409.
pub mod agents_errors {
    pub use super::agents::{Conflict, Invalid};
}
pub use audit::{AuditFilter, AuditKind, NewEvent};
pub use ca::{
    CaRecord, CertAgent, CertAgentRefused, CertSignIn, fingerprint as key_data_fingerprint,
    key_fingerprint_of,
};
pub use db::Db;
pub use enroll::{Enrollment, NewToken, Refusal, Refused, TokenRecord};
pub use keys::{KeyRefusal, RevokeError, Revoked};
pub use oidc::{ConsoleSession, OidcSettings};
pub use rdp::{PinCheck, check as check_rdp_login};
pub use search::{MAX_QUERY, TextMatch};
pub use ssh::{AgentSsh, TenantSsh, check_agent_ssh, check_username};

use crate::secrets::{self, ApiKey, SecretBox};

/// A tenant's row id.
pub type TenantId = i64;

/// A schema version: the same SQL on both backends (in SQLite's dialect, its column types
/// mapped by [`sql::ddl_for_postgres`]), or one text per backend where they differ.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Migration {
    Both(&'static str),
    Split {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

impl Migration {
    /// The SQL SQLite runs.
    pub(crate) fn sqlite(self) -> &'static str {
        match self {
            Self::Both(sql) | Self::Split { sqlite: sql, .. } => sql,
        }
    }

    /// The SQL PostgreSQL runs.
    pub(crate) fn postgres(self) -> String {
        match self {
            Self::Both(sql) => sql::ddl_for_postgres(sql),
            Self::Split { postgres, .. } => postgres.to_owned(),
        }
    }

    /// Whether its SQLite text contains `s`.
    #[cfg(test)]
    pub(crate) fn contains(self, s: &str) -> bool {
        self.sqlite().contains(s)
    }
}

/// Schema versions, applied in order; `PRAGMA user_version` (SQLite) or the
/// `passerelle_schema` table (PostgreSQL) says how many ran.
const MIGRATIONS: &[Migration] = &[
    Migration::Both(
        r#"
CREATE TABLE tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    vnc_password BLOB,
    record_by_default INTEGER NOT NULL DEFAULT 0,
    recording_policy TEXT NOT NULL DEFAULT 'fail_closed',
    retention_days INTEGER NOT NULL DEFAULT 90,
    created_at INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    role TEXT NOT NULL,
    hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE agents (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL UNIQUE,
    vnc_password BLOB,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX agents_by_id ON agents(id);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    agent TEXT NOT NULL,
    service TEXT NOT NULL,
    operator TEXT NOT NULL,
    state TEXT NOT NULL,
    record INTEGER NOT NULL,
    view_only INTEGER NOT NULL,
    legacy INTEGER NOT NULL,
    legacy_port INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER,
    expires_at INTEGER NOT NULL,
    end_reason TEXT,
    ended_by TEXT,
    client_addr TEXT,
    bytes_up INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_tenant ON sessions(tenant_id, created_at);
CREATE INDEX sessions_by_state ON sessions(state);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    tenant_id INTEGER,
    agent TEXT,
    session_id TEXT,
    operator TEXT,
    peer_addr TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit(tenant_id, at);
"#,
    ),
    // The API key behind each event of an API call; mandatory recording per tenant.
    Migration::Both(
        r#"
ALTER TABLE audit ADD COLUMN api_key TEXT;
ALTER TABLE tenants ADD COLUMN recording_required INTEGER NOT NULL DEFAULT 0;
"#,
    ),
    // A public key is unique per tenant, not across tenants (a cross-tenant uniqueness check
    // told one tenant that another had registered a key); the SSH login (agent id, key) stays
    // unambiguous through `agents_active_login` (see `Store::create_agent`). The audit gets an
    // index on time for retention. NOTE for merges: the column list below is the agents table
    // of migrations 1 and 2; a migration that adds agents columns must come after this one.
    Migration::Both(
        r#"
CREATE TABLE agents_v2 (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    vnc_password BLOB,
    created_at INTEGER NOT NULL,
    shadowed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, id)
);
INSERT INTO agents_v2 (tenant_id, id, public_key, key_fingerprint, vnc_password, created_at)
    SELECT tenant_id, id, public_key, key_fingerprint, vnc_password, created_at FROM agents;
DROP TABLE agents;
ALTER TABLE agents_v2 RENAME TO agents;
CREATE INDEX agents_by_id ON agents(id);
CREATE INDEX agents_by_key ON agents(key_fingerprint);
CREATE UNIQUE INDEX agents_key_per_tenant ON agents(tenant_id, key_fingerprint);
CREATE UNIQUE INDEX agents_active_login ON agents(id, key_fingerprint) WHERE shadowed = 0;
CREATE INDEX audit_by_at ON audit(at);
"#,
    ),
    Migration::Both(ssh::MIGRATION),
    Migration::Split {
        sqlite: search::MIGRATION,
        postgres: search::PG_MIGRATION,
    },
    // API keys get a name and an optional expiry (see keys.rs).
    Migration::Both(
        r#"
ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
CREATE INDEX api_keys_by_tenant ON api_keys(tenant_id, created_at);
"#,
    ),
    // Origins allowed to frame a tenant's viewer pages (see embedding.rs).
    Migration::Both(
        r#"
ALTER TABLE tenants ADD COLUMN frame_ancestors TEXT NOT NULL DEFAULT '';
"#,
    ),
    // RDP (after the agents rebuild and the SSH settings): credentials injected into sessions (passwords
    // sealed), the pinned server certificate.
    Migration::Both(
        r#"
ALTER TABLE tenants ADD COLUMN rdp_username TEXT;
ALTER TABLE tenants ADD COLUMN rdp_password BLOB;
ALTER TABLE agents ADD COLUMN rdp_username TEXT;
ALTER TABLE agents ADD COLUMN rdp_password BLOB;
ALTER TABLE agents ADD COLUMN rdp_cert_sha256 TEXT;
ALTER TABLE agents ADD COLUMN rdp_cert_pinned_at INTEGER;
"#,
    ),
    Migration::Both(enroll::MIGRATION),
    Migration::Both(ca::MIGRATION),
    Migration::Both(cluster::MIGRATION),
    Migration::Both(oidc::MIGRATION),
];

/// The database under a store.
enum Database {
    Sqlite(Mutex<Connection>),
    Postgres(Box<sql::pg::Pool>),
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    db: Database,
    secret_box: SecretBox,
    /// The node this store serves (see `cluster.rs`).
    node: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

/// Parses RFC 3339 into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

impl Store {
    pub(crate) fn secret_box(&self) -> &SecretBox {
        &self.secret_box
    }

    /// Creates a tenant; an error if it exists.
    pub fn create_tenant(&self, name: &TenantName) -> anyhow::Result<()> {
        let n = self.conn()?.execute(
            "INSERT INTO tenants (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![name.as_str(), now_ms()],
        )?;
        if n == 0 {
            bail!("tenant {name} already exists");
        }
        let id = self
            .tenant_id(name)?
            .context("tenant vanished after insert")?;
        self.ensure_tenant_ssh_key(id)
    }

    /// The tenant's row id, if it exists.
    pub fn tenant_id(&self, name: &TenantName) -> anyhow::Result<Option<TenantId>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id FROM tenants WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The tenant's name.
    pub fn tenant_name(&self, id: TenantId) -> anyhow::Result<TenantName> {
        let name: String =
            self.conn()?
                .query_row("SELECT name FROM tenants WHERE id = ?1", [id], |r| r.get(0))?;
        Ok(TenantName::new(name)?)
    }

    /// Every tenant's name.
    pub fn tenants(&self) -> anyhow::Result<Vec<TenantName>> {
        let names = self
            .conn()?
            .query_map("SELECT name FROM tenants ORDER BY name", (), |r| {
                r.get::<String>(0)
            })?;
        names.into_iter().map(|n| Ok(TenantName::new(n)?)).collect()
    }

    /// Creates an API key for a tenant and returns its secret text (shown once).
    pub fn create_api_key(&self, tenant: &TenantName, role: Role) -> anyhow::Result<String> {
        let tenant_id = self
            .tenant_id(tenant)?
            .with_context(|| format!("no tenant named {tenant}"))?;
        let key = ApiKey::generate();
        self.conn()?.execute(
            "INSERT INTO api_keys (id, tenant_id, role, hash, created_at) VALUES (?1,?2,?3,?4,?5)",
            params![
                key.id(),
                tenant_id,
                role.as_str(),
                key.hash().to_vec(),
                now_ms()
            ],
        )?;
        Ok(key.expose().to_owned())
    }

    /// Checks an API key; `Some((tenant, key id, role))` when valid (neither revoked nor
    /// expired). [`Store::refused_api_key`] says why one is not.
    pub fn check_api_key(&self, text: &str) -> anyhow::Result<Option<(TenantId, String, Role)>> {
        let Some((id, hash)) = secrets::parse_api_key(text) else {
            return Ok(None);
        };
        let row: Option<(TenantId, String, Vec<u8>)> = self
            .conn()?
            .query_row(
                "SELECT tenant_id, role, hash FROM api_keys WHERE id = ?1 AND revoked_at IS NULL
                 AND (expires_at IS NULL OR expires_at > ?2)",
                params![&id, now_ms()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row.and_then(|(tenant, role, stored)| {
            (secrets::ct_eq(&stored, &hash)).then_some(())?;
            Some((tenant, id, Role::parse(&role)?))
        }))
    }

    /// The tenant and public id of the API key a presented text names (revoked keys included),
    /// whether or not its secret part is right: to say whose key someone is guessing at.
    pub fn api_key_owner(&self, text: &str) -> anyhow::Result<Option<(TenantId, String)>> {
        let Some((id, _)) = secrets::parse_api_key(text) else {
            return Ok(None);
        };
        let tenant: Option<TenantId> = self
            .conn()?
            .query_row("SELECT tenant_id FROM api_keys WHERE id = ?1", [&id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(tenant.map(|t| (t, id)))
    }

    /// The tenant's settings as the API shows them.
    pub fn tenant_info(&self, id: TenantId) -> anyhow::Result<TenantInfo> {
        let (name, has_pw, record, policy, days, required): (
            String,
            bool,
            bool,
            String,
            u32,
            bool,
        ) = self.conn()?.query_row(
            "SELECT name, vnc_password IS NOT NULL, record_by_default, recording_policy,
                    retention_days, recording_required FROM tenants WHERE id = ?1",
            [id],
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
        )?;
        let (rdp_username, has_rdp_password) = self.tenant_rdp(id)?;
        let ssh = self.tenant_ssh(id)?;
        Ok(TenantInfo {
            name: TenantName::new(name)?,
            ssh_username: ssh.ssh_username,
            ssh_public_key: ssh.public_key,
            record_terminal_input: ssh.record_terminal_input,
            has_vnc_password: has_pw,
            rdp_username,
            has_rdp_password,
            record_by_default: record,
            recording_policy: if policy == "fail_open" {
                RecordingPolicy::FailOpen
            } else {
                RecordingPolicy::FailClosed
            },
            retention_days: days,
            recording_required: required,
            frame_ancestors: self.frame_ancestors(id)?,
        })
    }

    /// Changes a tenant's settings (`None` leaves a field alone; an empty password clears it).
    pub fn patch_tenant(
        &self,
        id: TenantId,
        patch: &passerelle_proto::api::PatchTenant,
    ) -> anyhow::Result<()> {
        rdp::check(patch.rdp_username.as_deref(), patch.rdp_password.as_deref())?;
        // Checked first, so that a bad value changes nothing.
        if let Some(name) = patch.ssh_username.as_deref().filter(|n| !n.is_empty()) {
            check_username(name)?;
        }
        let conn = self.conn()?;
        if let Some(pw) = &patch.vnc_password {
            let sealed = (!pw.is_empty()).then(|| self.secret_box.seal(pw.as_bytes()));
            conn.execute(
                "UPDATE tenants SET vnc_password = ?1 WHERE id = ?2",
                params![sealed, id],
            )?;
        }
        if let Some(v) = patch.record_by_default {
            conn.execute(
                "UPDATE tenants SET record_by_default = ?1 WHERE id = ?2",
                params![v, id],
            )?;
        }
        if let Some(p) = patch.recording_policy {
            let p = match p {
                RecordingPolicy::FailClosed => "fail_closed",
                RecordingPolicy::FailOpen => "fail_open",
            };
            conn.execute(
                "UPDATE tenants SET recording_policy = ?1 WHERE id = ?2",
                params![p, id],
            )?;
        }
        if let Some(v) = patch.recording_required {
            conn.execute(
                "UPDATE tenants SET recording_required = ?1 WHERE id = ?2",
                params![v, id],
            )?;
        }
        if let Some(origins) = &patch.frame_ancestors {
            embedding::set(&conn, id, origins)?;
        }
        if let Some(d) = patch.retention_days {
            conn.execute(
                "UPDATE tenants SET retention_days = ?1 WHERE id = ?2",
                params![d, id],
            )?;
        }
        drop(conn);
        self.set_tenant_rdp(
            id,
            patch.rdp_username.as_deref(),
            patch.rdp_password.as_deref(),
        )?;
        self.patch_tenant_ssh(
            id,
            patch.ssh_username.as_deref(),
            patch.record_terminal_input,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_keys_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantName::new("default").unwrap();
        store.create_tenant(&t).unwrap();
        assert!(store.create_tenant(&t).is_err());
        let key = store.create_api_key(&t, Role::Helpdesk).unwrap();
        let (tid, _, role) = store.check_api_key(&key).unwrap().unwrap();
        assert_eq!(
            (tid, role),
            (store.tenant_id(&t).unwrap().unwrap(), Role::Helpdesk)
        );
        let mut forged = key.clone();
        forged.pop();
        forged.push(if key.ends_with('A') { 'B' } else { 'A' });
        assert!(store.check_api_key(&forged).unwrap().is_none());
        assert!(store.check_api_key("nonsense").unwrap().is_none());
        drop(store);
        // Reopening applies nothing twice and keeps the data.
        let store = Store::open(dir.path()).unwrap();
        assert!(store.check_api_key(&key).unwrap().is_some());
    }

    #[test]
    fn times_format_and_parse() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_rfc3339(&rfc3339(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
