//! The workstation's service, in-process: what the agent's tunnel leads to in every stack.
//!
//! One TCP listener on `127.0.0.1:0` speaks a tiny protocol so that one service covers bulk
//! throughput in both directions, round trips and set-up time:
//!
//! - on accept it sends [`BANNER`] at once (like a VNC server's version line), so that "first byte
//!   at the viewer" is well defined;
//! - then it reads one [`Command`] (9 bytes: an op and a big-endian `u64`) and serves it until the
//!   client closes: `D n` writes `n` bytes (a source), `U n` reads `n` bytes and answers one byte
//!   `K` (a sink), `E` echoes everything back.
//!
//! Every connection is bounded in time by [`MAX_CONNECTION_TIME`]; dropping [`Service`] stops the
//! listener and every connection task.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Sent by the service as soon as a connection is accepted.
pub const BANNER: &[u8; 12] = b"PSRL-BENCH1\n";
/// Size of the service's write chunks, and of the clients' read buffers.
pub const CHUNK: usize = 64 * 1024;
/// A connection lives at most this long, whatever the client does.
const MAX_CONNECTION_TIME: Duration = Duration::from_secs(600);

/// What the client asks for after the banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Send this many bytes to the client (workstation -> viewer).
    Download(u64),
    /// Read this many bytes, then answer `K` (viewer -> workstation).
    Upload(u64),
    /// Echo every byte back.
    Echo,
}

impl Command {
    /// The 9 bytes on the wire.
    pub fn encode(self) -> [u8; 9] {
        let (op, n) = match self {
            Self::Download(n) => (b'D', n),
            Self::Upload(n) => (b'U', n),
            Self::Echo => (b'E', 0),
        };
        let mut out = [0u8; 9];
        out[0] = op;
        out[1..].copy_from_slice(&n.to_be_bytes());
        out
    }

    fn decode(b: &[u8; 9]) -> anyhow::Result<Self> {
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[1..]);
        let n = u64::from_be_bytes(n);
        Ok(match b[0] {
            b'D' => Self::Download(n),
            b'U' => Self::Upload(n),
            b'E' => Self::Echo,
            op => bail!("unknown op {op}"),
        })
    }
}

/// The running service. Dropping it stops everything it runs.
pub struct Service {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the service")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Owned by this task: aborting the task drops the set, which aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            conns.spawn(async move {
                                // A reset or a closed viewer ends the connection; nothing to report.
                                let _ = tokio::time::timeout(MAX_CONNECTION_TIME, serve(stream)).await;
                            });
                        }
                        // E.g. EMFILE under load: wait a little instead of spinning.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// Where the agent's forward points.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(BANNER).await?;
    let mut cmd = [0u8; 9];
    stream.read_exact(&mut cmd).await?;
    let mut buf = vec![0u8; CHUNK];
    match Command::decode(&cmd)? {
        Command::Download(mut left) => {
            buf.fill(0x5a);
            while left > 0 {
                let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
                stream.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            drain(&mut stream, &mut buf).await
        }
        Command::Upload(mut left) => {
            while left > 0 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("eof during upload");
                }
                left = left.saturating_sub(n as u64);
            }
            stream.write_all(b"K").await?;
            drain(&mut stream, &mut buf).await
        }
        Command::Echo => loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&buf[..n]).await?;
        },
    }
}

/// Reads until the client closes, so that the service never closes first (that would end the
/// session as `service_closed` while the client still reads).
async fn drain(stream: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<()> {
    while stream.read(buf).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for c in [
            Command::Download(1 << 40),
            Command::Upload(7),
            Command::Echo,
        ] {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
        assert!(Command::decode(&[b'X'; 9]).is_err());
    }

    #[tokio::test]
    async fn service_serves_download_upload_and_echo() {
        let svc = Service::start().await.unwrap();
        let mut s = TcpStream::connect(svc.addr()).await.unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, BANNER);
        s.write_all(&Command::Echo.encode()).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut e = [0u8; 5];
        s.read_exact(&mut e).await.unwrap();
        assert_eq!(&e, b"hello");

        let mut s = TcpStream::connect(svc.addr()).await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&Command::Upload(100_000).encode())
            .await
            .unwrap();
        s.write_all(&vec![1u8; 100_000]).await.unwrap();
        let mut k = [0u8; 1];
        s.read_exact(&mut k).await.unwrap();
        assert_eq!(&k, b"K");

        let mut s = TcpStream::connect(svc.addr()).await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&Command::Download(200_000).encode())
            .await
            .unwrap();
        let mut d = vec![0u8; 200_000];
        s.read_exact(&mut d).await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(
            s.read(&mut k).await.unwrap(),
            0,
            "nothing after the n bytes"
        );
    }
}
