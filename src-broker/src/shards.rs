//! Single-threaded runtimes ("shards") that carry agent connections and their sessions' data.
//!
//! Every SSH packet from an agent is handed from russh's connection task to a session's bridge
//! task. On tokio's work-stealing runtime that hand-off wakes idle workers, which look for work,
//! find little and park again; on the 2-core benchmark machine this churn made the broker cost
//! about 40 % more CPU per byte than with a single worker (BENCHMARKS.md). So each agent
//! connection lives on one shard, and the bridges of its sessions are spawned on that same shard:
//! the hand-off is a same-thread wake. Connections are spread over the shards round-robin, so
//! the broker still uses every core. The API, the store and the HTTP listener stay on the main
//! runtime.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// A fixed set of current-thread runtimes, each on its own OS thread.
#[derive(Debug)]
pub(crate) struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Shards {
    /// Starts `n` shards (at least one); `0` means one per available CPU.
    pub(crate) fn start(n: usize) -> anyhow::Result<Self> {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a data runtime")?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("passerelle-data-{i}"))
                .spawn(move || runtime.block_on(stop.cancelled_owned()))
                .context("starting a data thread")?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// The shard for the next connection (round-robin).
    pub(crate) fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Stops every shard; tasks still on them are dropped. Spawning afterwards yields a
    /// cancelled task.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A viewer's TCP connection, accepted on the main runtime, that can move to the shard of the
/// agent it is bridged to: after [`MoveHandle::request`], its next read or write re-registers the
/// socket with the reactor of the runtime that polls it. The viewer's frames then wake the bridge
/// on its own thread instead of through the main runtime (a thread hop per message, which showed
/// in the round-trip figures).
#[derive(Debug)]
pub(crate) struct MovableStream {
    io: Option<TcpStream>,
    requested: Arc<AtomicBool>,
}

/// Asks a [`MovableStream`] to move to the runtime that polls it next.
#[derive(Debug, Clone)]
pub(crate) struct MoveHandle(Arc<AtomicBool>);

impl MoveHandle {
    /// The stream moves at its next read or write (from inside a runtime).
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl MovableStream {
    pub(crate) fn new(io: TcpStream) -> (Self, MoveHandle) {
        let requested = Arc::new(AtomicBool::new(false));
        let handle = MoveHandle(requested.clone());
        (
            Self {
                io: Some(io),
                requested,
            },
            handle,
        )
    }

    fn io(&mut self) -> std::io::Result<&mut TcpStream> {
        if self.requested.load(Ordering::Acquire) && Handle::try_current().is_ok() {
            self.requested.store(false, Ordering::Relaxed);
            if let Some(io) = self.io.take() {
                // Deregisters from the old reactor; `from_std` registers with the current one.
                self.io = Some(TcpStream::from_std(io.into_std()?)?);
            }
        }
        self.io.as_mut().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection was lost while moving between threads",
            )
        })
    }
}

impl AsyncRead for MovableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for MovableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_shard_thread_and_stop_with_it() {
        let shards = Shards::start(2).unwrap();
        assert_eq!(shards.handles.len(), 2);
        let name = || std::thread::current().name().map(str::to_owned);
        let a = shards.pick().spawn(async move { name() }).await.unwrap();
        let b = shards.pick().spawn(async move { name() }).await.unwrap();
        let c = shards.pick().spawn(async move { name() }).await.unwrap();
        assert_eq!(a.as_deref(), Some("passerelle-data-0"));
        assert_eq!(b.as_deref(), Some("passerelle-data-1"));
        assert_eq!(c, a, "round-robin comes back to the first shard");
        shards.stop();
        let late = shards.pick().spawn(std::future::pending::<()>());
        let joined = tokio::time::timeout(std::time::Duration::from_secs(5), late).await;
        assert!(
            matches!(joined, Ok(Err(ref e)) if e.is_cancelled()),
            "a stopped shard cancels its tasks: {joined:?}"
        );
    }

    /// A connection accepted on a runtime that then goes away, as the viewer's socket leaves the
    /// main runtime for a shard; `move_it` says whether the move was requested.
    fn ping_after_first_runtime_is_gone(move_it: bool) -> std::io::Result<[u8; 4]> {
        use std::io::{Read as _, Write as _};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let shards = Shards::start(1).unwrap();
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let (stream, mover) =
            first.block_on(async { MovableStream::new(TcpStream::from_std(accepted).unwrap()) });
        drop(first);
        if move_it {
            mover.request();
        }
        let echo = std::thread::spawn(move || {
            let mut b = [0; 4];
            peer.read_exact(&mut b)?;
            peer.write_all(b"pong")
        });
        let done = shards.pick().spawn(async move {
            let mut s = stream;
            s.write_all(b"ping").await?;
            let mut b = [0; 4];
            s.read_exact(&mut b).await?;
            Ok::<_, std::io::Error>(b)
        });
        let waiter = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = waiter.block_on(done).unwrap();
        if got.is_ok() {
            echo.join().unwrap().unwrap();
        }
        got
    }

    #[test]
    fn a_moved_stream_works_on_its_new_runtime_after_the_old_one_is_gone() {
        assert_eq!(ping_after_first_runtime_is_gone(true).unwrap(), *b"pong");
        let unmoved = ping_after_first_runtime_is_gone(false);
        assert!(
            unmoved.is_err(),
            "without the move the socket stays with the dropped reactor: {unmoved:?}"
        );
    }
}
