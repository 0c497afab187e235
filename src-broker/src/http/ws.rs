//! The viewers' WebSocket endpoints, a thin adapter over the session core: the upgrade is
//! always accepted so that every refusal reaches the viewer as a close frame with a named code
//! and a human reason; then [`Core::join`] and [`Joined::serve`] do the rest, and the viewer is
//! closed with the [`Closure`] they give.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use passerelle_proto::api::ErrorBody;
use passerelle_proto::close::Closure;
use passerelle_proto::ids::ServiceKind;
use passerelle_proto::launch::WATCH_ADMITTED;
use serde::Deserialize;
use tracing::Instrument as _;

use super::ApiError;
use super::server::ConnSlot;
use super::viewer::{self, WsSink, WsSource};
use crate::ends::{Frame, Sink as _, Source as _};
use crate::service::rdp;
use crate::session::{Core, Endpoint};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TokenQuery {
    /// The viewer token, for clients that can send neither `Authorization: Bearer` nor the
    /// `passerelle.token.<token>` subprotocol (a query string is what proxies log).
    #[serde(default)]
    token: String,
}

/// A request that is no WebSocket upgrade, or a malformed query, answered as every API error.
fn not_an_upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<(WebSocketUpgrade, TokenQuery), ApiError> {
    let ws = ws.map_err(|r| {
        let code = match r.status() {
            StatusCode::UPGRADE_REQUIRED => "upgrade_required",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            _ => "bad_request",
        };
        ApiError::new(r.status(), code, r.body_text())
    })?;
    let Query(q) = query?;
    Ok((ws, q))
}

#[utoipa::path(get, path = "/ws/sessions/{id}", tag = "viewers", description = super::openapi::WS_VIEWER,
    security(("viewer_token" = []), ("viewer_token_subprotocol" = []), ("viewer_token_query" = [])),
    params(("id" = String, Path, description = "The session's id"), TokenQuery),
    responses(
        (status = 101, description = "Switching Protocols: the session is carried in binary frames; refusals come as close frames (see the codes above)"),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request", body = ErrorBody),
        (status = 426, description = "`upgrade_required`: the connection cannot be upgraded", body = ErrorBody),
    ))]
pub(super) async fn viewer(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<ConnSlot>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (ws, q) = not_an_upgrade(ws, query)?;
    let token = viewer::presented_token(&headers, q.token);
    Ok(upgrade(core, id, token, peer, slot, ws, Endpoint::Viewer))
}

#[utoipa::path(get, path = "/ws/sessions/{id}/raw", tag = "viewers", description = super::openapi::WS_RAW,
    security(("viewer_token" = []), ("viewer_token_subprotocol" = []), ("viewer_token_query" = [])),
    params(("id" = String, Path, description = "The session's id"), TokenQuery),
    responses(
        (status = 101, description = "Switching Protocols: the service's bytes in binary frames; refusals come as close frames (see the codes above)"),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request", body = ErrorBody),
        (status = 426, description = "`upgrade_required`: the connection cannot be upgraded", body = ErrorBody),
    ))]
pub(super) async fn raw(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<ConnSlot>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (ws, q) = not_an_upgrade(ws, query)?;
    let token = viewer::presented_token(&headers, q.token);
    Ok(upgrade(core, id, token, peer, slot, ws, Endpoint::Raw))
}

/// `/ws/sessions/{id}/watch`: a launch token's watch (see `session::watch`). Nothing flows; the
/// socket closes with the session's end code when it ends. What the watcher sends is read and
/// dropped (bounded by the upgrade's frame limit) so that its close is seen.
#[utoipa::path(get, path = "/ws/sessions/{id}/watch", tag = "viewers", description = super::openapi::WS_WATCH,
    security(("viewer_token" = []), ("viewer_token_query" = [])),
    params(("id" = String, Path, description = "The session's id"), TokenQuery),
    responses(
        (status = 101, description = "Switching Protocols: a text frame `watching` once admitted, then a close frame when the session ends; refusals come as close frames (see the codes above)"),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request", body = ErrorBody),
        (status = 426, description = "`upgrade_required`: the connection cannot be upgraded", body = ErrorBody),
    ))]
