//! `DELETE /api/v1/agents/{id}/rdp-certificate` (admin): forgets the agent's pinned RDP server
//! certificate, so that the next session pins the one it then presents. Audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use passerelle_proto::api::{ErrorBody, Role};
use passerelle_proto::ids::AgentId;

use super::api::ApiResult;
use super::auth::Caller;
use super::{ApiError, App};
use crate::store::AuditKind;

#[utoipa::path(delete, path = "/api/v1/agents/{id}/rdp-certificate", tag = "agents",
    description = "Forgets the agent's pinned RDP server certificate. Roles: admin.",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The agent's id")),
    responses((status = 204, description = "Forgotten (or nothing was pinned)"), (status = 404, description = "`not_found`: no such agent in the caller's tenant", body = ErrorBody)))]
pub(super) async fn reset_certificate(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let id = AgentId::new(id).map_err(|_| ApiError::not_found("agent"))?;
    let tenant_id = caller.tenant_id;
    let agent = id.clone();
    let old = app
        .db
        .run(move |s| {
            if s.agent(tenant_id, &agent)?.is_none() {
                return Ok(None);
            }
            s.reset_rdp_certificate(tenant_id, &agent).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let detail = match old {
        Some(sha) => format!("pinned RDP certificate sha256 {sha} forgotten"),
        None => "no RDP certificate was pinned".to_owned(),
    };
    let mut ev = caller.event(AuditKind::RdpCertificateReset, detail);
    ev.agent = Some(id.to_string());
    app.db.audit(ev);
    Ok(StatusCode::NO_CONTENT)
}
