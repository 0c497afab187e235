//! `/api/v1/agents`: registration (the store) and presence (the registry) in one view; a
//! revocation ends the agent's sessions and disconnects it at once. The list's pages and
//! filters are in `agents_list`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use passerelle_proto::api::{AgentInfo, ErrorBody, PatchAgent, RegisterAgent, Role};
use passerelle_proto::close::EndReason;
use passerelle_proto::ids::AgentId;

use super::agents_list as list;
use super::api::{ANY, ApiResult};
use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App};
use crate::registry::Registry;
use crate::store::{AgentRecord, AgentSsh, AuditKind, Store, TenantId, check_agent_ssh, rfc3339};

/// What the API shows of an agent: its registration, its SSH settings (`ssh`, read from the
/// store by the caller) and its presence.
/// `elsewhere` holds the agents other nodes of the cluster hold.
fn agent_info(
    registry: &Registry,
    elsewhere: &list::Remote,
    rec: &AgentRecord,
    ssh: AgentSsh,
) -> AgentInfo {
    let mut info = AgentInfo {
        id: rec.id.clone(),
        key_fingerprint: rec.key_fingerprint.clone(),
        has_vnc_password: rec.has_vnc_password,
        rdp_username: rec.rdp_username.clone(),
        has_rdp_password: rec.has_rdp_password,
        rdp_certificate_sha256: rec.rdp_cert_sha256.clone(),
        rdp_certificate_pinned_at: rec.rdp_cert_pinned_at.map(rfc3339),
        ssh_host_key: ssh.host_key_fingerprint(),
        ssh_username: ssh.ssh_username,
        has_ssh_password: ssh.has_ssh_password,
        online: false,
        services: Vec::new(),
        connected_since: None,
        last_seen: rec.last_seen.map(rfc3339),
        peer_addr: None,
        created_at: rfc3339(rec.created_at),
        enrolled_by: rec.enrolled_by.clone(),
        ssh_ca: rec.ssh_ca.clone(),
    };
    if let Some(conn) = registry.get(rec.tenant_id, &rec.id) {
        conn.fill(&mut info);
    } else if let Some(held) = elsewhere.get(&rec.id) {
        held.fill(&mut info);
    }
    info
}

/// [`agent_info`] of one agent, with its presence on any node of the cluster.
async fn with_presence(app: &App, rec: &AgentRecord, ssh: AgentSsh) -> ApiResult<AgentInfo> {
    let mut elsewhere = list::Remote::new();
    if app.cluster.is_some() && app.registry.get(rec.tenant_id, &rec.id).is_none() {
        let (tenant_id, id) = (rec.tenant_id, rec.id.clone());
        if let Some(held) = app
            .db
            .run(move |s| s.presence_holder(tenant_id, &id))
            .await?
        {
            elsewhere.insert(rec.id.clone(), held);
        }
    }
    Ok(agent_info(&app.registry, &elsewhere, rec, ssh))
}

/// An agent's SSH settings, for [`agent_info`].
fn ssh_of(store: &Store, rec: &AgentRecord) -> anyhow::Result<AgentSsh> {
    store.agent_ssh(rec.tenant_id, &rec.id)
}

async fn agent_of(app: &App, tenant_id: TenantId, id: &str) -> ApiResult<AgentRecord> {
    let id = AgentId::new(id).map_err(|_| ApiError::not_found("agent"))?;
    app.db
        .run(move |s| s.agent(tenant_id, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    description = "The tenant's agents with their presence, in id order, a page at a time: the next page's cursor comes in the `X-Next-Cursor` and `Link` headers. Roles: admin, helpdesk, auditor.",
    security(("api_key" = ["admin", "helpdesk", "auditor"])),
    params(list::AgentQuery),
    responses((status = 200, description = "A page of agents", body = Vec<AgentInfo>,
        headers(
            ("x-next-cursor" = String, description = "The next page's cursor, when there is one"),
            ("link" = String, description = "`</api/v1/agents?cursor=...>; rel=\"next\"`, when there is a next page"),
        ))))]
pub(super) async fn list_agents(
    caller: Caller,
    State(app): State<App>,
    query: Result<Query<list::AgentQuery>, QueryRejection>,
) -> ApiResult<(HeaderMap, Json<Vec<AgentInfo>>)> {
    caller.require(ANY)?;
    let Query(query) = query?;
    let mut page = list::page(&app, caller.tenant_id, &query).await?;
    let page_elsewhere = std::mem::take(&mut page.elsewhere);
    let infos = app
        .db
        .run(move |s| {
            page.agents
                .into_iter()
                .map(|a| Ok((ssh_of(s, &a)?, a)))
                .collect::<anyhow::Result<Vec<_>>>()
                .map(|agents| (agents, page.next))
        })
        .await?;
    let ((agents, next), elsewhere) = (infos, page_elsewhere);
    let headers = list::next_headers(&query, next.as_ref());
    Ok((
        headers,
        Json(
            agents
                .into_iter()
                .map(|(ssh, a)| agent_info(&app.registry, &elsewhere, &a, ssh))
                .collect(),
        ),
    ))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents",
    description = "One agent with its presence. Roles: admin, helpdesk, auditor.",
    security(("api_key" = ["admin", "helpdesk", "auditor"])),
    params(("id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent", body = AgentInfo), (status = 404, description = "`not_found`: no such agent in the caller's tenant", body = ErrorBody)))]
