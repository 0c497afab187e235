//! Glue until the session core lands: serves `ws_url` of an `rdp` session from today's
//! `http::ws` with [`read_request`] and [`connect`], then relays the TLS stream through the
//! filters with a loop of its own. The session core's generic bridge replaces [`serve`] and
//! [`relay`]; [`early_request`], [`fragment`] and the audit helpers show what it must do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use passerelle_proto::close::{self, CloseCode, EndReason};
use passerelle_proto::rdp::x224::protocol;
use passerelle_proto::recording::{Content, Kind};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{Connected, Params, RdpFailure, Request, connect, read_request};
use crate::bridge::{self, AgentStream};
use crate::broker::State;
use crate::ends::{self, EndError, Filter as _, Frame};
use crate::recorder::Recording;
use crate::registry::AgentConn;
use crate::sessions::{LiveSession, TokenKind};
use crate::store::{AuditKind, NewEvent, PinCheck, now_ms};

/// Input activity is noted in a recording at most this often.
const INPUT_EVENT_EVERY: Duration = Duration::from_millis(250);
/// How long a finished relay lets the server close its side after ours.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// A viewer's WebSocket as an end.
pub struct WsViewer(pub WebSocket);

impl ends::Source for WsViewer {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        loop {
            return match self.0.next().await {
                None | Some(Ok(Message::Close(_))) => Ok(None),
                Some(Ok(Message::Binary(b))) => Ok(Some(Frame::Binary(b))),
                Some(Ok(Message::Text(t))) => Ok(Some(Frame::Text(t.to_string()))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "viewer connection ended");
                    Err(EndError::Closed)
                }
            };
        }
    }
}

/// `&creds=stored` for the viewer URL's fragment when credentials are stored for the
/// session's agent: the page then sends placeholders and the broker injects (TLS servers).
pub fn fragment(state: &State, session: &LiveSession) -> &'static str {
    match state
        .store
        .rdp_credentials(session.tenant_id, &session.agent)
    {
        Ok(Some(_)) => "&creds=stored",
        Ok(None) => "",
        Err(e) => {
            tracing::error!(error = %e, "could not read the RDP credentials");
            ""
        }
    }
}

fn event(session: &LiveSession, kind: AuditKind, detail: String, peer: SocketAddr) -> NewEvent {
    let mut ev = NewEvent::new(kind, detail);
    ev.tenant_id = Some(session.tenant_id);
    ev.agent = Some(session.agent.to_string());
    ev.session = Some(session.id.clone());
    ev.operator = Some(session.operator.clone());
    ev.peer_addr = Some(peer.to_string());
    ev
}

/// Answers a failed RDP viewer: the RDCleanPath error, then the close frame.
async fn answer_failure(mut ws: WebSocket, f: &RdpFailure) {
    if let Some(answer) = f.answer() {
        let _ = ws.send(Message::Binary(answer.into())).await;
    }
    bridge::refuse(ws, f.close_code(), &f.close_reason()).await;
}

/// Whether session `id` (live or ended) is an `rdp` session.
pub fn is_rdp_session(state: &State, id: &str) -> bool {
    let service = match state.sessions.get(id) {
        Some(live) => Some(live.service.to_string()),
        None => state
            .store
            .session_with_tenant(id)
            .ok()
            .flatten()
            .map(|(s, _)| s.service.to_string()),
    };
    service.as_deref() == Some("rdp")
}

/// An RDP viewer that left its token out of the URL presents it in its RDCleanPath request:
/// reads that request first (`ws_url` only). `Err` when the viewer was answered and closed.
pub async fn early_request(
    state: &State,
    id: &str,
    token: String,
    raw: bool,
    ws: WebSocket,
) -> Result<(String, Option<Request>, WebSocket), ()> {
    if !token.is_empty() || raw || !is_rdp_session(state, id) {
        return Ok((token, None, ws));
    }
    let mut viewer = WsViewer(ws);
    match read_request(&mut viewer).await {
        Ok(req) => Ok((
            req.proxy_auth.clone().unwrap_or_default(),
            Some(req),
            viewer.0,
        )),
        Err(f) => {
            tracing::info!(failure = %f, "rdp viewer refused");
            answer_failure(viewer.0, &f).await;
            Err(())
        }
    }
}

