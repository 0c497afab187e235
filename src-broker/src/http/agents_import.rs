//! `POST /api/v1/agents/import`: up to [`MAX_IMPORT_ITEMS`] agents registered in one call, all
//! or nothing (see `store::agents_import` for why). A refusal names every bad item by index and
//! id ([`ImportRefusal`]); a success audits each agent as `POST /api/v1/agents` does.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use passerelle_proto::agent_import::{
    ImportAgents, ImportItemError, ImportRefusal, ImportedAgent, ImportedAgents, MAX_IMPORT_ITEMS,
};
use passerelle_proto::api::{AgentInfo, ErrorBody, ErrorDetail, PatchAgent, RegisterAgent, Role};

use super::api::ApiResult;
use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App};
use crate::store::{AuditKind, ImportOptions, ImportRefused, ItemError, ItemFault, NewAgent};

/// Largest import body: room for [`MAX_IMPORT_ITEMS`] items with RSA-4096 keys (about 800
/// bytes each in JSON).
pub(crate) const MAX_IMPORT_BODY_BYTES: usize = 1024 * 1024;

/// A refusal: a plain API error, or the items at fault.
enum Refusal {
    Api(ApiError),
    Items(StatusCode, ImportRefusal),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Items(status, body) => (status, Json(body)).into_response(),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/agents/import", tag = "agents",
    description = "Registers up to 1,000 agents in one call, all or nothing: when any item is refused, none is registered and the answer names every refused item by index and id. Each item is a `POST /api/v1/agents` body without the SSH and RDP credential fields (refused; set them with PATCH afterwards). The body may be up to 1 MiB. Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = ImportAgents,
    responses(
        (status = 201, description = "Every agent registered", body = ImportedAgents),
        (status = 400, description = "`import_refused`: an item is invalid (its key, a refused field), with every refused item in `items`; `bad_request`: not a JSON object, no items or more than 1,000", body = ImportRefusal),
        (status = 409, description = "`import_refused`: an item's id or key is taken in the tenant or repeated in the request, with every refused item in `items`; `quota_exceeded`: the tenant would have more agents than allowed", body = ImportRefusal),
        (status = 413, description = "`too_large`: a body over 1 MiB", body = ErrorBody),
    ))]
pub(super) async fn import_agents(
    caller: Caller,
    State(app): State<App>,
    body: Result<JsonBody<ImportAgents>, ApiError>,
) -> Response {
    match import(caller, app, body).await {
        Ok(done) => (StatusCode::CREATED, Json(done)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn import(
    caller: Caller,
    app: App,
    body: Result<JsonBody<ImportAgents>, ApiError>,
) -> Result<ImportedAgents, Refusal> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body.map_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                e.status,
                e.code,
                format!(
                    "request body over {MAX_IMPORT_BODY_BYTES} bytes: send fewer agents per \
                     request"
                ),
            )
        } else {
            e
        }
    })?;
    let total = req.agents.len();
    if total == 0 {
        return Err(ApiError::bad_request("agents is empty: nothing to import").into());
    }
    if total > MAX_IMPORT_ITEMS {
        return Err(ApiError::bad_request(format!(
            "{total} agents in one request; at most {MAX_IMPORT_ITEMS}: split the import"
        ))
        .into());
    }
    let refused: Vec<ItemError> = req
        .agents
        .iter()
        .enumerate()
        .filter_map(|(index, a)| refused_fields(index, a))
        .collect();
    let items: Vec<NewAgent> = req
        .agents
        .into_iter()
        .map(|a| NewAgent {
            id: a.id,
            public_key: a.public_key,
            vnc_password: a.vnc_password,
        })
        .collect();
    let (tenant_id, max_agents) = (caller.tenant_id, app.config.quotas.agents_per_tenant);
    let result = app
        .db
        .run(move |s| {
            let options = ImportOptions {
                max_agents,
                refused,
                progress: &mut |_| {},
            };
            s.create_agents_with(tenant_id, &items, options)
        })
        .await;
    let done = match result {
        Ok(done) => done,
        Err(e) => match e.downcast::<ImportRefused>() {
            Ok(ImportRefused::Items { total, items }) => return Err(items_refusal(total, items)),
            Ok(quota @ ImportRefused::Quota { .. }) => {
                let why = quota.to_string();
                app.db.audit(caller.event(
                    AuditKind::RequestRefused,
                    format!("import of {total} agents: {why}"),
                ));
                return Err(ApiError::conflict("quota_exceeded", why).into());
            }
            Err(e) => return Err(ApiError::from(e).into()),
        },
    };
    let events = done.iter().map(|agent| {
        let mut ev = caller.event(
            AuditKind::AgentRegistered,
            format!("key {} (import)", agent.key_fingerprint),
        );
        ev.agent = Some(agent.id.to_string());
        ev
    });
    app.db.audit_all(events.collect::<Vec<_>>());
    Ok(ImportedAgents {
        imported: done.len(),
        agents: done
            .into_iter()
            .map(|a| ImportedAgent {
                id: a.id,
                key_fingerprint: a.key_fingerprint,
            })
            .collect(),
    })
}