pub(super) async fn get_agent(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentInfo>> {
    caller.require(ANY)?;
    let rec = agent_of(&app, caller.tenant_id, &id).await?;
    let (r, ssh) = (rec.clone(), app.db.clone());
    let ssh = ssh.run(move |s| ssh_of(s, &r)).await?;
    Ok(Json(with_presence(&app, &rec, ssh).await?))
}

#[utoipa::path(post, path = "/api/v1/agents", tag = "agents",
    description = "Registers an agent and its SSH public key. Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = RegisterAgent,
    responses(
        (status = 201, description = "Registered", body = AgentInfo),
        (status = 409, description = "`conflict`, `quota_exceeded`: the id or key is taken, or the tenant has as many agents as allowed", body = ErrorBody),
    ))]
pub(super) async fn register_agent(
    caller: Caller,
    State(app): State<App>,
    body: Result<JsonBody<RegisterAgent>, ApiError>,
) -> ApiResult<(StatusCode, Json<AgentInfo>)> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body?;
    check_agent_ssh(req.ssh_username.as_deref(), req.ssh_password.as_deref())
        .map_err(anyhow::Error::from)?;
    let tenant_id = caller.tenant_id;
    let cap = app.config.quotas.agents_per_tenant;
    let count = app.db.run(move |s| s.agent_count(tenant_id)).await?;
    if count >= cap {
        let why =
            format!("this tenant has {count} agents, the most allowed (max_agents_per_tenant)");
        let mut ev = caller.event(
            AuditKind::RequestRefused,
            format!("agent {}: {why}", req.id),
        );
        ev.agent = Some(req.id.to_string());
        app.db.audit(ev);
        return Err(ApiError::conflict("quota_exceeded", why));
    }
    let (rdp_user, rdp_pw) = (req.rdp_username.clone(), req.rdp_password.clone());
    crate::store::check_rdp_login(rdp_user.as_deref(), rdp_pw.as_deref())
        .map_err(anyhow::Error::from)?;
    let (rec, ssh) = app
        .db
        .run(move |s| {
            let rec = s.create_agent(
                tenant_id,
                &req.id,
                &req.public_key,
                req.vnc_password.as_deref(),
            )?;
            s.set_agent_ssh(
                tenant_id,
                &rec.id,
                req.ssh_username.as_deref(),
                req.ssh_password.as_deref(),
            )?;
            let rec = if rdp_user.is_none() && rdp_pw.is_none() {
                rec
            } else {
                s.set_agent_rdp(tenant_id, &rec.id, rdp_user.as_deref(), rdp_pw.as_deref())?;
                s.agent(tenant_id, &rec.id)?.unwrap_or(rec)
            };
            let ssh = ssh_of(s, &rec)?;
            Ok((rec, ssh))
        })
        .await?;
    let mut ev = caller.event(
        AuditKind::AgentRegistered,
        format!("key {}", rec.key_fingerprint),
    );
    ev.agent = Some(rec.id.to_string());
    app.db.audit(ev);
    Ok((
        StatusCode::CREATED,
        Json(agent_info(&app.registry, &list::Remote::new(), &rec, ssh)),
    ))
}

