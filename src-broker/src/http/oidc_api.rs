//! `/api/v1/tenant/oidc`: an admin reads, replaces and removes the tenant's OpenID Connect
//! settings for console sign-in. The client secret is write-only (sealed in the store, in no
//! answer). Every change is audited (`oidc_changed`); removing the settings ends the tenant's
//! browser sessions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use passerelle_proto::api::{ErrorBody, Role};
use passerelle_proto::oidc::{OidcInfo, PutOidc, check};

use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App};
use crate::store::{AuditKind, OidcSettings, now_ms, rfc3339};

type ApiResult<T> = Result<T, ApiError>;

fn info(app: &App, s: &OidcSettings) -> OidcInfo {
    OidcInfo {
        issuer: s.issuer.clone(),
        client_id: s.client_id.clone(),
        role_claim: s.role_claim.clone(),
        roles: s.roles.clone(),
        display_name: s.display_name.clone(),
        redirect_uri: super::oidc::redirect_uri(app),
        updated_at: rfc3339(s.updated_at),
    }
}

/// The button's default text: the issuer's host.
fn host_of(issuer: &str) -> String {
    issuer
        .split_once("://")
        .map_or(issuer, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or(issuer)
        .to_owned()
}

#[utoipa::path(get, path = "/api/v1/tenant/oidc", tag = "tenant",
    description = "The tenant's OpenID Connect sign-in settings (never the client secret), with the redirect URI to register at the provider. Roles: admin.",
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The settings", body = OidcInfo),
        (status = 404, description = "`not_found`: the tenant has no OpenID Connect sign-in", body = ErrorBody),
    ))]
pub(super) async fn get(caller: Caller, State(app): State<App>) -> ApiResult<Json<OidcInfo>> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    match app.db.run(move |s| s.oidc_settings(tenant_id)).await? {
        Some(s) => Ok(Json(info(&app, &s))),
        None => Err(ApiError::not_found("OpenID Connect settings")),
    }
}

#[utoipa::path(put, path = "/api/v1/tenant/oidc", tag = "tenant",
    description = "Sets or replaces the tenant's OpenID Connect sign-in settings. The issuer is `https://` (`http://` only on a loopback host); the provider must redirect to the answer's `redirect_uri`. Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = PutOidc,
    responses((status = 200, description = "The settings as stored (without the secret)", body = OidcInfo)))]
pub(super) async fn put(
    caller: Caller,
    State(app): State<App>,
    body: Result<JsonBody<PutOidc>, ApiError>,
) -> ApiResult<Json<OidcInfo>> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body?;
    check(&req).map_err(ApiError::bad_request)?;
    let settings = OidcSettings {
        display_name: req
            .display_name
            .clone()
            .unwrap_or_else(|| host_of(&req.issuer)),
        issuer: req.issuer,
        client_id: req.client_id,
        client_secret: req.client_secret,
        role_claim: req.role_claim,
        roles: req.roles,
        updated_at: now_ms(),
    };
    let (tenant_id, stored) = (caller.tenant_id, settings.clone());
    app.db
        .run(move |s| s.set_oidc_settings(tenant_id, &stored))
        .await?;
    app.db.audit(caller.event(
        AuditKind::OidcChanged,
        format!(
            "OpenID Connect sign-in set: issuer {}, client {}, role claim {:?}",
            settings.issuer, settings.client_id, settings.role_claim
        ),
    ));
    Ok(Json(info(&app, &settings)))
}

#[utoipa::path(delete, path = "/api/v1/tenant/oidc", tag = "tenant",
    description = "Removes the tenant's OpenID Connect sign-in; its console sessions end at once. Roles: admin.",
    security(("api_key" = ["admin"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`not_found`: the tenant has no OpenID Connect sign-in", body = ErrorBody),
    ))]
pub(super) async fn delete(caller: Caller, State(app): State<App>) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    if !app
        .db
        .run(move |s| s.delete_oidc_settings(tenant_id))
        .await?
    {
        return Err(ApiError::not_found("OpenID Connect settings"));
    }
    app.db.audit(caller.event(
        AuditKind::OidcChanged,
        "OpenID Connect sign-in removed; the tenant's console sessions ended".into(),
    ));
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_button_names_the_issuers_host() {
        assert_eq!(
            super::host_of("https://login.example/realms/x"),
            "login.example"
        );
        assert_eq!(super::host_of("http://127.0.0.1:9"), "127.0.0.1:9");
    }
}
