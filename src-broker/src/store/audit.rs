//! The audit log: security events (connections, refusals, token failures) and session events.
//! Session rows themselves (who, what, when, bytes, end reason) live in `sessions`; the audit
//! query returns both.

use passerelle_proto::api::{AuditEvent, AuditPage};
use passerelle_proto::ids::TenantName;

use super::sql::{self, Exec as _, Value};

use super::{Store, TenantId, now_ms, rfc3339};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    AgentConnected,
    AgentDisconnected,
    AuthFailed,
    RequestRefused,
    TokenRefused,
    /// An address presented too many unknown tokens or API keys and is locked out for a while
    /// (one event per lockout).
    TokenGuessing,
    /// A source offered too many rejected SSH keys and is refused for a while (one event per
    /// lockout).
    SshKeyGuessing,
    /// Audit events past `audit_retention_days` were deleted (one event per pruning, per tenant,
    /// with the count).
    AuditPruned,
    SessionCreated,
    SessionStarted,
    SessionEnded,
    AgentRegistered,
    AgentChanged,
    AgentRevoked,
    /// An agent registered itself with an enrolment token (the token's id in the detail).
    AgentEnrolled,
    EnrollmentTokenCreated,
    EnrollmentTokenRevoked,
    TenantChanged,
    VncFailed,
    /// An `ssh` terminal could not open (handshake, authentication, shell).
    SshFailed,
    /// A workstation presented another SSH host key than its agent's pin: refused.
    SshHostKeyChanged,
    /// A workstation's SSH host key was pinned on first use.
    SshHostKeyPinned,
    /// A terminal logged in to a workstation: as whom, with which credential.
    SshLogin,
    /// An admin forgot an agent's pinned SSH host key.
    SshHostKeyReset,
    /// An RDP session reached its server: protocol and credential mode.
    RdpConnected,
    /// An RDP connection failed before relaying (negotiation, TLS, a bad request).
    RdpFailed,
    /// An agent's RDP server certificate was pinned on first use.
    RdpCertificatePinned,
    /// An agent's RDP server presented another certificate than the pinned one: refused.
    RdpCertificateChanged,
    /// An admin reset an agent's pinned RDP certificate.
    RdpCertificateReset,
    RecordingStarted,
    RecordingFailed,
    RecordingDeleted,
    RecordingViewed,
    /// An API key was created (its id, role and name; never its secret).
    ApiKeyCreated,
    /// An API key was revoked.
    ApiKeyRevoked,
    /// A certificate from one of the tenant's CAs was refused (the reason in the detail).
    CertificateRefused,
    /// The tenant trusts a new SSH CA (brought with its proof, or generated).
    SshCaAdded,
    /// The tenant no longer trusts an SSH CA.
    SshCaRemoved,
    /// A certificate serial or key joined the tenant's revocation list.
    SshCertRevoked,
    /// `passerelle ca sign` issued a certificate (serial, principal, validity).
    SshCertIssued,
    /// A person signed in to the console with the tenant's OpenID provider (name, subject,
    /// role; the browser session's id).
    ConsoleSignIn,
    /// A console sign-in was refused (why: state, nonce, issuer, audience, expiry, code...).
    ConsoleSignInRefused,
    /// A person signed out of the console.
    ConsoleSignOut,
    /// An admin set or removed the tenant's OpenID Connect settings.
    OidcChanged,
}

impl AuditKind {
    /// The snake_case name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentConnected => "agent_connected",
            Self::AgentDisconnected => "agent_disconnected",
            Self::AuthFailed => "auth_failed",
            Self::RequestRefused => "request_refused",
            Self::TokenRefused => "token_refused",
            Self::TokenGuessing => "token_guessing",
            Self::SshKeyGuessing => "ssh_key_guessing",
            Self::AuditPruned => "audit_pruned",
            Self::SessionCreated => "session_created",
            Self::SessionStarted => "session_started",
            Self::SessionEnded => "session_ended",
            Self::AgentRegistered => "agent_registered",
            Self::AgentChanged => "agent_changed",
            Self::AgentRevoked => "agent_revoked",
            Self::AgentEnrolled => "agent_enrolled",
            Self::EnrollmentTokenCreated => "enrollment_token_created",
            Self::EnrollmentTokenRevoked => "enrollment_token_revoked",
            Self::TenantChanged => "tenant_changed",
            Self::VncFailed => "vnc_failed",
            Self::SshFailed => "ssh_failed",
            Self::SshHostKeyChanged => "ssh_host_key_changed",
            Self::SshHostKeyPinned => "ssh_host_key_pinned",
            Self::SshLogin => "ssh_login",
            Self::SshHostKeyReset => "ssh_host_key_reset",
            Self::RdpConnected => "rdp_connected",
            Self::RdpFailed => "rdp_failed",
            Self::RdpCertificatePinned => "rdp_certificate_pinned",
            Self::RdpCertificateChanged => "rdp_certificate_changed",
            Self::RdpCertificateReset => "rdp_certificate_reset",
            Self::RecordingStarted => "recording_started",
            Self::RecordingFailed => "recording_failed",
            Self::RecordingDeleted => "recording_deleted",
            Self::RecordingViewed => "recording_viewed",
            Self::ApiKeyCreated => "api_key_created",
            Self::ApiKeyRevoked => "api_key_revoked",
            Self::CertificateRefused => "certificate_refused",
            Self::SshCaAdded => "ssh_ca_added",
            Self::SshCaRemoved => "ssh_ca_removed",
            Self::SshCertRevoked => "ssh_cert_revoked",
            Self::SshCertIssued => "ssh_cert_issued",
            Self::ConsoleSignIn => "console_sign_in",
            Self::ConsoleSignInRefused => "console_sign_in_refused",
            Self::ConsoleSignOut => "console_sign_out",
            Self::OidcChanged => "oidc_changed",
        }
    }
}

