//! The agent's forwarded-tcpip channel as a bridge end ([`crate::ends`]), and how a bridged
//! channel is let go.

use std::time::Duration;

use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use crate::ends::{EndError, Frame, Sink, Source};
use crate::registry::AgentChannel;

/// How long the agent has to close a channel after our EOF before the broker closes it.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// A bounded wait for our own close to go out.
const SHORT_WAIT: Duration = Duration::from_millis(200);

/// What the agent's channel delivers.
pub(crate) struct ChannelSource(ChannelReadHalf);

/// What goes into the agent's channel.
pub(crate) struct ChannelSink {
    tx: ChannelWriteHalf<russh::server::Msg>,
    eof_sent: bool,
}

impl std::fmt::Debug for ChannelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelSource")
    }
}

impl std::fmt::Debug for ChannelSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelSink")
    }
}

/// The channel's two ends.
pub(crate) fn split(channel: AgentChannel) -> (ChannelSource, ChannelSink) {
    let (rx, tx) = channel.split();
    (
        ChannelSource(rx),
        ChannelSink {
            tx,
            eof_sent: false,
        },
    )
}

impl Source for ChannelSource {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        loop {
            match self.0.wait().await {
                Some(ChannelMsg::Data { data }) => return Ok(Some(Frame::Binary(data))),
                Some(ChannelMsg::Eof | ChannelMsg::Close) => return Ok(None),
                Some(_) => {}
                // The channel vanished without EOF or close: the agent's connection is gone.
                None => return Err(EndError::Closed),
            }
        }
    }
}

impl Sink for ChannelSink {
    async fn send(&mut self, frame: Frame) -> Result<(), EndError> {
        match frame {
            Frame::Binary(data) => self.tx.data_bytes(data).await.map_err(|_| EndError::Closed),
            Frame::Text(_) => Err(EndError::Protocol("binary frames only".into())),
        }
    }

    async fn flush(&mut self) -> Result<(), EndError> {
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), EndError> {
        if self.eof_sent {
            return Ok(());
        }
        self.eof_sent = true;
        self.tx.eof().await.map_err(|_| EndError::Closed)
    }
}

/// Ends a channel after the bridge: EOF, then a bounded wait for the agent's CLOSE (discarding
/// what still arrives), closing it ourselves only if none comes. The agent closing first
/// matters: russh 0.65 ignores the peer's CLOSE reply to a channel the broker closed, so that
/// channel's entry (a few KiB) would stay in the agent connection's channel map until it
/// disconnects, a leak per session that a soak run shows (see BENCHMARKS.md). OpenSSH closes
/// the channel once both directions have seen EOF, which is at once for a service that closes
/// on EOF.
pub(crate) async fn finish((mut rx, mut tx): (ChannelSource, ChannelSink)) {
    let _ = tokio::time::timeout(SHORT_WAIT, tx.finish()).await;
    let peer_closed = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(msg) = rx.0.wait().await {
            if matches!(msg, ChannelMsg::Close) {
                return true;
            }
        }
        // The channel is gone with the agent's connection: nothing left to close.
        true
    })
    .await
    .unwrap_or(false);
    if !peer_closed {
        let _ = tokio::time::timeout(SHORT_WAIT, tx.tx.close()).await;
    }
}
