//! The viewers' WebSocket endpoints. The upgrade is always accepted so that every refusal
//! (bad token, offline agent, ended session) reaches the viewer as a close frame with a named
//! code and a human reason; then the session's agent is located and the bridge runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State as AxState};
use axum::response::Response;
use passerelle_proto::close::{self, CloseCode, EndReason};
use passerelle_proto::recording::Content;
use passerelle_proto::rfb::ClientFilter;
use serde::Deserialize;
use tracing::Instrument as _;

use super::server::ConnSlot;
use crate::bridge;
use crate::broker::State;
use crate::registry::AgentConn;
use crate::rfb;
use crate::sessions::{LiveSession, TokenKind};
use crate::shards::MoveHandle;
use crate::store::{AuditKind, NewEvent, now_ms};

/// How long the agent has to accept a channel.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    token: String,
}

pub async fn viewer(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(state, id, q.token, peer, slot, ws, false)
}

pub async fn raw(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(state, id, q.token, peer, slot, ws, true)
}

fn upgrade(
    state: Arc<State>,
    id: String,
    token: String,
    peer: SocketAddr,
    slot: Option<Extension<ConnSlot>>,
    ws: WebSocketUpgrade,
    raw: bool,
) -> Response {
    let max = state.config.max_ws_message_bytes;
    let span =
        tracing::info_span!("viewer", session = %id.chars().take(36).collect::<String>(), %peer);
    let tasks = state.tasks.clone();
    let mover = slot.as_ref().map(|s| s.0.mover.clone());
    ws.protocols(["binary"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            let fut = serve(state, id, token, peer, socket, raw, mover).instrument(span);
            // Tracked so that shutdown waits for the viewer's close frame. The connection keeps
            // its place under the connection caps until the viewer is done.
            let handle = tasks.spawn(async move {
                fut.await;
                drop(slot);
            });
            async move {
                let _ = handle.await;
            }
        })
}

async fn serve(
    state: Arc<State>,
    id: String,
    token: String,
    peer: SocketAddr,
    ws: WebSocket,
    raw: bool,
    mover: Option<MoveHandle>,
) {
    if let Err(wait) = state.credentials_allowed(peer) {
        let code = close::TOO_MANY_ATTEMPTS;
        let message = format!(
            "too many failed token attempts from this address; retry in {}s",
            wait.as_secs().max(1)
        );
        tracing::info!("viewer refused: its address is locked out");
        return bridge::refuse(ws, code, &message).await;
    }
    // glue until the session core lands: an RDP viewer may carry its token in its request.
    let Ok((token, rdp_request, mut ws)) =
        crate::service::rdp::glue::early_request(&state, &id, token, raw, ws).await
    else {
        return;
    };
    let (session, kind) = match state.sessions.admit(&id, &token) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            state
                .metrics
                .token_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut ev = NewEvent::new(AuditKind::TokenRefused, refusal.reason.clone());
            ev.peer_addr = Some(peer.to_string());
            let live = state.sessions.get(&id);
            if let Some(live) = &live {
                ev.tenant_id = Some(live.tenant_id);
                ev.session = Some(live.id.clone());
                ev.agent = Some(live.agent.to_string());
            }
            state.store.audit(ev);
            if refusal.unknown {
                let what = match &live {
                    Some(live) => format!("a token for session {}", live.id),
                    None => "a token for an unknown session".to_owned(),
                };
                state.credential_failed(peer, live.map(|l| l.tenant_id), &what);
            }
            tracing::info!(reason = %refusal.reason, "viewer refused");
            return bridge::refuse(ws, refusal.code, &refusal.reason).await;
        }
    };
    if raw && session.view_only {
        let message = "a view-only session is served on /ws/sessions/{id} only";
        return bridge::refuse(ws, close::PROTOCOL_ERROR, message).await;
    }
    // A viewer token that cannot be bridged ends its session; a launch token only this attempt.
    let target = locate(&state, &session).await;
    let (conn, address, port) = match target {
        Ok(t) => t,
        Err((reason, code, message)) => {
            if kind == TokenKind::Viewer {
                state.end_session_later(&session, reason, "broker");
            }
            tracing::info!(%message, "viewer not bridged");
            return bridge::refuse(ws, code, &message).await;
        }
    };
    let opened = tokio::select! {
        r = tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, conn.open(address, port, peer)) => r,
        () = session.ended.cancelled() => {
            let (code, message) = session.close_reason();
            return bridge::refuse(ws, code, &message).await;
        }
    };
    let mut channel = match opened {
        Ok(Ok(channel)) => channel,
        other => {
            let why = match other {
                Err(_) => "the agent did not open the channel in time".to_owned(),
                Ok(Err(e)) => format!(
                    "the agent could not reach its {} service ({e})",
                    session.service
                ),
                Ok(Ok(_)) => String::new(),
            };
            if kind == TokenKind::Viewer {
                state.end_session_later(&session, EndReason::ServiceUnavailable, "broker");
            }
            tracing::info!(%why, "viewer not bridged");
            return bridge::refuse(ws, close::SERVICE_UNAVAILABLE, &why).await;
        }
    };
    if !raw && session.service.as_str() == "rdp" {
        // glue until the session core lands
        let glue = crate::service::rdp::glue::serve;
        return glue(state, session, kind, conn, channel, ws, rdp_request, peer).await;
    }
    let opts = if !raw && session.service.as_str() == "vnc" {
        match terminate_rfb(&state, &session, &mut channel, &mut ws).await {
            Ok(opts) => opts,
            Err(f) => {
                let mut ev = NewEvent::new(AuditKind::VncFailed, f.message.clone());
                ev.tenant_id = Some(session.tenant_id);
                ev.agent = Some(session.agent.to_string());
                ev.session = Some(session.id.clone());
                ev.peer_addr = Some(peer.to_string());
                state.store.audit(ev);
                if kind == TokenKind::Viewer {
                    state.end_session_later(&session, f.reason, "broker");
                }
                tracing::info!(message = %f.message, "rfb handshake failed");
                return bridge::refuse(ws, f.code, &f.message).await;
            }
        }
    } else {
        bridge::Options::raw(state.config.session_buffer_bytes)
    };
    let guard = session.connection();
    let first = session.mark_started();
    if first {
        if let Err(e) = state
            .store
            .session_started(&session.id, now_ms(), &peer.to_string())
        {
            tracing::error!(error = %e, "could not record the start of a session");
        }
        let mut ev = NewEvent::new(AuditKind::SessionStarted, format!("viewer {peer}"));
        ev.tenant_id = Some(session.tenant_id);
        ev.agent = Some(session.agent.to_string());
        ev.session = Some(session.id.clone());
        ev.operator = Some(session.operator.clone());
        ev.peer_addr = Some(peer.to_string());
        state.store.audit(ev);
    }
    let mut opts = opts;
    if first {
        // The broker terminated RFB (ws_url of a vnc session): the recording holds the stream.
        let rfb = opts.filter.is_some() && !raw;
        match state.start_recording(&session, rfb) {
            // Only the connection that started an RFB recording feeds it: another stream
            // interleaved in the same file could not be replayed.
            Ok(rec) => opts.recording = rec.filter(|r| r.content == Content::Rfb),
            Err(why) => {
                drop(guard);
                state.end_session_later(&session, EndReason::RecordingFailed, "broker");
                let message = format!("the session's recording could not start: {why}");
                return bridge::refuse(ws, close::RECORDING_FAILED, &message).await;
            }
        }
    }
    tracing::info!(agent = %session.agent, service = %session.service, "bridging");
    let bridging = bridge::run(
        ws,
        channel,
        session.clone(),
        conn.gone.clone(),
        opts,
        state.metrics.clone(),
    );
    // On the agent connection's own shard, so that its data is handed over on one thread.
    let bridged = match &conn.home {
        Some(home) => {
            // The viewer's socket moves along (see crate::shards::MovableStream).
            if let Some(mover) = &mover {
                mover.request();
            }
            home.spawn(bridging.in_current_span()).await
        }
        None => Ok(bridging.await),
    };
    drop(guard);
    let Ok((outcome, closer)) = bridged else {
        // The shard stopped: the broker is going away, and its shutdown ends the session.
        return tracing::info!("bridge stopped with the broker");
    };
    tracing::info!(reason = %outcome.reason, code = outcome.code.code, "bridge ended");
    let reconnectable = matches!(
        outcome.reason,
        EndReason::ViewerClosed | EndReason::ServiceClosed
    );
    if kind == TokenKind::Launch && reconnectable {
        return;
    }
    let by = match outcome.reason {
        EndReason::ViewerClosed | EndReason::ProtocolError | EndReason::ViewerTooSlow => "viewer",
        EndReason::ServiceClosed => "workstation",
        EndReason::AgentDisconnected => "agent",
        _ => "broker",
    };
    tokio::join!(
        closer.close(),
        state.end_session(&session, outcome.reason, by)
    );
}

