//! Glue until the session core lands: `ws_url` of an `ssh` session runs the browser terminal
//! ([`crate::service::ssh`]) and a relay of its own. The session core's generic bridge replaces
//! [`relay`]; the viewer's ends ([`WsSource`], [`WsSink`]) and the bookkeeping move with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use passerelle_proto::close::{self, CloseCode, EndReason};
use passerelle_proto::recording::Content;
use passerelle_proto::terminal::ToViewer;
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, AgentStream, Outcome};
use crate::broker::State;
use crate::ends::{EndError, Frame, Sink, Source};
use crate::service::ssh::{self, PIPE_LIMIT, Terminal, TerminalSink, TerminalSource};
use crate::sessions::{LiveSession, TokenKind};
use crate::store::{AuditKind, NewEvent, now_ms};

/// The viewer's receiving half.
pub struct WsSource(SplitStream<WebSocket>);
/// The viewer's sending half.
pub struct WsSink(SplitSink<WebSocket, Message>);

fn ws_error(e: axum::Error) -> EndError {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => match *e {
            tungstenite::Error::Capacity(_) => EndError::TooBig,
            tungstenite::Error::Protocol(p) => EndError::Protocol(p.to_string()),
            _ => EndError::Closed,
        },
        Err(_) => EndError::Closed,
    }
}

impl Source for WsSource {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        loop {
            return match self.0.next().await {
                Some(Ok(Message::Binary(data))) => Ok(Some(Frame::Binary(data))),
                Some(Ok(Message::Text(text))) => Ok(Some(Frame::Text(text.as_str().to_owned()))),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Ok(None),
                Some(Err(e)) => Err(ws_error(e)),
            };
        }
    }
}

impl Sink for WsSink {
    async fn send(&mut self, frame: Frame) -> Result<(), EndError> {
        let msg = match frame {
            Frame::Binary(data) => Message::Binary(data),
            Frame::Text(text) => Message::Text(text.into()),
        };
        self.0.send(msg).await.map_err(|_| EndError::Closed)
    }

    async fn flush(&mut self) -> Result<(), EndError> {
        self.0.flush().await.map_err(|_| EndError::Closed)
    }

    async fn finish(&mut self) -> Result<(), EndError> {
        Ok(())
    }
}

/// Sends the close frame and waits (bounded) for the viewer's reply.
async fn close_viewer(mut tx: WsSink, mut rx: WsSource, code: CloseCode, message: &str) {
    let frame = CloseFrame {
        code: code.code,
        reason: ssh::error::close_reason(message).into(),
    };
    let closing = async {
        let _ = tx.0.send(Message::Close(Some(frame))).await;
        while let Ok(Some(_)) = rx.recv().await {}
        let _ = tx.0.close().await;
    };
    let _ = tokio::time::timeout(bridge::CLOSE_WAIT, closing).await;
}

fn outcome(reason: EndReason, code: CloseCode, message: impl Into<String>) -> Outcome {
    Outcome {
        reason,
        code,
        message: message.into(),
    }
}