/// The credential fields an import item may not carry, as its refusal.
fn refused_fields(index: usize, a: &RegisterAgent) -> Option<ItemError> {
    let set: Vec<&str> = [
        (a.ssh_username.is_some(), "ssh_username"),
        (a.ssh_password.is_some(), "ssh_password"),
        (a.rdp_username.is_some(), "rdp_username"),
        (a.rdp_password.is_some(), "rdp_password"),
    ]
    .into_iter()
    .filter_map(|(yes, name)| yes.then_some(name))
    .collect();
    (!set.is_empty()).then(|| ItemError {
        index,
        id: a.id.clone(),
        fault: ItemFault::Invalid,
        message: format!(
            "{} cannot be imported: set them with PATCH /api/v1/agents/{} afterwards",
            set.join(", "),
            a.id
        ),
    })
}

/// 400 when an item is invalid, else 409; the body names each item.
fn items_refusal(total: usize, items: Vec<ItemError>) -> Refusal {
    let invalid = items.iter().any(|e| e.fault == ItemFault::Invalid);
    let status = if invalid {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::CONFLICT
    };
    let message = format!(
        "{} of the {total} agents were refused; none was registered",
        items.len()
    );
    Refusal::Items(
        status,
        ImportRefusal {
            error: ErrorDetail {
                code: "import_refused".into(),
                message,
            },
            items: items
                .into_iter()
                .map(|e| ImportItemError {
                    index: e.index,
                    id: e.id,
                    code: match e.fault {
                        ItemFault::Invalid => "invalid",
                        ItemFault::Conflict => "conflict",
                    }
                    .into(),
                    message: e.message,
                })
                .collect(),
        },
    )
}

// `/api/v1/agents/import` is a static route, which axum prefers to `/api/v1/agents/{id}`:
// an agent named `import` stays reachable through these (documented, so that the OpenAPI
// document says what the path answers).

#[utoipa::path(get, path = "/api/v1/agents/import", tag = "agents",
    description = "The agent named `import` (`GET /api/v1/agents/{id}` with that id). Roles: admin, helpdesk, auditor.",
    security(("api_key" = ["admin", "helpdesk", "auditor"])),
    responses((status = 200, description = "The agent", body = AgentInfo), (status = 404, description = "`not_found`: no agent named `import` in the caller's tenant", body = ErrorBody)))]
pub(super) async fn get_agent_named_import(
    caller: Caller,
    app: State<App>,
) -> ApiResult<Json<AgentInfo>> {
    super::agents::get_agent(caller, app, Path(IMPORT.to_owned())).await
}

#[utoipa::path(patch, path = "/api/v1/agents/import", tag = "agents",
    description = "Changes the agent named `import` (`PATCH /api/v1/agents/{id}` with that id). Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = PatchAgent,
    responses(
        (status = 200, description = "The agent after the change", body = AgentInfo),
        (status = 404, description = "`not_found`: no agent named `import` in the caller's tenant", body = ErrorBody),
        (status = 409, description = "`conflict`: the key is another agent's", body = ErrorBody),
    ))]
pub(super) async fn patch_agent_named_import(
    caller: Caller,
    app: State<App>,
    body: Result<JsonBody<PatchAgent>, ApiError>,
) -> ApiResult<Json<AgentInfo>> {
    super::agents::patch_agent(caller, app, Path(IMPORT.to_owned()), body).await
}

#[utoipa::path(delete, path = "/api/v1/agents/import", tag = "agents",
    description = "Revokes the agent named `import` (`DELETE /api/v1/agents/{id}` with that id). Roles: admin.",
    security(("api_key" = ["admin"])),
    responses((status = 204, description = "Revoked"), (status = 404, description = "`not_found`: no agent named `import` in the caller's tenant", body = ErrorBody)))]
pub(super) async fn revoke_agent_named_import(
    caller: Caller,
    app: State<App>,
) -> ApiResult<StatusCode> {
    super::agents::revoke_agent(caller, app, Path(IMPORT.to_owned())).await
}

const IMPORT: &str = "import";
