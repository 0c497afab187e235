//! `DELETE /api/v1/agents/{id}/rdp-certificate` (admin): forgets the agent's pinned RDP server
//! certificate, so that the next session pins the one it then presents. Audited.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use passerelle_proto::api::Role;

use super::api::{ApiResult, agent_of, event};
use super::auth::Caller;
use crate::broker::State;
use crate::store::AuditKind;

pub async fn reset_certificate(
    caller: Caller,
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let rec = agent_of(&state, caller.tenant_id, &id)?;
    let old = state
        .store
        .reset_rdp_certificate(caller.tenant_id, &rec.id)?;
    let detail = match old {
        Some(sha) => format!("pinned RDP certificate sha256 {sha} forgotten"),
        None => "no RDP certificate was pinned".to_owned(),
    };
    let mut ev = event(AuditKind::RdpCertificateReset, &caller, detail);
    ev.agent = Some(rec.id.to_string());
    state.store.audit(ev);
    Ok(StatusCode::NO_CONTENT)
}
