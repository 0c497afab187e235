//! Fleet enrolment over HTTP: `/api/v1/enrollment-tokens` (admin keys make, list and revoke
//! tokens) and `/api/v1/enroll` (no API key: a workstation registers its own key with a token).
//!
//! `/api/v1/enroll` is a pre-authentication endpoint: a locked-out address is refused before
//! anything else, and an unknown token (malformed, no such id, wrong secret) counts toward the
//! same per-address lockout as unknown API keys and session tokens. A genuine token that cannot
//! be used (revoked, expired, spent, id outside its pattern, id taken) is not a guess: it gets a
//! clear refusal with its own code, audited in the token's tenant.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use passerelle_proto::api::{ErrorBody, Role};
use passerelle_proto::enroll::{
    CreateEnrollmentToken, CreatedEnrollmentToken, Enroll, Enrolled, EnrollmentTokenInfo,
    MAX_TOKEN_TEXT,
};

use super::api::ApiResult;
use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App};
use crate::store::{AuditKind, NewEvent, NewToken, Refusal, Refused, now_ms, parse_rfc3339};

/// Uses of a token when `uses` is not given.
const DEFAULT_USES: u32 = 1;

#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "enrolment",
    description = "Creates an enrolment token; its secret is in this answer only. Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = CreateEnrollmentToken,
    responses((status = 201, description = "The token, with its secret", body = CreatedEnrollmentToken)))]
pub(super) async fn create_token(
    caller: Caller,
    State(app): State<App>,
    body: Result<JsonBody<CreateEnrollmentToken>, ApiError>,
) -> ApiResult<(StatusCode, Json<CreatedEnrollmentToken>)> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body?;
    req.check().map_err(ApiError::bad_request)?;
    let expires_at = match req.expires_at.as_deref() {
        None => None,
        Some(text) => Some(parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request("expires_at must be an RFC 3339 time, e.g. 2027-01-31T00:00:00Z")
        })?),
    };
    if expires_at.is_some_and(|at| at <= now_ms()) {
        return Err(ApiError::bad_request("expires_at is in the past"));
    }
    let new = NewToken {
        name: req.name.trim().to_owned(),
        uses: req.uses.unwrap_or(DEFAULT_USES),
        expires_at,
        id_pattern: req.id_pattern,
        reenrol: req.reenrol,
    };
    let tenant_id = caller.tenant_id;
    let (rec, token) = app
        .db
        .run(move |s| s.create_enrollment_token(tenant_id, &new))
        .await?;
    let info = rec.info();
    let detail = format!(
        "token {} ({:?}): {} uses, expires {}, ids {}, re-enrolment {}",
        info.id,
        info.name,
        info.uses,
        info.expires_at.as_deref().unwrap_or("never"),
        info.id_pattern.as_ref().map_or("any", |p| p.as_str()),
        if info.reenrol { "allowed" } else { "refused" },
    );
    app.db
        .audit(caller.event(AuditKind::EnrollmentTokenCreated, detail));
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken { token, info }),
    ))
}

#[utoipa::path(get, path = "/api/v1/enrollment-tokens", tag = "enrolment",
    description = "The tenant's enrolment tokens (never their secrets). Roles: admin.",
    security(("api_key" = ["admin"])),
    responses((status = 200, description = "The tokens", body = Vec<EnrollmentTokenInfo>)))]
pub(super) async fn list_tokens(
    caller: Caller,
    State(app): State<App>,
) -> ApiResult<Json<Vec<EnrollmentTokenInfo>>> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    let tokens = app.db.run(move |s| s.enrollment_tokens(tenant_id)).await?;
    Ok(Json(tokens.iter().map(|t| t.info()).collect()))
}

#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", tag = "enrolment",
    description = "Revokes an enrolment token; the agents it enrolled stay registered. Roles: admin.",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The token's public id")),
    responses((status = 204, description = "Revoked"),
        (status = 404, description = "`not_found`: no such token in the caller's tenant", body = ErrorBody)))]
