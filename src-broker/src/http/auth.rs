//! API authentication: an API key (`Authorization: Bearer <key>`), or the console's session
//! cookie of a person signed in with OpenID Connect ([`super::oidc_cookie`]); role checks.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use passerelle_proto::api::Role;

use super::{ApiError, App};
use crate::session::Actor;
use crate::store::{KeyRefusal, NewEvent, TenantId};

/// The authenticated caller of an API request.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub tenant_id: TenantId,
    /// The API key's public id (never the secret).
    pub key_id: String,
    pub role: Role,
    /// `X-Passerelle-Operator`, when the console names the human behind the call; for a
    /// signed-in person, their name (the header is ignored).
    pub operator: Option<String>,
    /// The browser session, when a signed-in person calls (then `key_id` is `session:<id>`).
    pub console: Option<crate::store::ConsoleSession>,
}

impl Caller {
    /// Refuses unless the caller has one of `roles`.
    pub(super) fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        if self.console.is_some() {
            return Err(super::oidc_cookie::role_refusal(self.role));
        }
        Err(ApiError::forbidden(format!(
            "an API key with role {} may not do this",
            self.role.as_str()
        )))
    }

    /// Who to name in the audit for this call.
    pub(super) fn who(&self) -> String {
        self.operator
            .clone()
            .unwrap_or_else(|| format!("api-key:{}", self.key_id))
    }

    /// The operator a new session records: the signed-in person, else what the body says.
    pub(super) fn operator_for(&self, asked: String) -> String {
        match &self.console {
            Some(session) => session.name.clone(),
            None => asked,
        }
    }

    /// The caller as the session core names who did something.
    pub(super) fn actor(&self) -> Actor {
        Actor {
            name: self.who(),
            api_key: Some(self.key_id.clone()),
        }
    }

    /// An audit event of this call: the caller's tenant, the operator named, the key that spoke.
    pub(super) fn event(&self, kind: crate::store::AuditKind, detail: String) -> NewEvent {
        let mut ev = NewEvent::new(kind, detail);
        ev.tenant_id = Some(self.tenant_id);
        ev.operator = Some(self.who());
        ev.api_key = Some(self.key_id.clone());
        ev
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &App) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let Some(key) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            let cookie =
                super::oidc_cookie::cookie(&parts.headers, super::oidc_cookie::SESSION_COOKIE);
            let Some(cookie) = cookie.filter(|_| header.is_none()) else {
                return Err(ApiError::unauthorized(
                    "send Authorization: Bearer <API key>, or sign in to the console",
                ));
            };
            if let Some(peer) = peer {
                state
                    .guard
                    .allowed(peer)
                    .map_err(ApiError::too_many_attempts)?;
            }
            return super::oidc_cookie::caller(&parts.headers, &parts.method, peer, state, cookie)
                .await;
        };
        if let Some(peer) = peer {
            state
                .guard
                .allowed(peer)
                .map_err(ApiError::too_many_attempts)?;
        }
        let key = key.trim().to_owned();
        let found = state
            .db
            .run(move |s| {
                Ok(match s.check_api_key(&key)? {
                    Some(found) => Ok(found),
                    None => Err(s.refused_api_key(&key)?),
                })
            })
            .await?;
        let (tenant_id, key_id, role) = match found {
            Ok(found) => found,
            // A revoked or expired key (whole secret right) is refused at once but is no guess;
            // only unknown keys count toward the address's lockout.
            Err(KeyRefusal::Revoked { id, .. }) => {
                tracing::info!(key = %id, "a revoked API key was presented");
                return Err(ApiError::unauthorized(format!(
                    "API key {id} has been revoked"
                )));
            }
            Err(KeyRefusal::Expired { id, .. }) => {
                tracing::info!(key = %id, "an expired API key was presented");
                return Err(ApiError::unauthorized(format!("API key {id} has expired")));
            }
            Err(KeyRefusal::Unknown { owner }) => {
                if let Some(peer) = peer {
                    let what = match &owner {
                        Some((_, id)) => format!("API key {id} with a wrong secret"),
                        None => "an unknown API key".to_owned(),
                    };
                    state.guard.failed(peer, owner.map(|o| o.0), &what);
                }
                return Err(ApiError::unauthorized("unknown API key"));
            }
        };
        let operator = parts
            .headers
            .get("x-passerelle-operator")
            .and_then(|v| v.to_str().ok())
            .map(|s| {
                s.chars()
                    .filter(|c| !c.is_control())
                    .take(128)
                    .collect::<String>()
            })
            .filter(|s| !s.is_empty());
        Ok(Caller {
            tenant_id,
            key_id,
            role,
            operator,
            console: None,
        })
    }
}