#[utoipa::path(patch, path = "/api/v1/agents/{id}", tag = "agents",
    description = "Changes an agent's key or credentials (only the fields given); a new key disconnects it. Roles: admin.",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The agent's id")),
    request_body = PatchAgent,
    responses(
        (status = 200, description = "The agent after the change", body = AgentInfo),
        (status = 404, description = "`not_found`: no such agent in the caller's tenant", body = ErrorBody),
        (status = 409, description = "`conflict`: the key is another agent's", body = ErrorBody),
    ))]
pub(super) async fn patch_agent(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<JsonBody<PatchAgent>, ApiError>,
) -> ApiResult<Json<AgentInfo>> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body?;
    check_agent_ssh(req.ssh_username.as_deref(), req.ssh_password.as_deref())
        .map_err(anyhow::Error::from)?;
    let before = agent_of(&app, caller.tenant_id, &id).await?;
    let (tenant_id, agent) = (caller.tenant_id, before.id.clone());
    let (rdp_user, rdp_pw) = (req.rdp_username.clone(), req.rdp_password.clone());
    crate::store::check_rdp_login(rdp_user.as_deref(), rdp_pw.as_deref())
        .map_err(anyhow::Error::from)?;
    let changes = [
        (req.vnc_password.is_some(), "VNC password"),
        (req.ssh_username.is_some(), "SSH user name"),
        (req.ssh_password.is_some(), "SSH password"),
        (rdp_user.is_some(), "RDP login"),
        (rdp_pw.is_some(), "RDP password"),
    ];
    let (after, ssh) = app
        .db
        .run(move |s| {
            s.set_agent_rdp(tenant_id, &agent, rdp_user.as_deref(), rdp_pw.as_deref())?;
            let Some(after) = s.update_agent(
                tenant_id,
                &agent,
                req.public_key.as_deref(),
                req.vnc_password.as_deref(),
            )?
            else {
                return Ok(None);
            };
            s.set_agent_ssh(
                tenant_id,
                &after.id,
                req.ssh_username.as_deref(),
                req.ssh_password.as_deref(),
            )?;
            let ssh = ssh_of(s, &after)?;
            Ok(Some((after, ssh)))
        })
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let key_changed = after.key_fingerprint != before.key_fingerprint;
    if key_changed && let Some(conn) = app.registry.get(caller.tenant_id, &after.id) {
        conn.disconnect("the agent's key was changed");
    }
    let changed: Vec<&str> = std::iter::once((key_changed, "key"))
        .chain(changes)
        .filter_map(|(yes, what)| yes.then_some(what))
        .collect();
    let what = if changed.is_empty() {
        "nothing changed".to_owned()
    } else {
        format!("{} changed", changed.join(", "))
    };
    let mut ev = caller.event(AuditKind::AgentChanged, what);
    ev.agent = Some(after.id.to_string());
    app.db.audit(ev);
    Ok(Json(with_presence(&app, &after, ssh).await?))
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents",
    description = "Revokes an agent: its sessions end and it is disconnected at once. Roles: admin.",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The agent's id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "`not_found`: no such agent in the caller's tenant", body = ErrorBody)))]
pub(super) async fn revoke_agent(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let rec = agent_of(&app, caller.tenant_id, &id).await?;
    let (tenant_id, agent) = (caller.tenant_id, rec.id.clone());
    app.db
        .run(move |s| s.delete_agent(tenant_id, &agent))
        .await?;
    app.core
        .end_agent_sessions(
            caller.tenant_id,
            &rec.id,
            EndReason::AgentRevoked,
            &crate::session::Actor::broker(),
        )
        .await;
    if let Some(conn) = app.registry.get(caller.tenant_id, &rec.id) {
        conn.disconnect("this agent was revoked");
    } else if let Some(cluster) = &app.cluster
        && let Some(node) = cluster.holder_elsewhere(caller.tenant_id, &rec.id).await
    {
        // Its sessions run there too: they end with its connection.
        cluster
            .drop_agent(&node, caller.tenant_id, &rec.id, "this agent was revoked")
            .await;
    }
    let mut ev = caller.event(
        AuditKind::AgentRevoked,
        format!("key {}", rec.key_fingerprint),
    );
    ev.agent = Some(rec.id.to_string());
    app.db.audit(ev);
    Ok(StatusCode::NO_CONTENT)
}
