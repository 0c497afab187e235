//! The workstation's services, played by small TCP servers on `127.0.0.1:0`:
//! [`EchoServer`] sends every byte back, [`SourceServer`] writes a patterned stream as fast as
//! its peer reads. Both count connections and bytes, and say when a connection closes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use crate::{WAIT, pattern_byte};

/// Counters of a test service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections accepted.
    pub accepted: usize,
    /// Connections that have ended (end of file, error, or reset).
    pub closed: usize,
    /// Bytes received from peers.
    pub bytes_in: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
}

/// The listener, its counters, and the task that owns every connection (aborted on drop).
struct Server {
    addr: SocketAddr,
    stats: watch::Receiver<ConnStats>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start<F, Fut>(handler: F) -> Result<Self>
    where
        F: Fn(TcpStream, watch::Sender<ConnStats>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), handler).await
    }

    async fn start_on<F, Fut>(bind: SocketAddr, handler: F) -> Result<Self>
    where
        F: Fn(TcpStream, watch::Sender<ConnStats>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(bind)
            .await
            .context("binding a test service")?;
        let addr = listener.local_addr()?;
        let (tx, stats) = watch::channel(ConnStats::default());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                tx.send_modify(|s| s.accepted += 1);
                let tx = tx.clone();
                let conn = handler(stream, tx.clone());
                conns.spawn(async move {
                    conn.await;
                    tx.send_modify(|s| s.closed += 1);
                });
            }
        });
        Ok(Self { addr, stats, task })
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&ConnStats) -> bool) -> Result<ConnStats> {
        let mut rx = self.stats.clone();
        match timeout(WAIT, rx.wait_for(|s| cond(s))).await {
            Ok(Ok(stats)) => Ok(*stats),
            _ => anyhow::bail!(
                "test service: never {what}; stats {:?}",
                *self.stats.borrow()
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

macro_rules! server_api {
    ($name:ident) => {
        impl $name {
            /// The address it listens on.
            pub fn addr(&self) -> SocketAddr {
                self.0.addr
            }

            /// The port it listens on.
            pub fn port(&self) -> u16 {
                self.0.addr.port()
            }

            /// The counters now.
            pub fn stats(&self) -> ConnStats {
                *self.0.stats.borrow()
            }

            /// Waits (bounded) until `cond` holds for the counters.
            pub async fn wait_for(
                &self,
                what: &str,
                cond: impl Fn(&ConnStats) -> bool,
            ) -> Result<ConnStats> {
                self.0.wait_for(what, cond).await
            }

            /// Waits (bounded) until `n` connections have been closed.
            pub async fn wait_closed(&self, n: usize) -> Result<ConnStats> {
                self.wait_for(&format!("{n} connection(s) closed"), |s| s.closed >= n)
                    .await
            }
        }
    };
}

/// Sends back every byte it receives; closes its side when the peer does.
pub struct EchoServer(Server);
server_api!(EchoServer);

impl EchoServer {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> Result<Self> {
        Ok(Self(Server::start(echo).await?))
    }

    /// Listens on `bind` (e.g. an address that a network namespace reaches).
    pub async fn start_on(bind: SocketAddr) -> Result<Self> {
        Ok(Self(Server::start_on(bind, echo).await?))
    }
}

async fn echo(mut stream: TcpStream, stats: watch::Sender<ConnStats>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        stats.send_modify(|s| s.bytes_in += n as u64);
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
        stats.send_modify(|s| s.bytes_out += n as u64);
    }
    let _ = stream.shutdown().await;
}

/// Writes the endless stream `pattern_byte(offset, SourceServer::SEED)` as fast as the peer
/// reads (or at a set pace); stops when the peer closes.
pub struct SourceServer(Server);
server_api!(SourceServer);

impl SourceServer {
    /// The seed of the pattern it writes.
    pub const SEED: u8 = 99;

    /// Listens on `127.0.0.1:0`; writes as fast as the peer reads.
    pub async fn start() -> Result<Self> {
        Ok(Self(Server::start(|s, tx| source(s, tx, None)).await?))
    }

    /// Listens on `127.0.0.1:0`; writes at most `bytes_per_sec` (a workstation whose screen
    /// changes at a steady rate).
    pub async fn start_paced(bytes_per_sec: u64) -> Result<Self> {
        Ok(Self(
            Server::start(move |s, tx| source(s, tx, Some(bytes_per_sec))).await?,
        ))
    }
}

async fn source(mut stream: TcpStream, stats: watch::Sender<ConnStats>, pace: Option<u64>) {
    const CHUNK: u64 = 32 * 1024;
    const TICK: Duration = Duration::from_millis(10);
    let (mut rd, mut wr) = stream.split();
    let mut offset = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK as usize);
    let mut sink = [0u8; 4096];
    let mut ticks = tokio::time::interval(TICK);
    // Bytes it may still write before the next tick (unbounded without a pace).
    let mut budget = if pace.is_some() { 0 } else { u64::MAX };
    loop {
        if chunk.is_empty() {
            chunk.extend((offset..offset + CHUNK).map(|i| pattern_byte(i, SourceServer::SEED)));
        }
        let allowed = chunk
            .len()
            .min(usize::try_from(budget).unwrap_or(usize::MAX));
        // `write`, `read` and `tick` are cancel-safe: a byte is either written (and counted) or not.
        tokio::select! {
            res = wr.write(&chunk[..allowed]), if allowed > 0 => match res {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    chunk.drain(..n);
                    offset += n as u64;
                    if pace.is_some() {
                        budget -= n as u64;
                    }
                    stats.send_modify(|s| s.bytes_out += n as u64);
                }
            },
            _ = ticks.tick(), if allowed == 0 => {
                budget = pace.map_or(u64::MAX, |rate| rate / 100);
            }
            res = rd.read(&mut sink) => match res {
                Ok(0) | Err(_) => return,
                Ok(n) => stats.send_modify(|s| s.bytes_in += n as u64),
            },
        }
    }
}
