//! Real desktops for the VNC tests: an Xvfb display with a known colour, VNC servers on it
//! (x11vnc, TigerVNC's Xvnc), a vnc-rs client speaking to the broker through its WebSocket, and
//! Debian's Chromium driving the viewer page (`tests/browser/viewer.mjs`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::{POLL, WAIT};

/// Whether the programs these tests need are installed (`scripts/install-test-deps.sh`).
pub fn have(programs: &[&str]) -> bool {
    programs.iter().all(|p| {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
            .unwrap_or(false)
    })
}

/// A free TCP port on 127.0.0.1 (for servers that cannot be told port 0; the window between
/// release and reuse is tiny, and the server's start is checked).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts an X server that picks its own display number (`-displayfd 1`) and returns it.
async fn start_x(mut cmd: Command) -> Result<(Child, u32)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting an X server")?;
    let stdout = child.stdout.take().context("X server stdout")?;
    let mut line = String::new();
    timeout(WAIT, BufReader::new(stdout).read_line(&mut line))
        .await
        .context("the X server did not report its display in time")??;
    let num = line
        .trim()
        .parse()
        .with_context(|| format!("display number from {line:?}"))?;
    Ok((child, num))
}

/// An Xvfb display.
pub struct XDisplay {
    pub num: u32,
    _child: Child,
}

impl XDisplay {
    /// A `width`x`height` 24-bit display.
    pub async fn start(width: u32, height: u32) -> Result<Self> {
        let mut cmd = Command::new("Xvfb");
        cmd.args([
            "-displayfd",
            "1",
            "-noreset",
            "-nolisten",
            "tcp",
            "-screen",
            "0",
        ])
        .arg(format!("{width}x{height}x24"));
        let (child, num) = start_x(cmd).await?;
        Ok(Self { num, _child: child })
    }

    /// `:N`
    pub fn name(&self) -> String {
        format!(":{}", self.num)
    }

    /// Paints the root window.
    pub async fn set_colour(&self, colour: &str) -> Result<()> {
        set_root_colour(&self.name(), colour).await
    }
}

/// Paints the root window of `display` (`xsetroot -solid`).
pub async fn set_root_colour(display: &str, colour: &str) -> Result<()> {
    let status = Command::new("xsetroot")
        .args(["-display", display, "-solid", colour])
        .status()
        .await?;
    ensure!(status.success(), "xsetroot failed: {status}");
    Ok(())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16, child: &mut Child, what: &str) -> Result<()> {
    // A server that starts slowly on a loaded machine (freerdp-shadow-cli makes its TLS key
    // first; a cold CI build runs beside it) still starts: the bound only catches a hang.
    let deadline = Instant::now() + WAIT * 4;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}) before listening on {port}");
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not listen on {port} in time"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A VNC server on 127.0.0.1:`port`.
pub struct VncServer {
    pub port: u16,
    _child: Child,
    _display: Option<XDisplay>,
    _dir: tempfile::TempDir,
}

impl VncServer {
    /// x11vnc on `display`, with a VNC password when given, plus `extra` arguments.
    pub async fn x11vnc(
        display: &XDisplay,
        password: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cmd = Command::new("x11vnc");
        cmd.args([
            "-display",
            &display.name(),
            "-rfbport",
            &port.to_string(),
            "-localhost",
            "-forever",
            "-shared",
        ]);
        // -noshm: x11vnc's SysV shared-memory segments outlive it when it is killed (SIGKILL on
        // drop), and the machine's 4,096 run out after a few hundred test runs.
        cmd.args(["-quiet", "-noxdamage", "-nowf", "-noxrecord", "-noshm"]);
        match password {
            Some(pw) => {
                let file = dir.path().join("passwd");
                let status = Command::new("x11vnc")
                    .arg("-storepasswd")
                    .arg(pw)
                    .arg(&file)
                    .output()
                    .await?
                    .status;
                ensure!(status.success(), "x11vnc -storepasswd failed");
                cmd.arg("-rfbauth").arg(&file);
            }
            None => {
                cmd.arg("-nopw");
            }
        }
        cmd.args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting x11vnc")?;
        wait_listening(port, &mut child, "x11vnc").await?;
        Ok(Self {
            port,
            _child: child,
            _display: None,
            _dir: dir,
        })
    }

