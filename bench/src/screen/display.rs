//! The workstation of the screen benchmark: an Xvfb display, x11vnc serving it, and the three
//! workloads drawn on it — a coloured square the harness toggles itself (an X client of its own,
//! so that it knows when the X server has each change), a full-screen 30 fps video (`ffplay` of
//! ffmpeg's `testsrc`) and a scrolling terminal (`xterm` fed a steady text flood).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rand::Rng as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{
    ChangeWindowAttributesAux, ConnectionExt as _, CreateWindowAux, WindowClass,
};
use x11rb::rust_connection::RustConnection;

use crate::stacks::{Proc, free_port, listening, wait_for};

/// The display's size: a common workstation screen.
pub const WIDTH: u16 = 1920;
pub const HEIGHT: u16 = 1080;

/// The toggled square: where (top-left corner), and its side, in pixels. Away from the screen's
/// centre, where x11vnc may draw the cursor.
pub const SQUARE_AT: (i16, i16) = (96, 96);
pub const SQUARE_SIDE: u16 = 64;

/// The square's rectangle `(x, y, width, height)`.
pub fn square_rect() -> (u16, u16, u16, u16) {
    (
        SQUARE_AT.0.unsigned_abs(),
        SQUARE_AT.1.unsigned_abs(),
        SQUARE_SIDE,
        SQUARE_SIDE,
    )
}

/// The probe point the page reads: the square's centre.
pub fn probe() -> (u16, u16) {
    (
        SQUARE_AT.0.unsigned_abs() + SQUARE_SIDE / 2,
        SQUARE_AT.1.unsigned_abs() + SQUARE_SIDE / 2,
    )
}

/// The colours the square takes in turn (0xRRGGBB on the 24-bit display): saturated and far
/// apart, so that a lossy encoding (Guacamole's JPEG/WebP) still reads as the same colour.
pub const PALETTE: [u32; 4] = [0xff0000, 0x00ff00, 0x0000ff, 0xffff00];

/// Xvfb on a free display number, with x11vnc serving it on a free loopback port.
pub struct Workstation {
    pub display: String,
    pub vnc: SocketAddr,
    xvfb: Proc,
    x11vnc: Proc,
}

impl Workstation {
    /// Starts Xvfb (`-noreset`: it keeps its root background when the last client leaves) with a
    /// blue-grey root, and x11vnc with its default settings (as a workstation runs it) plus
    /// `x11vnc_args`, no password, loopback only.
    pub async fn start(dir: &Path, x11vnc_args: &[String]) -> anyhow::Result<Self> {
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
        .arg(format!("{WIDTH}x{HEIGHT}x24"));
        let mut xvfb = Proc::spawn("Xvfb", &mut cmd, &dir.join("xvfb.log"), true)?;
        let stdout = xvfb
            .child_mut()
            .stdout
            .take()
            .context("Xvfb has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let num = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("Xvfb did not print its display number in 10 s")??
            .context("Xvfb exited before printing its display number")?;
        let display = format!(":{}", num.trim());
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            Command::new("xsetroot")
                .args(["-display", &display, "-solid", "#336699"])
                .kill_on_drop(true)
                .status(),
        )
        .await
        .context("xsetroot did not finish within 10 s")?
        .context("running xsetroot")?;
        if !status.success() {
            bail!("xsetroot failed: {status}");
        }
        let port = free_port()?;
        let mut cmd = Command::new("x11vnc");
        cmd.args(["-display", &display, "-rfbport", &port.to_string()])
            .args(["-localhost", "-nopw", "-forever", "-shared", "-quiet"])
            .args(x11vnc_args);
        let mut x11vnc = Proc::spawn("x11vnc", &mut cmd, &dir.join("x11vnc.log"), false)?;
        let vnc = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for("x11vnc to listen", Duration::from_secs(15), async || {
            x11vnc.check_alive()?;
            Ok(listening(vnc).await.then_some(()))
        })
        .await?;
        Ok(Self {
            display,
            vnc,
            xvfb,
            x11vnc,
        })
    }

    pub fn x11vnc_pid(&self) -> u32 {
        self.x11vnc.pid()
    }

    /// Fails if Xvfb or x11vnc has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.xvfb.check_alive()?;
        self.x11vnc.check_alive()
    }

    /// SIGTERM first: x11vnc then removes its shared-memory segments, which outlive a SIGKILL.
    pub async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.x11vnc.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.x11vnc.child_mut().wait()).await;
        self.x11vnc.kill().await;
        self.xvfb.kill().await;
    }
}

/// A session bus address that fails at once: without one, SDL (ffplay) autolaunches a
/// dbus-daemon through `dbus-launch` (seen in the process tree) — one more process per video
/// start, and a suspect for the one ffplay that took over 15 s to map its first window.
const NO_DBUS: &str = "unix:path=/nonexistent/passerelle-bench-no-bus";

