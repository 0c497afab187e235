//! `/api/v1/sessions`: thin adapters over the session core ([`crate::session::Core`]), and the
//! URLs that carry a session's tokens.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use passerelle_proto::api::{
    CreateSession, CreatedSession, IssuedToken, LaunchAnswer, SessionInfo, SessionState,
};
use passerelle_proto::ids::ServiceKind;
use passerelle_proto::launch::LaunchUrl;
use serde::Deserialize;

use super::api::{ANY, ApiResult, OPERATORS, session_of};
use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App, Urls};
use crate::session::{CreateError, LiveSession, NewSession, Tokens};
use crate::store::rfc3339;
use passerelle_proto::api::ErrorBody;

/// `&creds=stored` for an `rdp` session's page when credentials are stored for its agent (the
/// page then sends placeholders that the broker replaces).
async fn rdp_fragment(app: &App, session: &LiveSession) -> &'static str {
    if session.service.kind() != Some(ServiceKind::Rdp) {
        return "";
    }
    let (tenant_id, agent) = (session.tenant_id, session.agent.clone());
    match app
        .db
        .run(move |s| s.rdp_credentials(tenant_id, &agent))
        .await
    {
        Ok(Some(_)) => "&creds=stored",
        Ok(None) => "",
        Err(e) => {
            tracing::error!(error = %e, "could not read the RDP credentials");
            ""
        }
    }
}

/// A `passerelle://open?…` URL for the desktop helper with a launch token of the session.
fn launch_url(urls: &Urls, session: &LiveSession, token: String) -> String {
    LaunchUrl {
        broker: urls.base.clone(),
        session: session.id.clone(),
        token,
        service: session.service.clone(),
        fingerprint: urls.tls_fingerprint(),
        agent: Some(session.agent.clone()),
    }
    .to_url()
}

/// The URLs that carry a viewer token and a launch token; `page` is added to the viewer page's
/// fragment.
fn issued(urls: &Urls, session: &LiveSession, tokens: &Tokens, page: &str) -> IssuedToken {
    let base = &urls.base;
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let id = &session.id;
    // Tokens ride in the fragment, which no server or proxy sees; the reusable launch token is
    // not there at all: the page trades its one-time exchange token for a launch URL.
    let mut viewer = format!(
        "{base}/view/{id}#token={}&exchange={}",
        tokens.viewer, tokens.exchange
    );
    if session.view_only {
        viewer.push_str("&view_only=1");
    }
    // What the page shows (agent, service, a "recorded" badge) before it connects.
    viewer.push_str(&format!(
        "&agent={}&service={}",
        session.agent, session.service
    ));
    if session.record {
        viewer.push_str("&record=1");
    }
    viewer.push_str(page);
    IssuedToken {
        token: tokens.viewer.clone(),
        token_expires_at: rfc3339(tokens.expires_at_ms),
        viewer_url: viewer,
        ws_url: format!("{ws_base}/ws/sessions/{id}?token={}", tokens.viewer),
        raw_ws_url: format!("{ws_base}/ws/sessions/{id}/raw?token={}", tokens.viewer),
        launch_url: launch_url(urls, session, tokens.launch.clone()),
    }
}

fn create_error(e: CreateError) -> ApiError {
    let message = e.to_string();
    match e {
        CreateError::Invalid(m) => ApiError::bad_request(m),
        CreateError::UnknownAgent => ApiError::not_found("agent"),
        CreateError::AgentOffline(_) => ApiError::conflict("agent_offline", message),
        CreateError::ServiceUnavailable(..) => ApiError::conflict("service_unavailable", message),
        CreateError::RecordingRequired => {
            ApiError::new(StatusCode::FORBIDDEN, "recording_required", message)
        }
        CreateError::Quota(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", m),
        CreateError::NoLegacyPort(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_legacy_port",
            "every legacy port is taken by a pending legacy session; retry when one ends",
        ),
        CreateError::Store(e) => e.into(),
    }
}

#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions",
    description = "Opens a session on an agent's service. Roles: admin, helpdesk.",
    security(("api_key" = ["admin", "helpdesk"])),
    request_body = CreateSession,
    responses(
        (status = 201, description = "Created: its one-time viewer token and URLs", body = CreatedSession),
        (status = 403, description = "`recording_required`: the tenant records every session", body = ErrorBody),
        (status = 404, description = "`not_found`: no such agent in the caller's tenant", body = ErrorBody),
        (status = 409, description = "`agent_offline`, `service_unavailable`, `conflict`: the agent is not connected or does not offer the service", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the tenant or agent has as many sessions as allowed", body = ErrorBody),
        (status = 503, description = "`no_legacy_port`: every legacy port is taken", body = ErrorBody),
    ))]
