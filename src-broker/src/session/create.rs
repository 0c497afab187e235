//! Creating a session: the request's rules, the tenant's recording rule and quotas, the agent's
//! presence, the row in the store, the audit event and the first tokens.

use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::api::{SessionInfo, SessionState};
use passerelle_proto::close::EndReason;
use passerelle_proto::ids::{AgentId, ServiceKind, ServiceName};

use super::live::{Actor, LiveSession, Spec};
use super::table::{NoLegacyPort, TokenKind};
use super::{Core, new_session_id, session_event};
use crate::store::{AuditKind, TenantId, check_username, now_ms, rfc3339};

/// What the caller asks for (the API's body, with the caller's tenant).
#[derive(Debug, Clone)]
pub struct NewSession {
    pub tenant_id: TenantId,
    pub agent: AgentId,
    pub service: ServiceName,
    pub operator: String,
    pub record: Option<bool>,
    pub view_only: bool,
    pub legacy: bool,
    pub ttl_secs: Option<u64>,
    /// The login name of an `ssh` session's terminal (else the agent's, else the tenant's).
    pub ssh_user: Option<String>,
}

/// A session's tokens: a viewer token (one connection), a launch token (the desktop helper's,
/// reusable while the session lasts), and an exchange token (one use: the viewer page trades it
/// for a launch URL).
#[derive(Debug, Clone)]
pub struct Tokens {
    pub viewer: String,
    pub launch: String,
    pub exchange: String,
    /// When an unused token stops working (ms since the epoch).
    pub expires_at_ms: i64,
}

/// A created session.
#[derive(Debug)]
pub struct Created {
    pub session: Arc<LiveSession>,
    pub info: SessionInfo,
    pub tokens: Tokens,
}