/// An event to record. `detail` is for people and must never hold a secret.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: AuditKind,
    pub tenant_id: Option<TenantId>,
    pub agent: Option<String>,
    pub session: Option<String>,
    pub operator: Option<String>,
    pub peer_addr: Option<String>,
    /// The id of the API key that made the call, for events of API calls: `operator` is what
    /// the console claims, this is who spoke for it.
    pub api_key: Option<String>,
    pub detail: String,
}

impl NewEvent {
    /// An event with only a kind and a detail.
    pub fn new(kind: AuditKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            tenant_id: None,
            agent: None,
            session: None,
            operator: None,
            peer_addr: None,
            api_key: None,
            detail: detail.into(),
        }
    }
}

/// Filters of `GET /api/v1/audit`; times in ms since the epoch.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub agent: Option<String>,
    pub operator: Option<String>,
    pub session: Option<String>,
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Sessions that lasted (so far) at least this long, in milliseconds; events are not
    /// filtered by it.
    pub min_duration_ms: Option<i64>,
    /// Sessions that lasted at most this long, in milliseconds.
    pub max_duration_ms: Option<i64>,
    pub limit: Option<u32>,
}

/// Columns of an audit row as [`Store::audit_many`] inserts it.
const AUDIT_COLUMNS: usize = 9;
/// Rows per `INSERT` of [`Store::audit_many`] (see [`sql::row_chunks`]): one statement per row
/// cost PostgreSQL a round trip and an executor start each.
const INSERT_ROWS: [usize; 4] = [64, 16, 4, 1];

/// `INSERT INTO audit ... VALUES (...), (...)` for `rows` rows (one of [`INSERT_ROWS`]).
fn insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::LazyLock<Vec<(usize, String)>> = std::sync::LazyLock::new(|| {
        (INSERT_ROWS.into_iter())
            .map(|n| {
                let sql = format!(
                    "INSERT INTO audit (at, kind, tenant_id, agent, session_id, operator, \
                     peer_addr, api_key, detail) VALUES {}",
                    sql::value_rows(n, AUDIT_COLUMNS)
                );
                (n, sql)
            })
            .collect()
    });
    SQL.iter()
        .find(|(n, _)| *n == rows)
        .or(SQL.last())
        .map_or("", |(_, s)| s.as_str())
}

impl Store {
    /// Appends an event. Failing to audit is logged, never fatal to the caller. Async code
    /// queues events through [`super::Db::audit`] instead.
    pub fn audit(&self, event: NewEvent) {
        self.audit_many(&mut vec![event]);
    }

    /// Appends events in one transaction, emptying `events`.
    pub fn audit_many(&self, events: &mut Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        let result = (|| -> sql::Result<()> {
            let mut conn = self.conn()?;
            let tx = conn.transaction()?;
            let at = now_ms();
            for rows in sql::row_chunks(events, &INSERT_ROWS) {
                let mut values = Vec::with_capacity(rows.len() * AUDIT_COLUMNS);
                for event in rows {
                    values.extend(sql::Params::into_values(sql::params![
                        at,
                        event.kind.as_str(),
                        event.tenant_id,
                        event.agent,
                        event.session,
                        event.operator,
                        event.peer_addr,
                        event.api_key,
                        event.detail
                    ]));
                }
                tx.execute(insert_sql(rows.len()), values)?;
            }
            tx.commit()
        })();
        if let Err(e) = result {
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            tracing::error!(error = %e, ?kinds, "could not write audit events");
        }
        events.clear();
    }

