//! The data path: one viewer bridged to one agent end, both generic ([`crate::ends`]), so that
//! the same code carries a WebSocket to an SSH channel in production and in-memory pipes in
//! the unit tests (`tests.rs`).
//!
//! Agent to viewer, the agent's frames go through a byte-counted [`buffer::Buffer`] to a writer
//! that sends them to the viewer, joined into larger frames while the viewer keeps up. When the
//! buffer holds `buffer_limit` bytes, the agent's end is no longer read until the viewer takes
//! some: a slower viewer slows the transfer down (for an SSH channel, russh then stops granting
//! the agent window, so that agent's connection waits, and no other); the session ends
//! (`viewer_too_slow`) only when the viewer takes nothing for `stall`. Memory per bridge is
//! bounded by that limit plus one frame. Viewer to agent, each frame goes through the optional
//! filter (view-only, credential injection) and is written to the agent's end, which waits for
//! the agent's SSH window: the viewer gets back-pressure through TCP. The two directions are
//! polled independently (an end whose two halves share one connection, like the SSH terminal,
//! may wait on one while the other must go on). Text frames (control messages) pass both ways;
//! the filters say what the recording keeps of them (`Filter::control`).
//!
//! [`run`] returns why it ended as a [`Closure`], with both ends given back: the caller closes
//! the viewer with the closure's code and lets the agent's channel finish.

mod buffer;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use passerelle_proto::close::{self, Closure, EndReason};
use passerelle_proto::recording::Kind;

use crate::ends::{EndError, Filter, FilterError, Frame, Sink, Source};
use crate::metrics::Metrics;
use crate::recording::Recording;

/// Largest frame the broker makes by joining small agent frames. Kept under glibc's mmap
/// threshold (128 KiB) so that freeing frames does not trim the heap (seen in profiles).
const MAX_OUT_FRAME: usize = 64 * 1024;
/// Input activity is noted in a recording at most this often.
const INPUT_EVENT_EVERY: Duration = Duration::from_millis(250);
/// How long the bridge waits for the agent's end to take its EOF.
const EOF_WAIT: Duration = Duration::from_millis(200);

/// Bytes carried, both ways (a session's, summed over its connections).
#[derive(Debug, Default)]
pub struct Counters {
    /// Viewer to workstation.
    pub up: AtomicU64,
    /// Workstation to viewer.
    pub down: AtomicU64,
}

impl Counters {
    /// (up, down).
    pub fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// How a bridge treats its bytes.
pub(crate) struct Options {
    /// Bytes held for a viewer slower than the agent before the agent's end is paused.
    pub buffer_limit: usize,
    /// How long a viewer may take nothing while the buffer is full before the session ends.
    pub stall: Duration,
    /// Bytes for the viewer that arrived before the bridge started (after a handshake).
    pub first_down: Bytes,
    /// Bytes for the agent that arrived before the bridge started.
    pub first_up: Bytes,
    /// Frames and filters what the viewer sends (view-only, credential injection).
    pub up: Option<Box<dyn Filter>>,
    /// Looks at what the agent sends, for the recording only (redaction, control messages).
    pub down: Option<Box<dyn Filter>>,
    /// Events the recording starts with (a terminal's size at the start).
    pub first_events: Vec<serde_json::Value>,
    /// Receives both directions' bytes, and input activity as events.
    pub recording: Option<Arc<Recording>>,
    /// Joins the agent's small frames into larger ones for the viewer (true but for a viewer
    /// that must get each frame as its own message: IronRDP's web client drops what follows
    /// the end of the RDP connection sequence in the same message).
    pub coalesce: bool,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("buffer_limit", &self.buffer_limit)
            .field("stall", &self.stall)
            .field("up_filter", &self.up.is_some())
            .field("recording", &self.recording.is_some())
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Bytes as they are, both ways, unrecorded.
    pub(crate) fn plain(buffer_limit: usize, stall: Duration) -> Self {
        Self {
            buffer_limit,
            stall,
            first_down: Bytes::new(),
            first_up: Bytes::new(),
            up: None,
            down: None,
            first_events: Vec::new(),
            recording: None,
            coalesce: true,
        }
    }
}

/// What a bridge counts into: its session's totals, its own, and the broker's.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    pub session: Arc<Counters>,
    pub connection: Arc<Counters>,
    pub metrics: Arc<Metrics>,
}

