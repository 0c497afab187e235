//! The two ends of a bridge, as the session core and the service adapters see them: a viewer
//! (a WebSocket in production) and an agent (an SSH channel to the workstation's service, or
//! what an adapter made of it: a TLS stream for RDP, a terminal for SSH). Each end receives and
//! sends [`Frame`]s, so that the bridge is generic over both and is tested with in-memory pipes
//! ([`pipe`]).
//!
//! Errors are classified by type ([`EndError`]), never by their text: the bridge decides from
//! the variant whether the viewer broke the protocol, sent too much, or simply went away.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// One message between the ends of a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The service's bytes (every service).
    Binary(Bytes),
    /// A control message (the terminal's resize and exit status, as small JSON texts). Ends that
    /// carry only bytes refuse it with [`EndError::Protocol`].
    Text(String),
}

/// Why an end failed.
#[derive(Debug, thiserror::Error)]
pub enum EndError {
    /// The peer went away or the connection was reset: an end, not a failure.
    #[error("connection closed")]
    Closed,
    /// A frame or message over the size limit.
    #[error("message too big")]
    TooBig,
    /// What the viewer sent breaks the protocol of the session (a text frame where only bytes
    /// are allowed, malformed RFB or RDP, a control message that does not parse).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl EndError {
    /// An I/O error, with connection resets and broken pipes classified as [`EndError::Closed`].
    pub fn from_io(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
                Self::Closed
            }
            _ => Self::Io(e),
        }
    }
}

/// The receiving half of an end.
pub trait Source: Send {
    /// The next frame; `Ok(None)` when the peer ended cleanly (EOF, a close frame).
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame>, EndError>> + Send;
}

/// The sending half of an end.
pub trait Sink: Send {
    /// Queues a frame (it may sit in a buffer until [`Sink::flush`]).
    fn send(&mut self, frame: Frame) -> impl Future<Output = Result<(), EndError>> + Send;
    /// Pushes queued frames out.
    fn flush(&mut self) -> impl Future<Output = Result<(), EndError>> + Send;
    /// Says that nothing more will be sent (EOF on a channel or a stream).
    fn finish(&mut self) -> impl Future<Output = Result<(), EndError>> + Send;
}

/// An end over any byte stream (a TCP or TLS stream, a channel's stream): bytes only; a text
/// frame is refused.
#[derive(Debug)]
pub(crate) struct IoSource<R> {
    io: R,
    buf: BytesMut,
    chunk: usize,
}

impl<R: AsyncRead + Unpin + Send> IoSource<R> {
    /// Reads at most `chunk` bytes per frame.
    pub(crate) fn new(io: R, chunk: usize) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            chunk,
        }
    }

    /// The stream back (to end it after the bridge).
    pub(crate) fn into_inner(self) -> R {
        self.io
    }
}

impl<R: AsyncRead + Unpin + Send> Source for IoSource<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        self.buf.reserve(self.chunk);
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(Frame::Binary(self.buf.split().freeze()))),
            Err(e) => Err(EndError::from_io(e)),
        }
    }
}

/// The sending half over a byte stream.
#[derive(Debug)]
pub(crate) struct IoSink<W> {
    io: W,
}

impl<W: AsyncWrite + Unpin + Send> IoSink<W> {
    pub(crate) fn new(io: W) -> Self {
        Self { io }
    }

    /// The stream back (to end it after the bridge).
    pub(crate) fn into_inner(self) -> W {
        self.io
    }
}

impl<W: AsyncWrite + Unpin + Send> Sink for IoSink<W> {
    async fn send(&mut self, frame: Frame) -> Result<(), EndError> {
        match frame {
            Frame::Binary(data) => self.io.write_all(&data).await.map_err(EndError::from_io),
            Frame::Text(_) => Err(EndError::Protocol("binary frames only".into())),
        }
    }

    async fn flush(&mut self) -> Result<(), EndError> {
        self.io.flush().await.map_err(EndError::from_io)
    }

    async fn finish(&mut self) -> Result<(), EndError> {
        self.io.shutdown().await.map_err(EndError::from_io)
    }
}

/// Filters one direction of a bridge: frames a protocol to drop what a view-only viewer may not
/// send, injects credentials, and says what a recording must hold instead (redaction).
pub(crate) trait Filter: Send {
    /// Takes bytes as they arrive (split anywhere) and appends what to pass on to `out`.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, FilterError>;

    /// Looks at a text control message going this way (it passes as it is, to an end that
    /// takes it or refuses it) and says what the recording keeps of it: an event, or nothing
    /// (the default: a control message may hold a secret). An error ends the session
    /// (`protocol_error`).
    fn control(&mut self, _text: &str) -> Result<Option<serde_json::Value>, FilterError> {
        Ok(None)
    }
}

/// What a [`Filter`] saw in one call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Fed {
    /// Input events (keys, pointer moves) seen, for the recording's activity marks.
    pub input_events: u64,
    /// When set, the recording gets these bytes instead of what was appended to `out` (a
    /// password or a CredSSP message replaced by a marker).
    pub record: Option<Vec<u8>>,
}

/// The viewer's bytes do not follow the protocol; the session ends with `protocol_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FilterError(pub String);

#[cfg(test)]
pub(crate) use pipes::{PipeSink, PipeSource, pipe};

/// In-memory pipes for the unit tests of the bridge and the session core.
#[cfg(test)]
mod pipes {
    use tokio::sync::mpsc;

    use super::{EndError, Frame, Sink, Source};

    /// One end of an in-memory pipe (tests, and adapters that sit between two ends).
    #[derive(Debug)]
    pub(crate) struct PipeSource {
        rx: mpsc::Receiver<Result<Frame, EndError>>,
    }

    /// The sending half of an in-memory pipe. Its capacity (in frames) gives back-pressure.
    #[derive(Debug)]
    pub(crate) struct PipeSink {
        tx: Option<mpsc::Sender<Result<Frame, EndError>>>,
    }

    /// A one-way in-memory pipe holding at most `capacity` frames.
    pub(crate) fn pipe(capacity: usize) -> (PipeSink, PipeSource) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (PipeSink { tx: Some(tx) }, PipeSource { rx })
    }

    impl PipeSink {
        /// Makes the other side's next `recv` fail with `error` (a test injecting a failure).
        pub(crate) async fn fail(&mut self, error: EndError) {
            if let Some(tx) = &self.tx {
                let _ = tx.send(Err(error)).await;
            }
        }
    }

    impl Source for PipeSource {
        async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
            self.rx.recv().await.transpose()
        }
    }

    impl Sink for PipeSink {
        async fn send(&mut self, frame: Frame) -> Result<(), EndError> {
            let tx = self.tx.as_ref().ok_or(EndError::Closed)?;
            tx.send(Ok(frame)).await.map_err(|_| EndError::Closed)
        }

        async fn flush(&mut self) -> Result<(), EndError> {
            Ok(())
        }

        async fn finish(&mut self) -> Result<(), EndError> {
            self.tx = None;
            Ok(())
        }
    }
}
