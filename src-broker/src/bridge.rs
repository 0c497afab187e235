//! The data path: one viewer WebSocket bridged to one forwarded-tcpip channel of an agent.
//!
//! russh hands channel data to a bounded per-channel queue from inside the connection's loop, and
//! grants the agent more window as data *arrives*, not as it is consumed: a channel that nobody
//! reads freezes every channel of that agent, keepalives included. So the agent-to-viewer side
//! is always drained at once into a per-session buffer, and a viewer that lets this buffer grow
//! past `session_buffer_bytes` ends its session (`viewer_too_slow`) instead of stalling anyone
//! else. Memory per bridge is therefore bounded by that limit plus one WebSocket frame. The
//! viewer-to-agent side writes into the channel, which waits for the agent's SSH window: the
//! viewer gets back-pressure through TCP.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use passerelle_proto::close::{self, CloseCode, EndReason};
use passerelle_proto::recording::Kind;
use passerelle_proto::rfb::ClientFilter;
use russh::ChannelMsg;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::recorder::Recording;
use crate::sessions::LiveSession;

/// The agent side of a bridge: an SSH channel to the workstation's service.
pub type AgentStream = russh::Channel<russh::server::Msg>;

/// Largest WebSocket frame the broker makes by joining small SSH packets. Kept under glibc's
/// mmap threshold (128 KiB) so that freeing frames does not trim the heap (seen in profiles).
const MAX_OUT_FRAME: usize = 64 * 1024;
/// Input activity is noted in a recording at most this often.
const INPUT_EVENT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a finished bridge waits for the viewer to take its close frame.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A chunk at least this big is sent as it is, without a copy.
const NO_COALESCE: usize = 16 * 1024;

/// How a bridge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the session's end reason would be if this ends it.
    pub reason: EndReason,
    /// The close frame the viewer got (or would have).
    pub code: CloseCode,
    pub message: String,
}

impl Outcome {
    fn new(reason: EndReason, code: CloseCode) -> Self {
        Self {
            reason,
            code,
            message: code.reason.to_owned(),
        }
    }
}

/// A byte-counted FIFO between the channel reader and the WebSocket writer.
struct Buffer {
    queue: std::sync::Mutex<(VecDeque<Bytes>, usize, bool)>,
    ready: Notify,
    limit: usize,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Bytes>, usize, bool)> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues data; false when the limit is exceeded.
    fn push(&self, data: Bytes) -> bool {
        let mut q = self.lock();
        q.1 += data.len();
        q.0.push_back(data);
        let ok = q.1 <= self.limit;
        drop(q);
        self.ready.notify_one();
        ok
    }

    fn close(&self) {
        self.lock().2 = true;
        self.ready.notify_one();
    }

    /// Takes up to `max` bytes in one piece, and says whether that emptied the queue; `None`
    /// once closed and empty.
    async fn pop(&self, max: usize) -> Option<(Bytes, bool)> {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.lock();
                if let Some(first) = q.0.pop_front() {
                    let mut len = first.len();
                    if len >= NO_COALESCE || q.0.front().is_none_or(|next| len + next.len() > max) {
                        q.1 -= len;
                        return Some((first, q.0.is_empty()));
                    }
                    let mut out = BytesMut::with_capacity(max.min(q.1));
                    out.extend_from_slice(&first);
                    while let Some(next) = q.0.front() {
                        if len + next.len() > max {
                            break;
                        }
                        len += next.len();
                        if let Some(next) = q.0.pop_front() {
                            out.extend_from_slice(&next);
                        }
                    }
                    q.1 -= len;
                    return Some((out.freeze(), q.0.is_empty()));
                }
                if q.2 {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// How a bridge treats its bytes.
#[derive(Debug)]
pub struct Options {
    /// Bytes a session may hold for a slow viewer.
    pub buffer_limit: usize,
    /// Bytes for the viewer that arrived before the bridge started (after an RFB handshake).
    pub first_down: Bytes,
    /// Bytes for the agent that arrived before the bridge started.
    pub first_up: Bytes,
    /// Frames and filters the viewer's RFB messages (view-only and recorded sessions).
    pub filter: Option<ClientFilter>,
    /// Receives both directions' bytes, and input activity as events.
    pub recording: Option<Arc<Recording>>,
}

impl Options {
    /// Bytes as they are, both ways.
    pub fn raw(buffer_limit: usize) -> Self {
        Self {
            buffer_limit,
            first_down: Bytes::new(),
            first_up: Bytes::new(),
            filter: None,
            recording: None,
        }
    }
}

/// The viewer's side of a finished bridge, still to be closed with the outcome's code.
pub struct Closer {
    tx: futures_util::stream::SplitSink<WebSocket, Message>,
    rx: futures_util::stream::SplitStream<WebSocket>,
    frame: CloseFrame,
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer")
            .field("code", &self.frame.code)
            .finish_non_exhaustive()
    }
}

impl Closer {
    /// Sends the close frame and waits (at most [`CLOSE_WAIT`]) for the viewer's reply. A viewer
    /// that stopped reading gets the frame after the data queued before it, if it reads again in
    /// time; nothing else waits for this.
    pub async fn close(mut self) {
        let closing = async {
            let _ = self.tx.send(Message::Close(Some(self.frame))).await;
            // Read until the viewer's close reply: dropping a socket with unread input resets
            // it, and a reset can destroy our close frame before the viewer reads it.
            while let Some(Ok(msg)) = self.rx.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
            let _ = self.tx.close().await;
        };
        if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
            tracing::debug!("viewer did not complete the close handshake in time");
        }
    }
}

