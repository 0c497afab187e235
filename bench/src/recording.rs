//! A VNC-like stream through Passerelle with session recording off and on: the workstation's
//! service is a minimal RFB server (security None, a 1920x1080 ServerInit) that streams raw
//! 256x256 FramebufferUpdates; the viewer completes the RFB handshake with the broker over the
//! session's `ws_url` and counts the update bytes. With recording on, the broker writes every
//! byte to the recording (hash chain, signed checkpoints) on its way.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::measure::median;
use crate::stacks::passerelle::{Api, BrokerCmd, PasserelleStack};

const WIDTH: u16 = 1920;
const HEIGHT: u16 = 1080;
/// One update: a 256x256 raw rectangle, 32 bits per pixel.
const RECT: u16 = 256;
const UPDATE_BYTES: usize = 4 + 12 + (RECT as usize) * (RECT as usize) * 4;
const IO_LIMIT: Duration = Duration::from_secs(30);

/// The RFB server: each connection gets the handshake, then `updates` updates, then waits for
/// the viewer to leave.
pub struct RfbSource {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RfbSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RfbSource {
    pub async fn start(updates: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = serve(stream, updates).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn server_init() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&WIDTH.to_be_bytes());
    m.extend_from_slice(&HEIGHT.to_be_bytes());
    // 32 bpp, depth 24, little endian, true colour, max 255 each, shifts 16/8/0, padding.
    m.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    let name = b"passerelle-bench";
    m.extend_from_slice(&(name.len() as u32).to_be_bytes());
    m.extend_from_slice(name);
    m
}

async fn serve(mut s: TcpStream, updates: usize) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    s.write_all(b"RFB 003.008\n").await?;
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await?;
    s.write_all(&[1, 1]).await?; // one security type: None
    let mut choice = [0u8; 1];
    s.read_exact(&mut choice).await?;
    s.write_all(&0u32.to_be_bytes()).await?;
    let mut client_init = [0u8; 1];
    s.read_exact(&mut client_init).await?;
    s.write_all(&server_init()).await?;
    let mut update = Vec::with_capacity(UPDATE_BYTES);
    update.extend_from_slice(&[0, 0, 0, 1]);
    let (rd, mut wr) = s.into_split();
    // Whatever the viewer sends (SetEncodings, update requests) is read and ignored.
    let drain = tokio::spawn(async move {
        let mut rd = rd;
        let mut buf = vec![0u8; 4096];
        while matches!(rd.read(&mut buf).await, Ok(1..)) {}
    });
    for i in 0..updates {
        update.truncate(4);
        let x = (i as u16 % (WIDTH / RECT)) * RECT;
        let y = ((i as u16 / (WIDTH / RECT)) % (HEIGHT / RECT)) * RECT;
        for v in [x, y, RECT, RECT] {
            update.extend_from_slice(&v.to_be_bytes());
        }
        update.extend_from_slice(&0i32.to_be_bytes()); // Raw
        // Pixels that change with each update (a recording cannot dedupe them).
        update.extend((0..usize::from(RECT) * usize::from(RECT)).flat_map(|p| {
            let v = (p as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(i as u32);
            v.to_le_bytes()
        }));
        wr.write_all(&update).await?;
    }
    let _ = drain.await;
    Ok(())
}

/// A WebSocket viewer with a byte buffer, for reading exact RFB messages.
struct Viewer {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    buf: Vec<u8>,
}

impl Viewer {
    async fn fill(&mut self, n: usize) -> anyhow::Result<()> {
        while self.buf.len() < n {
            match tokio::time::timeout(IO_LIMIT, self.ws.next())
                .await
                .context("ws read timed out")?
            {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Close(c))) => bail!("closed by the broker: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the broker closed the connection"),
            }
        }
        Ok(())
    }

    async fn take(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        self.fill(n).await?;
        Ok(self.buf.drain(..n).collect())
    }

    async fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(data)))
            .await?;
        Ok(())
    }

    /// Counts received bytes until `n` have arrived (without keeping them).
    async fn count(&mut self, n: usize) -> anyhow::Result<()> {
        let mut got = std::mem::take(&mut self.buf).len();
        while got < n {
            match tokio::time::timeout(IO_LIMIT, self.ws.next())
                .await
                .context("ws read timed out")?
            {
                Some(Ok(Message::Binary(b))) => got += b.len(),
                Some(Ok(Message::Close(c))) => bail!("closed after {got} of {n} bytes: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended after {got} of {n} bytes"),
            }
        }
        Ok(())
    }
}

