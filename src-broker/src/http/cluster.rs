//! The HTTP side of a cluster (see `crate::cluster`): requests about a session that runs on
//! another node are forwarded to it over the node link, WebSocket upgrades included, so that
//! clients see one address; requests that come over the link are checked and served here as
//! from the client they speak for; and the link's own route, which drops an agent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use passerelle_proto::ids::AgentId;

use super::server::ConnSlot;
use super::{ApiError, App};
use crate::cluster::link::{CLIENT_HEADER, FromNode, NODE_HEADER};
use crate::cluster::{Cluster, DropAgent, DropCertified};
use crate::store::cluster::Peer;

/// What a path is about, for routing.
#[derive(Debug, PartialEq, Eq)]
enum About<'a> {
    /// A live session's API or WebSocket: served where it runs.
    Session(&'a str),
    /// A recording: served where it was written (unless the directory is shared).
    Recording(&'a str),
    Other,
}

fn about(path: &str) -> About<'_> {
    let id_after = |prefix: &str| {
        path.strip_prefix(prefix)
            .map(|rest| rest.split('/').next().unwrap_or_default())
            .filter(|id| !id.is_empty())
    };
    if let Some(id) = id_after("/api/v1/sessions/").or_else(|| id_after("/ws/sessions/")) {
        return About::Session(id);
    }
    if let Some(id) = id_after("/api/v1/recordings/") {
        return About::Recording(id);
    }
    About::Other
}

/// Routes each request: over the link to the node that holds what it is about, or here.
pub(super) async fn route(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let Some(cluster) = app.cluster.clone() else {
        return next.run(req).await;
    };
    if let Some(header) = req.headers().get(NODE_HEADER) {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let client = req
            .headers()
            .get(CLIENT_HEADER)
            .and_then(|v| v.to_str().ok());
        let verdict = match header.to_str() {
            Ok(h) => cluster.verify(h, req.method().as_str(), path, client),
            Err(_) => Err(crate::cluster::link::LinkRefusal::Malformed),
        };
        return match verdict {
            Ok(from) => {
                if let Some(addr) = from.client.as_deref().and_then(|c| c.parse().ok()) {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
                }
                req.extensions_mut().insert(from);
                next.run(req).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a node link request");
                ApiError::unauthorized(format!("node link: {e}")).into_response()
            }
        };
    }
    let peer = match about(req.uri().path()) {
        About::Session(id) => elsewhere(&app, id, true).await,
        About::Recording(id) => elsewhere(&app, id, false).await,
        About::Other => None,
    };
    match peer {
        Some(peer) => forward(&cluster, &peer, req).await,
        None => next.run(req).await,
    }
}

/// The live node, other than this one, where session `id` runs (`open`) or ran.
async fn elsewhere(app: &App, id: &str, open: bool) -> Option<Peer> {
    if id.len() > 64 {
        return None;
    }
    let id = id.to_owned();
    let found = app
        .db
        .run(move |s| {
            if open {
                s.session_elsewhere(&id)
            } else {
                s.recorded_elsewhere(&id)
            }
        })
        .await;
    found.unwrap_or_else(|e| {
        tracing::error!(error = %format!("{e:#}"), "could not look up a session's node");
        None
    })
}

/// Forwards a client's request to `peer` and its answer back; after a 101, pipes the two
/// upgraded connections together until either ends.
pub(super) async fn forward(cluster: &Arc<Cluster>, peer: &Peer, mut req: Request) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let slot = req.extensions_mut().remove::<ConnSlot>();
    let theirs = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let answer = match cluster.forward(peer, parts, body, &client).await {
        Ok(a) => a,
        Err(e) => {
            if cluster.first_failure(peer) {
                tracing::warn!(node = %peer.name, error = %format!("{e:#}"), "node link failed (said once per node per lease)");
            }
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "node_unreachable",
                format!("the node that runs this ({}) did not answer", peer.name),
            )
            .into_response();
        }
    };
    let (parts, body) = if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        let mut answer = answer;
        let ours = hyper::upgrade::on(&mut answer);
        let stop = cluster.stop.clone();
        cluster.tasks().spawn(async move {
            let _slot = slot;
            let (Ok(client), Ok(upstream)) = (theirs.await, ours.await) else {
                return tracing::debug!("a forwarded upgrade did not complete");
            };
            super::cluster_pipe::pipe(client, upstream, stop).await;
        });
        let (parts, _) = answer.into_parts();
        (parts, axum::body::Body::empty())
    } else {
        let (parts, incoming) = answer.into_parts();
        (parts, axum::body::Body::new(incoming))
    };
    Response::from_parts(parts, body)
}

/// `POST /cluster/v1/drop-agent` (node link only): drops this node's connection of an agent.
pub(super) async fn drop_agent(
    State(app): State<App>,
    from: Option<axum::Extension<FromNode>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let Some(axum::Extension(from)) = from else {
        return Err(ApiError::unauthorized("node link only"));
    };
    let req: DropAgent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("drop-agent body: {e}")))?;
    let agent = AgentId::new(&req.agent).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(conn) = app.registry.get(req.tenant_id, &agent) {
        tracing::info!(agent = %agent, node = %from.node, reason = %req.reason, "dropping an agent for another node");
        conn.disconnect(&req.reason);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /cluster/v1/drop-certified` (node link only): disconnects this node's agents whose
/// certificate matches.
pub(super) async fn drop_certified(
    State(app): State<App>,
    from: Option<axum::Extension<FromNode>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    if from.is_none() {
        return Err(ApiError::unauthorized("node link only"));
    }
    let what: DropCertified = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("drop-certified body: {e}")))?;
    let n = super::ca::disconnect_certified(&app, &what);
    tracing::info!(count = n, why = %what.why, "disconnected agents for another node");
    Ok(StatusCode::NO_CONTENT)
}

/// A session's creation for an agent another node holds goes there.
/// Never for a request that came over the link (no ping-pong while presence moves).
pub(super) async fn agent_elsewhere(
    app: &App,
    headers: &axum::http::HeaderMap,
    tenant_id: crate::store::TenantId,
    agent: &AgentId,
) -> Option<(Arc<Cluster>, Peer)> {
    let cluster = app.cluster.clone()?;
    if headers.contains_key(NODE_HEADER) || app.registry.get(tenant_id, agent).is_some() {
        return None;
    }
    let peer = cluster.holder_elsewhere(tenant_id, agent).await?;
    Some((cluster, peer))
}

#[cfg(test)]
mod tests {
    use super::{About, about};

    #[test]
    fn paths_name_what_they_are_about() {
        assert_eq!(about("/api/v1/sessions/abc"), About::Session("abc"));
        assert_eq!(about("/api/v1/sessions/abc/tokens"), About::Session("abc"));
        assert_eq!(about("/ws/sessions/abc/raw"), About::Session("abc"));
        assert_eq!(
            about("/api/v1/recordings/abc/screen"),
            About::Recording("abc")
        );
        assert_eq!(about("/api/v1/sessions"), About::Other);
        assert_eq!(about("/api/v1/sessions/"), About::Other);
        assert_eq!(about("/api/v1/agents/x"), About::Other);
    }
}