type Target = (Arc<AgentConn>, String, u32);

/// Finds the agent connection and forward for a session (waiting, bounded, in the legacy flow).
async fn locate(
    state: &State,
    session: &LiveSession,
) -> Result<Target, (EndReason, CloseCode, String)> {
    if session.legacy_port.is_some() {
        return match session.legacy_link(state.config.legacy_wait).await {
            Some(link) => Ok((link.conn, link.address, link.port)),
            None if session.ended.is_cancelled() => {
                let (code, message) = session.close_reason();
                Err((EndReason::Stopped, code, message))
            }
            None => Err((
                EndReason::AgentTimeout,
                close::AGENT_TIMEOUT,
                format!(
                    "agent {} did not connect within {}s",
                    session.agent,
                    state.config.legacy_wait.as_secs()
                ),
            )),
        };
    }
    let Some(conn) = state.registry.get(session.tenant_id, &session.agent) else {
        return Err((
            EndReason::AgentOffline,
            close::AGENT_OFFLINE,
            format!("agent {} is offline", session.agent),
        ));
    };
    let Some(port) = conn.service_port(&session.service) else {
        return Err((
            EndReason::ServiceUnavailable,
            close::SERVICE_UNAVAILABLE,
            format!(
                "agent {} does not announce the {} service",
                session.agent, session.service
            ),
        ));
    };
    Ok((conn.clone(), session.service.to_string(), port))
}

/// Completes the RFB security handshake with the workstation, then with the viewer.
async fn terminate_rfb(
    state: &State,
    session: &LiveSession,
    channel: &mut bridge::AgentStream,
    ws: &mut WebSocket,
) -> Result<bridge::Options, rfb::Failure> {
    let password = state
        .store
        .vnc_password(session.tenant_id, &session.agent)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not read the VNC password");
            None
        });
    let first_down = rfb::with_server(channel, password).await?;
    let first_up = rfb::with_viewer(ws).await?;
    Ok(bridge::Options {
        buffer_limit: state.config.session_buffer_bytes,
        first_down,
        first_up,
        // Every viewer message is framed, so a malformed one ends the session with a reason
        // instead of reaching the workstation's VNC server. A recorded session also asks the
        // server only for encodings the playback decoder reads.
        filter: Some({
            let filter = ClientFilter::new(session.view_only);
            if session.record {
                filter.decodable_only()
            } else {
                filter
            }
        }),
        recording: None,
    })
}
