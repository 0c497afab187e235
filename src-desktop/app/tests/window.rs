//! The real Tauri app under Xvfb (with its own D-Bus session bus): started with a launch URL it
//! opens a tunnel and shows it in its window; a second start with another URL hands it to the
//! running instance and exits; a session the broker stops leaves the list. Screenshots of the
//! window are saved for a person to look at.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::Setup;
use common::x11::{Bus, Proc, Xvfb, share_of, wait_window};
use passerelle_e2e::{EchoServer, TestBroker, WAIT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{sleep, timeout};

/// How long the first window may take (WebKitGTK's first start is slow on a loaded machine).
const WINDOW_WAIT: Duration = Duration::from_secs(90);

/// The app's command line with a private environment.
fn app(url: &str, display: &str, bus: &Bus, home: &tempfile::TempDir) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_passerelle-desktop-app"));
    let h = home.path();
    cmd.arg(url)
        .env("DISPLAY", display)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("HOME", h)
        .env("XDG_CONFIG_HOME", h.join("config"))
        .env("XDG_DATA_HOME", h.join("data"))
        .env("XDG_CACHE_HOME", h.join("cache"))
        .env("XDG_RUNTIME_DIR", h)
        .env("PASSERELLE_DESKTOP_CONFIG", h.join("desktop.toml"))
        // No GPU under Xvfb.
        .env("WEBKIT_DISABLE_COMPOSITING_MODE", "1")
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .env("RUST_LOG", "info");
    cmd
}

fn shot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_lists_tunnels_in_its_window() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let second = s.api.create_session(&s.agent.id, "rdp").await?;

    let display = Xvfb::start(1024, 768, &["-br"]).await?;
    let bus = Bus::start().await?;
    let home = tempfile::tempdir()?;
    // A client that starts and exits at once: the tunnel stays for the technician. The test
    // broker speaks plain HTTP, trusted by configuration.
    std::fs::write(
        home.path().join("desktop.toml"),
        format!(
            "{}[clients]\nrdp = \"true\"\n",
            common::trusting(&s.session.launch_url)
        ),
    )?;

    let mut first = Proc::spawn(
        app(&s.session.launch_url, &display.display, &bus, &home),
        "passerelle-desktop-app",
    )?;
    wait_window(&display, "Passerelle — 1 tunnel", WINDOW_WAIT, &mut first).await?;
    // The page has rendered: the header's blue is on screen, with other colours (text, table).
    let shot = display
        .wait_screen(WAIT, "the rendered window", |shot| {
            share_of(shot, [0x33, 0x66, 0xcc], 4) > 0.01 && share_of(shot, [0, 0, 0], 0) < 0.95
        })
        .await;
    display.save_png(&shot_path("app-window.png")).await?;
    let shot = shot.with_context(|| first.output())?;
    ensure!(share_of(&shot, [0, 0, 0], 0) < 0.95, "the screen is blank");

    // A second start hands its URL to the running app and exits.
    let mut cmd = app(&second.launch_url, &display.display, &bus, &home);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let status = timeout(WINDOW_WAIT, cmd.status())
        .await
        .context("the second instance did not exit")??;
    ensure!(status.success(), "second instance: {status}");
    wait_window(&display, "Passerelle — 2 tunnels", WAIT, &mut first).await?;

    // Bytes through the first tunnel reach the echo service behind the agent.
    let addr = common::tunnel_addr(&first.output(), &s.session.id)?;
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"through the app").await?;
    let mut back = [0u8; 15];
    timeout(WAIT, conn.read_exact(&mut back)).await??;
    ensure!(&back == b"through the app");
    // Not a synchronisation: the list refreshes each second, this is for the picture.
    sleep(Duration::from_millis(1500)).await;
    display
        .save_png(&shot_path("app-window-two-tunnels.png"))
        .await?;

    // The broker ends that session: the open connection learns it, the tunnel leaves the list.
    s.api.stop(&s.session.id).await?;
    wait_window(&display, "Passerelle — 1 tunnel", WAIT, &mut first).await?;

    // The close button of the remaining row (no window manager: the window sits at the
    // origin), once the list shows that one row only: the list empties.
    let width = display.size.0;
    let shot = display
        .wait_screen(WAIT, "one close button", |shot| {
            red_buttons(shot, width).len() == 1
        })
        .await?;
    let (x, y) = red_buttons(&shot, width)[0];
    display
        .run(
            "xdotool",
            &["mousemove", "--sync", &x.to_string(), &y.to_string()],
        )
        .await?;
    display.run("xdotool", &["click", "1"]).await?;
    wait_window(&display, "Passerelle", WAIT, &mut first).await?;
    Ok(())
}

/// The centres of the close buttons (runs of rows holding their red, #c0392b).
fn red_buttons(rgb: &[u8], width: u32) -> Vec<(u32, u32)> {
    buttons_of(rgb, width, [0xc0, 0x39, 0x2b])
}