/// Bridges `ws` and `channel` until one side ends, the session ends, or the agent goes away.
/// When it returns, no more bytes move and the session's counters are final; the [`Closer`]
/// then tells the viewer why, with the outcome's close code and reason.
pub async fn run(
    ws: WebSocket,
    channel: AgentStream,
    session: Arc<LiveSession>,
    agent_gone: CancellationToken,
    opts: Options,
    metrics: Arc<Metrics>,
) -> (Outcome, Closer) {
    let Options {
        buffer_limit,
        first_down,
        first_up,
        mut filter,
        recording,
    } = opts;
    let recording = recording.as_deref();
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut ch_rx, ch_tx) = channel.split();
    let buffer = Arc::new(Buffer {
        queue: std::sync::Mutex::new((VecDeque::new(), 0, false)),
        ready: Notify::new(),
        limit: buffer_limit,
    });
    if !first_down.is_empty() {
        if let Some(rec) = recording {
            rec.record(Kind::Down, first_down.clone());
        }
        buffer.push(first_down);
    }

    // Agent -> buffer: never waits on the viewer.
    let drain = {
        let buffer = buffer.clone();
        let session = session.clone();
        let metrics = metrics.clone();
        let ch_rx = &mut ch_rx;
        async move {
            while let Some(msg) = ch_rx.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        let n = data.len() as u64;
                        session.bytes_down.fetch_add(n, Ordering::Relaxed);
                        metrics.bytes_down.fetch_add(n, Ordering::Relaxed);
                        if let Some(rec) = recording {
                            rec.record(Kind::Down, data.clone());
                        }
                        if !buffer.push(data) {
                            return Outcome::new(EndReason::ViewerTooSlow, close::VIEWER_TOO_SLOW);
                        }
                    }
                    ChannelMsg::Eof | ChannelMsg::Close => {
                        buffer.close();
                        // Let the writer flush what the service sent before it closed.
                        return std::future::pending::<Outcome>().await;
                    }
                    _ => {}
                }
            }
            // The channel vanished without EOF or close: the agent's connection is gone.
            Outcome::new(EndReason::AgentDisconnected, close::AGENT_DISCONNECTED)
        }
    };

    // Buffer -> viewer. Frames are flushed to the socket when the buffer runs dry, so that a
    // busy stream goes out in fewer, larger writes and a lone message goes out at once.
    let write = async {
        while let Some((chunk, drained)) = buffer.pop(MAX_OUT_FRAME).await {
            if ws_tx.feed(Message::Binary(chunk)).await.is_err()
                || (drained && ws_tx.flush().await.is_err())
            {
                return Outcome::new(EndReason::ViewerClosed, close::SERVICE_CLOSED);
            }
        }
        if ws_tx.flush().await.is_err() {
            return Outcome::new(EndReason::ViewerClosed, close::SERVICE_CLOSED);
        }
        Outcome::new(EndReason::ServiceClosed, close::SERVICE_CLOSED)
    };

    // Viewer -> agent.
    let read = {
        let (session, metrics, ch_tx, ws_rx) =
            (session.clone(), metrics.clone(), &ch_tx, &mut ws_rx);
        async move {
            let mut pending = Some(first_up);
            let (mut inputs_seen, mut last_input_event) = (0u64, None::<std::time::Instant>);
            loop {
                let next = match pending.take() {
                    Some(first) if !first.is_empty() => Some(Ok(Message::Binary(first))),
                    _ => ws_rx.next().await,
                };
                match next {
                    Some(Ok(Message::Binary(data))) => {
                        let n = data.len() as u64;
                        let data = match filter.as_mut() {
                            None => data,
                            Some(f) => {
                                let mut out = Vec::with_capacity(data.len());
                                if let Err(e) = f.feed(&data, &mut out) {
                                    let mut o = Outcome::new(
                                        EndReason::ProtocolError,
                                        close::PROTOCOL_ERROR,
                                    );
                                    o.message = format!("protocol error: {e}");
                                    return o;
                                }
                                Bytes::from(out)
                            }
                        };
                        if let (Some(rec), Some(f)) = (recording, filter.as_ref()) {
                            if !data.is_empty() {
                                rec.record(Kind::Up, data.clone());
                            }
                            let quiet =
                                last_input_event.is_none_or(|t| t.elapsed() >= INPUT_EVENT_EVERY);
                            if f.input > inputs_seen && quiet {
                                rec.event(&serde_json::json!({ "input": f.input - inputs_seen }));
                                (inputs_seen, last_input_event) =
                                    (f.input, Some(std::time::Instant::now()));
                            }
                        }
                        if !data.is_empty() && ch_tx.data_bytes(data).await.is_err() {
                            return Outcome::new(EndReason::ServiceClosed, close::SERVICE_CLOSED);
                        }
                        session.bytes_up.fetch_add(n, Ordering::Relaxed);
                        metrics.bytes_up.fetch_add(n, Ordering::Relaxed);
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Outcome::new(EndReason::ProtocolError, close::PROTOCOL_ERROR);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => {
                        let _ = ch_tx.eof().await;
                        return Outcome::new(EndReason::ViewerClosed, close::SERVICE_CLOSED);
                    }
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("too long")
                            || text.contains("Space limit")
                            || text.contains("capacity")
                        {
                            return Outcome::new(EndReason::ProtocolError, close::MESSAGE_TOO_BIG);
                        }
                        tracing::debug!(error = %text, "viewer connection ended");
                        return Outcome::new(EndReason::ViewerClosed, close::SERVICE_CLOSED);
                    }
                }
            }
        }
    };

    let outcome = tokio::select! {
        o = drain => o,
        o = write => o,
        o = read => o,
        () = session.ended.cancelled() => {
            let (code, message) = session.close_reason();
            let reason = session.end_state().map_or(EndReason::Stopped, |(r, _)| r);
            Outcome { reason, code, message }
        }
        () = agent_gone.cancelled() => Outcome::new(EndReason::AgentDisconnected, close::AGENT_DISCONNECTED),
    };
    // EOF first, so the workstation's service sees the end at once; then let the agent close
    // the channel (in the background, bounded).
    let _ = tokio::time::timeout(SHORT_WAIT, ch_tx.eof()).await;
    tokio::spawn(finish_channel(ch_rx, ch_tx));
    let frame = CloseFrame {
        code: outcome.code.code,
        reason: close::bounded_reason(&outcome.message).into(),
    };
    (
        outcome,
        Closer {
            tx: ws_tx,
            rx: ws_rx,
            frame,
        },
    )
}