    /// TigerVNC's Xvnc (its own X server), limited to VNC Authentication with `password`.
    pub async fn xvnc(width: u32, height: u32, password: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("passwd");
        let mut vncpasswd = Command::new("vncpasswd")
            .arg("-f")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting vncpasswd")?;
        let mut stdin = vncpasswd.stdin.take().context("vncpasswd stdin")?;
        stdin
            .write_all(format!("{password}\n{password}\n").as_bytes())
            .await?;
        drop(stdin);
        let mut obfuscated = Vec::new();
        vncpasswd
            .stdout
            .take()
            .context("vncpasswd stdout")?
            .read_to_end(&mut obfuscated)
            .await?;
        ensure!(
            vncpasswd.wait().await?.success() && !obfuscated.is_empty(),
            "vncpasswd failed"
        );
        std::fs::write(&file, obfuscated)?;
        let port = free_port()?;
        let mut cmd = Command::new("Xvnc");
        cmd.args(["-displayfd", "1", "-noreset", "-geometry"])
            .arg(format!("{width}x{height}"))
            .args(["-depth", "24"]);
        cmd.args([
            "-rfbport",
            &port.to_string(),
            "-localhost",
            "-SecurityTypes",
            "VncAuth",
            "-nolisten",
            "tcp",
        ]);
        cmd.arg("-PasswordFile").arg(&file);
        let (mut child, num) = start_x(cmd).await?;
        wait_listening(port, &mut child, "Xvnc").await?;
        let server = Self {
            port,
            _child: child,
            _display: None,
            _dir: dir,
        };
        set_root_colour(&format!(":{num}"), "#cc3333").await?;
        Ok(server)
    }
}

/// A vnc-rs client whose transport is the broker's WebSocket.
pub struct VncOverWs {
    pub client: vnc::VncClient,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for VncOverWs {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl VncOverWs {
    /// Connects to `ws_url` and completes the RFB handshake (security None: the broker has
    /// answered the server's password challenge already).
    pub async fn connect(ws_url: &str) -> Result<Self> {
        let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(ws_url))
            .await
            .context("ws connect timed out")??;
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let pump = tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let (mut rd, mut wr) = tokio::io::split(theirs);
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0
                        || sink
                            .send(Message::Binary(buf[..n].to_vec().into()))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            };
            let down = async {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Message::Binary(data) = msg
                        && wr.write_all(&data).await.is_err()
                    {
                        break;
                    }
                }
            };
            tokio::select! { () = up => {}, () = down => {} }
        });
        let client = timeout(WAIT, async {
            vnc::VncConnector::new(ours)
                .set_auth_method(async move { Ok(String::new()) })
                .add_encoding(vnc::VncEncoding::Raw)
                .allow_shared(true)
                .set_pixel_format(vnc::PixelFormat::bgra())
                .build()?
                .try_start()
                .await?
                .finish()
        })
        .await
        .context("vnc handshake timed out")?
        .map_err(|e| anyhow::anyhow!("vnc handshake: {e}"))?;
        Ok(Self { client, pump })
    }

    /// Reads events until a raw framebuffer rectangle arrives; returns its dominant BGRA colour
    /// as (r, g, b).
    pub async fn first_rect_colour(&self) -> Result<(u8, u8, u8)> {
        let deadline = Instant::now() + WAIT;
        let _ = self.client.input(vnc::X11Event::Refresh).await;
        loop {
            ensure!(
                Instant::now() < deadline,
                "no framebuffer update within {WAIT:?}"
            );
            let event = timeout(WAIT, self.client.recv_event())
                .await
                .context("no vnc event")?;
            if let vnc::VncEvent::RawImage(_rect, data) =
                event.map_err(|e| anyhow::anyhow!("vnc: {e}"))?
            {
                return dominant_bgra(&data).context("empty rectangle");
            }
        }
    }
}

/// The most frequent colour of BGRA pixels.
pub fn dominant_bgra(data: &[u8]) -> Option<(u8, u8, u8)> {
    let mut counts = std::collections::HashMap::new();
    for px in data.chunks_exact(4) {
        *counts.entry((px[2], px[1], px[0])).or_insert(0usize) += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(c, _)| c)
}

/// What the viewer page showed (see `tests/browser/viewer.mjs`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageReport {
    pub state: Option<String>,
    /// The "open in desktop app" link, once the page fetched it.
    #[serde(default)]
    pub desktop_link: Option<String>,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    pub dominant: Option<Vec<u8>>,
    pub title: Option<String>,
    pub error: Option<String>,
}

impl PageReport {
    /// Whether the page's dominant colour is `colour` (within 12 per channel).
    pub fn shows(&self, colour: (u8, u8, u8)) -> bool {
        shows(self.dominant.as_deref(), colour)
    }
}

pub(crate) fn shows(dominant: Option<&[u8]>, colour: (u8, u8, u8)) -> bool {
    matches!(dominant, Some([r, g, b, ..]) if close_to((*r, *g, *b), colour, 12))
}

/// Opens `url` in the viewer page in the background, kept open until the broker closes it
/// (`--wait-close`), and returns once `broker` sees session `id` active. The handle gives what
/// the page showed at its end.
pub async fn watch_session(
    broker: &crate::TestBroker,
    id: &str,
    url: &str,
    screenshot: &Path,
) -> Result<tokio::task::JoinHandle<Result<PageReport>>> {
    let (url, shot) = (url.to_owned(), screenshot.to_owned());
    let page = tokio::spawn(async move { open_viewer(&url, &shot, &["--wait-close"]).await });
    broker
        .wait_session(id, "active", |s| s.state == crate::SessionState::Active)
        .await?;
    Ok(page)
}