/// Why a session was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// No such agent in the caller's tenant (404).
    #[error("agent not found")]
    UnknownAgent,
    #[error("agent {0} is offline")]
    AgentOffline(AgentId),
    #[error("agent {0} does not announce the {1} service")]
    ServiceUnavailable(AgentId, ServiceName),
    /// The tenant records every session and the request said `"record": false` (403).
    #[error("this tenant records every session: \"record\": false is not allowed")]
    RecordingRequired,
    /// A per-tenant cap (429).
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    NoLegacyPort(#[from] NoLegacyPort),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

fn check_operator(operator: &str) -> Result<&str, CreateError> {
    let operator = operator.trim();
    if operator.is_empty() || operator.len() > 128 || operator.chars().any(char::is_control) {
        return Err(CreateError::Invalid(
            "operator must be 1 to 128 printable characters".into(),
        ));
    }
    Ok(operator)
}

impl Core {
    fn ttl(&self, ttl_secs: Option<u64>) -> Result<Duration, CreateError> {
        match ttl_secs {
            Some(0) => Err(CreateError::Invalid("ttl_secs must be at least 1".into())),
            Some(s) if Duration::from_secs(s) > self.config.max_session_ttl => {
                Err(CreateError::Invalid(format!(
                    "ttl_secs may be at most {}",
                    self.config.max_session_ttl.as_secs()
                )))
            }
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(self.config.default_session_ttl),
        }
    }

    /// Audits a refused request (naming the operator it was made for, and the key) and
    /// returns its error.
    fn refused(&self, req: &NewSession, by: &Actor, error: CreateError) -> CreateError {
        let mut ev = crate::store::NewEvent::new(
            AuditKind::RequestRefused,
            format!("session on {} ({}): {error}", req.agent, req.service),
        );
        ev.tenant_id = Some(req.tenant_id);
        ev.agent = Some(req.agent.to_string());
        ev.operator = Some(req.operator.trim().to_owned());
        ev.api_key.clone_from(&by.api_key);
        self.db.audit(ev);
        error
    }

    /// Creates a session, checks it can be served, and issues its first tokens.
    pub async fn create(
        self: &Arc<Self>,
        req: NewSession,
        by: &Actor,
    ) -> Result<Created, CreateError> {
        let operator = check_operator(&req.operator)?.to_owned();
        let ttl = self.ttl(req.ttl_secs)?;
        let kind = req.service.kind();
        if req.view_only
            && !matches!(
                kind,
                Some(ServiceKind::Vnc | ServiceKind::Ssh | ServiceKind::Rdp)
            )
        {
            return Err(CreateError::Invalid(
                "view_only is enforced for vnc, ssh and rdp sessions only".into(),
            ));
        }
        if let Some(user) = &req.ssh_user {
            if kind != Some(ServiceKind::Ssh) {
                return Err(CreateError::Invalid(
                    "ssh_user is for ssh sessions only".into(),
                ));
            }
            check_username(user).map_err(|e| CreateError::Invalid(e.to_string()))?;
        }
        if req.legacy && req.service.default_port().is_none() {
            return Err(CreateError::Invalid(
                "the legacy flow carries vnc, rdp or ssh only".into(),
            ));
        }
        let (tenant_id, agent) = (req.tenant_id, req.agent.clone());
        let (known, tenant) = self
            .db
            .run(move |s| {
                Ok((
                    s.agent(tenant_id, &agent)?.is_some(),
                    s.tenant_info(tenant_id)?,
                ))
            })
            .await?;
        if !known {
            return Err(CreateError::UnknownAgent);
        }
        if !req.legacy {
            let conn = self.registry.get(req.tenant_id, &req.agent);
            let Some(conn) = conn else {
                return Err(CreateError::AgentOffline(req.agent));
            };
            if conn.service_port(&req.service).is_none() {
                return Err(CreateError::ServiceUnavailable(req.agent, req.service));
            }
        }
        if tenant.recording_required && req.record == Some(false) {
            return Err(self.refused(&req, by, CreateError::RecordingRequired));
        }
        let record = tenant.recording_required || req.record.unwrap_or(tenant.record_by_default);
        let (live, pending) = self.table.count(req.tenant_id);
        let limits = &self.config.quotas;
        if live >= limits.sessions_per_tenant {
            let why = format!(
                "this tenant has {live} live sessions, the most allowed (sessions_per_tenant)"
            );
            return Err(self.refused(&req, by, CreateError::Quota(why)));
        }
        if pending >= limits.pending_sessions_per_tenant {
            let why = format!(
                "this tenant has {pending} sessions nobody joined yet, the most allowed (pending_sessions_per_tenant)"
            );
            return Err(self.refused(&req, by, CreateError::Quota(why)));
        }
        let id = new_session_id();
        let legacy_port = match req.legacy {
            false => None,
            true => match self.table.reserve_legacy_port(&id) {
                Ok(port) => Some(port),
                Err(e) => return Err(self.refused(&req, by, e.into())),
            },
        };
        let session = Arc::new(LiveSession::new(Spec {
            id: id.clone(),
            tenant_id: req.tenant_id,
            agent: req.agent.clone(),
            service: req.service.clone(),
            operator: operator.clone(),
            view_only: req.view_only,
            record,
            legacy_port,
            ttl,
            ssh_user: req.ssh_user.clone(),
        }));
        let now = now_ms();
        let info = SessionInfo {
            id: id.clone(),
            tenant: tenant.name,
            agent: req.agent.clone(),
            service: req.service.clone(),
            operator,
            state: SessionState::Pending,
            record,
            view_only: req.view_only,
            legacy: req.legacy,
            legacy_port,
            created_at: rfc3339(now),
            started_at: None,
            ended_at: None,
            expires_at: rfc3339(now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            end_reason: None,
            ended_by: None,
            client_addr: None,
            bytes_up: 0,
            bytes_down: 0,
        };
        let (row, ssh_user) = (info.clone(), req.ssh_user.clone());
        if let Err(e) = self
            .db
            .run(move |s| {
                s.insert_session(tenant_id, &row)?;
                match &ssh_user {
                    Some(user) => s.set_session_ssh_user(&row.id, user),
                    None => Ok(()),
                }
            })
            .await
        {
            if let Some(port) = legacy_port {
                self.table.release_legacy_port(port);
            }
            return Err(e.into());
        }
        self.table.insert(session.clone());
        self.watch(&session);
        self.metrics
            .sessions_created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ev = session_event(
            &session,
            AuditKind::SessionCreated,
            format!("{} on {}", req.service, req.agent),
        );
        ev.api_key.clone_from(&by.api_key);
        self.db.audit(ev);
        let tokens = self.issue(&session);
        Ok(Created {
            session,
            info,
            tokens,
        })
    }

    /// Fresh tokens for a live session.
    pub fn issue(&self, session: &LiveSession) -> Tokens {
        let ttl = self.config.token_ttl;
        Tokens {
            viewer: self.table.issue_token(session, TokenKind::Viewer, ttl),
            launch: self.table.issue_token(session, TokenKind::Launch, ttl),
            exchange: self.table.issue_token(session, TokenKind::Exchange, ttl),
            expires_at_ms: now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// A live session of `tenant_id` that has not ended.
    pub fn live(&self, tenant_id: TenantId, id: &str) -> Option<Arc<LiveSession>> {
        self.table
            .get(id)
            .filter(|s| s.tenant_id == tenant_id && !s.ended.is_cancelled())
    }

    /// Stops a session (`DELETE /api/v1/sessions/{id}`), if it is live.
    pub async fn stop(&self, tenant_id: TenantId, id: &str, by: &Actor) {
        if let Some(session) = self.table.get(id).filter(|s| s.tenant_id == tenant_id) {
            self.end(&session, EndReason::Stopped, by).await;
        }
    }
}
