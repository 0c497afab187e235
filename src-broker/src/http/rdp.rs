//! `DELETE /api/v1/agents/{id}/rdp-certificate` (admin): forgets the agent's pinned RDP server
//! certificate, so that the next session pins the one it then presents. Audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use passerelle_proto::api::Role;
use passerelle_proto::ids::AgentId;

use super::api::ApiResult;
use super::auth::Caller;
use super::{ApiError, App};
use crate::store::AuditKind;

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
