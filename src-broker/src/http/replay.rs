//! The replay page's data: a recording's screen stream ([`crate::screen_stream`]), its index
//! and its records from the keyframe nearest a time. Auditor and admin keys only, like the
//! recording itself; each index fetch (one per replay) is audited as `recording_viewed`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use passerelle_proto::api::{ErrorBody, Role};
use serde::Deserialize;

use super::api::{ApiResult, session_of};
use super::auth::Caller;
use super::{ApiError, App};
use crate::recording::screen_stream::{self, BuildError, Index};
use crate::store::AuditKind;

/// Which recorded connection of a session (from 1).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct IndexQuery {
    /// Which recorded connection of the session, from 1.
    #[serde(default = "first")]
    #[param(default = 1)]
    segment: u32,
}

fn first() -> u32 {
    1
}

/// The screen stream of a caller's session, built on first use (off the async threads).
async fn stream_of(
    app: &App,
    caller: &Caller,
    id: &str,
    segment: u32,
) -> ApiResult<(screen_stream::Built, String)> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let session = session_of(&app.db, caller, id).await?;
    let path = crate::recording::path_for(
        &app.config.recordings_dir,
        caller.tenant_id,
        &session.id,
        segment,
    );
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(ApiError::not_found("recording"));
    }
    let key = app.recording_key.public_hex();
    let built = tokio::task::spawn_blocking(move || screen_stream::ensure_built(&path, &key))
        .await
        .map_err(|e| anyhow::anyhow!("building a screen stream: {e}"))?;
    match built {
        Ok(stream) => Ok((stream, session.agent.to_string())),
        Err(e) => match e.downcast_ref::<BuildError>() {
            Some(BuildError::Tampered(_)) => Err(ApiError::conflict(
                "recording_tampered",
                format!("{e}; it cannot be replayed"),
            )),
            Some(BuildError::Unsigned) => {
                Err(ApiError::conflict("recording_unsigned", e.to_string()))
            }
            Some(BuildError::Playback(_)) => {
                Err(ApiError::conflict("recording_unplayable", e.to_string()))
            }
            None => Err(e.into()),
        },
    }
}

/// `GET /api/v1/recordings/{id}/screen/index`: what the replay page needs first (metadata,
/// duration, input marks, keyframes). Audited: this is a replay.
#[utoipa::path(get, path = "/api/v1/recordings/{id}/screen/index", tag = "recordings",
    description = "What the replay page needs first: metadata, duration, input marks, keyframes; audited. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    params(("id" = String, Path, description = "The session's id"), IndexQuery),
    responses(
        (status = 200, description = "The screen stream's index", body = Index),
        (status = 404, description = "`not_found`: no such session in the caller's tenant, or no such recording", body = ErrorBody),
        (status = 409, description = "`recording_tampered`, `recording_unsigned`, `recording_unplayable`: the recording does not check or cannot be played", body = ErrorBody),
    ))]
pub(super) async fn index(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
    query: Result<Query<IndexQuery>, QueryRejection>,
) -> ApiResult<Json<Index>> {
    let Query(q) = query?;
    let (built, agent) = stream_of(&app, &caller, &id, q.segment).await?;
    let index = built.index;
    let mut ev = caller.event(
        AuditKind::RecordingViewed,
        format!("recording replayed (segment {})", q.segment),
    );
    ev.session = Some(id);
    ev.agent = Some(agent);
    app.db.audit(ev);
    Ok(Json(index))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ScreenQuery {
    /// Recorded seconds to show.
    #[serde(default)]
    #[param(minimum = 0, default = 0)]
    from: f64,
    /// Keyframe intervals to send (the page fetches the next ones as it plays).
    #[serde(default = "default_keyframes")]
    #[param(default = 5)]
    keyframes: usize,
    /// Which recorded connection of the session.
    #[serde(default = "first")]
    #[param(default = 1)]
    segment: u32,
}

fn default_keyframes() -> usize {
    5
}

/// `GET /api/v1/recordings/{id}/screen?from=SECONDS&keyframes=N`: the stream's records from
/// the last keyframe at or before `from`, up to the N-th keyframe after it (or the end).
/// `X-Passerelle-Keyframe` says which keyframe it starts at (`number time_us`).
#[utoipa::path(get, path = "/api/v1/recordings/{id}/screen", tag = "recordings",
    description = "The screen stream's records from the last keyframe at or before `from`, up to the N-th keyframe after it. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    params(("id" = String, Path, description = "The session's id"), ScreenQuery),
    responses(
        (status = 200, description = "The records", body = super::openapi::Binary, content_type = "application/vnd.passerelle.screen",
            headers(("x-passerelle-keyframe" = String, description = "The keyframe it starts at: `number time_us`"))),
        (status = 404, description = "`not_found`, `no_screen`: no such session or recording, or it holds no screen", body = ErrorBody),
        (status = 409, description = "`recording_tampered`, `recording_unsigned`, `recording_unplayable`: the recording does not check or cannot be played", body = ErrorBody),
    ))]
pub(super) async fn screen(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
    query: Result<Query<ScreenQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    if !q.from.is_finite() || q.from < 0.0 {
        return Err(ApiError::bad_request("from must be a number of seconds"));
    }
    let (built, _) = stream_of(&app, &caller, &id, q.segment).await?;
    let index = &built.index;
    let Some((number, time_us, offset)) =
        screen_stream::keyframe_for(index, (q.from * 1e6).round() as u64)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_screen",
            "this recording holds no screen",
        ));
    };
    let end = index
        .keyframes
        .get(number.saturating_add(q.keyframes.max(1)))
        .map_or(index.records_len, |(_, off)| *off);
    let body = tokio::task::spawn_blocking(move || built.records(offset, end))
        .await
        .map_err(|e| anyhow::anyhow!("reading a screen stream: {e}"))??;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.passerelle.screen".to_owned(),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (
                header::HeaderName::from_static("x-passerelle-keyframe"),
                format!("{number} {time_us}"),
            ),
        ],
        body,
    )
        .into_response())
}
