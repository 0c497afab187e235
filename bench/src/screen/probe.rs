//! A minimal RFB client of the harness's own, straight on x11vnc's port (no tunnel, no browser):
//! it asks for the toggled square's rectangle only (raw encoding, 32-bit true colour) and notes
//! when each new colour of its centre arrives. Running beside every stack, it splits each update's
//! latency into x11vnc's share (X change → update on the loopback socket) and the rest (tunnel,
//! browser, canvas). RFB 3.8, security type None (x11vnc `-nopw`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::display::realtime_ms;

/// Each change of the probe pixel seen by the direct client: `[time ms, r, g, b]`.
pub type Changes = Arc<Mutex<Vec<[f64; 4]>>>;

/// Largest rectangle accepted (the whole 1920x1080 screen at 4 bytes a pixel, and some).
const MAX_RECT_BYTES: usize = 16 << 20;
/// Largest desktop name or clipboard text read (and skipped).
const MAX_TEXT: u32 = 1 << 20;
/// The handshake, and each later message once started, must come within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running client: its task, and what it saw.
pub struct Probe {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub changes: Changes,
}

impl Probe {
    /// Connects to `vnc`, completes the handshake, and keeps asking for the rectangle `(x, y, w,
    /// h)`, noting changes of the pixel `at`.
    pub async fn start(
        vnc: SocketAddr,
        rect: (u16, u16, u16, u16),
        at: (u16, u16),
    ) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(vnc)
            .await
            .with_context(|| format!("connecting to x11vnc at {vnc}"))?;
        stream.set_nodelay(true)?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut r, &mut w))
            .await
            .context("the direct RFB client's handshake with x11vnc took over 10 s")??;
        let changes = Changes::default();
        let seen = changes.clone();
        let task = tokio::spawn(async move {
            let mut w = w;
            request(&mut w, false, rect).await?;
            let mut last = None;
            loop {
                let rects = read_message(&mut r).await?;
                for (rx, ry, rw, pixels) in rects {
                    if let Some(rgb) = pixel_at(rx, ry, rw, &pixels, at)
                        && last != Some(rgb)
                    {
                        last = Some(rgb);
                        let t = realtime_ms();
                        let [b, g, red, _] = rgb.to_le_bytes();
                        seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push([
                            t,
                            f64::from(red),
                            f64::from(g),
                            f64::from(b),
                        ]);
                    }
                }
                request(&mut w, true, rect).await?;
            }
        });
        Ok(Self { task, changes })
    }

    /// The changes seen between `t0` and `t1` (ms); fails if the client has stopped.
    pub fn between(&self, t0: f64, t1: f64) -> anyhow::Result<Vec<[f64; 4]>> {
        if self.task.is_finished() {
            bail!("the direct RFB client on x11vnc stopped");
        }
        let all = self
            .changes
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(all
            .iter()
            .filter(|c| c[0] >= t0 && c[0] <= t1)
            .copied()
            .collect())
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn handshake(
    r: &mut BufReader<OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
) -> anyhow::Result<()> {
    let mut version = [0u8; 12];
    r.read_exact(&mut version).await?;
    if !version.starts_with(b"RFB 003.") {
        bail!("not an RFB server: {:?}", String::from_utf8_lossy(&version));
    }
    w.write_all(b"RFB 003.008\n").await?;
    let n = r.read_u8().await?;
    if n == 0 {
        let len = r.read_u32().await?.min(MAX_TEXT);
        let mut reason = vec![0; len as usize];
        r.read_exact(&mut reason).await?;
        bail!("x11vnc refused: {}", String::from_utf8_lossy(&reason));
    }
    let mut types = vec![0; usize::from(n)];
    r.read_exact(&mut types).await?;
    if !types.contains(&1) {
        bail!("x11vnc offers no security type None (types {types:?}): run it with -nopw");
    }
    w.write_all(&[1]).await?;
    if r.read_u32().await? != 0 {
        bail!("x11vnc refused security type None");
    }
    // ClientInit: shared.
    w.write_all(&[1]).await?;
    let mut init = [0u8; 20];
    r.read_exact(&mut init).await?;
    let name_len = r.read_u32().await?;
    if name_len > MAX_TEXT {
        bail!("desktop name of {name_len} bytes");
    }
    let mut name = vec![0; name_len as usize];
    r.read_exact(&mut name).await?;
    // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 8 bits each, R<<16 G<<8 B.
    let mut msg = vec![0u8, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0];
    msg.extend_from_slice(&[0, 0, 0]);
    w.write_all(&msg).await?;
    // SetEncodings: Raw only.
    w.write_all(&[2, 0, 0, 1, 0, 0, 0, 0]).await?;
    Ok(())
}

async fn request(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    incremental: bool,
    (x, y, rw, rh): (u16, u16, u16, u16),
) -> anyhow::Result<()> {
    let mut msg = vec![3u8, u8::from(incremental)];
    for v in [x, y, rw, rh] {
        msg.extend_from_slice(&v.to_be_bytes());
    }
    w.write_all(&msg).await.context("writing to x11vnc")
}

/// One server message; a framebuffer update's raw rectangles as `(x, y, width, pixels)`.
async fn read_message(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<Vec<(u16, u16, u16, Vec<u32>)>> {
    let kind = r.read_u8().await.context("x11vnc closed the connection")?;
    match kind {
        0 => {
            r.read_u8().await?;
            let n = r.read_u16().await?;
            let mut out = Vec::new();
            for _ in 0..n {
                let (x, y, w, h) = (
                    r.read_u16().await?,
                    r.read_u16().await?,
                    r.read_u16().await?,
                    r.read_u16().await?,
                );
                let encoding = r.read_i32().await?;
                if encoding != 0 {
                    bail!("x11vnc sent encoding {encoding}, not the raw encoding asked for");
                }
                let bytes = usize::from(w) * usize::from(h) * 4;
                if bytes > MAX_RECT_BYTES {
                    bail!("a {w}x{h} rectangle is over the size cap");
                }
                let mut buf = vec![0u8; bytes];
                r.read_exact(&mut buf).await?;
                let pixels = buf
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                out.push((x, y, w, pixels));
            }
            Ok(out)
        }
        1 => {
            let mut head = [0u8; 5];
            r.read_exact(&mut head).await?;
            let n = u16::from_be_bytes([head[3], head[4]]);
            let mut skip = vec![0u8; usize::from(n) * 6];
            r.read_exact(&mut skip).await?;
            Ok(Vec::new())
        }
        2 => Ok(Vec::new()),
        3 => {
            let mut pad = [0u8; 3];
            r.read_exact(&mut pad).await?;
            let len = r.read_u32().await?;
            if len > MAX_TEXT {
                bail!("clipboard text of {len} bytes");
            }
            let mut skip = vec![0u8; len as usize];
            r.read_exact(&mut skip).await?;
            Ok(Vec::new())
        }
        k => bail!("unknown RFB server message {k}"),
    }
}

/// The pixel at `at` if the rectangle at `(x, y)` of width `w` covers it.
fn pixel_at(x: u16, y: u16, w: u16, pixels: &[u32], at: (u16, u16)) -> Option<u32> {
    if w == 0 || at.0 < x || at.1 < y || at.0 - x >= w {
        return None;
    }
    let i = usize::from(at.1 - y) * usize::from(w) + usize::from(at.0 - x);
    pixels.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::super::display::{Square, Workstation, probe, square_rect};
    use super::*;

    #[tokio::test]
    async fn the_direct_client_sees_each_colour_x11vnc_serves() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workstation::start(dir.path(), &[]).await.unwrap();
        let display = ws.display.clone();
        let mut square = tokio::task::spawn_blocking(move || Square::create(&display))
            .await
            .unwrap()
            .unwrap();
        let p = Probe::start(ws.vnc, square_rect(), probe()).await.unwrap();
        for _ in 0..3 {
            let t = tokio::task::spawn_blocking(move || {
                let t = square.toggle().unwrap();
                (square, t)
            });
            let (back, toggle) = t.await.unwrap();
            square = back;
            let want = [
                f64::from((toggle.rgb >> 16) & 0xff),
                f64::from((toggle.rgb >> 8) & 0xff),
                f64::from(toggle.rgb & 0xff),
            ];
            crate::stacks::wait_for(
                "the new colour at the direct client",
                Duration::from_secs(5),
                async || {
                    let seen = p.between(toggle.at_ms - 1.0, f64::MAX)?;
                    Ok(seen.iter().any(|c| c[1..] == want).then_some(()))
                },
            )
            .await
            .unwrap();
        }
        p.stop().await;
        ws.stop().await;
    }

    #[tokio::test]
    async fn a_rectangle_over_the_cap_is_refused() {
        // A framebuffer update of one raw 4096x4096 rectangle: 64 MiB announced.
        let mut msg = vec![0u8, 0, 0, 1, 0, 0, 0, 0, 16, 0, 16, 0];
        msg.extend_from_slice(&0i32.to_be_bytes());
        let e = read_message(&mut msg.as_slice()).await.unwrap_err();
        assert!(e.to_string().contains("over the size cap"), "{e:#}");
    }

    #[test]
    fn the_probe_pixel_is_found_in_a_rectangle_or_not() {
        // A 3x2 rectangle at (10, 20): pixel (11, 21) is index 4.
        let px = [0, 1, 2, 3, 4, 5];
        assert_eq!(pixel_at(10, 20, 3, &px, (11, 21)), Some(4));
        assert_eq!(pixel_at(10, 20, 3, &px, (13, 21)), None);
        assert_eq!(pixel_at(10, 20, 3, &px, (11, 22)), None);
        assert_eq!(pixel_at(10, 20, 3, &px, (9, 20)), None);
    }
}
