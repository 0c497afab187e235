//! The JSON API handlers (`/api/v1/...`) of tenants, the audit and recordings, and what every
//! handler shares. Every handler resolves objects inside the caller's tenant only, so another
//! tenant's objects answer 404 exactly like missing ones. Sessions are in `sessions.rs`,
//! agents in `agents.rs`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use passerelle_proto::api::{
    AuditPage, PatchTenant, RecordingSegment, Role, SessionInfo, TenantInfo,
};
use serde::Deserialize;

use super::auth::Caller;
use super::{ApiError, App};
use crate::store::{AuditFilter, AuditKind, Db, parse_rfc3339};

pub(super) type ApiResult<T> = Result<T, ApiError>;
pub(super) const OPERATORS: &[Role] = &[Role::Admin, Role::Helpdesk];
pub(super) const ANY: &[Role] = &[Role::Admin, Role::Helpdesk, Role::Auditor];
const READERS: &[Role] = &[Role::Admin, Role::Auditor];

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// A session of the caller's tenant.
pub(super) async fn session_of(db: &Db, caller: &Caller, id: &str) -> ApiResult<SessionInfo> {
    let id = id.to_owned();
    match db.run(move |s| s.session_with_tenant(&id)).await? {
        Some((s, tenant)) if tenant == caller.tenant_id => Ok(s),
        _ => Err(ApiError::not_found("session")),
    }
}

pub(super) async fn get_tenant(
    caller: Caller,
    State(db): State<Db>,
) -> ApiResult<Json<TenantInfo>> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    let info = db
        .run(move |s| {
            s.ensure_tenant_ssh_key(tenant_id)?;
            s.tenant_info(tenant_id)
        })
        .await?;
    Ok(Json(info))
}

pub(super) async fn patch_tenant(
    caller: Caller,
    State(db): State<Db>,
    body: Result<Json<PatchTenant>, JsonRejection>,
) -> ApiResult<Json<TenantInfo>> {
    caller.require(&[Role::Admin])?;
    let Json(req) = body?;
    if req.retention_days == Some(0) {
        return Err(ApiError::bad_request("retention_days must be at least 1"));
    }
    let what = changed_settings(&req);
    let tenant_id = caller.tenant_id;
    let info = db
        .run(move |s| {
            s.patch_tenant(tenant_id, &req)?;
            s.tenant_info(tenant_id)
        })
        .await?;
    db.audit(caller.event(
        AuditKind::TenantChanged,
        format!("settings changed: {what}"),
    ));
    Ok(Json(info))
}

/// The names of the settings a patch changes (never their secret values).
fn changed_settings(p: &PatchTenant) -> String {
    let names = [
        (p.vnc_password.is_some(), "vnc_password"),
        (p.record_by_default.is_some(), "record_by_default"),
        (p.recording_policy.is_some(), "recording_policy"),
        (p.retention_days.is_some(), "retention_days"),
        (p.recording_required.is_some(), "recording_required"),
        (p.ssh_username.is_some(), "ssh_username"),
        (p.record_terminal_input.is_some(), "record_terminal_input"),
    ];
    let changed: Vec<&str> = names.iter().filter(|(c, _)| *c).map(|(_, n)| *n).collect();
    if changed.is_empty() {
        "none".into()
    } else {
        changed.join(", ")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
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

pub(super) async fn audit(
    caller: Caller,
    State(db): State<Db>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<AuditPage>> {
    caller.require(READERS)?;
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
    // What was done before this call is in the answer.
    db.audit_flushed().await;
    let tenant_id = caller.tenant_id;
    Ok(Json(
        db.run(move |s| s.audit_page(tenant_id, &filter)).await?,
    ))
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SegmentQuery {
    pub(super) segment: Option<u32>,
}

/// `GET /api/v1/recordings/{session_id}[?segment=N]`: a recording file (the session's first
/// connection unless `segment` says which), streamed. Every download is audited.
pub(super) async fn recording(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
    query: Result<Query<SegmentQuery>, QueryRejection>,
) -> ApiResult<axum::response::Response> {
    caller.require(READERS)?;
    let Query(q) = query?;
    let session = session_of(&app.db, &caller, &id).await?;
    let segment = q.segment.unwrap_or(1);
    let path = crate::recording::path_for(
        &app.config.recordings_dir,
        caller.tenant_id,
        &session.id,
        segment,
    );
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found("recording"));
        }
        Err(e) => return Err(anyhow::Error::from(e).context("opening a recording").into()),
    };
    let mut ev = caller.event(
        AuditKind::RecordingViewed,
        format!("recording fetched (segment {segment})"),
    );
    ev.session = Some(session.id.clone());
    ev.agent = Some(session.agent.to_string());
    app.db.audit(ev);
    let name = match segment {
        1 => format!("{}.psrec", session.id),
        n => format!("{}.{n}.psrec", session.id),
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let headers = [
        (
            axum::http::header::CONTENT_TYPE,
            "application/vnd.passerelle.recording".to_owned(),
        ),
        (
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ),
        (axum::http::header::CACHE_CONTROL, "no-store".to_owned()),
    ];
    Ok(axum::response::IntoResponse::into_response((headers, body)))
}

/// `GET /api/v1/recordings/{session_id}/segments`: the session's recorded connections, in
/// order.
pub(super) async fn segments(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<RecordingSegment>>> {
    caller.require(READERS)?;
    let session = session_of(&app.db, &caller, &id).await?;
    let (dir, tenant_id) = (app.config.recordings_dir.clone(), caller.tenant_id);
    let found = tokio::task::spawn_blocking(move || {
        crate::recording::segments(&dir, tenant_id, &session.id)
            .into_iter()
            .map(|(segment, path)| crate::recording::describe(segment, &path))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| anyhow::anyhow!("listing recordings: {e}"))?;
    if found.is_empty() {
        return Err(ApiError::not_found("recording"));
    }
    Ok(Json(found))
}
