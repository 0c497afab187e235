//! The open terminal as the two ends a bridge carries: [`TerminalSource`] (the workstation's
//! output as binary frames, then its exit as a text frame) and [`TerminalSink`] (the viewer's
//! keys as binary frames, resizes as text frames).
//!
//! Back-pressure: the source reads the SSH channel only when polled. A bridge that stops
//! polling it (its viewer is slow, the bridge's buffer is full) stops the broker's SSH client
//! from reading, so that client grants the workstation no more window, and the workstation's
//! sshd waits. Only this session waits: the client connection serves this terminal alone, and
//! the agent's channel under it is drained regardless (see `pipe.rs`). The viewer's keys go
//! through the same client, so a bridge must poll the two directions independently (as the
//! session core's bridge does).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use passerelle_proto::close::{self, Closure, EndReason};
use passerelle_proto::terminal::{ControlError, FromViewer, ToViewer};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig, client};

use crate::ends::{EndError, Frame, Sink, Source};

/// How long the end of a terminal may take (EOF, then the SSH disconnect).
const FINISH_WAIT: Duration = Duration::from_secs(1);

/// The SSH client connection, shared by both ends; dropped with the last of them.
pub(super) struct Connection {
    pub(super) handle: client::Handle<super::login::Client>,
}

/// The workstation's side: its output.
pub(crate) struct TerminalSource {
    pub(super) read: ChannelReadHalf,
    /// Output that arrived while the shell was being opened.
    pub(super) early: VecDeque<Bytes>,
    /// How the shell ended, once it said so.
    pub(super) exit: Option<ToViewer>,
    pub(super) _conn: Arc<Connection>,
}

/// The viewer's side: keys and resizes, to the workstation.
pub(crate) struct TerminalSink {
    pub(super) write: ChannelWriteHalf<client::Msg>,
    pub(super) eof_sent: bool,
    pub(super) conn: Arc<Connection>,
}

impl std::fmt::Debug for TerminalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalSource")
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TerminalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalSink").finish_non_exhaustive()
    }
}

fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

impl TerminalSource {
    fn exit(&mut self, status: Option<u32>, signal: Option<String>) -> Frame {
        let exit = ToViewer::Exit { status, signal };
        let text = exit.to_text();
        self.exit = Some(exit);
        Frame::Text(text)
    }

    /// The viewer's close once the bridge ended with `closure`: when the workstation closed the
    /// terminal after the shell said how it ended, the close says so ("the shell exited with
    /// status 0").
    pub(crate) fn closure(&self, closure: Closure) -> Closure {
        if closure.end != Some(EndReason::ServiceClosed) {
            return closure;
        }
        let why = match &self.exit {
            Some(ToViewer::Exit {
                status: Some(s), ..
            }) => format!("the shell exited with status {s}"),
            Some(ToViewer::Exit {
                signal: Some(s), ..
            }) => format!("the shell was killed by signal {s}"),
            _ => "the workstation closed the terminal".to_owned(),
        };
        Closure::ending_with(EndReason::ServiceClosed, close::SERVICE_CLOSED, &why)
    }
}

impl Source for TerminalSource {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        if let Some(data) = self.early.pop_front() {
            return Ok(Some(Frame::Binary(data)));
        }
        loop {
            match self.read.wait().await {
                Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                    return Ok(Some(Frame::Binary(data)));
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    return Ok(Some(self.exit(Some(exit_status), None)));
                }
                Some(ChannelMsg::ExitSignal {
                    signal_name: sig, ..
                }) => {
                    return Ok(Some(self.exit(None, Some(signal_name(&sig)))));
                }
                // The shell ended, or the connection went away.
                Some(ChannelMsg::Close) | None => return Ok(None),
                Some(_) => {}
            }
        }
    }
}

impl Sink for TerminalSink {
    async fn send(&mut self, frame: Frame) -> Result<(), EndError> {
        match frame {
            Frame::Binary(data) => self
                .write
                .data_bytes(data)
                .await
                .map_err(|_| EndError::Closed),
            Frame::Text(text) => match FromViewer::parse(&text) {
                Ok(FromViewer::Resize { cols, rows }) => self
                    .write
                    .window_change(u32::from(cols), u32::from(rows), 0, 0)
                    .await
                    .map_err(|_| EndError::Closed),
                Ok(FromViewer::Credentials { .. }) => Err(EndError::Protocol(
                    "credentials are taken only when the broker asks for them".into(),
                )),
                Err(ControlError::TooBig) => Err(EndError::TooBig),
                Err(e) => Err(EndError::Protocol(e.to_string())),
            },
        }
    }

    async fn flush(&mut self) -> Result<(), EndError> {
        Ok(())
    }

    /// EOF to the shell, then the end of the SSH connection (bounded: the client's loop may be
    /// waiting on a viewer that no longer reads).
    async fn finish(&mut self) -> Result<(), EndError> {
        let ending = async {
            if !std::mem::replace(&mut self.eof_sent, true) {
                let _ = self.write.eof().await;
            }
            let _ = self
                .conn
                .handle
                .disconnect(russh::Disconnect::ByApplication, "session ended", "en")
                .await;
        };
        let _ = tokio::time::timeout(FINISH_WAIT, ending).await;
        Ok(())
    }
}

/// Ends a terminal after its bridge (which gives its sink only a short while): EOF and the SSH
/// disconnect, then both ends are dropped, and with them the client and the agent's channel
/// under it (`pipe.rs` closes that).
pub(crate) async fn finish((source, mut sink): (TerminalSource, TerminalSink)) {
    let _ = sink.finish().await;
    drop((source, sink));
}
