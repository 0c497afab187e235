//! RFB handshake termination for `vnc` sessions: the broker completes the security handshake
//! with the workstation's VNC server (answering its password challenge with the stored
//! password), then offers the browser security type None. The state machines are in
//! `passerelle_proto::rfb`; this module only moves their bytes.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::StreamExt as _;
use passerelle_proto::close::{self, CloseCode, EndReason};
use passerelle_proto::rfb::{ClientHandshake, RfbError, ServerHandshake, Step};
use russh::ChannelMsg;

use crate::bridge::AgentStream;

/// Each side's handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a handshake failed: the session's end reason and what the viewer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: EndReason,
    pub code: CloseCode,
    pub message: String,
}

impl Failure {
    fn server(e: &RfbError) -> Self {
        let (reason, code) = match e {
            RfbError::AuthFailed(_) | RfbError::NoPassword => {
                (EndReason::VncAuthFailed, close::VNC_AUTH_FAILED)
            }
            _ => (EndReason::VncHandshakeFailed, close::VNC_HANDSHAKE_FAILED),
        };
        Self {
            reason,
            code,
            message: e.to_string(),
        }
    }

    fn server_text(message: &str) -> Self {
        Self {
            reason: EndReason::VncHandshakeFailed,
            code: close::VNC_HANDSHAKE_FAILED,
            message: message.to_owned(),
        }
    }

    fn viewer(message: String) -> Self {
        Self {
            reason: EndReason::ProtocolError,
            code: close::PROTOCOL_ERROR,
            message,
        }
    }
}

/// Runs the client side of the handshake against the workstation's VNC server. Returns any bytes
/// the server sent past the handshake.
pub async fn with_server(
    channel: &mut AgentStream,
    password: Option<Vec<u8>>,
) -> Result<Bytes, Failure> {
    let mut hs = ClientHandshake::new(password);
    let run = async {
        loop {
            let data = match channel.wait().await {
                Some(ChannelMsg::Data { data }) => data,
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    return Err(Failure::server_text(
                        "the VNC server closed the connection during the handshake",
                    ));
                }
                Some(_) => continue,
            };
            for step in hs.feed(&data).map_err(|e| Failure::server(&e))? {
                match step {
                    Step::Send(bytes) => {
                        if channel.data_bytes(bytes).await.is_err() {
                            return Err(Failure::server_text(
                                "the VNC server went away during the handshake",
                            ));
                        }
                    }
                    Step::Done => return Ok(Bytes::from(hs.take_leftover())),
                }
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, run).await {
        Ok(result) => result,
        Err(_) => Err(Failure::server_text(
            "the VNC server did not finish the handshake in time",
        )),
    }
}

/// Runs the server side of the handshake with the viewer, offering security type None. Returns
/// the viewer's bytes past the handshake (its ClientInit, typically).
pub async fn with_viewer(ws: &mut WebSocket) -> Result<Bytes, Failure> {
    let mut hs = ServerHandshake::new();
    let run = async {
        let greeting = Bytes::from_static(ServerHandshake::greeting());
        ws.send(Message::Binary(greeting))
            .await
            .map_err(|_| Failure::viewer("viewer went away".into()))?;
        loop {
            let data = match ws.next().await {
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Text(_))) => {
                    return Err(Failure::viewer(close::PROTOCOL_ERROR.reason.into()));
                }
                _ => {
                    return Err(Failure::viewer(
                        "viewer went away during the handshake".into(),
                    ));
                }
            };
            for step in hs.feed(&data).map_err(|e| Failure::viewer(e.to_string()))? {
                match step {
                    Step::Send(bytes) => {
                        ws.send(Message::Binary(bytes.into()))
                            .await
                            .map_err(|_| Failure::viewer("viewer went away".into()))?;
                    }
                    Step::Done => return Ok(Bytes::from(hs.take_leftover())),
                }
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, run).await {
        Ok(result) => result,
        Err(_) => Err(Failure::viewer(
            "the viewer did not finish the RFB handshake in time".into(),
        )),
    }
}