impl Meter {
    fn up(&self, n: usize) {
        let n = n as u64;
        self.session.up.fetch_add(n, Ordering::Relaxed);
        self.connection.up.fetch_add(n, Ordering::Relaxed);
        self.metrics.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    fn down(&self, n: usize) {
        let n = n as u64;
        self.session.down.fetch_add(n, Ordering::Relaxed);
        self.connection.down.fetch_add(n, Ordering::Relaxed);
        self.metrics.bytes_down.fetch_add(n, Ordering::Relaxed);
    }
}

/// A finished bridge: why, and both ends back.
#[derive(Debug)]
pub(crate) struct Bridged<VR, VT, AR, AT> {
    pub closure: Closure,
    pub viewer: (VR, VT),
    pub agent: (AR, AT),
}

fn viewer_error(e: &EndError) -> Closure {
    match e {
        EndError::TooBig => Closure::ending_with(
            EndReason::ProtocolError,
            close::MESSAGE_TOO_BIG,
            close::MESSAGE_TOO_BIG.reason,
        ),
        EndError::Protocol(why) => Closure::ending_with(
            EndReason::ProtocolError,
            close::PROTOCOL_ERROR,
            &format!("protocol error: {why}"),
        ),
        EndError::Closed | EndError::Io(_) => Closure::ending(EndReason::ViewerClosed),
    }
}

fn agent_error(e: &EndError) -> Closure {
    match e {
        // The agent's end refused what the viewer sent (a text frame to a byte stream).
        EndError::Protocol(_) | EndError::TooBig => viewer_error(e),
        EndError::Closed | EndError::Io(_) => Closure::ending(EndReason::ServiceClosed),
    }
}

fn filter_error(e: &FilterError) -> Closure {
    Closure::ending_with(
        EndReason::ProtocolError,
        close::PROTOCOL_ERROR,
        &format!("protocol error: {e}"),
    )
}

/// Bridges the viewer and the agent until one side ends, `stop` resolves (the session ended,
/// the agent's connection went away), or the viewer stalls. When it returns no more bytes
/// move and the counters are final.
pub(crate) async fn run<VR, VT, AR, AT>(
    viewer: (VR, VT),
    agent: (AR, AT),
    opts: Options,
    meter: Meter,
    stop: impl Future<Output = Closure>,
) -> Bridged<VR, VT, AR, AT>
where
    VR: Source,
    VT: Sink,
    AR: Source,
    AT: Sink,
{
    let (mut viewer_rx, mut viewer_tx) = viewer;
    let (mut agent_rx, mut agent_tx) = agent;
    let Options {
        buffer_limit,
        stall,
        first_down,
        first_up,
        mut up,
        mut down,
        first_events,
        recording,
        coalesce,
    } = opts;
    let out_frame = if coalesce { MAX_OUT_FRAME } else { 0 };
    let recording = recording.as_deref();
    let buffer = buffer::Buffer::new(buffer_limit);
    if let Some(rec) = recording {
        for event in &first_events {
            rec.event(event);
        }
    }
    if !first_down.is_empty() {
        if let Some(rec) = recording {
            rec.record(Kind::Down, first_down.clone());
        }
        buffer.push(Frame::Binary(first_down));
    }

    // Agent -> buffer, paused while the buffer is full.
    let drain = async {
        let mut redacted = Vec::new();
        loop {
            if buffer.room(stall).await.is_err() {
                return Closure::ending(EndReason::ViewerTooSlow);
            }
            match agent_rx.recv().await {
                Ok(Some(Frame::Binary(data))) => {
                    meter.down(data.len());
                    if let Some(rec) = recording {
                        let shown = match down.as_mut() {
                            None => None,
                            Some(f) => {
                                redacted.clear();
                                f.feed(&data, &mut redacted).ok().and_then(|fed| fed.record)
                            }
                        };
                        rec.record(Kind::Down, shown.map_or_else(|| data.clone(), Bytes::from));
                    }
                    buffer.push(Frame::Binary(data));
                }
                Ok(Some(Frame::Text(text))) => {
                    if let (Some(rec), Some(f)) = (recording, down.as_mut())
                        && let Ok(Some(event)) = f.control(&text)
                    {
                        rec.event(&event);
                    }
                    buffer.push(Frame::Text(text));
                }
                Ok(None) => {
                    buffer.close();
                    // Let the writer flush what the service sent before it closed.
                    return std::future::pending::<Closure>().await;
                }
                // The end vanished without EOF: the agent's connection is gone.
                Err(EndError::Closed) => return Closure::ending(EndReason::AgentDisconnected),
                Err(e) => {
                    tracing::debug!(error = %e, "agent end failed");
                    return Closure::ending(EndReason::ServiceClosed);
                }
            }
        }
    };

    // Buffer -> viewer. Frames are flushed when the buffer runs dry, so that a busy stream goes
    // out in fewer, larger writes and a lone message goes out at once.
    let write = async {
        while let Some((frame, drained)) = buffer.pop(out_frame).await {
            let sent = match viewer_tx.send(frame).await {
                Ok(()) if drained => viewer_tx.flush().await,
                other => other,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "viewer went away");
                return Closure::ending(EndReason::ViewerClosed);
            }
        }
        if viewer_tx.flush().await.is_err() {
            return Closure::ending(EndReason::ViewerClosed);
        }
        Closure::ending(EndReason::ServiceClosed)
    };

