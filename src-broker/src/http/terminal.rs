//! The API of `ssh` terminals: search in their transcripts, a recording as asciicast for the
//! replay page, and the reset of an agent's pinned SSH host key. Every object is looked up in
//! the caller's tenant only.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use passerelle_proto::api::{
    ErrorBody, Role, TerminalSearch, TerminalSearchHit, TerminalSearchLine,
};
use passerelle_proto::ids::AgentId;
use passerelle_proto::terminal::asciicast::{self, CastError};
use serde::Deserialize;

use super::api::{ApiResult, SegmentQuery, session_of};
use super::auth::Caller;
use super::{ApiError, App};
use crate::recording::terminal::{Unplayable, signed_part};
use crate::store::{AuditKind, Db, MAX_QUERY, parse_rfc3339};

const READERS: &[Role] = &[Role::Admin, Role::Auditor];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// The text (1 to 256 bytes, no control characters; ASCII letters in any case).
    #[param(min_length = 1, max_length = 256)]
    q: String,
    /// At most this many matching lines (1 to 1000, default 200).
    limit: Option<u32>,
}

/// `GET /api/v1/audit/search?q=TEXT[&limit=N]`: the caller's terminal sessions whose
/// transcript holds TEXT (any substring; ASCII letters in any case), with the matching lines,
/// their connection and time. Auditor and admin keys; audited, without the text searched.
#[utoipa::path(get, path = "/api/v1/audit/search", tag = "audit",
    description = "Terminal sessions whose transcript holds a text, with the matching lines; audited. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    params(SearchQuery),
    responses((status = 200, description = "The matching sessions", body = TerminalSearch)))]
pub(super) async fn search(
    caller: Caller,
    State(app): State<App>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<Json<TerminalSearch>> {
    caller.require(READERS)?;
    let Query(q) = query?;
    if q.q.is_empty() || q.q.len() > MAX_QUERY || q.q.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "q must be 1 to {MAX_QUERY} bytes without control characters"
        )));
    }
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let tenant_id = caller.tenant_id;
    let matches = app
        .db
        .run(move |s| s.search_terminal(tenant_id, &q.q, limit))
        .await?;
    let mut by_session: BTreeMap<String, Vec<TerminalSearchLine>> = BTreeMap::new();
    for m in matches {
        by_session
            .entry(m.session)
            .or_default()
            .push(TerminalSearchLine {
                segment: m.segment,
                t: m.time_us as f64 / 1e6,
                input: m.input,
                text: m.text,
            });
    }
    let mut sessions = Vec::with_capacity(by_session.len());
    for (id, matches) in by_session {
        let Ok(info) = session_of(&app.db, &caller, &id).await else {
            continue;
        };
        // The first match, its time rounded up to the millisecond: the replay opens showing it.
        let (segment, first) = matches
            .first()
            .map_or((1, 0.0), |m| (m.segment, (m.t * 1000.0).ceil() / 1000.0));
        sessions.push(TerminalSearchHit {
            replay_url: format!(
                "{}/replay/{id}#connection={segment}&t={first:.3}",
                app.urls.base
            ),
            session: id,
            agent: info.agent,
            operator: info.operator,
            started_at: info.started_at,
            matches,
        });
    }
    sessions.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    let detail = format!(
        "terminal transcripts searched: {} sessions matched",
        sessions.len()
    );
    app.db
        .audit(caller.event(AuditKind::RecordingViewed, detail));
    Ok(Json(TerminalSearch { sessions }))
}

/// `GET /api/v1/recordings/{id}/asciicast[?segment=N]`: a terminal recording (the session's
/// first connection unless `segment` says which) as asciicast v2, once its hash chain and
/// signatures check: its signed part only (a truncated recording's frames after its last
/// checkpoint are not evidence). Auditor and admin keys; audited (`recording_viewed`).
#[utoipa::path(get, path = "/api/v1/recordings/{id}/asciicast", tag = "recordings",
    description = "A terminal recording's signed part as asciicast v2; audited. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    params(("id" = String, Path, description = "The session's id"), SegmentQuery),
    responses(
        (status = 200, description = "The asciicast", body = String, content_type = "application/x-asciicast"),
        (status = 404, description = "`not_found`, `no_terminal`: no such session or recording, or it is not a terminal's", body = ErrorBody),
        (status = 409, description = "`recording_tampered`, `recording_unsigned`: the recording does not check", body = ErrorBody),
    ))]
