//! `/api/v1/keys`: an admin lists, creates and revokes its own tenant's API keys.
//!
//! Another tenant's key is answered 404 like a missing one. The secret is in the creation's
//! answer only. Every change is audited (`api_key_created`, `api_key_revoked`) with the id of the
//! key changed and of the key that made the call. The tenant's last active admin key cannot be
//! revoked here (409 `last_admin_key`): an API that locks its tenant out would need the broker's
//! command line to recover, so the command line (`passerelle api-key revoke`) is where that is
//! done, deliberately.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use passerelle_proto::api::Role;
use passerelle_proto::api_keys::{ApiKeyInfo, CreateApiKey, CreatedApiKey, check_name};

use super::ApiError;
use super::auth::Caller;
use crate::broker::State;
use crate::store::{AuditKind, NewEvent, RevokeError, Revoked, now_ms, parse_rfc3339};

type ApiResult<T> = Result<T, ApiError>;

/// The routes, merged into the router.
pub fn routes() -> axum::Router<Arc<State>> {
    use axum::routing::{delete, get};
    axum::Router::new()
        .route("/api/v1/keys", get(list).post(create))
        .route("/api/v1/keys/{id}", delete(revoke))
}

fn audit(state: &State, caller: &Caller, kind: AuditKind, key: &ApiKeyInfo, verb: &str) {
    let mut ev = NewEvent::new(
        kind,
        format!(
            "API key {} ({}, {:?}) {verb} by API key {}",
            key.id,
            key.role.as_str(),
            key.name,
            caller.key_id
        ),
    );
    ev.tenant_id = Some(caller.tenant_id);
    ev.operator = Some(caller.who());
    state.store.audit(ev);
}

/// `GET /api/v1/keys`: the tenant's keys, revoked and expired ones included.
pub async fn list(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
) -> ApiResult<Json<Vec<ApiKeyInfo>>> {
    caller.require(&[Role::Admin])?;
    Ok(Json(state.store.api_keys(caller.tenant_id)?))
}

/// `POST /api/v1/keys` `{name, role, expires_at?}`: 201 with the key's secret, shown once.
pub async fn create(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    body: Result<Json<CreateApiKey>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    caller.require(&[Role::Admin])?;
    let Json(req) = body?;
    check_name(&req.name).map_err(ApiError::bad_request)?;
    let expires_at = match &req.expires_at {
        None => None,
        Some(text) => {
            let at = parse_rfc3339(text).ok_or_else(|| {
                ApiError::bad_request(
                    "expires_at must be an RFC 3339 time, e.g. 2030-01-31T12:00:00Z",
                )
            })?;
            if at <= now_ms() {
                return Err(ApiError::bad_request("expires_at must be in the future"));
            }
            Some(at)
        }
    };
    let (info, key) =
        state
            .store
            .create_named_api_key(caller.tenant_id, req.role, &req.name, expires_at)?;
    audit(&state, &caller, AuditKind::ApiKeyCreated, &info, "created");
    Ok((StatusCode::CREATED, Json(CreatedApiKey { info, key })))
}

/// `DELETE /api/v1/keys/{id}`: 204; the key fails from the next request on. Revoking a revoked
/// key changes nothing and answers 204 again.
pub async fn revoke(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    match state.store.revoke_api_key(caller.tenant_id, &id, true) {
        Ok(Revoked::Now(info)) => {
            audit(&state, &caller, AuditKind::ApiKeyRevoked, &info, "revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(Revoked::Already(_)) => Ok(StatusCode::NO_CONTENT),
        Err(RevokeError::NotFound) => Err(ApiError::not_found("API key")),
        Err(e @ RevokeError::LastAdmin) => Err(ApiError::conflict("last_admin_key", e.to_string())),
        Err(RevokeError::Store(e)) => Err(e.into()),
    }
}
