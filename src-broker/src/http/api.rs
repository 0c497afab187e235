//! The JSON API handlers (`/api/v1/...`) of tenants, the audit and recordings, and what every
//! handler shares. Every handler resolves objects inside the caller's tenant only, so another
//! tenant's objects answer 404 exactly like missing ones. Sessions are in `sessions.rs`,
//! agents in `agents.rs`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use passerelle_proto::api::{
    AuditPage, ErrorBody, PatchTenant, RecordingSegment, Role, SessionInfo, TenantInfo,
};
use serde::Deserialize;

use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App};
use crate::store::{AuditFilter, AuditKind, Db, parse_rfc3339};

pub(super) type ApiResult<T> = Result<T, ApiError>;
pub(super) const OPERATORS: &[Role] = &[Role::Admin, Role::Helpdesk];
pub(super) const ANY: &[Role] = &[Role::Admin, Role::Helpdesk, Role::Auditor];
const READERS: &[Role] = &[Role::Admin, Role::Auditor];

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// A known path with a method it does not have (axum adds the `Allow` header).
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take this method; see the Allow header",
    )
}

/// A session of the caller's tenant.
pub(super) async fn session_of(db: &Db, caller: &Caller, id: &str) -> ApiResult<SessionInfo> {
    let id = id.to_owned();
    match db.run(move |s| s.session_with_tenant(&id)).await? {
        Some((s, tenant)) if tenant == caller.tenant_id => Ok(s),
        _ => Err(ApiError::not_found("session")),
    }
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenant",
    description = "The caller's tenant's settings (never its secrets). Roles: admin.",
    security(("api_key" = ["admin"])),
    responses((status = 200, description = "The settings", body = TenantInfo)))]
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

#[utoipa::path(patch, path = "/api/v1/tenant", tag = "tenant",
    description = "Changes the tenant's settings (only the fields given). Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = PatchTenant,
    responses((status = 200, description = "The settings after the change", body = TenantInfo)))]
pub(super) async fn patch_tenant(
    caller: Caller,
    State(db): State<Db>,
    body: Result<JsonBody<PatchTenant>, ApiError>,
) -> ApiResult<Json<TenantInfo>> {
    caller.require(&[Role::Admin])?;
    let JsonBody(mut req) = body?;
    if let Some(list) = &req.frame_ancestors {
        let origins = passerelle_proto::origin::normalize_origins(list)
            .map_err(|e| ApiError::bad_request(format!("frame_ancestors: {e}")))?;
        req.frame_ancestors = Some(origins);
    }
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Only this agent's.
    agent: Option<String>,
    /// Only this operator's.
    operator: Option<String>,
    /// Only this session's.
    session: Option<String>,
    /// Only events of this kind, e.g. `session_created`.
    kind: Option<String>,
    /// From this time on (RFC 3339).
    since: Option<String>,
    /// Up to this time (RFC 3339).
    until: Option<String>,
    /// Sessions that lasted at least this long.
    min_duration_secs: Option<u64>,
    /// Sessions that lasted at most this long.
    max_duration_secs: Option<u64>,
    /// At most this many of each.
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    description = "Sessions and audit events that match the filters. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    params(AuditQuery),
    responses((status = 200, description = "The matching sessions and events", body = AuditPage)))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SegmentQuery {
    /// Which recorded connection of the session, from 1 (default 1).
    pub(super) segment: Option<u32>,
}

/// `GET /api/v1/recordings/{session_id}[?segment=N]`: a recording file (the session's first
/// connection unless `segment` says which), streamed. Every download is audited.
#[utoipa::path(get, path = "/api/v1/recordings/{id}", tag = "recordings",
    description = "A session's recording file (`.psrec`), streamed; audited. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    params(("id" = String, Path, description = "The session's id"), SegmentQuery),
    responses(
        (status = 200, description = "The recording", body = super::openapi::Binary, content_type = "application/vnd.passerelle.recording"),
        (status = 404, description = "`not_found`: no such session in the caller's tenant, or no such recording", body = ErrorBody),
    ))]
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
#[utoipa::path(get, path = "/api/v1/recordings/{id}/segments", tag = "recordings",
    description = "A session's recorded connections, in order. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The recorded connections", body = Vec<RecordingSegment>),
        (status = 404, description = "`not_found`: no such session in the caller's tenant, or nothing recorded", body = ErrorBody),
    ))]
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
