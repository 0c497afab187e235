//! Moves the bytes of one local connection through one WebSocket to the broker, both ways, as
//! binary frames, until either side ends; then says how it ended.
//!
//! Memory per connection is one read buffer of [`READ_CHUNK`] bytes plus at most one message
//! from the broker (capped by the WebSocket config). Back-pressure is natural: a slow local
//! client stops us reading from the broker, and a slow broker stops us reading the client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::connect::BrokerSocket;

/// The most bytes read from the local client into one binary frame.
pub const READ_CHUNK: usize = 32 * 1024;

/// How long the broker has to answer our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Byte counters shared with the tunnel's statistics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes from the local client to the broker.
    pub up: AtomicU64,
    /// Bytes from the broker to the local client.
    pub down: AtomicU64,
}

/// How one bridged connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpEnd {
    /// The broker sent a close frame (1005 when it had no code).
    BrokerClosed {
        /// The close code.
        code: u16,
        /// The human reason.
        reason: String,
    },
    /// The local client closed (or the tunnel is shutting down) and we closed the WebSocket.
    LocalClosed,
    /// The broker's connection dropped without a close frame.
    BrokerGone(String),
}

/// What a connection moved, for its end event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Bytes from the local client to the broker.
    pub up: u64,
    /// Bytes from the broker to the local client.
    pub down: u64,
}

/// Bridges `local` and `ws` until one side ends or `cancel` fires. Bytes are added to `totals`
/// as they move.
pub async fn run(
    local: TcpStream,
    ws: BrokerSocket,
    totals: &Counters,
    cancel: &CancellationToken,
) -> (PumpEnd, Moved) {
    let (mut rd, mut wr) = local.into_split();
    let (mut sink, mut stream) = ws.split();
    let moved_up = AtomicU64::new(0);
    let moved_down = AtomicU64::new(0);

    // Local client -> broker. Ends on the client's EOF, a local error or cancellation by
    // sending a normal close frame (true), or when the broker cannot be written to (false).
    let mut up = Box::pin(async {
        let mut buf = vec![0u8; READ_CHUNK];
        let why = loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => r,
                () = cancel.cancelled() => break "the helper closed the tunnel",
            };
            match n {
                Ok(0) => break "the local client closed the connection",
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if sink.send(Message::Binary(data)).await.is_err() {
                        return false;
                    }
                    totals.up.fetch_add(n as u64, Ordering::Relaxed);
                    moved_up.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "local read failed");
                    break "the local connection failed";
                }
            }
        };
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: why.into(),
        };
        matches!(
            timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await,
            Ok(Ok(()))
        )
    });

    // Broker -> local client. Ends on a close frame or when the connection drops.
    let mut down = Box::pin(async {
        let end = loop {
            match stream.next().await {
                Some(Ok(Message::Binary(data))) => {
                    if let Err(e) = wr.write_all(&data).await {
                        tracing::debug!(error = %e, "local write failed");
                        break PumpEnd::LocalClosed;
                    }
                    totals.down.fetch_add(data.len() as u64, Ordering::Relaxed);
                    moved_down.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    });
                    break PumpEnd::BrokerClosed { code, reason };
                }
                // Pings are answered by tungstenite itself; the broker sends no text.
                Some(Ok(_)) => {}
                Some(Err(e)) => break PumpEnd::BrokerGone(e.to_string()),
                None => {
                    break PumpEnd::BrokerGone("connection closed without a close frame".into());
                }
            }
        };
        let _ = wr.shutdown().await;
        end
    });

    let end = tokio::select! {
        end = &mut down => end,
        closed = &mut up => {
            // Our side is done; give the broker CLOSE_WAIT to answer. One of Passerelle's own
            // codes in the answer still counts (the session may have ended meanwhile).
            match timeout(CLOSE_WAIT, &mut down).await {
                Ok(PumpEnd::BrokerClosed { code, reason }) if (4000..5000).contains(&code) => {
                    PumpEnd::BrokerClosed { code, reason }
                }
                Ok(end @ PumpEnd::BrokerGone(_)) if !closed => end,
                Ok(_) | Err(_) => PumpEnd::LocalClosed,
            }
        }
    };
    drop(up);
    drop(down);
    // Complete the closing handshake (tungstenite queued its reply to the broker's close).
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = timeout(CLOSE_WAIT, ws.close(None)).await;
    }
    let moved = Moved {
        up: moved_up.load(Ordering::Relaxed),
        down: moved_down.load(Ordering::Relaxed),
    };
    (end, moved)
}
