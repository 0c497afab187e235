//! The API of `ssh` terminals: search in their transcripts, a recording as asciicast for the
//! replay page, and the reset of an agent's pinned SSH host key. Every object is looked up in
//! the caller's tenant only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use passerelle_proto::api::{Role, TerminalSearch, TerminalSearchHit, TerminalSearchLine};
use passerelle_proto::ids::AgentId;
use passerelle_proto::recording::{Verdict, verify};
use passerelle_proto::terminal::asciicast::{self, CastError};
use serde::Deserialize;

use super::ApiError;
use super::api::{ApiResult, event, session_of};
use super::auth::Caller;
use crate::broker::State;
use crate::store::{AuditKind, MAX_QUERY, parse_rfc3339};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: String,
    limit: Option<u32>,
}

/// `GET /api/v1/audit/search?q=TEXT[&limit=N]`: the caller's terminal sessions whose
/// transcript holds TEXT (any substring; ASCII letters in any case), with the matching lines and
/// their times. Auditor and admin keys; audited, without the text searched.
pub async fn search(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<Json<TerminalSearch>> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let Query(q) = query?;
    if q.q.is_empty() || q.q.len() > MAX_QUERY || q.q.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "q must be 1 to {MAX_QUERY} bytes without control characters"
        )));
    }
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let matches = state.store.search_terminal(caller.tenant_id, &q.q, limit)?;
    let mut by_session: BTreeMap<String, Vec<TerminalSearchLine>> = BTreeMap::new();
    for m in matches {
        by_session
            .entry(m.session)
            .or_default()
            .push(TerminalSearchLine {
                t: m.time_us as f64 / 1e6,
                input: m.input,
                text: m.text,
            });
    }
    let mut sessions = Vec::with_capacity(by_session.len());
    for (id, matches) in by_session {
        let Ok(info) = session_of(&state, &caller, &id) else {
            continue;
        };
        // The first match's time, rounded up to the millisecond: the replay opens showing it.
        let first = matches
            .first()
            .map_or(0.0, |m| (m.t * 1000.0).ceil() / 1000.0);
        sessions.push(TerminalSearchHit {
            replay_url: format!("{}/replay/{id}#t={first:.3}", state.base_url),
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
    state
        .store
        .audit(event(AuditKind::RecordingViewed, &caller, detail));
    Ok(Json(TerminalSearch { sessions }))
}

/// `GET /api/v1/recordings/{id}/asciicast`: a terminal recording as asciicast v2, once its
/// hash chain and signatures check. Auditor and admin keys; audited (`recording_viewed`).
pub async fn asciicast(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let session = session_of(&state, &caller, &id)?;
    let path =
        crate::recorder::path_for(&state.config.recordings_dir, caller.tenant_id, &session.id);
    let key = state.recording_key.public_hex();
    let timestamp = session
        .started_at
        .as_deref()
        .and_then(parse_rfc3339)
        .map(|ms| ms / 1000);
    let made = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<_>> {
        let file = match std::fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::Error::from(e).context("reading a recording")),
        };
        let verdict = verify(&file, |m, s| crate::recorder::check_signature(&key, m, s));
        if let Verdict::Tampered(damage) = verdict {
            return Ok(Some(Err(CastError::Damaged(damage))));
        }
        Ok(Some(asciicast::from_recording(&file, timestamp)))
    })
    .await
    .map_err(|e| anyhow::anyhow!("making an asciicast: {e}"))??;
    let cast = match made {
        None => return Err(ApiError::not_found("recording")),
        Some(Ok(cast)) => cast,
        Some(Err(CastError::Damaged(d))) => {
            return Err(ApiError::conflict(
                "recording_tampered",
                format!("{d}; it cannot be replayed"),
            ));
        }
        Some(Err(e @ CastError::NotTerminal(_))) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_terminal",
                e.to_string(),
            ));
        }
    };
    let mut ev = event(
        AuditKind::RecordingViewed,
        &caller,
        "terminal recording replayed (asciicast)".into(),
    );
    ev.session = Some(session.id.clone());
    ev.agent = Some(session.agent.to_string());
    state.store.audit(ev);
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
pub async fn reset_host_key(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let agent = AgentId::new(&id).map_err(|_| ApiError::not_found("agent"))?;
    if state.store.agent(caller.tenant_id, &agent)?.is_none() {
        return Err(ApiError::not_found("agent"));
    }
    let before = state.store.agent_ssh(caller.tenant_id, &agent)?;
    if !state.store.reset_ssh_host_key(caller.tenant_id, &agent)? {
        return Err(ApiError::not_found("ssh host key"));
    }
    let mut ev = event(
        AuditKind::SshHostKeyReset,
        &caller,
        format!(
            "pinned SSH host key {} forgotten",
            before.host_key_fingerprint().unwrap_or_default()
        ),
    );
    ev.agent = Some(agent.to_string());
    state.store.audit(ev);
    Ok(StatusCode::NO_CONTENT)
}
