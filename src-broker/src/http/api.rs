//! The JSON API handlers (`/api/v1/...`). Every handler resolves objects inside the caller's
//! tenant only, so another tenant's objects answer 404 exactly like missing ones.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use passerelle_proto::api::{
    AgentInfo, AuditPage, CreateSession, CreatedSession, IssuedToken, PatchAgent, PatchTenant,
    RegisterAgent, Role, SessionInfo, SessionState, TenantInfo,
};
use passerelle_proto::close::EndReason;
use passerelle_proto::ids::AgentId;
use passerelle_proto::launch::LaunchUrl;
use serde::Deserialize;

use super::ApiError;
use super::auth::Caller;
use crate::broker::State;
use crate::sessions::{LiveSession, NewSession, TokenKind};
use crate::store::{
    AgentRecord, AuditFilter, AuditKind, NewEvent, TenantId, now_ms, parse_rfc3339, rfc3339,
};

pub(super) type ApiResult<T> = Result<T, ApiError>;
const OPERATORS: &[Role] = &[Role::Admin, Role::Helpdesk];
const ANY: &[Role] = &[Role::Admin, Role::Helpdesk, Role::Auditor];

pub(super) fn event(kind: AuditKind, caller: &Caller, detail: String) -> NewEvent {
    let mut ev = NewEvent::new(kind, detail);
    ev.tenant_id = Some(caller.tenant_id);
    ev.operator = Some(caller.who());
    ev
}

fn parse_agent_id(id: &str) -> ApiResult<AgentId> {
    AgentId::new(id).map_err(|_| ApiError::not_found("agent"))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// The URLs that carry a viewer token and a launch token.
fn urls(
    state: &State,
    session: &LiveSession,
    token: &str,
    launch_token: &str,
) -> (String, String, String, String) {
    let base = &state.base_url;
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let id = &session.id;
    let launch = LaunchUrl {
        broker: base.clone(),
        session: id.clone(),
        token: launch_token.to_owned(),
        service: session.service.clone(),
        fingerprint: state.tls_fingerprint.clone(),
    };
    let mut viewer = format!("{base}/view/{id}#token={token}");
    if session.view_only {
        viewer.push_str("&view_only=1");
    }
    // What the page shows and needs (the session core will tell pages this another way).
    viewer.push_str(&format!(
        "&agent={}&service={}",
        session.agent, session.service
    ));
    if session.record {
        viewer.push_str("&record=1");
    }
    if session.service.as_str() == "rdp" {
        viewer.push_str(crate::service::rdp::glue::fragment(state, session));
    }
    viewer.push_str("&launch=");
    let launch_url = launch.to_url();
    for b in launch_url.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            viewer.push(char::from(b));
        } else {
            viewer.push_str(&format!("%{b:02X}"));
        }
    }
    (
        viewer,
        format!("{ws_base}/ws/sessions/{id}?token={token}"),
        format!("{ws_base}/ws/sessions/{id}/raw?token={token}"),
        launch_url,
    )
}

fn issue(state: &State, session: &LiveSession) -> IssuedToken {
    let ttl = state.config.token_ttl;
    let token = state.sessions.issue_token(session, TokenKind::Viewer, ttl);
    let launch = state.sessions.issue_token(session, TokenKind::Launch, ttl);
    let (viewer_url, ws_url, raw_ws_url, launch_url) = urls(state, session, &token, &launch);
    let expires = now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    IssuedToken {
        token,
        token_expires_at: rfc3339(expires),
        viewer_url,
        ws_url,
        raw_ws_url,
        launch_url,
    }
}