/// A program drawing on the display for a workload: `ffplay` or `xterm`.
pub fn start_video(dir: &Path, display: &str) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("ffplay");
    cmd.env("DISPLAY", display)
        .env("DBUS_SESSION_BUS_ADDRESS", NO_DBUS)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-an",
            "-fs",
            "-noborder",
        ])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={WIDTH}x{HEIGHT}:rate=30"));
    Proc::spawn("ffplay", &mut cmd, &dir.join("ffplay.log"), false)
}

/// `xterm` over the whole screen printing 100 numbered lines every 20 ms (5,000 lines a second,
/// a busy build log), forever.
pub fn start_terminal(dir: &Path, display: &str) -> anyhow::Result<Proc> {
    let flood = "i=0; while :; do j=0; while [ $j -lt 100 ]; do \
                 echo \"line $i.$j: the quick brown fox jumps over the lazy dog 0123456789\"; \
                 j=$((j+1)); done; i=$((i+1)); sleep 0.02; done";
    let mut cmd = Command::new("xterm");
    cmd.env("DISPLAY", display)
        .args(["-geometry", "236x74+0+0", "-bg", "black", "-fg", "white"])
        .args(["-e", "sh", "-c", flood]);
    Proc::spawn("xterm", &mut cmd, &dir.join("xterm.log"), false)
}

/// One change of the square: when the X server had it (CLOCK_REALTIME, ms) and its colour.
#[derive(Debug, Clone, Copy)]
pub struct Toggle {
    pub at_ms: f64,
    pub rgb: u32,
}

/// The square: an override-redirect window of this harness's own X connection.
pub struct Square {
    conn: RustConnection,
    root: u32,
    window: u32,
    next: usize,
}

impl Square {
    /// Maps the square (mid-grey) on `display`. Blocking (an X connection): call it from a
    /// blocking thread.
    pub fn create(display: &str) -> anyhow::Result<Self> {
        let (conn, screen) = x11rb::connect(Some(display)).context("connecting to the X server")?;
        let root = conn.setup().roots[screen].root;
        let window = conn.generate_id()?;
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            window,
            root,
            SQUARE_AT.0,
            SQUARE_AT.1,
            SQUARE_SIDE,
            SQUARE_SIDE,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .background_pixel(0x808080)
                .override_redirect(1),
        )?;
        conn.map_window(window)?;
        conn.get_input_focus()?.reply()?;
        Ok(Self {
            conn,
            root,
            window,
            next: 0,
        })
    }

    /// How many windows the root has (the square's included): a program's window shows up here
    /// once it is created.
    pub fn windows(&self) -> anyhow::Result<usize> {
        Ok(self.conn.query_tree(self.root)?.reply()?.children.len())
    }

    /// Raises the square above every other window (the video and the terminal are mapped later).
    pub fn raise(&self) -> anyhow::Result<()> {
        use x11rb::protocol::xproto::{ConfigureWindowAux, StackMode};
        self.conn.configure_window(
            self.window,
            &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
        )?;
        self.conn.get_input_focus()?.reply()?;
        Ok(())
    }

    /// Raises the square (a full-screen program may have restacked its window above it), paints
    /// the next colour of [`PALETTE`] and returns when the X server has done it (a round trip
    /// after the requests, as `XSync`), with the time taken right then.
    pub fn toggle(&mut self) -> anyhow::Result<Toggle> {
        use x11rb::protocol::xproto::{ConfigureWindowAux, StackMode};
        let rgb = PALETTE[self.next % PALETTE.len()];
        self.next += 1;
        self.conn.configure_window(
            self.window,
            &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
        )?;
        self.conn.change_window_attributes(
            self.window,
            &ChangeWindowAttributesAux::new().background_pixel(rgb),
        )?;
        self.conn.clear_area(false, self.window, 0, 0, 0, 0)?;
        self.conn.get_input_focus()?.reply()?;
        Ok(Toggle {
            at_ms: realtime_ms(),
            rgb,
        })
    }

    /// Toggles at random moments (uniformly 250–750 ms apart) for `window`, the last change at
    /// least a second (a quarter of a short window) before its end so that the page can still
    /// see it; blocking.
    pub fn toggle_for(&mut self, window: Duration) -> anyhow::Result<Vec<Toggle>> {
        let end = Instant::now() + window;
        let last = end - (window / 4).min(Duration::from_secs(1));
        let mut out = Vec::new();
        let mut rng = rand::rng();
        loop {
            let pause = Duration::from_millis(rng.random_range(250..=750));
            if Instant::now() + pause >= last {
                break;
            }
            std::thread::sleep(pause);
            out.push(self.toggle()?);
        }
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        Ok(out)
    }
}

/// CLOCK_REALTIME in milliseconds, the clock the page reads too (`performance.timeOrigin +
/// performance.now()`).
pub fn realtime_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