async fn fail(
    state: &Arc<State>,
    session: &Arc<LiveSession>,
    kind: TokenKind,
    ws: WebSocket,
    f: RdpFailure,
    peer: SocketAddr,
) {
    let audit = match f {
        RdpFailure::CertificateChanged { .. } => AuditKind::RdpCertificateChanged,
        _ => AuditKind::RdpFailed,
    };
    state
        .store
        .audit(event(session, audit, f.audit_text(), peer));
    if kind == TokenKind::Viewer {
        state.end_session_later(session, f.end_reason(), "broker");
    }
    tracing::info!(failure = %f, "rdp connection failed");
    answer_failure(ws, &f).await;
}

/// Serves an `rdp` viewer on `ws_url` once the agent's channel is open.
#[expect(
    clippy::too_many_arguments,
    reason = "glue, replaced by the session core"
)]
pub async fn serve(
    state: Arc<State>,
    session: Arc<LiveSession>,
    kind: TokenKind,
    conn: Arc<AgentConn>,
    channel: AgentStream,
    ws: WebSocket,
    request: Option<Request>,
    peer: SocketAddr,
) {
    let mut viewer = WsViewer(ws);
    let req = match request {
        Some(req) => req,
        None => match read_request(&mut viewer).await {
            Ok(req) => req,
            Err(f) => return fail(&state, &session, kind, viewer.0, f, peer).await,
        },
    };
    let (tenant, agent) = (session.tenant_id, &session.agent);
    let credentials = state
        .store
        .rdp_credentials(tenant, agent)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not read the RDP credentials");
            None
        });
    let pinned = state.store.rdp_pin(tenant, agent).unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not read the pinned RDP certificate");
        None
    });
    let params = Params {
        view_only: session.view_only,
        credentials,
        pinned,
        server_name: format!("{agent}/rdp"),
    };
    let connecting = connect(req, channel.into_stream(), params);
    let connected = tokio::select! {
        c = connecting => c,
        () = session.ended.cancelled() => {
            let (code, message) = session.close_reason();
            return bridge::refuse(viewer.0, code, &message).await;
        }
    };
    let c = match connected {
        Ok(c) => c,
        Err(f) => return fail(&state, &session, kind, viewer.0, f, peer).await,
    };
    if pinned.is_none() {
        let presented = hex::encode(c.fingerprint);
        match state
            .store
            .pin_rdp_certificate(tenant, agent, &c.fingerprint)
        {
            Ok(PinCheck::Pinned) => {
                let detail =
                    format!("RDP server certificate sha256 {presented} pinned on first use");
                let ev = event(&session, AuditKind::RdpCertificatePinned, detail, peer);
                state.store.audit(ev);
            }
            Ok(PinCheck::Matches) => {}
            Ok(PinCheck::Differs(pinned)) => {
                let f = RdpFailure::CertificateChanged { pinned, presented };
                return fail(&state, &session, kind, viewer.0, f, peer).await;
            }
            Err(e) => tracing::error!(error = %e, "could not pin the RDP certificate"),
        }
    }
    if viewer
        .0
        .send(Message::Binary(c.answer.clone().into()))
        .await
        .is_err()
    {
        return fail(
            &state,
            &session,
            kind,
            viewer.0,
            RdpFailure::ViewerGone,
            peer,
        )
        .await;
    }
    let guard = session.connection();
    let first = session.mark_started();
    if first {
        if let Err(e) = state
            .store
            .session_started(&session.id, now_ms(), &peer.to_string())
        {
            tracing::error!(error = %e, "could not record the start of a session");
        }
        let ev = event(
            &session,
            AuditKind::SessionStarted,
            format!("viewer {peer}"),
            peer,
        );
        state.store.audit(ev);
    }
    let detail = format!(
        "{}; {}; server certificate sha256 {}",
        protocol::name(c.selected_protocol),
        c.credentials.describe(),
        hex::encode(c.fingerprint)
    );
    state
        .store
        .audit(event(&session, AuditKind::RdpConnected, detail, peer));
    let recording = if first {
        match state.start_recording_as(&session, Content::Rdp) {
            Ok(rec) => rec.filter(|r| r.content == Content::Rdp).inspect(|rec| {
                // What a player needs before the stream: the security the server selected.
                rec.event(&serde_json::json!({ "rdp": {
                    "selected_protocol": c.selected_protocol,
                    "security": protocol::name(c.selected_protocol),
                    "credentials": c.credentials.describe(),
                }}));
            }),
            Err(why) => {
                drop(guard);
                state.end_session_later(&session, EndReason::RecordingFailed, "broker");
                let message = format!("the session's recording could not start: {why}");
                return bridge::refuse(viewer.0, close::RECORDING_FAILED, &message).await;
            }
        }
    } else {
        None
    };
    tracing::info!(agent = %session.agent, selected = c.selected_protocol, "relaying rdp");
    let (outcome, ws) = relay(&state, &session, &conn, viewer.0, c, recording.as_deref()).await;
    drop(guard);
    tracing::info!(reason = %outcome.reason, code = outcome.code.code, "rdp relay ended");
    if outcome.reason == EndReason::RdpLogonFailed {
        let detail =
            "the workstation ended the connection during NLA: it refused the credentials typed";
        let ev = event(&session, AuditKind::RdpFailed, detail.to_owned(), peer);
        state.store.audit(ev);
    }
    let closing = async {
        if let Some(ws) = ws {
            bridge::refuse(ws, outcome.code, &outcome.message).await;
        }
    };
    let reconnectable = matches!(
        outcome.reason,
        EndReason::ViewerClosed | EndReason::ServiceClosed
    );
    if kind == TokenKind::Launch && reconnectable {
        return closing.await;
    }
    let by = match outcome.reason {
        EndReason::ViewerClosed | EndReason::ProtocolError | EndReason::ViewerTooSlow => "viewer",
        EndReason::ServiceClosed => "workstation",
        EndReason::AgentDisconnected => "agent",
        _ => "broker",
    };
    tokio::join!(closing, state.end_session(&session, outcome.reason, by));
}

