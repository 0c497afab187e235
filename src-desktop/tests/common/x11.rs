//! X11 test fixtures: Xvfb displays chosen by the server itself (`-displayfd`), child processes
//! killed on drop, TCP ports for servers that need a number, screenshots read as raw RGB, a
//! private D-Bus session bus, and waits for a window by its title.
//! Every wait is bounded. The tools come from `scripts/install-desktop-deps.sh`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::{POLL, WAIT};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// A child process whose output is collected, killed when dropped.
pub struct Proc {
    child: Child,
    output: Arc<Mutex<String>>,
    name: String,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr collected.
    pub fn spawn(mut cmd: Command, name: &str) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} (run scripts/install-desktop-deps.sh?)"))?;
        let output = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, output.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, output.clone());
        }
        Ok(Self {
            child,
            output,
            name: name.to_owned(),
        })
    }

    /// What it printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// Waits (bounded by `within`) for it to exit; its status.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        timeout(within, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit:\n{}", self.name, self.output()))?
            .with_context(|| format!("waiting for {}", self.name))
    }

    /// Its process id while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails with its output if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.output());
        }
        Ok(())
    }
}

fn collect(mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static, to: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            to.lock()
                .expect("output lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// A virtual X display.
pub struct Xvfb {
    _child: Child,
    /// `:N`.
    pub display: String,
    /// Width and height.
    pub size: (u32, u32),
}

impl Xvfb {
    /// Starts `Xvfb` on a display number it picks itself, `width`x`height`x24, plus `extra`
    /// options (e.g. `-br` for a black root window).
    pub async fn start(width: u32, height: u32, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-noreset",
                "-screen",
                "0",
            ])
            .arg(format!("{width}x{height}x24"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting Xvfb (run scripts/install-desktop-deps.sh)")?;
        let stdout = child.stdout.take().context("Xvfb stdout")?;
        let line = timeout(WAIT, BufReader::new(stdout).lines().next_line())
            .await
            .context("Xvfb did not report its display")??
            .context("Xvfb exited without a display")?;
        let display = format!(":{}", line.trim());
        let xvfb = Self {
            _child: child,
            display,
            size: (width, height),
        };
        // -displayfd is written once the server accepts clients; check it answers anyway.
        xvfb.run("xdpyinfo", &[]).await?;
        Ok(xvfb)
    }

    /// A command that talks to this display.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DISPLAY", &self.display);
        cmd
    }

    /// Runs `program args` on this display to completion (bounded); its stdout.
    pub async fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>> {
        let out = timeout(
            WAIT,
            self.command(program)
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("{program} timed out"))?
        .with_context(|| format!("running {program} (run scripts/install-desktop-deps.sh?)"))?;
        ensure!(
            out.status.success(),
            "{program} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// The whole screen as RGB bytes, row by row.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let rgb = self
            .run("import", &["-window", "root", "-depth", "8", "rgb:-"])
            .await?;
        let want = (self.size.0 * self.size.1 * 3) as usize;
        ensure!(
            rgb.len() == want,
            "screenshot of {} bytes, want {want}",
            rgb.len()
        );
        Ok(rgb)
    }

    /// Saves the screen as a PNG (for a person to look at).
    pub async fn save_png(&self, path: &Path) -> Result<()> {
        let path = path.to_str().context("non-UTF-8 path")?;
        self.run("import", &["-window", "root", path])
            .await
            .map(drop)
    }

    /// Polls screenshots until `ok` accepts one (bounded by `within`); returns the last one.
    pub async fn wait_screen(
        &self,
        within: Duration,
        what: &str,
        ok: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let shot = self.screenshot().await?;
            if ok(&shot) {
                return Ok(shot);
            }
            if Instant::now() >= deadline {
                bail!("the screen of {} never showed {what}", self.display);
            }
            sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The share of pixels within `tolerance` of `rgb` on each channel.
pub fn share_of(shot: &[u8], rgb: [u8; 3], tolerance: u8) -> f64 {
    let near = |a: u8, b: u8| a.abs_diff(b) <= tolerance;
    let pixels = shot.chunks_exact(3);
    let total = pixels.len().max(1);
    let hits = pixels
        .filter(|p| near(p[0], rgb[0]) && near(p[1], rgb[1]) && near(p[2], rgb[2]))
        .count();
    hits as f64 / total as f64
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released), for servers
/// that must be told a number.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls until something accepts connections on `127.0.0.1:port`, failing early if `proc`
/// exits.
pub async fn wait_port(port: u16, proc: &mut Proc) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + WAIT;
    loop {
        proc.check_running()?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "nothing listens on {addr}:\n{}",
            proc.output()
        );
        sleep(POLL).await;
    }
}

/// A private session bus for the app (single-instance and notifications use D-Bus).
pub struct Bus {
    _child: Child,
    pub address: String,
}

impl Bus {
    /// Starts `dbus-daemon --session` and reads the address it prints.
    pub async fn start() -> Result<Self> {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting dbus-daemon (run scripts/install-desktop-deps.sh)")?;
        let out = child.stdout.take().context("dbus stdout")?;
        let address = timeout(WAIT, BufReader::new(out).lines().next_line())
            .await
            .context("dbus-daemon printed no address")??
            .context("dbus-daemon exited")?;
        Ok(Self {
            _child: child,
            address,
        })
    }
}

/// Polls `xdotool search --name` until a window titled exactly `title` is mapped.
pub async fn wait_window(
    display: &Xvfb,
    title: &str,
    within: Duration,
    app: &mut Proc,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        app.check_running()?;
        let pattern = format!("^{}$", regex_escape(title));
        if display
            .run("xdotool", &["search", "--onlyvisible", "--name", &pattern])
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let all = display
                .run("xdotool", &["search", "--name", "."])
                .await
                .unwrap_or_default();
            let mut names = Vec::new();
            for id in String::from_utf8_lossy(&all).split_whitespace() {
                let name = display
                    .run("xdotool", &["getwindowname", id])
                    .await
                    .unwrap_or_default();
                names.push(String::from_utf8_lossy(&name).trim().to_owned());
            }
            bail!(
                "no window {title:?} (windows: {names:?}); app output:\n{}",
                app.output()
            );
        }
        sleep(Duration::from_millis(250)).await;
    }
}

/// `text` as a POSIX extended regular expression matching it literally (xdotool's `--name`).
pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