/// The centres of buttons of colour `rgb` (runs of rows holding a solid stretch of it, so that
/// anti-aliased text of a close colour is not taken for a button), from the top.
fn buttons_of(rgb: &[u8], width: u32, colour: [u8; 3]) -> Vec<(u32, u32)> {
    const SOLID: usize = 8;
    let red = |p: &[u8]| {
        p[0].abs_diff(colour[0]) < 8 && p[1].abs_diff(colour[1]) < 8 && p[2].abs_diff(colour[2]) < 8
    };
    let mut buttons = Vec::new();
    let mut run: Option<(u32, u32, u32)> = None; // first row, last row, x of the first red pixel
    for (y, row) in rgb.chunks_exact(width as usize * 3).enumerate() {
        let y = y as u32;
        let pixels: Vec<&[u8]> = row.chunks_exact(3).collect();
        let hit = pixels
            .windows(SOLID)
            .position(|w| w.iter().all(|p| red(p)))
            .map(|x| x as u32);
        run = match (run, hit) {
            (Some((top, _, x)), Some(_)) => Some((top, y, x)),
            (None, Some(x)) => Some((y, y, x)),
            (Some((top, bottom, x)), None) => {
                buttons.push((x + 12, (top + bottom) / 2));
                None
            }
            (None, None) => None,
        };
    }
    buttons
}

/// Clicks the first button of `colour` once the screen shows one.
async fn click(display: &Xvfb, colour: [u8; 3], what: &str) -> Result<()> {
    let width = display.size.0;
    let shot = display
        .wait_screen(WAIT, what, |shot| {
            !buttons_of(shot, width, colour).is_empty()
        })
        .await?;
    let (x, y) = buttons_of(&shot, width, colour)[0];
    display
        .run(
            "xdotool",
            &["mousemove", "--sync", &x.to_string(), &y.to_string()],
        )
        .await?;
    display.run("xdotool", &["click", "1"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_an_unknown_broker_asks_before_opening_anything() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let origin = passerelle_desktop::trust::origin_of(
        &passerelle_desktop::parse_launch_url(&s.session.launch_url)?.broker,
    )?;
    let display = Xvfb::start(1024, 768, &["-br"]).await?;
    let bus = Bus::start().await?;
    let home = tempfile::tempdir()?;
    // Plain HTTP allowed (a test broker), but no broker trusted.
    std::fs::write(
        home.path().join("desktop.toml"),
        "allow_http = true\n[clients]\nrdp = \"true\"\n",
    )?;
    let mut app_proc = Proc::spawn(
        app(&s.session.launch_url, &display.display, &bus, &home),
        "passerelle-desktop-app",
    )?;
    let question = format!("Passerelle — open a session on {origin}?");
    wait_window(&display, &question, WINDOW_WAIT, &mut app_proc).await?;
    ensure!(
        echo.stats().accepted == 0,
        "the service was reached before the answer"
    );
    // Open: the tunnel comes, and the broker is remembered.
    click(&display, [0x1e, 0x84, 0x49], "the Open button").await?;
    display
        .save_png(&shot_path("app-confirm-broker.png"))
        .await?;
    wait_window(&display, "Passerelle — 1 tunnel", WAIT, &mut app_proc).await?;
    let trusted = std::fs::read_to_string(
        home.path()
            .join("config")
            .join("passerelle")
            .join(passerelle_desktop::trust::TRUST_FILE),
    )?;
    ensure!(trusted.lines().any(|l| l == origin), "{trusted}");

    // Another broker: asked again; Refuse opens nothing.
    let other = TestBroker::start().await?;
    let echo2 = EchoServer::start().await?;
    let s2 = Setup::new(&other, "rdp", echo2.port()).await?;
    let origin2 = passerelle_desktop::trust::origin_of(
        &passerelle_desktop::parse_launch_url(&s2.session.launch_url)?.broker,
    )?;
    let mut cmd = app(&s2.session.launch_url, &display.display, &bus, &home);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let status = timeout(WINDOW_WAIT, cmd.status())
        .await
        .context("the second instance did not exit")??;
    ensure!(status.success(), "second instance: {status}");
    let question = format!("Passerelle — open a session on {origin2}?");
    wait_window(&display, &question, WAIT, &mut app_proc).await?;
    click(&display, [0x7a, 0x84, 0x94], "the Refuse button").await?;
    wait_window(&display, "Passerelle — 1 tunnel", WAIT, &mut app_proc).await?;
    ensure!(echo2.stats().accepted == 0, "a refused broker was used");
    let trusted = std::fs::read_to_string(
        home.path()
            .join("config")
            .join("passerelle")
            .join(passerelle_desktop::trust::TRUST_FILE),
    )?;
    ensure!(
        !trusted.contains(&origin2),
        "a refusal was remembered: {trusted}"
    );
    ensure!(
        app_proc
            .output()
            .contains("not a trusted broker (you declined it)"),
        "{}",
        app_proc.output()
    );
    Ok(())
}