/// Carries the terminal both ways until one side ends, the session ends or the agent goes
/// away. Each direction is its own loop: a viewer that reads slowly stops the output loop
/// (which is the back-pressure) and never the keys going the other way.
pub async fn relay(
    terminal: (&mut TerminalSource, &mut TerminalSink),
    viewer: (&mut WsSource, &mut WsSink),
    session: &LiveSession,
    agent_gone: &CancellationToken,
    state: &State,
) -> Outcome {
    let (source, sink) = terminal;
    let (rx, tx) = viewer;
    let metrics = &state.metrics;
    let down = async {
        let mut exit = None;
        loop {
            match source.recv().await {
                Ok(Some(Frame::Binary(data))) => {
                    let n = data.len() as u64;
                    session.bytes_down.fetch_add(n, Ordering::Relaxed);
                    metrics.bytes_down.fetch_add(n, Ordering::Relaxed);
                    if tx.send(Frame::Binary(data)).await.is_err() {
                        return outcome(EndReason::ViewerClosed, close::SERVICE_CLOSED, "");
                    }
                }
                Ok(Some(Frame::Text(text))) => {
                    exit = match ToViewer::parse(&text) {
                        Ok(ToViewer::Exit {
                            status: Some(s), ..
                        }) => Some(format!("the shell exited with status {s}")),
                        Ok(ToViewer::Exit {
                            signal: Some(s), ..
                        }) => Some(format!("the shell was killed by signal {s}")),
                        _ => exit,
                    };
                    if tx.send(Frame::Text(text)).await.is_err() {
                        return outcome(EndReason::ViewerClosed, close::SERVICE_CLOSED, "");
                    }
                }
                Ok(None) | Err(_) => {
                    let message =
                        exit.unwrap_or_else(|| "the workstation closed the terminal".into());
                    return outcome(EndReason::ServiceClosed, close::SERVICE_CLOSED, message);
                }
            }
        }
    };
    let up = async {
        loop {
            let frame = match rx.recv().await {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(EndError::Closed | EndError::Io(_)) => {
                    return outcome(EndReason::ViewerClosed, close::SERVICE_CLOSED, "");
                }
                Err(EndError::TooBig) => {
                    return outcome(
                        EndReason::ProtocolError,
                        close::MESSAGE_TOO_BIG,
                        "message too big",
                    );
                }
                Err(EndError::Protocol(e)) => {
                    return outcome(
                        EndReason::ProtocolError,
                        close::PROTOCOL_ERROR,
                        format!("protocol error: {e}"),
                    );
                }
            };
            let n = match &frame {
                Frame::Binary(data) => data.len() as u64,
                Frame::Text(_) => 0,
            };
            match sink.send(frame).await {
                Ok(()) => {
                    session.bytes_up.fetch_add(n, Ordering::Relaxed);
                    metrics.bytes_up.fetch_add(n, Ordering::Relaxed);
                }
                Err(EndError::Protocol(e)) => {
                    return outcome(
                        EndReason::ProtocolError,
                        close::PROTOCOL_ERROR,
                        format!("protocol error: {e}"),
                    );
                }
                Err(EndError::TooBig) => {
                    return outcome(
                        EndReason::ProtocolError,
                        close::MESSAGE_TOO_BIG,
                        "message too big",
                    );
                }
                Err(_) => {
                    return outcome(
                        EndReason::ServiceClosed,
                        close::SERVICE_CLOSED,
                        "the workstation closed the terminal",
                    );
                }
            }
        }
    };
    tokio::select! {
        o = down => o,
        o = up => o,
        () = session.ended.cancelled() => {
            let (code, message) = session.close_reason();
            let reason = session.end_state().map_or(EndReason::Stopped, |(r, _)| r);
            Outcome { reason, code, message }
        }
        () = agent_gone.cancelled() => outcome(EndReason::AgentDisconnected, close::AGENT_DISCONNECTED, close::AGENT_DISCONNECTED.reason),
    }
}