/// One session: the RFB handshake with the broker, then the updates; MB/s of update bytes.
async fn stream_once(api: &Api, agent: &str, record: bool, updates: usize) -> anyhow::Result<f64> {
    let session = api.create_session_with(agent, record).await?;
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&session.ws_url, None, true)
        .await
        .context("websocket handshake")?;
    let mut v = Viewer {
        ws,
        buf: Vec::new(),
    };
    ensure!(
        v.take(12).await? == b"RFB 003.008\n",
        "not an RFB 3.8 greeting"
    );
    v.send(b"RFB 003.008\n").await?;
    let count = v.take(1).await?[0];
    let types = v.take(usize::from(count)).await?;
    ensure!(types.contains(&1), "the broker offers {types:?}, not None");
    v.send(&[1]).await?;
    ensure!(v.take(4).await? == [0, 0, 0, 0], "security result not OK");
    v.send(&[1]).await?; // shared
    let head = v.take(24).await?;
    let name_len = u32::from_be_bytes([head[20], head[21], head[22], head[23]]) as usize;
    v.take(name_len).await?;
    let t = Instant::now();
    v.count(updates * UPDATE_BYTES).await?;
    let secs = t.elapsed().as_secs_f64();
    let _ = v.ws.close(None).await;
    Ok((updates * UPDATE_BYTES) as f64 / secs / 1e6)
}

/// Runs `runs` pairs (off, on) of `mib` MiB each; returns the report section (markdown).
pub async fn recording_on_off(
    bin: &BrokerCmd,
    dir: &Path,
    cipher: &str,
    mib: u64,
    runs: usize,
) -> anyhow::Result<String> {
    let updates = ((mib << 20) as usize / UPDATE_BYTES).max(1);
    let source = RfbSource::start(updates).await?;
    let stack = PasserelleStack::start(bin, dir, source.addr(), cipher, &[], 0).await?;
    let (mut off, mut on, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // Alternate which goes first, so that a drift of the machine's load hits both.
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for record in order {
            match stream_once(&stack.api, &stack.agent_id, record, updates).await {
                Ok(mbps) => {
                    println!(
                        "recording {}: {mbps:.0} MB/s",
                        if record { "on" } else { "off" }
                    );
                    if record { &mut on } else { &mut off }.push(mbps);
                }
                // The recorder fell more than its buffer behind (fail_closed): say so.
                Err(e) if record && format!("{e:#}").contains("4025") => {
                    println!("recording on: {e:#}");
                    failed.push(format!("{e:#}"));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let recordings = dir.join("passerelle-data").join("recordings");
    let disk = du(&recordings);
    let log = stack.log_summary();
    stack.stop().await;
    let (m_off, m_on) = (median(&off), median(&on));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "A VNC-like stream (raw 256x256 updates of changing pixels, {:.0} MiB per session, through \
         the broker's RFB handshake on `ws_url`), {runs} sessions each way, medians:\n",
        (updates * UPDATE_BYTES) as f64 / f64::from(1 << 20)
    );
    md.push_str("| recording | MB/s (median) | runs |\n|---|---:|---|\n");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(md, "| off | {m_off:.0} | {} |", fmt(&off));
    let _ = writeln!(md, "| on | {m_on:.0} | {} |", fmt(&on));
    let _ = writeln!(
        md,
        "\nRecording on / off: **{:.2}×**. Recordings written: {:.0} MiB on disk.",
        m_on / m_off,
        disk as f64 / f64::from(1 << 20)
    );
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\n{} of {runs} recorded sessions ended `recording_failed` (4025): the writer fell more \
             than `recording_buffer_bytes` behind the stream (tenant policy fail_closed). The \
             first: {}",
            failed.len(),
            failed[0]
        );
    }
    if let Some(l) = log {
        let _ = writeln!(md, "\nNote: the broker logged {l}");
    }
    Ok(md)
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}