pub(super) async fn create_session(
    caller: Caller,
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    body: Result<JsonBody<CreateSession>, ApiError>,
) -> ApiResult<axum::response::Response> {
    caller.require(OPERATORS)?;
    let JsonBody(req) = body?;
    // An agent held by another node of the cluster: the session runs there.
    if let Some((cluster, node)) =
        super::cluster::agent_elsewhere(&app, &headers, caller.tenant_id, &req.agent).await
    {
        let bytes = serde_json::to_vec(&req).map_err(anyhow::Error::from)?;
        let mut fwd = axum::http::Request::builder()
            .method(axum::http::Method::POST)
            .uri("/api/v1/sessions")
            .body(axum::body::Body::from(bytes))
            .map_err(anyhow::Error::from)?;
        *fwd.headers_mut() = headers;
        fwd.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
        fwd.headers_mut()
            .remove(axum::http::header::TRANSFER_ENCODING);
        fwd.extensions_mut().insert(ConnectInfo(peer));
        return Ok(super::cluster::forward(&cluster, &node, fwd).await);
    }
    let new = NewSession {
        tenant_id: caller.tenant_id,
        agent: req.agent,
        service: req.service,
        operator: caller.operator_for(req.operator),
        record: req.record,
        view_only: req.view_only,
        legacy: req.legacy,
        ttl_secs: req.ttl_secs,
        ssh_user: req.ssh_user,
    };
    let created = app
        .core
        .create(new, &caller.actor())
        .await
        .map_err(create_error)?;
    let page = rdp_fragment(&app, &created.session).await;
    let t = issued(&app.urls, &created.session, &created.tokens, page);
    Ok(axum::response::IntoResponse::into_response((
        StatusCode::CREATED,
        Json(CreatedSession {
            id: created.session.id.clone(),
            state: SessionState::Pending,
            token: t.token,
            token_expires_at: t.token_expires_at,
            viewer_url: t.viewer_url,
            ws_url: t.ws_url,
            raw_ws_url: t.raw_ws_url,
            launch_url: t.launch_url,
            legacy_port: created.session.legacy_port,
        }),
    )))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only sessions in this state.
    state: Option<SessionState>,
    /// At most this many (1 to 1000, default 100; larger values count as 1000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions",
    description = "The tenant's sessions, newest first. Roles: admin, helpdesk, auditor.",
    security(("api_key" = ["admin", "helpdesk", "auditor"])),
    params(ListQuery),
    responses((status = 200, description = "The sessions", body = Vec<SessionInfo>)))]
pub(super) async fn list_sessions(
    caller: Caller,
    State(app): State<App>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    caller.require(ANY)?;
    let Query(q) = query?;
    let filter = q.state;
    let (tenant_id, limit) = (caller.tenant_id, q.limit.unwrap_or(100).clamp(1, 1000));
    let found = app
        .db
        .run(move |s| s.sessions(tenant_id, filter, limit))
        .await?;
    Ok(Json(found))
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions",
    description = "One session. Roles: admin, helpdesk, auditor.",
    security(("api_key" = ["admin", "helpdesk", "auditor"])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = SessionInfo),
        (status = 404, description = "`not_found`: no such session in the caller's tenant", body = ErrorBody),
    ))]
pub(super) async fn get_session(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionInfo>> {
    caller.require(ANY)?;
    Ok(Json(session_of(&app.db, &caller, &id).await?))
}

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions",
    description = "Stops a session (its viewers are closed with 4020); stopping an ended session changes nothing. Roles: admin, helpdesk.",
    security(("api_key" = ["admin", "helpdesk"])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session, ended", body = SessionInfo),
        (status = 404, description = "`not_found`: no such session in the caller's tenant", body = ErrorBody),
    ))]
pub(super) async fn stop_session(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionInfo>> {
    caller.require(OPERATORS)?;
    session_of(&app.db, &caller, &id).await?;
    app.core.stop(caller.tenant_id, &id, &caller.actor()).await;
    Ok(Json(session_of(&app.db, &caller, &id).await?))
}

/// `POST /api/v1/sessions/{id}/launch` with `Authorization: Bearer <exchange token>` (no API
/// key): a launch URL for the session, for the viewer page's "open in desktop app". The token
/// works once.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/launch", tag = "sessions",
    description = "Trades the viewer page's one-time exchange token (`Authorization: Bearer <exchange token>`, no API key) for a `passerelle://` launch URL for the desktop helper.",
    security(("exchange_token" = [])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The launch URL", body = LaunchAnswer),
        (status = 401, description = "`unauthorized`: no exchange token, or an unknown, used or expired one", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: this address presented too many unknown tokens", body = ErrorBody),
    ))]
pub(super) async fn launch(
    State(app): State<App>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Json<LaunchAnswer>> {
    let token = super::viewer::bearer(&headers).unwrap_or_default();
    let (session, launch) = match app.core.exchange(&id, &token, peer).await {
        Ok(ok) => ok,
        Err(refused) if refused.code == passerelle_proto::close::TOO_MANY_ATTEMPTS => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                refused.reason,
            ));
        }
        Err(refused) => return Err(ApiError::unauthorized(refused.reason)),
    };
    Ok(Json(LaunchAnswer {
        launch_url: launch_url(&app.urls, &session, launch),
    }))
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/tokens", tag = "sessions",
    description = "A new one-time viewer token (and launch token) for a live session. Roles: admin, helpdesk.",
    security(("api_key" = ["admin", "helpdesk"])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 201, description = "The token and its URLs", body = IssuedToken),
        (status = 404, description = "`not_found`: no such session in the caller's tenant", body = ErrorBody),
        (status = 409, description = "`session_ended`: the session has ended", body = ErrorBody),
    ))]
pub(super) async fn new_token(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    caller.require(OPERATORS)?;
    session_of(&app.db, &caller, &id).await?;
    let Some(live) = app.core.live(caller.tenant_id, &id) else {
        return Err(ApiError::conflict(
            "session_ended",
            "the session has ended; create a new one",
        ));
    };
    let tokens = app.core.issue(&live);
    let page = rdp_fragment(&app, &live).await;
    Ok((
        StatusCode::CREATED,
        Json(issued(&app.urls, &live, &tokens, page)),
    ))
}
