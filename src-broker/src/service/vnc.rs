//! The `vnc` adapter: the broker completes the RFB security handshake with the workstation's
//! VNC server (answering its password challenge with the stored password), then offers the
//! viewer security type None, and frames every viewer message from then on (a malformed one
//! ends the session with a reason instead of reaching the server; a view-only viewer's input is
//! dropped; a recorded session asks only for encodings the replay decoder reads). The state
//! machines are in `passerelle_proto::rfb`; this module only moves their bytes.

use std::time::Duration;

use bytes::Bytes;
use passerelle_proto::close::{self, Closure, EndReason};
use passerelle_proto::rfb::{ClientFilter, ClientHandshake, RfbError, ServerHandshake, Step};

use super::Context;
use crate::bridge::Options;
use crate::ends::{EndError, Fed, Filter, FilterError, Frame, Sink, Source};
use crate::store::AuditKind;

/// Each side's handshake must finish within this.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Failure {
    /// The server refused the password, or none is stored.
    #[error("{0}")]
    Auth(String),
    /// The server refused, spoke something else, or went away.
    #[error("{0}")]
    Server(String),
    /// The viewer broke the handshake or went away.
    #[error("{0}")]
    Viewer(String),
}

impl Failure {
    fn server(e: &RfbError) -> Self {
        match e {
            RfbError::AuthFailed(_) | RfbError::NoPassword => Self::Auth(e.to_string()),
            _ => Self::Server(e.to_string()),
        }
    }

    fn closure(&self) -> Closure {
        let (reason, code) = match self {
            Self::Auth(_) => (EndReason::VncAuthFailed, close::VNC_AUTH_FAILED),
            Self::Server(_) => (EndReason::VncHandshakeFailed, close::VNC_HANDSHAKE_FAILED),
            Self::Viewer(_) => (EndReason::ProtocolError, close::PROTOCOL_ERROR),
        };
        Closure::ending_with(reason, code, &self.to_string())
    }
}

/// The viewer's RFB messages, framed ([`ClientFilter`]) as a bridge filter.
struct Framed(ClientFilter);

impl Filter for Framed {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, FilterError> {
        let before = self.0.input;
        self.0
            .feed(input, out)
            .map_err(|e| FilterError(e.to_string()))?;
        Ok(Fed {
            input_events: self.0.input - before,
            record: None,
        })
    }
}

/// Runs both handshakes; returns the bridge's options (the bytes each side sent past its
/// handshake, the viewer's filter). A failure is audited (`vnc_failed`) and says how the
/// viewer's connection closes.
pub(crate) async fn handshake<AR, AT, VR, VT>(
    cx: &Context,
    agent: &mut (AR, AT),
    viewer: &mut (VR, VT),
) -> Result<Options, Closure>
where
    AR: Source,
    AT: Sink,
    VR: Source,
    VT: Sink,
{
    let (tenant_id, agent_id) = (cx.tenant_id, cx.agent.clone());
    let password = cx
        .db
        .run(move |s| s.vnc_password(tenant_id, &agent_id))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not read the VNC password");
            None
        });
    let done = async {
        let first_down = with_server(agent, password).await?;
        let first_up = with_viewer(viewer).await?;
        Ok::<_, Failure>((first_down, first_up))
    };
    let (first_down, first_up) = match done.await {
        Ok(firsts) => firsts,
        Err(f) => {
            cx.audit(AuditKind::VncFailed, f.to_string());
            tracing::info!(message = %f, "rfb handshake failed");
            return Err(f.closure());
        }
    };
    let filter = ClientFilter::new(cx.view_only);
    let filter = if cx.record {
        filter.decodable_only()
    } else {
        filter
    };
    Ok(Options {
        first_down,
        first_up,
        up: Some(Box::new(Framed(filter))),
        ..cx.plain()
    })
}

/// Runs the client side of the handshake against the workstation's VNC server. Returns any
/// bytes the server sent past the handshake.
async fn with_server<R: Source, T: Sink>(
    (rx, tx): &mut (R, T),
    password: Option<Vec<u8>>,
) -> Result<Bytes, Failure> {
    let mut hs = ClientHandshake::new(password);
    let run = async {
        loop {
            let data = match rx.recv().await {
                Ok(Some(Frame::Binary(data))) => data,
                Ok(Some(Frame::Text(_))) => continue,
                Ok(None) | Err(_) => {
                    return Err(Failure::Server(
                        "the VNC server closed the connection during the handshake".into(),
                    ));
                }
            };
            for step in hs.feed(&data).map_err(|e| Failure::server(&e))? {
                match step {
                    Step::Send(bytes) => {
                        let sent = tx.send(Frame::Binary(bytes.into())).await;
                        if sent.is_err() || tx.flush().await.is_err() {
                            return Err(Failure::Server(
                                "the VNC server went away during the handshake".into(),
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
        Err(_) => Err(Failure::Server(
            "the VNC server did not finish the handshake in time".into(),
        )),
    }
}

/// Runs the server side of the handshake with the viewer, offering security type None.
/// Returns the viewer's bytes past the handshake (its ClientInit, typically).
async fn with_viewer<R: Source, T: Sink>((rx, tx): &mut (R, T)) -> Result<Bytes, Failure> {
    let mut hs = ServerHandshake::new();
    let gone = || Failure::Viewer("viewer went away during the handshake".into());
    let run = async {
        let greeting = Bytes::from_static(ServerHandshake::greeting());
        tx.send(Frame::Binary(greeting)).await.map_err(|_| gone())?;
        tx.flush().await.map_err(|_| gone())?;
        loop {
            let data = match rx.recv().await {
                Ok(Some(Frame::Binary(data))) => data,
                Ok(Some(Frame::Text(_))) | Err(EndError::Protocol(_)) => {
                    return Err(Failure::Viewer(close::PROTOCOL_ERROR.reason.into()));
                }
                Ok(None) | Err(_) => return Err(gone()),
            };
            for step in hs.feed(&data).map_err(|e| Failure::Viewer(e.to_string()))? {
                match step {
                    Step::Send(bytes) => {
                        tx.send(Frame::Binary(bytes.into()))
                            .await
                            .map_err(|_| gone())?;
                        tx.flush().await.map_err(|_| gone())?;
                    }
                    Step::Done => return Ok(Bytes::from(hs.take_leftover())),
                }
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, run).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Viewer(
            "the viewer did not finish the RFB handshake in time".into(),
        )),
    }
}