    /// Events and sessions of a tenant matching the filter, newest first.
    pub fn audit_page(&self, tenant_id: TenantId, f: &AuditFilter) -> anyhow::Result<AuditPage> {
        let limit = i64::from(f.limit.unwrap_or(200).clamp(1, 1000));
        let mut clauses = vec!["tenant_id = ?".to_owned()];
        let mut args: Vec<Value> = vec![Value::Integer(tenant_id)];
        let mut add = |clause: &str, v: Option<Value>| {
            if let Some(v) = v {
                clauses.push(clause.to_owned());
                args.push(v);
            }
        };
        add("agent = ?", f.agent.clone().map(Value::Text));
        add("operator = ?", f.operator.clone().map(Value::Text));
        add("session_id = ?", f.session.clone().map(Value::Text));
        add("kind = ?", f.kind.clone().map(Value::Text));
        add("at >= ?", f.since.map(Value::Integer));
        add("at <= ?", f.until.map(Value::Integer));
        let sql = format!(
            "SELECT id, at, kind, agent, session_id, operator, peer_addr, api_key, detail FROM audit
             WHERE {} ORDER BY id DESC LIMIT {limit}",
            clauses.join(" AND ")
        );
        let tenant: TenantName = self.tenant_name(tenant_id)?;
        let events = {
            self.conn()?.query_map(&sql, args, |r| {
                Ok(AuditEvent {
                    id: r.get(0)?,
                    at: rfc3339(r.get(1)?),
                    kind: r.get(2)?,
                    tenant: Some(tenant.clone()),
                    agent: r.get(3)?,
                    session: r.get(4)?,
                    operator: r.get(5)?,
                    peer_addr: r.get(6)?,
                    api_key: r.get(7)?,
                    detail: r.get(8)?,
                })
            })?
        };
        let sessions = self.sessions_matching(tenant_id, f, limit)?;
        Ok(AuditPage { sessions, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_filtered_by_tenant_and_fields() {
        crate::store::test_backends::each(|store| {
            for name in ["a", "b"] {
                store
                    .create_tenant(&TenantName::new(name).unwrap())
                    .unwrap();
            }
            let a = store
                .tenant_id(&TenantName::new("a").unwrap())
                .unwrap()
                .unwrap();
            let b = store
                .tenant_id(&TenantName::new("b").unwrap())
                .unwrap()
                .unwrap();
            let mut ev = NewEvent::new(AuditKind::AuthFailed, "unknown key");
            ev.tenant_id = Some(a);
            ev.agent = Some("pc1".into());
            store.audit(ev.clone());
            ev.kind = AuditKind::AgentConnected;
            store.audit(ev.clone());
            ev.tenant_id = Some(b);
            store.audit(ev);
            let all_a = store.audit_page(a, &AuditFilter::default()).unwrap();
            assert_eq!(all_a.events.len(), 2);
            let f = AuditFilter {
                kind: Some("auth_failed".into()),
                ..Default::default()
            };
            let page = store.audit_page(a, &f).unwrap();
            assert_eq!(page.events.len(), 1);
            assert_eq!(page.events[0].detail, "unknown key");
            let since = AuditFilter {
                since: Some(now_ms() + 60_000),
                ..Default::default()
            };
            assert!(store.audit_page(a, &since).unwrap().events.is_empty());
        });
    }

    #[test]
    fn a_batch_goes_in_whole_and_in_order_over_its_multi_row_inserts() {
        // 87 = 64 + 16 + 4 + 1 + 1 + 1: every size of insert, and repeats of the smallest.
        let sizes: Vec<usize> = sql::row_chunks(&[(); 87], &INSERT_ROWS)
            .map(<[()]>::len)
            .collect();
        assert_eq!(sizes, [64, 16, 4, 1, 1, 1], "the largest size that fits");
        crate::store::test_backends::each(|store| {
            let name = TenantName::new("a").unwrap();
            store.create_tenant(&name).unwrap();
            let a = store.tenant_id(&name).unwrap().unwrap();
            let mut batch: Vec<NewEvent> = (0..87)
                .map(|i| {
                    let mut ev = NewEvent::new(AuditKind::AgentConnected, format!("event {i}"));
                    ev.tenant_id = Some(a);
                    ev.agent = Some(format!("pc{i}"));
                    ev.peer_addr = (i % 2 == 0).then(|| format!("10.0.0.{i}:22"));
                    ev
                })
                .collect();
            store.audit_many(&mut batch);
            assert!(batch.is_empty(), "the batch is emptied");
            let f = AuditFilter {
                limit: Some(500),
                ..Default::default()
            };
            let mut events = store.audit_page(a, &f).unwrap().events;
            events.sort_by_key(|e| e.id);
            assert_eq!(events.len(), 87);
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.detail, format!("event {i}"), "in order");
                assert_eq!(e.agent.as_deref(), Some(format!("pc{i}").as_str()));
                assert_eq!(e.kind, "agent_connected");
                let peer = (i % 2 == 0).then(|| format!("10.0.0.{i}:22"));
                assert_eq!(e.peer_addr, peer, "each row its own values");
            }
        });
    }
}
