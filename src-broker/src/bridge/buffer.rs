//! The per-bridge buffer between the agent's end and the viewer's: a byte-counted FIFO of
//! frames. The agent's side waits for room when it is full (so a slow viewer slows the
//! workstation down instead of growing memory), and says when the viewer has made no progress
//! at all for a while.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Notify;

use crate::ends::Frame;

/// A chunk at least this big is sent as it is, without a copy.
const NO_COALESCE: usize = 16 * 1024;

#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: bool,
    /// Frames taken so far: the viewer's progress.
    pops: u64,
}

/// The viewer took nothing for the whole stall period while the buffer was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stalled;

pub(super) struct Buffer {
    queue: Mutex<Queue>,
    /// Wakes the viewer's side: a frame is queued, or the buffer closed.
    ready: Notify,
    /// Wakes the agent's side: a frame was taken.
    room: Notify,
    limit: usize,
}

fn frame_len(frame: &Frame) -> usize {
    match frame {
        Frame::Binary(b) => b.len(),
        Frame::Text(t) => t.len(),
    }
}

impl Buffer {
    /// A buffer that counts as full from `limit` bytes on.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            room: Notify::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame (the buffer may go over its limit by this one frame).
    pub(super) fn push(&self, frame: Frame) {
        let mut q = self.lock();
        q.bytes += frame_len(&frame);
        q.frames.push_back(frame);
        drop(q);
        self.ready.notify_one();
    }

    /// Waits until the buffer is under its limit. `Err(Stalled)` when the viewer took nothing
    /// for `stall` while it was full.
    pub(super) async fn room(&self, stall: Duration) -> Result<(), Stalled> {
        loop {
            let taken = self.room.notified();
            let pops = {
                let q = self.lock();
                if q.bytes < self.limit || q.closed {
                    return Ok(());
                }
                q.pops
            };
            if tokio::time::timeout(stall, taken).await.is_err() && self.lock().pops == pops {
                return Err(Stalled);
            }
        }
    }

    /// No more frames will come: the viewer's side empties the buffer, then ends.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Takes the next frame, joining consecutive binary frames up to `max` bytes, and says
    /// whether that emptied the buffer; `None` once closed and empty.
    pub(super) async fn pop(&self, max: usize) -> Option<(Frame, bool)> {
        loop {
            let notified = self.ready.notified();
            if let Some(taken) = self.take(max) {
                self.room.notify_one();
                return Some(taken);
            }
            if self.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    fn take(&self, max: usize) -> Option<(Frame, bool)> {
        let mut q = self.lock();
        let first = q.frames.pop_front()?;
        q.pops += 1;
        let first = match first {
            Frame::Binary(b) => b,
            text @ Frame::Text(_) => {
                q.bytes -= frame_len(&text);
                return Some((text, q.frames.is_empty()));
            }
        };
        let mut len = first.len();
        let joinable = |next: Option<&Frame>, len: usize| match next {
            Some(Frame::Binary(b)) => len + b.len() <= max,
            _ => false,
        };
        if len >= NO_COALESCE || !joinable(q.frames.front(), len) {
            q.bytes -= len;
            return Some((Frame::Binary(first), q.frames.is_empty()));
        }
        let mut out = BytesMut::with_capacity(max.min(q.bytes));
        out.extend_from_slice(&first);
        while joinable(q.frames.front(), len) {
            if let Some(Frame::Binary(next)) = q.frames.pop_front() {
                len += next.len();
                out.extend_from_slice(&next);
            }
        }
        q.bytes -= len;
        Some((Frame::Binary(out.freeze()), q.frames.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn bin(s: &'static [u8]) -> Frame {
        Frame::Binary(Bytes::from_static(s))
    }

    #[tokio::test]
    async fn joins_binary_frames_counts_and_keeps_text_apart() {
        let b = Buffer::new(10);
        b.push(bin(b"abc"));
        b.push(bin(b"def"));
        b.push(Frame::Text("{}".into()));
        b.push(bin(b"g"));
        assert_eq!(b.pop(100).await.unwrap(), (bin(b"abcdef"), false));
        assert_eq!(b.pop(100).await.unwrap(), (Frame::Text("{}".into()), false));
        assert_eq!(b.pop(100).await.unwrap(), (bin(b"g"), true));
        b.push(bin(b"0123456789"));
        b.push(bin(b"x"));
        let (chunk, drained) = b.pop(4).await.unwrap();
        assert_eq!(chunk, bin(b"0123456789"), "a single chunk is never split");
        assert!(!drained, "one byte is still queued");
        b.close();
        assert_eq!(b.pop(100).await.unwrap(), (bin(b"x"), true));
        assert!(b.pop(100).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn room_waits_while_full_and_reports_a_stall() {
        let b = Buffer::new(4);
        b.push(bin(b"abcd"));
        let stall = Duration::from_secs(30);
        assert_eq!(
            b.room(stall).await,
            Err(Stalled),
            "nothing taken for the whole stall period"
        );
        let waiting = b.room(stall);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut waiting)
                .await
                .is_err(),
            "a full buffer makes the agent's side wait"
        );
        assert!(b.pop(100).await.is_some());
        assert_eq!(waiting.await, Ok(()), "a frame taken makes room");
    }
}