pub(super) async fn asciicast(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
    query: Result<Query<SegmentQuery>, QueryRejection>,
) -> ApiResult<Response> {
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
    let key = app.recording_key.public_hex();
    let made = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<_>> {
        let file = match std::fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::Error::from(e).context("reading a recording")),
        };
        // Only what a signature covers is replayed.
        let signed = match signed_part(&file, &key) {
            Ok(signed) => signed,
            Err(e) => return Ok(Some(Err(e))),
        };
        // The connection's own start, from its header (a reconnect starts later than the
        // session).
        let timestamp = passerelle_proto::recording::read_header(signed)
            .ok()
            .and_then(|(h, _, _)| parse_rfc3339(&h.started_at))
            .map(|ms| ms / 1000);
        Ok(Some(Ok(asciicast::from_recording(signed, timestamp))))
    })
    .await
    .map_err(|e| anyhow::anyhow!("making an asciicast: {e}"))??;
    let cast = match made {
        None => return Err(ApiError::not_found("recording")),
        Some(Err(e @ Unplayable::Tampered(_))) => {
            return Err(ApiError::conflict(
                "recording_tampered",
                format!("{e}; it cannot be replayed"),
            ));
        }
        Some(Err(e @ Unplayable::Unsigned)) => {
            return Err(ApiError::conflict("recording_unsigned", e.to_string()));
        }
        Some(Ok(Ok(cast))) => cast,
        Some(Ok(Err(CastError::Damaged(d)))) => {
            return Err(ApiError::conflict(
                "recording_tampered",
                format!("{d}; it cannot be replayed"),
            ));
        }
        Some(Ok(Err(e @ CastError::NotTerminal(_)))) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_terminal",
                e.to_string(),
            ));
        }
    };
    let mut ev = caller.event(
        AuditKind::RecordingViewed,
        format!("terminal recording replayed (asciicast, segment {segment})"),
    );
    ev.session = Some(session.id.clone());
    ev.agent = Some(session.agent.to_string());
    app.db.audit(ev);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        cast,
    )
        .into_response())
}

/// `DELETE /api/v1/agents/{id}/ssh-host-key`: forgets the workstation's pinned SSH host key,
/// so that the next terminal pins the one it finds (after a reinstall). Admin; audited. 204, or
/// 404 when nothing is pinned.
#[utoipa::path(delete, path = "/api/v1/agents/{id}/ssh-host-key", tag = "agents",
    description = "Forgets the workstation's pinned SSH host key. Roles: admin.",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The agent's id")),
    responses((status = 204, description = "Forgotten"),
        (status = 404, description = "`not_found`: no such agent in the caller's tenant, or no host key pinned", body = ErrorBody)))]
pub(super) async fn reset_host_key(
    caller: Caller,
    State(db): State<Db>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let agent = AgentId::new(&id).map_err(|_| ApiError::not_found("agent"))?;
    let (tenant_id, a) = (caller.tenant_id, agent.clone());
    let reset = db
        .run(move |s| {
            if s.agent(tenant_id, &a)?.is_none() {
                return Ok(None);
            }
            let before = s.agent_ssh(tenant_id, &a)?;
            let reset = s.reset_ssh_host_key(tenant_id, &a)?;
            Ok(Some((before, reset)))
        })
        .await?;
    let before = match reset {
        None => return Err(ApiError::not_found("agent")),
        Some((_, false)) => return Err(ApiError::not_found("ssh host key")),
        Some((before, true)) => before,
    };
    let mut ev = caller.event(
        AuditKind::SshHostKeyReset,
        format!(
            "pinned SSH host key {} forgotten",
            before.host_key_fingerprint().unwrap_or_default()
        ),
    );
    ev.agent = Some(agent.to_string());
    db.audit(ev);
    Ok(StatusCode::NO_CONTENT)
}
