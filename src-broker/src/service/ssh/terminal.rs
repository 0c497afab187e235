//! The open terminal as the two ends a bridge carries: [`TerminalSource`] (the workstation's
//! output as binary frames, then its exit as a text frame) and [`TerminalSink`] (the viewer's
//! keys as binary frames, resizes as text frames).
//!
//! Back-pressure: the source reads the SSH channel only when polled. A bridge that stops
//! polling it (its viewer is slow) stops the broker's SSH client from reading, so that client
//! grants the workstation no more window, and the workstation's sshd waits. Only this session
//! waits: the client connection serves this terminal alone, and the agent's channel under it is
//! drained regardless (see `pipe.rs`). The viewer's keys go through the same client, so a
//! bridge must poll the two directions independently (as `tokio::select!` over two loops does).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use passerelle_proto::terminal::{FromViewer, RecordedEvent, ToViewer};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig, client};

use crate::ends::{EndError, Frame, Sink, Source};

/// Where a terminal's traffic is recorded (a session recording, in the broker).
pub trait Tap: Send + Sync {
    /// The workstation's output.
    fn output(&self, data: &Bytes);
    /// What the viewer typed (after the view-only filter).
    fn input(&self, data: &Bytes);
    /// A resize or the exit.
    fn event(&self, event: &RecordedEvent);
}

/// The SSH client connection, shared by both ends; dropped with the last of them.
pub(super) struct Connection {
    pub(super) handle: client::Handle<super::login::Client>,
}

/// The workstation's side: its output.
pub struct TerminalSource {
    pub(super) read: ChannelReadHalf,
    /// Output that arrived while the shell was being opened.
    pub(super) early: VecDeque<Bytes>,
    pub(super) tap: Option<Arc<dyn Tap>>,
    pub(super) _conn: Arc<Connection>,
}

/// The viewer's side: keys and resizes, to the workstation.
pub struct TerminalSink {
    pub(super) write: ChannelWriteHalf<client::Msg>,
    pub(super) view_only: bool,
    pub(super) tap: Option<Arc<dyn Tap>>,
    pub(super) conn: Arc<Connection>,
}

impl std::fmt::Debug for TerminalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalSource").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TerminalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalSink")
            .field("view_only", &self.view_only)
            .finish_non_exhaustive()
    }
}

fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

impl TerminalSource {
    fn exit(&self, status: Option<u32>, signal: Option<String>) -> Frame {
        if let Some(tap) = &self.tap {
            tap.event(&RecordedEvent::Exit {
                status,
                signal: signal.clone(),
            });
        }
        Frame::Text(ToViewer::Exit { status, signal }.to_text())
    }
}

impl Source for TerminalSource {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        if let Some(data) = self.early.pop_front() {
            if let Some(tap) = &self.tap {
                tap.output(&data);
            }
            return Ok(Some(Frame::Binary(data)));
        }
        loop {
            match self.read.wait().await {
                Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                    if let Some(tap) = &self.tap {
                        tap.output(&data);
                    }
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
            // A view-only viewer's keys are dropped here, whatever the page does.
            Frame::Binary(_) if self.view_only => Ok(()),
            Frame::Binary(data) => {
                if let Some(tap) = &self.tap {
                    tap.input(&data);
                }
                self.write
                    .data_bytes(data)
                    .await
                    .map_err(|_| EndError::Closed)
            }
            Frame::Text(text) => match FromViewer::parse(&text) {
                Ok(FromViewer::Resize { cols, rows }) => {
                    if let Some(tap) = &self.tap {
                        tap.event(&RecordedEvent::Resize { cols, rows });
                    }
                    self.write
                        .window_change(u32::from(cols), u32::from(rows), 0, 0)
                        .await
                        .map_err(|_| EndError::Closed)
                }
                Ok(FromViewer::Credentials { .. }) => Err(EndError::Protocol(
                    "credentials are taken only when the broker asks for them".into(),
                )),
                Err(passerelle_proto::terminal::ControlError::TooBig) => Err(EndError::TooBig),
                Err(e) => Err(EndError::Protocol(e.to_string())),
            },
        }
    }

    async fn flush(&mut self) -> Result<(), EndError> {
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), EndError> {
        let ending = async {
            let _ = self.write.eof().await;
            let _ = self
                .conn
                .handle
                .disconnect(russh::Disconnect::ByApplication, "session ended", "en")
                .await;
        };
        // The client's loop may be waiting on a viewer that no longer reads: bounded.
        let _ = tokio::time::timeout(Duration::from_secs(1), ending).await;
        Ok(())
    }
}
