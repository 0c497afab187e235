//! The agent's forwarded channel as a byte stream for the broker's SSH client, drained at once.
//!
//! russh's server loop pushes a channel's data into a bounded queue with an awaited send, so a
//! channel nobody reads freezes the agent's whole connection (every session of that
//! workstation, and its keepalives). `Channel::into_stream()` reads only when its reader is
//! polled, and the SSH client stops polling when its own terminal is not read (a slow viewer):
//! that would freeze the agent. So a pump task always takes the channel's data into an
//! in-memory queue that the client reads from.
//!
//! The queue needs no limit of its own: the workstation's sshd sends no more than the window
//! the broker's SSH client grants, and the client grants more only as it reads. A queue over
//! [`limit`](drain) means the workstation ignores SSH flow control; the stream then ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use russh::ChannelMsg;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// How long the agent has to close the channel after the broker's EOF.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The channel's bytes, always drained; writes go to the channel (they wait for the agent's
/// window, which is the viewer's and this session's back-pressure only).
pub(crate) struct Pipe {
    rx: mpsc::UnboundedReceiver<Bytes>,
    current: Bytes,
    queued: Arc<AtomicUsize>,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Starts draining `channel` (on `tasks`) and returns it as a stream. `limit` is the most the
/// queue may hold (the SSH client's window plus some packets).
pub(crate) fn drain<S>(channel: russh::Channel<S>, limit: usize, tasks: &TaskTracker) -> Pipe
where
    S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (mut read, write) = channel.split();
    let writer = Box::pin(write.make_writer());
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let counter = queued.clone();
    tasks.spawn(async move {
        let mut tx = Some(tx);
        let mut deadline = None;
        let closed = loop {
            if tx.is_none() && deadline.is_none() {
                // Our EOF, so that the agent closes the channel (see service/channel.rs), within a bound.
                let at = tokio::time::Instant::now() + CLOSE_WAIT;
                deadline = Some(at);
                let _ = tokio::time::timeout_at(at, write.eof()).await;
            }
            let msg = match (&tx, deadline) {
                (Some(sender), _) => tokio::select! {
                    msg = read.wait() => msg,
                    // The client is gone: stop feeding it, and end the channel.
                    () = sender.closed() => {
                        tx = None;
                        continue;
                    }
                },
                (None, Some(at)) => match tokio::time::timeout_at(at, read.wait()).await {
                    Ok(msg) => msg,
                    Err(_) => break false,
                },
                (None, None) => break false,
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    let Some(sender) = &tx else { continue };
                    let now = counter.fetch_add(data.len(), Ordering::AcqRel) + data.len();
                    if now > limit {
                        tracing::warn!(
                            queued = now,
                            limit,
                            "the workstation sent past the SSH window: ending the terminal"
                        );
                        tx = None;
                    } else if sender.send(data).is_err() {
                        tx = None;
                    }
                }
                // The workstation's side ended: the client reads what is queued, then EOF.
                Some(ChannelMsg::Eof) => tx = None,
                Some(ChannelMsg::Close) | None => break true,
                Some(_) => {}
            }
        };
        if !closed {
            let _ = tokio::time::timeout(CLOSE_WAIT, write.close()).await;
        }
    });
    Pipe {
        rx,
        current: Bytes::new(),
        queued,
        writer,
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.current.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(data)) => self.current = data,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current.advance(n);
        self.queued.fetch_sub(n, Ordering::AcqRel);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}