/// Serves an `ssh` session's `ws_url` once its agent's channel is open: logs in, records,
/// relays, and ends the session with the outcome's reason.
pub async fn serve(
    state: Arc<State>,
    session: Arc<LiveSession>,
    kind: TokenKind,
    peer: SocketAddr,
    channel: AgentStream,
    agent_gone: CancellationToken,
    ws: WebSocket,
) {
    let (tx, rx) = ws.split();
    let (mut tx, mut rx) = (WsSink(tx), WsSource(rx));
    let ends_session = |reason| kind == TokenKind::Viewer || reason != EndReason::ViewerClosed;
    let opts = match state.terminal_options(&session) {
        Ok(opts) => opts,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "could not read the terminal's credentials");
            state.end_session_later(&session, EndReason::SshAuthFailed, "broker");
            let message = "the broker could not read its SSH credentials";
            return close_viewer(tx, rx, close::SSH_AUTH_FAILED, message).await;
        }
    };
    let pipe = ssh::pipe::drain(channel, PIPE_LIMIT, &state.tasks);
    // The login may wait for the operator: a stop, the session's end or the agent leaving
    // interrupts it.
    let opened = tokio::select! {
        r = ssh::open(pipe, opts, &mut rx, &mut tx) => Some(r),
        () = session.ended.cancelled() => None,
        () = agent_gone.cancelled() => {
            state.end_session_later(&session, EndReason::AgentDisconnected, "agent");
            None
        }
    };
    let Some(opened) = opened else {
        let (code, message) = if session.ended.is_cancelled() {
            session.close_reason()
        } else {
            (
                close::AGENT_DISCONNECTED,
                close::AGENT_DISCONNECTED.reason.to_owned(),
            )
        };
        return close_viewer(tx, rx, code, &message).await;
    };
    let mut terminal: Terminal = match opened {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "terminal not opened");
            state.terminal_failed(&session, &e, peer.to_string());
            if ends_session(e.end_reason()) {
                state.end_session_later(&session, e.end_reason(), "broker");
            }
            return close_viewer(tx, rx, e.close_code(), &e.viewer_message()).await;
        }
    };
    state.terminal_opened(&session, &terminal);
    let guard = session.connection();
    if session.mark_started() {
        if let Err(e) = state
            .store
            .session_started(&session.id, now_ms(), &peer.to_string())
        {
            tracing::error!(error = %e, "could not record the start of a session");
        }
        let mut ev = NewEvent::new(
            AuditKind::SessionStarted,
            format!(
                "viewer {peer}; logged in as {} with {}",
                terminal.user,
                terminal.auth.as_str()
            ),
        );
        ev.tenant_id = Some(session.tenant_id);
        ev.agent = Some(session.agent.to_string());
        ev.session = Some(session.id.clone());
        ev.operator = Some(session.operator.clone());
        ev.peer_addr = Some(peer.to_string());
        state.store.audit(ev);
    }
    match state.start_recording_as(&session, Content::Terminal) {
        Ok(Some(rec)) if rec.content == Content::Terminal => {
            let input = state
                .store
                .tenant_ssh(session.tenant_id)
                .is_ok_and(|t| t.record_terminal_input);
            terminal.record_to(Arc::new(ssh::wiring::RecordingTap {
                recording: rec,
                input,
            }));
        }
        Ok(_) => {}
        Err(why) => {
            drop(guard);
            state.end_session_later(&session, EndReason::RecordingFailed, "broker");
            let message = format!("the session's recording could not start: {why}");
            return close_viewer(tx, rx, close::RECORDING_FAILED, &message).await;
        }
    }
    let ready = ToViewer::Ready {
        user: terminal.user.clone(),
    };
    let _ = tx.send(Frame::Text(ready.to_text())).await;
    tracing::info!(agent = %session.agent, "terminal relaying");
    let Terminal {
        mut source,
        mut sink,
        ..
    } = terminal;
    let result = relay(
        (&mut source, &mut sink),
        (&mut rx, &mut tx),
        &session,
        &agent_gone,
        &state,
    )
    .await;
    let _ = sink.finish().await;
    drop((source, sink));
    drop(guard);
    tracing::info!(reason = %result.reason, code = result.code.code, "terminal ended");
    let reconnectable = matches!(
        result.reason,
        EndReason::ViewerClosed | EndReason::ServiceClosed
    );
    if kind == TokenKind::Launch && reconnectable {
        return close_viewer(tx, rx, result.code, &result.message).await;
    }
    let by = match result.reason {
        EndReason::ViewerClosed | EndReason::ProtocolError => "viewer",
        EndReason::ServiceClosed => "workstation",
        EndReason::AgentDisconnected => "agent",
        _ => "broker",
    };
    tokio::join!(
        close_viewer(tx, rx, result.code, &result.message),
        state.end_session(&session, result.reason, by)
    );
}