pub async fn create_session(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedSession>)> {
    caller.require(OPERATORS)?;
    let Json(req) = body?;
    let operator = req.operator.trim();
    if operator.is_empty() || operator.len() > 128 || operator.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "operator must be 1 to 128 printable characters",
        ));
    }
    let ttl = match req.ttl_secs {
        Some(0) => return Err(ApiError::bad_request("ttl_secs must be at least 1")),
        Some(s) if Duration::from_secs(s) > state.config.max_session_ttl => {
            return Err(ApiError::bad_request(format!(
                "ttl_secs may be at most {}",
                state.config.max_session_ttl.as_secs()
            )));
        }
        Some(s) => Duration::from_secs(s),
        None => state.config.default_session_ttl,
    };
    if req.view_only && !matches!(req.service.as_str(), "vnc" | "rdp") {
        return Err(ApiError::bad_request(
            "view_only is enforced for vnc and rdp sessions only",
        ));
    }
    if req.legacy && req.service.default_port().is_none() {
        return Err(ApiError::bad_request(
            "the legacy flow carries vnc, rdp or ssh only",
        ));
    }
    if state.store.agent(caller.tenant_id, &req.agent)?.is_none() {
        return Err(ApiError::not_found("agent"));
    }
    if !req.legacy {
        let Some(conn) = state.registry.get(caller.tenant_id, &req.agent) else {
            return Err(ApiError::conflict(
                "agent_offline",
                format!("agent {} is offline", req.agent),
            ));
        };
        if conn.service_port(&req.service).is_none() {
            return Err(ApiError::conflict(
                "service_unavailable",
                format!(
                    "agent {} does not announce the {} service",
                    req.agent, req.service
                ),
            ));
        }
    }
    let tenant = state.store.tenant_info(caller.tenant_id)?;
    let record = req.record.unwrap_or(tenant.record_by_default);
    let live = state.sessions.create(NewSession {
        tenant_id: caller.tenant_id,
        agent: req.agent.clone(),
        service: req.service.clone(),
        operator: operator.to_owned(),
        view_only: req.view_only,
        record,
        legacy: req.legacy,
        ttl,
    });
    let now = now_ms();
    let info = SessionInfo {
        id: live.id.clone(),
        tenant: tenant.name,
        agent: req.agent.clone(),
        service: req.service.clone(),
        operator: operator.to_owned(),
        state: SessionState::Pending,
        record,
        view_only: req.view_only,
        legacy: req.legacy,
        legacy_port: live.legacy_port,
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
    if let Err(e) = state.store.insert_session(caller.tenant_id, &info) {
        state
            .sessions
            .end(&live, EndReason::BrokerShutdown, "broker");
        state.sessions.forget(&live.id);
        return Err(e.into());
    }
    state.watch_session(&live);
    state
        .metrics
        .sessions_created
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut ev = event(
        AuditKind::SessionCreated,
        &caller,
        format!("{} on {}", req.service, req.agent),
    );
    ev.agent = Some(req.agent.to_string());
    ev.session = Some(live.id.clone());
    ev.operator = Some(operator.to_owned());
    state.store.audit(ev);
    let t = issue(&state, &live);
    let created = CreatedSession {
        id: live.id.clone(),
        state: SessionState::Pending,
        token: t.token,
        token_expires_at: t.token_expires_at,
        viewer_url: t.viewer_url,
        ws_url: t.ws_url,
        raw_ws_url: t.raw_ws_url,
        launch_url: t.launch_url,
        legacy_port: live.legacy_port,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

pub async fn list_sessions(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    caller.require(ANY)?;
    let Query(q) = query?;
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            SessionState::parse(s)
                .ok_or_else(|| ApiError::bad_request("state is pending, active or ended"))?,
        ),
    };
    Ok(Json(state.store.sessions(
        caller.tenant_id,
        filter,
        q.limit.unwrap_or(100).clamp(1, 1000),
    )?))
}

pub(super) fn session_of(state: &State, caller: &Caller, id: &str) -> ApiResult<SessionInfo> {
    match state.store.session_with_tenant(id)? {
        Some((s, tenant)) if tenant == caller.tenant_id => Ok(s),
        _ => Err(ApiError::not_found("session")),
    }
}