    // Viewer -> agent.
    let read = async {
        let mut pending = (!first_up.is_empty()).then_some(Frame::Binary(first_up));
        let mut out = Vec::new();
        let (mut inputs, mut last_mark) = (0u64, None::<Instant>);
        loop {
            let next = match pending.take() {
                Some(first) => Ok(Some(first)),
                None => viewer_rx.recv().await,
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    let _ = agent_tx.finish().await;
                    return Closure::ending(EndReason::ViewerClosed);
                }
                Err(e) => return viewer_error(&e),
            };
            let data = match frame {
                Frame::Binary(data) => data,
                Frame::Text(text) => {
                    let event = match up.as_mut().map(|f| f.control(&text)) {
                        Some(Err(e)) => return filter_error(&e),
                        Some(Ok(event)) => event,
                        None => None,
                    };
                    if let (Some(rec), Some(event)) = (recording, event) {
                        rec.event(&event);
                    }
                    if let Err(e) = agent_tx.send(Frame::Text(text)).await {
                        return agent_error(&e);
                    }
                    continue;
                }
            };
            let n = data.len();
            let data = match up.as_mut() {
                None => data,
                Some(filter) => {
                    out.clear();
                    let fed = match filter.feed(&data, &mut out) {
                        Ok(fed) => fed,
                        Err(e) => return filter_error(&e),
                    };
                    let passed = Bytes::copy_from_slice(&out);
                    if let Some(rec) = recording {
                        let shown = fed.record.map_or_else(|| passed.clone(), Bytes::from);
                        if !shown.is_empty() {
                            rec.record(Kind::Up, shown);
                        }
                        inputs += fed.input_events;
                        let quiet = last_mark.is_none_or(|t| t.elapsed() >= INPUT_EVENT_EVERY);
                        if inputs > 0 && quiet {
                            rec.event(&serde_json::json!({ "input": inputs }));
                            (inputs, last_mark) = (0, Some(Instant::now()));
                        }
                    }
                    passed
                }
            };
            if up.is_none()
                && let Some(rec) = recording
            {
                rec.record(Kind::Up, data.clone());
            }
            if !data.is_empty()
                && let Err(e) = agent_tx.send(Frame::Binary(data)).await
            {
                return agent_error(&e);
            }
            if let Err(e) = agent_tx.flush().await {
                return agent_error(&e);
            }
            meter.up(n);
        }
    };

    let closure = tokio::select! {
        c = drain => c,
        c = write => c,
        c = read => c,
        c = stop => c,
    };
    // EOF first, so the workstation's service sees the end at once.
    let _ = tokio::time::timeout(EOF_WAIT, agent_tx.finish()).await;
    Bridged {
        closure,
        viewer: (viewer_rx, viewer_tx),
        agent: (agent_rx, agent_tx),
    }
}