/// A bounded wait for one channel message or the EOF sent at the end.
const SHORT_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// How long the agent has to close a channel after our EOF before the broker closes it.
const CHANNEL_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Ends a bridged channel after our EOF: waits (bounded) for the agent's CLOSE, discarding what
/// still arrives, and closes it ourselves only if none comes. The agent closing first matters:
/// russh 0.65 ignores the peer's CLOSE reply to a channel the broker closed, so that channel's
/// entry (a few KiB) would stay in the agent connection's channel map until it disconnects, a
/// leak per session that a soak run shows (see BENCHMARKS.md). OpenSSH closes the channel once
/// both directions have seen EOF, which is at once for a service that closes on EOF.
async fn finish_channel(
    mut rx: russh::ChannelReadHalf,
    tx: russh::ChannelWriteHalf<russh::server::Msg>,
) {
    let peer_closed = tokio::time::timeout(CHANNEL_CLOSE_WAIT, async {
        while let Some(msg) = rx.wait().await {
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
        let _ = tokio::time::timeout(SHORT_WAIT, tx.close()).await;
    }
}

/// Sends a close frame on a WebSocket that never got bridged (refused token, offline agent).
pub async fn refuse(mut ws: WebSocket, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code: code.code,
        reason: close::bounded_reason(reason).into(),
    };
    let closing = async {
        let _ = ws.send(Message::Close(Some(frame))).await;
        // Wait briefly for the viewer's close reply so the frame is not lost to a reset.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ws.next()).await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), closing).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffer_coalesces_counts_and_limits() {
        let b = Buffer {
            queue: std::sync::Mutex::new((VecDeque::new(), 0, false)),
            ready: Notify::new(),
            limit: 10,
        };
        assert!(b.push(Bytes::from_static(b"abc")));
        assert!(b.push(Bytes::from_static(b"def")));
        assert_eq!(
            b.pop(100).await.unwrap(),
            (Bytes::from_static(b"abcdef"), true)
        );
        assert!(b.push(Bytes::from_static(b"0123456789")));
        assert!(
            !b.push(Bytes::from_static(b"x")),
            "11 bytes buffered is over the limit of 10"
        );
        let (chunk, drained) = b.pop(4).await.unwrap();
        assert_eq!(chunk.len(), 10, "a single chunk is never split");
        assert!(!drained, "one byte is still queued");
        b.close();
        assert_eq!(b.pop(100).await.unwrap(), (Bytes::from_static(b"x"), true));
        assert!(b.pop(100).await.is_none());
    }
}
