//! API key authentication (`Authorization: Bearer <key>`) and role checks.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use passerelle_proto::api::Role;

use super::ApiError;
use crate::broker::State;
use crate::store::{KeyRefusal, TenantId};

/// The authenticated caller of an API request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant_id: TenantId,
    /// The API key's public id (never the secret).
    pub key_id: String,
    pub role: Role,
    /// `X-Passerelle-Operator`, when the console names the human behind the call.
    pub operator: Option<String>,
}

impl Caller {
    /// Refuses unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "an API key with role {} may not do this",
            self.role.as_str()
        )))
    }

    /// Who to name in the audit for this call.
    pub fn who(&self) -> String {
        self.operator
            .clone()
            .unwrap_or_else(|| format!("api-key:{}", self.key_id))
    }
}

impl FromRequestParts<Arc<State>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(key) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(ApiError::unauthorized(
                "send Authorization: Bearer <API key>",
            ));
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        if let Some(peer) = peer {
            state
                .credentials_allowed(peer)
                .map_err(ApiError::too_many_attempts)?;
        }
        let key = key.trim();
        let found = state.store.check_api_key(key)?;
        let Some((tenant_id, key_id, role)) = found else {
            // A revoked or expired key (whole secret right) is refused at once but is no guess;
            // only unknown keys count toward the address's lockout.
            return Err(match state.store.refused_api_key(key)? {
                KeyRefusal::Revoked { id, .. } => {
                    tracing::info!(key = %id, "a revoked API key was presented");
                    ApiError::unauthorized(format!("API key {id} has been revoked"))
                }
                KeyRefusal::Expired { id, .. } => {
                    tracing::info!(key = %id, "an expired API key was presented");
                    ApiError::unauthorized(format!("API key {id} has expired"))
                }
                KeyRefusal::Unknown { owner } => {
                    if let Some(peer) = peer {
                        let what = match &owner {
                            Some((_, id)) => format!("API key {id} with a wrong secret"),
                            None => "an unknown API key".to_owned(),
                        };
                        state.credential_failed(peer, owner.map(|o| o.0), &what);
                    }
                    ApiError::unauthorized("unknown API key")
                }
            });
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
        })
    }
}
