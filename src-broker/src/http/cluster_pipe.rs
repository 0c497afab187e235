//! A forwarded WebSocket's bytes between the client and the node that runs its session. The
//! forwarding node does not speak WebSocket, it only follows the frame boundaries of what the
//! owning node sends: when that node dies mid-session, the client still gets a close frame with
//! a reason (at a boundary, where one can be written), not a cut connection.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use passerelle_proto::close;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// What the client is told when the node running its session goes away.
const NODE_LOST: &str = "the broker node running this session stopped";

/// Follows frame boundaries in a stream of WebSocket frames.
#[derive(Debug, Default)]
pub(super) struct Frames {
    head: [u8; 14],
    have: usize,
    remaining: u64,
    /// A close frame went by.
    pub(super) closed: bool,
}

impl Frames {
    /// The header's payload length and opcode, once it is whole.
    fn header(&self) -> Option<(u64, u8)> {
        if self.have < 2 {
            return None;
        }
        let len7 = self.head[1] & 0x7f;
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if self.have < 2 + ext + mask {
            return None;
        }
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            _ => u64::from(len7),
        };
        Some((len, self.head[0] & 0x0f))
    }

    /// Takes the next bytes of the stream.
    pub(super) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some((len, opcode)) = self.header() {
                self.closed |= opcode == 0x8;
                self.remaining = len;
                self.have = 0;
            }
        }
    }

    /// Whether the stream is between two frames.
    pub(super) fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.have == 0
    }
}

/// A server's close frame: `code` and `reason` (at most 123 bytes).
pub(super) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(close::MAX_REASON_BYTES)];
    let mut f = vec![0x88, (2 + reason.len()) as u8];
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// Pipes `client` and `upstream` until both sides are done, or `stop`.
pub(super) async fn pipe(client: Upgraded, upstream: Upgraded, stop: CancellationToken) {
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut ur, mut uw) = tokio::io::split(TokioIo::new(upstream));
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    };
    let down = async {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match ur.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    frames.feed(&buf[..n]);
                    // Flushed each time: the client's side may be TLS, which would otherwise
                    // keep the tail of a burst until more comes.
                    if cw.write_all(&buf[..n]).await.is_err() || cw.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
        if !frames.closed && frames.at_boundary() {
            let code = close::BROKER_SHUTDOWN.code;
            let _ = cw.write_all(&close_frame(code, NODE_LOST)).await;
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = futures_util::future::join(up, down) => {}
        () = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAB, len));
        f
    }

    #[test]
    fn boundaries_are_followed_whatever_the_chunking() {
        let mut stream = Vec::new();
        for (op, len, masked) in [
            (2, 5, false),
            (2, 300, false),
            (2, 70_000, true),
            (1, 0, false),
        ] {
            stream.extend(frame(op, len, masked));
        }
        for chunk in [1, 3, 7, 1000, stream.len()] {
            let mut f = Frames::default();
            for (i, c) in stream.chunks(chunk).enumerate() {
                f.feed(c);
                let end = (i + 1) * chunk >= stream.len();
                assert!(!end || f.at_boundary(), "chunk {chunk}");
            }
            assert!(!f.closed);
        }
        let mut f = Frames::default();
        f.feed(&frame(2, 300, false)[..100]);
        assert!(!f.at_boundary(), "inside a payload");
        let mut f = Frames::default();
        f.feed(&frame(2, 70_000, false)[..3]);
        assert!(!f.at_boundary(), "inside a header");
        let mut f = Frames::default();
        f.feed(&close_frame(4022, NODE_LOST));
        assert!(f.closed && f.at_boundary());
    }

    #[test]
    fn the_close_frame_carries_the_code_and_a_bounded_reason() {
        let f = close_frame(4022, "bye");
        assert_eq!(f, vec![0x88, 5, 0x0f, 0xb6, b'b', b'y', b'e']);
        let long = "x".repeat(500);
        assert_eq!(close_frame(4022, &long).len(), 4 + close::MAX_REASON_BYTES);
    }
}