pub(super) async fn revoke_token(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    let rec = app
        .db
        .run(move |s| s.revoke_enrollment_token(tenant_id, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("enrollment token"))?;
    let detail = format!(
        "token {} ({:?}) revoked after {} of {} uses; the agents it enrolled stay registered",
        rec.id, rec.name, rec.used, rec.uses
    );
    app.db
        .audit(caller.event(AuditKind::EnrollmentTokenRevoked, detail));
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/enroll", tag = "enrolment",
    description = "A workstation registers its own key with an enrolment token (the token is the credential: no API key).",
    security(()),
    request_body = Enroll,
    responses(
        (status = 200, description = "Enrolled again: the registration's key was replaced", body = Enrolled),
        (status = 201, description = "Enrolled", body = Enrolled),
        (status = 401, description = "`unauthorized`: an unknown enrolment token", body = ErrorBody),
        (status = 403, description = "`token_revoked`, `token_expired`, `token_spent`, `id_not_allowed`: the token cannot enrol this id", body = ErrorBody),
        (status = 409, description = "`agent_exists`, `conflict`, `quota_exceeded`: the id or key is taken, or the tenant is full", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: this address presented too many unknown keys or tokens", body = ErrorBody),
    ))]
pub(super) async fn enroll(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<JsonBody<Enroll>, ApiError>,
) -> ApiResult<(StatusCode, Json<Enrolled>)> {
    app.guard
        .allowed(peer)
        .map_err(ApiError::too_many_attempts)?;
    let JsonBody(req) = body?;
    req.check().map_err(ApiError::bad_request)?;
    let max_agents = app.config.quotas.agents_per_tenant;
    let Enroll {
        token,
        id,
        public_key,
    } = req;
    let agent = id.clone();
    let result = if token.len() > MAX_TOKEN_TEXT {
        Err(Refusal {
            token: None,
            why: Refused::Unknown,
        })
    } else {
        app.db
            .run(move |s| s.enroll(&token, &agent, &public_key, max_agents))
            .await?
    };
    let done = match result {
        Ok(done) => done,
        Err(refusal) => return Err(refused(&app, peer, &id, refusal)),
    };
    let tenant_id = done.agent.tenant_id;
    if done.key_changed
        && let Some(conn) = app.registry.get(tenant_id, &done.agent.id)
    {
        conn.disconnect("this agent was enrolled again with a new key");
    }
    let mut ev = NewEvent::new(
        AuditKind::AgentEnrolled,
        format!(
            "token {} ({:?}); key {}{}",
            done.token_id,
            done.token_name,
            done.agent.key_fingerprint,
            match (done.reenrolled, done.key_changed) {
                (true, true) => "; enrolled again: the previous key was replaced",
                (true, false) => "; enrolled again with the same key",
                _ => "",
            }
        ),
    );
    ev.tenant_id = Some(tenant_id);
    ev.agent = Some(done.agent.id.to_string());
    ev.peer_addr = Some(peer.to_string());
    app.db.audit(ev);
    let tenant = app.db.run(move |s| s.tenant_name(tenant_id)).await?;
    let status = if done.reenrolled {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Enrolled {
            id: done.agent.id,
            tenant,
            key_fingerprint: done.agent.key_fingerprint,
            reenrolled: done.reenrolled,
        }),
    ))
}

/// The answer to a refused enrolment: a guess is counted, anything else audited in the token's
/// tenant.
fn refused(
    app: &App,
    peer: SocketAddr,
    id: &passerelle_proto::ids::AgentId,
    Refusal { token, why }: Refusal,
) -> ApiError {
    if why == Refused::Unknown {
        app.guard
            .failed(peer, token.map(|t| t.0), "an unknown enrolment token");
        return ApiError::unauthorized("unknown enrolment token");
    }
    if let Some((tenant_id, token_id)) = &token {
        let mut ev = NewEvent::new(
            AuditKind::RequestRefused,
            format!("enrolment with token {token_id} refused: {why}"),
        );
        ev.tenant_id = Some(*tenant_id);
        ev.agent = Some(id.to_string());
        ev.peer_addr = Some(peer.to_string());
        app.db.audit(ev);
    }
    let message = why.to_string();
    match why {
        Refused::Unknown => ApiError::unauthorized(message),
        Refused::Revoked => ApiError::new(StatusCode::FORBIDDEN, "token_revoked", message),
        Refused::Expired(_) => ApiError::new(StatusCode::FORBIDDEN, "token_expired", message),
        Refused::Spent(_) => ApiError::new(StatusCode::FORBIDDEN, "token_spent", message),
        Refused::IdNotAllowed { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "id_not_allowed", message)
        }
        Refused::IdTaken(_) => ApiError::conflict("agent_exists", message),
        Refused::KeyTaken => ApiError::conflict("conflict", message),
        Refused::BadKey(_) => ApiError::bad_request(message),
        Refused::Quota(_) => ApiError::conflict("quota_exceeded", message),
    }
}
