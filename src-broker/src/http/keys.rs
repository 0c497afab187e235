//! `/api/v1/keys`: an admin lists, creates and revokes its own tenant's API keys.
//!
//! Another tenant's key is answered 404 like a missing one. The secret is in the creation's
//! answer only. Every change is audited (`api_key_created`, `api_key_revoked`) with the id of the
//! key changed and of the key that made the call. The tenant's last active admin key cannot be
//! revoked here (409 `last_admin_key`): an API that locks its tenant out would need the broker's
//! command line to recover, so the command line (`passerelle api-key revoke`) is where that is
//! done, deliberately.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use passerelle_proto::api::{ErrorBody, Role};
use passerelle_proto::api_keys::{ApiKeyInfo, CreateApiKey, CreatedApiKey, check_name};

use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App};
use crate::store::{AuditKind, RevokeError, Revoked, now_ms, parse_rfc3339};

type ApiResult<T> = Result<T, ApiError>;

/// The routes, merged into the router.
pub(super) fn routes() -> axum::Router<App> {
    use axum::routing::{delete, get};
    axum::Router::new()
        .route("/api/v1/keys", get(list).post(create))
        .route("/api/v1/keys/{id}", delete(revoke))
}

fn audit(app: &App, caller: &Caller, kind: AuditKind, key: &ApiKeyInfo, verb: &str) {
    app.db.audit(caller.event(
        kind,
        format!(
            "API key {} ({}, {:?}) {verb} by API key {}",
            key.id,
            key.role.as_str(),
            key.name,
            caller.key_id
        ),
    ));
}

/// `GET /api/v1/keys`: the tenant's keys, revoked and expired ones included.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    description = "The tenant's API keys, revoked and expired ones included (never their secrets). Roles: admin.",
    security(("api_key" = ["admin"])),
    responses((status = 200, description = "The keys", body = Vec<ApiKeyInfo>)))]
pub(super) async fn list(
    caller: Caller,
    State(app): State<App>,
) -> ApiResult<Json<Vec<ApiKeyInfo>>> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    Ok(Json(app.db.run(move |s| s.api_keys(tenant_id)).await?))
}

/// `POST /api/v1/keys` `{name, role, expires_at?}`: 201 with the key's secret, shown once.
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys",
    description = "Creates an API key; its secret is in this answer only. Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = CreateApiKey,
    responses((status = 201, description = "The key, with its secret", body = CreatedApiKey)))]
pub(super) async fn create(
    caller: Caller,
    State(app): State<App>,
    body: Result<JsonBody<CreateApiKey>, ApiError>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body?;
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
    let (tenant_id, role, name) = (caller.tenant_id, req.role, req.name);
    let (info, key) = app
        .db
        .run(move |s| s.create_named_api_key(tenant_id, role, &name, expires_at))
        .await?;
    audit(&app, &caller, AuditKind::ApiKeyCreated, &info, "created");
    Ok((StatusCode::CREATED, Json(CreatedApiKey { info, key })))
}

/// `DELETE /api/v1/keys/{id}`: 204; the key fails from the next request on. Revoking a revoked
/// key changes nothing and answers 204 again.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    description = "Revokes an API key (again: no change). Roles: admin.",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "`not_found`: no such key in the caller's tenant", body = ErrorBody),
        (status = 409, description = "`last_admin_key`: the tenant's last active admin key (revoke it with `passerelle api-key revoke`)", body = ErrorBody),
    ))]
pub(super) async fn revoke(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    let revoked = app
        .db
        .run(move |s| Ok(s.revoke_api_key(tenant_id, &id, true)))
        .await?;
    match revoked {
        Ok(Revoked::Now(info)) => {
            audit(&app, &caller, AuditKind::ApiKeyRevoked, &info, "revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(Revoked::Already(_)) => Ok(StatusCode::NO_CONTENT),
        Err(RevokeError::NotFound) => Err(ApiError::not_found("API key")),
        Err(e @ RevokeError::LastAdmin) => Err(ApiError::conflict("last_admin_key", e.to_string())),
        Err(RevokeError::Store(e)) => Err(e.into()),
    }
}