fn browser_dir() -> PathBuf {
    crate::manifest_dir().join("browser")
}

/// Whether Chromium and the page driver are installed.
pub fn have_browser() -> bool {
    have(&["chromium", "node"]) && browser_dir().join("node_modules/playwright-core").exists()
}

/// Opens `url` in headless Chromium; `args` as `viewer.mjs` takes them.
pub async fn open_viewer(url: &str, screenshot: &Path, args: &[&str]) -> Result<PageReport> {
    run_page_script("viewer.mjs", url, screenshot, args).await
}

/// What the replay page showed (see `tests/browser/replay.mjs`).
#[derive(Debug, serde::Deserialize)]
pub struct ReplayReport {
    pub state: Option<String>,
    pub duration: Option<f64>,
    pub position: Option<f64>,
    pub frames: Option<u64>,
    pub dominant: Option<Vec<u8>>,
    pub error: Option<String>,
    #[serde(default)]
    pub console: Vec<String>,
    /// Recorded seconds of the keyframe the page's last fetch started from, and its number.
    pub keyframe: Option<f64>,
    #[serde(rename = "keyframeNumber")]
    pub keyframe_number: Option<u64>,
    /// Bytes of screen stream the last fetch got, of the whole stream's.
    #[serde(rename = "fetchedBytes")]
    pub fetched_bytes: Option<u64>,
    #[serde(rename = "totalBytes")]
    pub total_bytes: Option<u64>,
}

impl ReplayReport {
    /// Whether the page's dominant colour is `colour` (within 12 per channel).
    pub fn shows(&self, colour: (u8, u8, u8)) -> bool {
        shows(self.dominant.as_deref(), colour)
    }
}

/// Opens a replay page in headless Chromium; `args` as `replay.mjs` takes them.
pub async fn open_replay(url: &str, screenshot: &Path, args: &[&str]) -> Result<ReplayReport> {
    run_page_script("replay.mjs", url, screenshot, args).await
}

/// One row of the console's session history (see `tests/browser/console.mjs`).
#[derive(Debug, serde::Deserialize)]
pub struct HistoryRow {
    pub session: Option<String>,
    pub cells: Vec<String>,
    pub replay: Option<String>,
}

/// What the console showed.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleReport {
    pub rows: Vec<HistoryRow>,
    /// The replay page's state after following the first replay link.
    pub replay_state: Option<String>,
    pub error: Option<String>,
}

/// Opens the console in headless Chromium and filters its session history; `args` as
/// `console.mjs` takes them.
pub async fn open_console(url: &str, screenshot: &Path, args: &[&str]) -> Result<ConsoleReport> {
    run_page_script("console.mjs", url, screenshot, args).await
}

/// One row of the console's agent table (see `tests/browser/agents.mjs`).
#[derive(Debug, serde::Deserialize)]
pub struct AgentRow {
    pub id: String,
    /// Shown as offline (greyed out).
    pub offline: bool,
    /// The state cell's text (`online`, or `offline · last seen …`).
    pub state: String,
    /// The computed opacity of the row's cells.
    pub opacity: f64,
}

/// What the console's agent table showed.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentsReport {
    /// From the sign-in click to the first page rendered, in the browser's clock.
    pub first_page_ms: Option<u64>,
    pub first_page: Vec<AgentRow>,
    pub next_enabled: Option<bool>,
    pub second_page: Vec<AgentRow>,
    /// The rows after the prefix search.
    pub rows: Vec<AgentRow>,
    pub error: Option<String>,
}

/// Opens the console's agent table in headless Chromium, pages once and searches; `args` as
/// `agents.mjs` takes them.
pub async fn open_agents(url: &str, screenshot: &Path, args: &[&str]) -> Result<AgentsReport> {
    run_page_script("agents.mjs", url, screenshot, args).await
}

pub(crate) async fn run_page_script<T: serde::de::DeserializeOwned>(
    script: &str,
    url: &str,
    screenshot: &Path,
    args: &[&str],
) -> Result<T> {
    // Generous for the same reason: a page that works finishes in seconds.
    let out = timeout(
        Duration::from_secs(180),
        Command::new("node")
            .arg(browser_dir().join(script))
            .arg(url)
            .arg(screenshot)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the browser did not finish in 180 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| {
        format!(
            "{script} said {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Whether `a` is within `tolerance` of `b` on every channel.
pub fn close_to(a: (u8, u8, u8), b: (u8, u8, u8), tolerance: u8) -> bool {
    a.0.abs_diff(b.0) <= tolerance
        && a.1.abs_diff(b.1) <= tolerance
        && a.2.abs_diff(b.2) <= tolerance
}
