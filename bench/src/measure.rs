//! The measuring client: opens viewer connections to a stack (plain TCP for the ceiling, a
//! WebSocket for websockify and Passerelle) and times bulk transfers, 64-byte round trips, set-up
//! and many sessions at once. Every wait is bounded by [`IO_LIMIT`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::host;
use crate::service::{BANNER, CHUNK, Command};
use crate::stacks::passerelle::Api;

/// No single read, write or handshake may take longer than this.
const IO_LIMIT: Duration = Duration::from_secs(30);

/// Where a viewer connects.
#[derive(Clone)]
pub enum Endpoint {
    /// The raw `ssh -R` port on sshd (the ceiling).
    Tcp(SocketAddr),
    /// websockify's URL.
    Ws(String),
    /// A fresh session per connection, then its `raw_ws_url`.
    Passerelle { api: Api, agent: String },
    /// A cluster node: a fresh session made through its API, then its `raw_ws_url` over
    /// `wss://` to `via` (that node's HTTPS listener) trusting the cluster's certificate.
    Node {
        api: Api,
        agent: String,
        via: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    },
}

/// How long opening took.
#[derive(Debug, Clone, Copy)]
pub struct SetupTimes {
    /// API call (Passerelle only) -> first byte of the service at the client.
    pub total: Duration,
    /// Connect (TCP or WebSocket handshake start) -> first byte.
    pub connect_to_first_byte: Duration,
}

/// One viewer connection, past the banner.
pub enum Conn {
    Tcp(TcpStream, Vec<u8>),
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
}

impl Endpoint {
    /// Opens a connection and reads the service's banner.
    pub async fn open(&self) -> anyhow::Result<(Conn, SetupTimes)> {
        let t0 = Instant::now();
        let url = match self {
            Self::Tcp(_) => None,
            Self::Ws(url) => Some(url.clone()),
            Self::Passerelle { api, agent } => Some(api.create_session(agent).await?.raw_ws_url),
            Self::Node {
                api, agent, via, ..
            } => {
                let url = api.create_session(agent).await?.raw_ws_url;
                let path = (url.split_once("://").and_then(|(_, r)| r.split_once('/')))
                    .map(|(_, p)| p)
                    .with_context(|| format!("not an absolute URL: {url}"))?;
                Some(format!("wss://{via}/{path}"))
            }
        };
        let t1 = Instant::now();
        let mut conn = match (self, url) {
            (Self::Tcp(addr), _) => {
                let s = limit("tcp connect", TcpStream::connect(addr)).await??;
                s.set_nodelay(true)?;
                Conn::Tcp(s, vec![0; CHUNK])
            }
            (_, Some(url)) => {
                let tls = match self {
                    Self::Node { tls, .. } => Some(Connector::Rustls(tls.clone())),
                    _ => None,
                };
                let (ws, _) = limit(
                    "websocket connect",
                    tokio_tungstenite::connect_async_tls_with_config(url, None, true, tls),
                )
                .await?
                .context("websocket handshake")?;
                Conn::Ws(Box::new(ws))
            }
            (_, None) => bail!("no url"),
        };
        conn.expect(BANNER.len() as u64)
            .await
            .context("reading the banner")?;
        let t3 = Instant::now();
        Ok((
            conn,
            SetupTimes {
                total: t3 - t0,
                connect_to_first_byte: t3 - t1,
            },
        ))
    }
}

async fn limit<F: Future>(what: &str, f: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(IO_LIMIT, f)
        .await
        .with_context(|| format!("{what}: timed out"))
}

impl Conn {
    pub async fn send(&mut self, data: Bytes) -> anyhow::Result<()> {
        match self {
            Self::Tcp(s, _) => limit("write", s.write_all(&data)).await??,
            Self::Ws(ws) => limit("ws send", ws.send(Message::Binary(data))).await??,
        }
        Ok(())
    }

    /// Bytes received by one read (0 = closed).
    pub async fn recv(&mut self) -> anyhow::Result<usize> {
        match self {
            Self::Tcp(s, buf) => Ok(limit("read", s.read(buf)).await??),
            Self::Ws(ws) => loop {
                match limit("ws read", ws.next()).await? {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Ok(Message::Binary(b))) => return Ok(b.len()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(t))) => bail!("unexpected text message {t:?}"),
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }

    /// Reads exactly `n` bytes (the protocol never sends more than asked).
    pub async fn expect(&mut self, n: u64) -> anyhow::Result<()> {
        let mut got = 0u64;
        while got < n {
            let r = self.recv().await?;
            if r == 0 {
                bail!("closed after {got} of {n} bytes");
            }
            got += r as u64;
        }
        if got != n {
            bail!("got {got} bytes, expected {n}");
        }
        Ok(())
    }

    /// Closes politely (bounded): a WebSocket close handshake, or a TCP shutdown.
    pub async fn close(self) {
        match self {
            Self::Tcp(mut s, _) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
            }
            Self::Ws(mut ws) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    ws.close().await?;
                    while ws.next().await.is_some() {}
                    anyhow::Ok(())
                })
                .await;
            }
        }
    }
}