pub(super) async fn watch(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<ConnSlot>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (ws, q) = not_an_upgrade(ws, query)?;
    let token = viewer::presented_token(&headers, q.token);
    let span =
        tracing::info_span!("watch", session = %id.chars().take(36).collect::<String>(), %peer);
    let tasks = core.tasks.clone();
    Ok(
        viewer::accept(ws, WATCH_MAX_MESSAGE).on_upgrade(move |socket| {
            let serving = async move {
                let (mut rx, mut tx) = viewer::split(socket);
                let closure = match core.watch_session(&id, &token, peer).await {
                    Err(refused) => refused,
                    Ok(watch) => {
                        // Tells the watcher it was admitted: a refusal comes as a close instead.
                        let said = tx.send(Frame::Text(WATCH_ADMITTED.into())).await;
                        if said.is_err() || tx.flush().await.is_err() {
                            return drop(slot);
                        }
                        let watcher_left = async { while let Ok(Some(_)) = rx.recv().await {} };
                        tokio::select! {
                            closure = watch.ended() => closure,
                            () = watcher_left => return drop(slot),
                        }
                    }
                };
                viewer::close((rx, tx), closure.code.code, &closure.reason).await;
                drop(slot);
            };
            let handle = tasks.spawn(serving.instrument(span));
            async move {
                let _ = handle.await;
            }
        }),
    )
}

/// The largest message a watcher may send (it has nothing to say).
const WATCH_MAX_MESSAGE: usize = 1024;

fn upgrade(
    core: Arc<Core>,
    id: String,
    token: String,
    peer: SocketAddr,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
    endpoint: Endpoint,
) -> Response {
    let max = core.config.max_ws_message_bytes;
    // `agent` and `tenant_id` are filled in by the session core once the token is admitted.
    let span = tracing::info_span!(
        "viewer",
        session = %id.chars().take(36).collect::<String>(),
        %peer,
        agent = tracing::field::Empty,
        tenant_id = tracing::field::Empty
    );
    let tasks = core.tasks.clone();
    viewer::accept(ws, max).on_upgrade(move |socket| {
        let serving = async move {
            let mut viewer = viewer::split(socket);
            let mover = slot.as_ref().map(|s| s.0.mover.clone());
            let token = match rdp_token(&core, &id, token, endpoint, &mut viewer).await {
                Ok(token) => token,
                Err(closure) => {
                    viewer::close(viewer, closure.code.code, &closure.reason).await;
                    return;
                }
            };
            let closed = match core.join(&id, &token, peer, endpoint).await {
                Err(refused) => Some((viewer, refused)),
                Ok(joined) => {
                    let on_bridge = move || mover.iter().for_each(|m| m.request());
                    joined.serve(viewer, on_bridge).await
                }
            };
            if let Some((viewer, closure)) = closed {
                viewer::close(viewer, closure.code.code, &closure.reason).await;
            }
            // The connection keeps its place under the connection caps until here.
            drop(slot);
        };
        // Tracked so that shutdown waits for the viewer's close frame.
        let handle = tasks.spawn(serving.instrument(span));
        async move {
            let _ = handle.await;
        }
    })
}

/// The token of a viewer of a live `rdp` session on its viewer endpoint that left it out of the
/// URL: IronRDP's client sends it in its RDCleanPath request (`proxy_auth`), read here (bounded
/// in size and time) and delivered again to the adapter. Any other viewer keeps `token`.
async fn rdp_token(
    core: &Core,
    id: &str,
    token: String,
    endpoint: Endpoint,
    (rx, tx): &mut (WsSource, WsSink),
) -> Result<String, Closure> {
    let rdp_viewer = endpoint == Endpoint::Viewer
        && core
            .table()
            .get(id)
            .is_some_and(|s| s.service.kind() == Some(ServiceKind::Rdp));
    if !token.is_empty() || !rdp_viewer {
        return Ok(token);
    }
    match rdp::token_in_request(rx).await {
        Ok((token, request)) => {
            rx.unread(Frame::Binary(request));
            Ok(token)
        }
        Err(f) => Err(rdp::refuse_early(tx, &f).await),
    }
}