pub async fn get_session(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionInfo>> {
    caller.require(ANY)?;
    Ok(Json(session_of(&state, &caller, &id)?))
}

pub async fn stop_session(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionInfo>> {
    caller.require(OPERATORS)?;
    session_of(&state, &caller, &id)?;
    if let Some(live) = state.sessions.get(&id) {
        state
            .end_session(&live, EndReason::Stopped, &caller.who())
            .await;
    }
    Ok(Json(session_of(&state, &caller, &id)?))
}

pub async fn new_token(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    caller.require(OPERATORS)?;
    session_of(&state, &caller, &id)?;
    let live = state.sessions.get(&id).filter(|s| !s.ended.is_cancelled());
    let Some(live) = live else {
        return Err(ApiError::conflict(
            "session_ended",
            "the session has ended; create a new one",
        ));
    };
    Ok((StatusCode::CREATED, Json(issue(&state, &live))))
}

fn agent_info(state: &State, rec: &AgentRecord) -> AgentInfo {
    let mut info = AgentInfo {
        id: rec.id.clone(),
        key_fingerprint: rec.key_fingerprint.clone(),
        has_vnc_password: rec.has_vnc_password,
        rdp_username: rec.rdp_username.clone(),
        has_rdp_password: rec.has_rdp_password,
        rdp_certificate_sha256: rec.rdp_cert_sha256.clone(),
        rdp_certificate_pinned_at: rec.rdp_cert_pinned_at.map(rfc3339),
        online: false,
        services: Vec::new(),
        connected_since: None,
        last_seen: None,
        peer_addr: None,
        created_at: rfc3339(rec.created_at),
    };
    if let Some(conn) = state.registry.get(rec.tenant_id, &rec.id) {
        conn.fill(&mut info);
    }
    info
}

pub(super) fn agent_of(state: &State, tenant_id: TenantId, id: &str) -> ApiResult<AgentRecord> {
    let id = parse_agent_id(id)?;
    state
        .store
        .agent(tenant_id, &id)?
        .ok_or_else(|| ApiError::not_found("agent"))
}

pub async fn list_agents(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
) -> ApiResult<Json<Vec<AgentInfo>>> {
    caller.require(ANY)?;
    let agents = state.store.agents(caller.tenant_id)?;
    Ok(Json(agents.iter().map(|a| agent_info(&state, a)).collect()))
}

pub async fn get_agent(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentInfo>> {
    caller.require(ANY)?;
    Ok(Json(agent_info(
        &state,
        &agent_of(&state, caller.tenant_id, &id)?,
    )))
}

pub async fn register_agent(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    body: Result<Json<RegisterAgent>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<AgentInfo>)> {
    caller.require(&[Role::Admin])?;
    let Json(req) = body?;
    let (rdp_user, rdp_pw) = (req.rdp_username.as_deref(), req.rdp_password.as_deref());
    crate::store::check_rdp_login(rdp_user, rdp_pw).map_err(anyhow::Error::from)?;
    let mut rec = state.store.create_agent(
        caller.tenant_id,
        &req.id,
        &req.public_key,
        req.vnc_password.as_deref(),
    )?;
    if rdp_user.is_some() || rdp_pw.is_some() {
        state
            .store
            .set_agent_rdp(caller.tenant_id, &rec.id, rdp_user, rdp_pw)?;
        rec = agent_of(&state, caller.tenant_id, rec.id.as_str())?;
    }
    let mut ev = event(
        AuditKind::AgentRegistered,
        &caller,
        format!("key {}", rec.key_fingerprint),
    );
    ev.agent = Some(rec.id.to_string());
    state.store.audit(ev);
    Ok((StatusCode::CREATED, Json(agent_info(&state, &rec))))
}

pub async fn patch_agent(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    body: Result<Json<PatchAgent>, JsonRejection>,
) -> ApiResult<Json<AgentInfo>> {
    caller.require(&[Role::Admin])?;
    let Json(req) = body?;
    let before = agent_of(&state, caller.tenant_id, &id)?;
    let (rdp_user, rdp_pw) = (req.rdp_username.as_deref(), req.rdp_password.as_deref());
    crate::store::check_rdp_login(rdp_user, rdp_pw).map_err(anyhow::Error::from)?;
    state
        .store
        .set_agent_rdp(caller.tenant_id, &before.id, rdp_user, rdp_pw)?;
    let after = state
        .store
        .update_agent(
            caller.tenant_id,
            &before.id,
            req.public_key.as_deref(),
            req.vnc_password.as_deref(),
        )?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let key_changed = after.key_fingerprint != before.key_fingerprint;
    if key_changed && let Some(conn) = state.registry.get(caller.tenant_id, &after.id) {
        conn.disconnect("the agent's key was changed");
    }
    let mut changed = Vec::new();
    for (yes, what) in [
        (key_changed, "key"),
        (req.vnc_password.is_some(), "VNC password"),
        (rdp_user.is_some(), "RDP login"),
        (rdp_pw.is_some(), "RDP password"),
    ] {
        if yes {
            changed.push(what);
        }
    }
    let what = if changed.is_empty() {
        "nothing changed".to_owned()
    } else {
        format!("{} changed", changed.join(", "))
    };
    let mut ev = event(AuditKind::AgentChanged, &caller, what);
    ev.agent = Some(after.id.to_string());
    state.store.audit(ev);
    Ok(Json(agent_info(&state, &after)))
}

pub async fn revoke_agent(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let rec = agent_of(&state, caller.tenant_id, &id)?;
    state.store.delete_agent(caller.tenant_id, &rec.id)?;
    let live: Vec<_> = state
        .sessions
        .all()
        .into_iter()
        .filter(|s| s.tenant_id == caller.tenant_id && s.agent == rec.id)
        .collect();
    let ends = live
        .iter()
        .map(|s| state.end_session(s, EndReason::AgentRevoked, "broker"));
    futures_util::future::join_all(ends).await;
    if let Some(conn) = state.registry.get(caller.tenant_id, &rec.id) {
        conn.disconnect("this agent was revoked");
    }
    let mut ev = event(
        AuditKind::AgentRevoked,
        &caller,
        format!("key {}", rec.key_fingerprint),
    );
    ev.agent = Some(rec.id.to_string());
    state.store.audit(ev);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_tenant(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
) -> ApiResult<Json<TenantInfo>> {
    caller.require(&[Role::Admin])?;
    Ok(Json(state.store.tenant_info(caller.tenant_id)?))
}

pub async fn patch_tenant(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    body: Result<Json<PatchTenant>, JsonRejection>,
) -> ApiResult<Json<TenantInfo>> {
    caller.require(&[Role::Admin])?;
    let Json(req) = body?;
    if req.retention_days == Some(0) {
        return Err(ApiError::bad_request("retention_days must be at least 1"));
    }
    state.store.patch_tenant(caller.tenant_id, &req)?;
    state.store.audit(event(
        AuditKind::TenantChanged,
        &caller,
        "settings changed".into(),
    ));
    Ok(Json(state.store.tenant_info(caller.tenant_id)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    agent: Option<String>,
    operator: Option<String>,
    session: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    min_duration_secs: Option<u64>,
    max_duration_secs: Option<u64>,
    limit: Option<u32>,
}

pub async fn audit(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<AuditPage>> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let Query(q) = query?;
    let time = |name: &str, v: Option<String>| -> ApiResult<Option<i64>> {
        v.map(|s| {
            parse_rfc3339(&s)
                .ok_or_else(|| ApiError::bad_request(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
    };
    let filter = AuditFilter {
        agent: q.agent,
        operator: q.operator,
        session: q.session,
        kind: q.kind,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        min_duration_ms: q.min_duration_secs.map(secs_to_ms),
        max_duration_ms: q.max_duration_secs.map(secs_to_ms),
        limit: q.limit,
    };
    Ok(Json(state.store.audit_page(caller.tenant_id, &filter)?))
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// `GET /api/v1/recordings/{session_id}`: the recording file, streamed. Every download is
/// audited (replays fetch through here too).
pub async fn recording(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<axum::response::Response> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let session = session_of(&state, &caller, &id)?;
    let path =
        crate::recorder::path_for(&state.config.recordings_dir, caller.tenant_id, &session.id);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found("recording"));
        }
        Err(e) => return Err(anyhow::Error::from(e).context("opening a recording").into()),
    };
    let mut ev = event(
        AuditKind::RecordingViewed,
        &caller,
        "recording fetched".into(),
    );
    ev.session = Some(session.id.clone());
    ev.agent = Some(session.agent.to_string());
    state.store.audit(ev);
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let headers = [
        (
            axum::http::header::CONTENT_TYPE,
            "application/vnd.passerelle.recording".to_owned(),
        ),
        (
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.psrec\"", session.id),
        ),
        (axum::http::header::CACHE_CONTROL, "no-store".to_owned()),
    ];
    Ok(axum::response::IntoResponse::into_response((headers, body)))
}
