//! The bodies of `POST /api/v1/agents/import`: many agents registered in one call, all or
//! nothing. A refusal names every bad item by its index and id ([`ImportRefusal`]), so that a
//! script can mend its input and send the same batch again.

use serde::{Deserialize, Serialize};

use crate::api::{ErrorDetail, RegisterAgent};
use crate::ids::AgentId;

/// The most agents one import request may carry (split larger imports into batches).
pub const MAX_IMPORT_ITEMS: usize = 1000;

/// `POST /api/v1/agents/import`: `{"agents": [RegisterAgent, ...]}`. Each item is the body of
/// `POST /api/v1/agents`, except that `ssh_username`, `ssh_password`, `rdp_username` and
/// `rdp_password` are refused (set them afterwards with `PATCH /api/v1/agents/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportAgents {
    /// 1 to 1,000 agents.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 1000))]
    pub agents: Vec<RegisterAgent>,
}

/// The answer to a successful import (201): every agent of the request was registered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportedAgents {
    /// How many agents were registered (all of the request's).
    pub imported: usize,
    /// The agents, in the request's order.
    pub agents: Vec<ImportedAgent>,
}

/// One registered agent of [`ImportedAgents`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportedAgent {
    pub id: AgentId,
    /// SHA256 fingerprint of its key (`SHA256:...`).
    pub key_fingerprint: String,
}

/// The answer to a refused import (400 or 409): nothing was registered. `error` is the usual
/// error body (`code` `import_refused`); `items` names each bad item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportRefusal {
    pub error: ErrorDetail,
    /// Every refused item, in the request's order (empty for a refusal of the whole request,
    /// e.g. `bad_request` or `quota_exceeded`).
    #[serde(default)]
    pub items: Vec<ImportItemError>,
}

/// Why one item of an import was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportItemError {
    /// Its position in `agents`, from 0.
    pub index: usize,
    pub id: AgentId,
    /// `invalid` (the item itself is wrong: its key, a refused field) or `conflict` (its id or
    /// key is already registered in the tenant, or appears twice in the request).
    pub code: String,
    /// For people.
    pub message: String,
}