/// How a relay ended.
struct Outcome {
    reason: EndReason,
    code: CloseCode,
    message: String,
}

impl Outcome {
    fn new(reason: EndReason, code: CloseCode) -> Self {
        Self {
            reason,
            code,
            message: code.reason.to_owned(),
        }
    }

    fn protocol(message: String) -> Self {
        Self {
            reason: EndReason::ProtocolError,
            code: close::PROTOCOL_ERROR,
            message,
        }
    }
}

/// Relays the viewer and the TLS stream until one ends, the session ends or the agent goes.
/// The server's bytes are read at once into a queue bounded by `session_buffer_bytes`, so an
/// undrained channel never stalls the agent's connection; a viewer too slow for it ends the
/// session (`viewer_too_slow`).
async fn relay<C>(
    state: &State,
    session: &LiveSession,
    conn: &AgentConn,
    ws: WebSocket,
    c: Connected<C>,
    rec: Option<&Recording>,
) -> (Outcome, Option<WebSocket>)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connected {
        tls,
        mut up,
        mut down,
        ..
    } = c;
    let metrics = &state.metrics;
    let limit = state.config.session_buffer_bytes;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (queue_tx, mut queue_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let queued = AtomicUsize::new(0);
    // The server ended the connection before letting the NLA logon through.
    let refused = std::sync::atomic::AtomicBool::new(false);

    let from_server = async {
        let queue_tx = queue_tx;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            session.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
            metrics.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
            let mut out = Vec::with_capacity(n);
            let fed = match down.feed(&buf[..n], &mut out) {
                Ok(fed) => fed,
                Err(e) => return Outcome::protocol(format!("protocol error: {e}")),
            };
            let out = Bytes::from(out);
            if let Some(rec) = rec {
                rec.record(
                    Kind::Down,
                    fed.record.map_or_else(|| out.clone(), Bytes::from),
                );
            }
            if out.is_empty() {
                continue;
            }
            if queued.fetch_add(out.len(), Ordering::Relaxed) + out.len() > limit {
                return Outcome::new(EndReason::ViewerTooSlow, close::VIEWER_TOO_SLOW);
            }
            let _ = queue_tx.send(out);
        }
        refused.store(down.0.logon_refused(), Ordering::Relaxed);
        // Closing the queue lets the viewer get what the server sent before it closed.
        drop(queue_tx);
        std::future::pending::<Outcome>().await
    };

    let to_viewer = async {
        while let Some(chunk) = queue_rx.recv().await {
            queued.fetch_sub(chunk.len(), Ordering::Relaxed);
            if ws_tx.feed(Message::Binary(chunk)).await.is_err()
                || (queue_rx.is_empty() && ws_tx.flush().await.is_err())
            {
                return Outcome::new(EndReason::ViewerClosed, close::SERVICE_CLOSED);
            }
        }
        let _ = ws_tx.flush().await;
        if refused.load(Ordering::Relaxed) {
            return Outcome::new(EndReason::RdpLogonFailed, close::RDP_LOGON_FAILED);
        }
        Outcome::new(EndReason::ServiceClosed, close::SERVICE_CLOSED)
    };

    let from_viewer = async {
        let (mut reported, mut last_event) = (0u64, None::<Instant>);
        loop {
            let data = match ws_rx.next().await {
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(Message::Text(_))) => {
                    return Outcome::new(EndReason::ProtocolError, close::PROTOCOL_ERROR);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return Outcome::new(EndReason::ViewerClosed, close::SERVICE_CLOSED);
                }
                Some(Ok(_)) => continue,
            };
            let mut out = Vec::with_capacity(data.len());
            let fed = match up.feed(&data, &mut out) {
                Ok(fed) => fed,
                Err(e) => return Outcome::protocol(format!("protocol error: {e}")),
            };
            let out = Bytes::from(out);
            if let Some(rec) = rec {
                let recorded = fed.record.map_or_else(|| out.clone(), Bytes::from);
                if !recorded.is_empty() {
                    rec.record(Kind::Up, recorded);
                }
                let seen = up.0.input;
                if seen > reported && last_event.is_none_or(|t| t.elapsed() >= INPUT_EVENT_EVERY) {
                    rec.event(&serde_json::json!({ "input": seen - reported }));
                    (reported, last_event) = (seen, Some(Instant::now()));
                }
            }
            if !out.is_empty() && (wr.write_all(&out).await.is_err() || wr.flush().await.is_err()) {
                return Outcome::new(EndReason::ServiceClosed, close::SERVICE_CLOSED);
            }
            session
                .bytes_up
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            metrics
                .bytes_up
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    };

    let outcome = tokio::select! {
        o = from_server => o,
        o = to_viewer => o,
        o = from_viewer => o,
        () = session.ended.cancelled() => {
            let (code, message) = session.close_reason();
            let reason = session.end_state().map_or(EndReason::Stopped, |(r, _)| r);
            Outcome { reason, code, message }
        }
        () = conn.gone.cancelled() => {
            Outcome::new(EndReason::AgentDisconnected, close::AGENT_DISCONNECTED)
        }
    };
    // close_notify and EOF, then a bounded wait for the server's side, so that the agent closes
    // the channel first (see bridge::finish_channel).
    let mut tls = rd.unsplit(wr);
    state.tasks.spawn(async move {
        let _ = tokio::time::timeout(FINISH_WAIT, async {
            let _ = tls.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    });
    // The halves of one socket always reunite.
    (outcome, ws_tx.reunite(ws_rx).ok())
}
