//! The pages and filters of `GET /api/v1/agents?limit=&cursor=&q=&online=&service=`.
//!
//! Registrations are paged from the store in id order (the cursor is the last id of a page); an
//! id prefix (`q`) is a key range there. Presence is in memory (the registry): `online=true` and
//! `service=` (a service is only announced while online) page over the tenant's connected agents
//! and read just that page's records; `online=false` pages from the store and skips connected
//! agents. The body stays the JSON array older clients parse; the next page's cursor comes in
//! the `X-Next-Cursor` and `Link` headers.

use axum::http::{HeaderMap, HeaderValue, header};
use passerelle_proto::api::{AGENTS_DEFAULT_LIMIT, AGENTS_MAX_LIMIT, NEXT_CURSOR_HEADER};
use passerelle_proto::ids::{AgentId, MAX_ID_LEN, ServiceName};
use serde::Deserialize;

use super::api::ApiResult;
use super::{ApiError, App};
use crate::store::{AgentRecord, TenantId};

/// Store rows read per step when skipping online agents (`online=false`).
const SCAN_BATCH: usize = 1000;

/// The query string.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AgentQuery {
    /// Agents per page (1 to 1000, default 100).
    limit: Option<usize>,
    /// Where the page starts: the `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
    /// Only ids that start with this.
    q: Option<String>,
    /// Only connected (`true`) or disconnected (`false`) agents.
    online: Option<bool>,
    /// Only agents announcing this service (connected ones).
    service: Option<ServiceName>,
}

/// One page: its records and the cursor of the next one.
pub(super) struct Page {
    pub agents: Vec<AgentRecord>,
    pub next: Option<AgentId>,
    /// The tenant's agents that other nodes of the cluster hold.
    pub elsewhere: Remote,
}

/// Agents held by other nodes of the cluster, by id (empty for a single broker).
pub(super) type Remote = std::collections::HashMap<AgentId, crate::store::cluster::Holder>;

/// The tenant's agents that other live nodes hold.
pub(super) async fn remote(app: &App, tenant_id: TenantId) -> ApiResult<Remote> {
    if app.cluster.is_none() {
        return Ok(Remote::new());
    }
    let rows = app.db.run(move |s| s.presence_elsewhere(tenant_id)).await?;
    Ok(rows.into_iter().collect())
}

impl Page {
    /// Keeps `limit` of `agents` (fetched with one more, to tell whether a next page exists).
    fn cut(mut agents: Vec<AgentRecord>, limit: usize, elsewhere: Remote) -> Self {
        let next = if agents.len() > limit {
            agents.truncate(limit);
            agents.last().map(|a| a.id.clone())
        } else {
            None
        };
        Self {
            agents,
            next,
            elsewhere,
        }
    }
}

/// Checks `q`: an id prefix (what agent ids may contain, at most their length).
fn prefix(q: Option<&str>) -> ApiResult<Option<String>> {
    let Some(p) = q.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if p.len() > MAX_ID_LEN || !p.chars().all(ok) {
        return Err(ApiError::bad_request(format!(
            "q is the start of an agent id: at most {MAX_ID_LEN} ASCII letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(Some(p.to_owned()))
}

/// The page `query` asks for.
pub(super) async fn page(app: &App, tenant_id: TenantId, query: &AgentQuery) -> ApiResult<Page> {
    let limit = query.limit.unwrap_or(AGENTS_DEFAULT_LIMIT);
    if !(1..=AGENTS_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {AGENTS_MAX_LIMIT}"
        )));
    }
    let cursor = query
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(AgentId::new)
        .transpose()
        .map_err(|_| ApiError::bad_request("cursor is not one this API gave"))?;
    let prefix = prefix(query.q.as_deref())?;
    let online = match (query.online, &query.service) {
        (Some(false), Some(_)) => {
            // Offline agents announce nothing.
            return Ok(Page {
                agents: Vec::new(),
                next: None,
                elsewhere: Remote::new(),
            });
        }
        (None, Some(_)) => Some(true),
        (online, _) => online,
    };
    let elsewhere = remote(app, tenant_id).await?;
    let page = |agents, next, elsewhere| Page {
        agents,
        next,
        elsewhere,
    };
    match online {
        Some(true) => {
            let service = query.service.clone();
            let wanted = |id: &AgentId, has: &dyn Fn(&ServiceName) -> bool| {
                prefix.as_deref().is_none_or(|p| id.as_str().starts_with(p))
                    && service.as_ref().is_none_or(has)
                    && cursor.as_ref().is_none_or(|after| id > after)
            };
            let mut ids = app
                .registry
                .online_ids(tenant_id, |c| wanted(&c.agent, &|s| c.has_service(s)));
            ids.extend(
                elsewhere
                    .iter()
                    .filter(|&(id, h)| wanted(id, &|s| h.services.iter().any(|(n, _)| n == s)))
                    .map(|(id, _)| id.clone()),
            );
            ids.sort();
            ids.dedup();
            let next = (ids.len() > limit).then(|| ids[limit - 1].clone());
            ids.truncate(limit);
            let agents = app
                .db
                .run(move |s| s.agents_by_ids(tenant_id, &ids))
                .await?;
            Ok(page(agents, next, elsewhere))
        }
        None => {
            let agents = app
                .db
                .run(move |s| {
                    s.agents_page(tenant_id, cursor.as_ref(), prefix.as_deref(), limit + 1)
                })
                .await?;
            Ok(Page::cut(agents, limit, elsewhere))
        }
        Some(false) => {
            let mut out = Vec::new();
            let mut after = cursor;
            loop {
                let (from, p) = (after.clone(), prefix.clone());
                let batch = app
                    .db
                    .run(move |s| s.agents_page(tenant_id, from.as_ref(), p.as_deref(), SCAN_BATCH))
                    .await?;
                let full = batch.len() == SCAN_BATCH;
                after = batch.last().map(|a| a.id.clone()).or(after);
                out.extend(batch.into_iter().filter(|a| {
                    app.registry.get(tenant_id, &a.id).is_none() && !elsewhere.contains_key(&a.id)
                }));
                if out.len() > limit || !full {
                    break;
                }
            }
            Ok(Page::cut(out, limit, elsewhere))
        }
    }
}

/// `X-Next-Cursor` and `Link: <...>; rel="next"` when there is a next page.
pub(super) fn next_headers(query: &AgentQuery, next: Option<&AgentId>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(next) = next else {
        return headers;
    };
    // Ids, prefixes and service names are URL-safe as they are (their alphabet is checked).
    let mut link = format!("/api/v1/agents?cursor={next}");
    if let Some(limit) = query.limit {
        link.push_str(&format!("&limit={limit}"));
    }
    if let Some(q) = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        link.push_str(&format!("&q={q}"));
    }
    if let Some(online) = query.online {
        link.push_str(&format!("&online={online}"));
    }
    if let Some(service) = &query.service {
        link.push_str(&format!("&service={service}"));
    }
    if let Ok(v) = HeaderValue::from_str(next.as_str()) {
        headers.insert(NEXT_CURSOR_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{link}>; rel=\"next\"")) {
        headers.insert(header::LINK, v);
    }
    headers
}