/// Which way bulk data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Workstation -> viewer (a desktop's frame updates).
    Down,
    /// Viewer -> workstation.
    Up,
}

/// One bulk transfer.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// MB/s (10^6 bytes) at the client.
    pub mbs: f64,
    /// CPU ticks spent during the transfer, by process name (see [`host::tree_cpu`]).
    pub cpu: HashMap<String, u64>,
}

/// One bulk transfer of `bytes` through one fresh connection.
pub async fn bulk(ep: &Endpoint, dir: Direction, bytes: u64) -> anyhow::Result<Bulk> {
    let (mut conn, _) = ep.open().await?;
    let cpu_before = host::tree_cpu();
    let start = Instant::now();
    match dir {
        Direction::Down => {
            conn.send(Bytes::copy_from_slice(&Command::Download(bytes).encode()))
                .await?;
            conn.expect(bytes).await?;
        }
        Direction::Up => {
            conn.send(Bytes::copy_from_slice(&Command::Upload(bytes).encode()))
                .await?;
            let chunk = Bytes::from(vec![0xa5u8; CHUNK]);
            let mut left = bytes;
            while left > 0 {
                let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
                conn.send(chunk.slice(..n)).await?;
                left -= n as u64;
            }
            conn.expect(1).await?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Before closing: a per-connection process (websockify forks one) still counts.
    let cpu = host::cpu_delta(&cpu_before, &host::tree_cpu());
    conn.close().await;
    Ok(Bulk {
        mbs: bytes as f64 / secs / 1e6,
        cpu,
    })
}

/// Round-trip times of `count` 64-byte messages through the echo service, after 20 for warm-up.
pub async fn round_trips(ep: &Endpoint, count: usize) -> anyhow::Result<Vec<Duration>> {
    let (mut conn, _) = ep.open().await?;
    conn.send(Bytes::copy_from_slice(&Command::Echo.encode()))
        .await?;
    let msg = Bytes::from(vec![0x42u8; 64]);
    let mut out = Vec::with_capacity(count);
    for i in 0..count + 20 {
        let t = Instant::now();
        conn.send(msg.clone()).await?;
        conn.expect(64).await?;
        if i >= 20 {
            out.push(t.elapsed());
        }
    }
    conn.close().await;
    Ok(out)
}

/// Set-up times of `count` connections opened one after the other.
pub async fn setups(ep: &Endpoint, count: usize) -> anyhow::Result<Vec<SetupTimes>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (conn, t) = ep.open().await?;
        out.push(t);
        conn.close().await;
    }
    Ok(out)
}

/// `n` sessions opened first, session `i` on `eps[i % eps.len()]` (one endpoint per agent), then
/// all downloading at once: the MB/s each received during `window`, counted after a warm-up of a
/// quarter of the window.
pub async fn concurrent(eps: &[Endpoint], n: usize, window: Duration) -> anyhow::Result<Vec<f64>> {
    if eps.is_empty() {
        bail!("no endpoint");
    }
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(eps[i % eps.len()].open().await?.0);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let warm = window / 4;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            // Endless download: the client stops reading at the end of the window and closes.
            conn.send(Bytes::copy_from_slice(&Command::Download(1 << 40).encode()))
                .await?;
            let mut counted = 0u64;
            loop {
                let r = conn.recv().await?;
                if r == 0 {
                    bail!("closed during the window");
                }
                let t = start.elapsed();
                if t >= warm + window {
                    break;
                }
                if t >= warm {
                    counted += r as u64;
                }
            }
            conn.close().await;
            anyhow::Ok(counted as f64 / window.as_secs_f64() / 1e6)
        });
    }
    let mut rates = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        rates.push(r??);
    }
    Ok(rates)
}

/// The value at percentile `p` (nearest rank) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Jain's fairness index: 1 when all equal, 1/n when one gets everything.
pub fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let sq: f64 = values.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        f64::NAN
    } else {
        sum * sum / (values.len() as f64 * sq)
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::{jain, median, percentile};

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn jain_is_one_when_fair_and_one_over_n_when_not() {
        assert!((jain(&[5.0, 5.0, 5.0, 5.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[8.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }
}
