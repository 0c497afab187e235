//! Real native clients through the helper, under Xvfb: TigerVNC's vncviewer shows an x11vnc
//! desktop that sits behind an OpenSSH agent, and xfreerdp authenticates (NLA) to FreeRDP's
//! shadow server behind an agent. The helper runs as `passerelle-desktop open URL` and launches
//! the client itself, from a command template in its configuration file.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::x11::{Proc, Xvfb, free_port, share_of, wait_port};
use common::{Helper, Setup};
use passerelle_e2e::TestBroker;

/// The remote desktop's colour.
const BLUE: [u8; 3] = [0x33, 0x66, 0xcc];

/// Writes a helper configuration with one client template, trusting `url`'s broker.
fn config(dir: &tempfile::TempDir, url: &str, service: &str, template: &str) -> Result<PathBuf> {
    let path = dir.path().join("desktop.toml");
    let trust = common::trusting(url);
    std::fs::write(
        &path,
        format!("{trust}[clients]\n{service} = '{template}'\n"),
    )?;
    Ok(path)
}

/// Where screenshots go, for a person to look at after the run.
fn shot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vncviewer_shows_the_remote_desktop_through_the_helper() -> Result<()> {
    // The workstation: a blue X desktop served by x11vnc on loopback.
    let remote = Xvfb::start(640, 480, &[]).await?;
    remote.run("xsetroot", &["-solid", "#3366cc"]).await?;
    let port = free_port()?;
    let mut cmd = remote.command("x11vnc");
    cmd.args(["-display", &remote.display, "-rfbport", &port.to_string()])
        .args([
            "-localhost",
            "-nopw",
            "-forever",
            "-shared",
            "-noxdamage",
            "-nossl",
            // Killed at the end: SysV shared memory would outlive it (see tests/src/desktop.rs).
            "-noshm",
        ]);
    let mut x11vnc = Proc::spawn(cmd, "x11vnc")?;
    wait_port(port, &mut x11vnc).await?;

    let broker = TestBroker::start().await?;
    let s = Setup::new(&broker, "vnc", port).await?;

    // The technician's desktop, black, where the helper starts vncviewer.
    let viewer = Xvfb::start(1024, 768, &["-br"]).await?;
    let before = viewer.screenshot().await?;
    ensure!(
        share_of(&before, BLUE, 12) < 0.01,
        "the viewer's screen is blue already"
    );
    let dir = tempfile::tempdir()?;
    let cfg = config(
        &dir,
        &s.session.launch_url,
        "vnc",
        "vncviewer {host}::{port} -geometry 640x480+0+0",
    )?;
    let cfg = cfg.to_str().context("path")?;
    let mut helper = Helper::spawn(
        &["open", &s.session.launch_url, "--config", cfg],
        &[("DISPLAY", viewer.display.as_str())],
    )?;
    let shown = viewer
        .wait_screen(Duration::from_secs(30), "the blue remote desktop", |shot| {
            // 640x480 of 1024x768 is 39%; the remote cursor and window borders take a little.
            share_of(shot, BLUE, 12) > 0.3
        })
        .await
        .with_context(|| {
            format!(
                "helper stderr:\n{}\nx11vnc:\n{}",
                helper.stderr(),
                x11vnc.output()
            )
        });
    viewer
        .save_png(&shot_path("vncviewer-through-helper.png"))
        .await?;
    shown?;
    let stderr = helper.stderr();
    ensure!(stderr.contains("started vncviewer 127.0.0.1::"), "{stderr}");

    // The operator stops the session: the helper says so and exits.
    s.api.stop(&s.session.id).await?;
    let (status, stderr) = helper.exit().await?;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(stderr.contains("session stopped by alice"), "{stderr}");
    Ok(())
}

/// Starts FreeRDP's shadow server on `display`, requiring NLA with user `tech` / `secret`.
async fn shadow_server(display: &Xvfb, dir: &tempfile::TempDir) -> Result<(Proc, u16)> {
    let sam = dir.path().join("SAM");
    let hash = tokio::process::Command::new("winpr-hash")
        .args(["-u", "tech", "-p", "secret", "-f", "sam"])
        .output()
        .await
        .context("winpr-hash (package winpr-utils)")?;
    ensure!(hash.status.success(), "winpr-hash failed");
    std::fs::write(&sam, &hash.stdout)?;
    let port = free_port()?;
    let mut cmd = display.command("freerdp-shadow-cli");
    cmd.arg(format!("/port:{port}"))
        .args(["/bind-address:127.0.0.1", "+auth", "/sec:nla"])
        .arg(format!("/sam-file:{}", sam.display()));
    let mut server = Proc::spawn(cmd, "freerdp-shadow-cli")?;
    wait_port(port, &mut server).await?;
    Ok((server, port))
}

/// Runs the helper with an xfreerdp `+auth-only` template and returns its exit status, its
/// stderr and everything the client printed.
async fn rdp_auth_only(
    s: &Setup,
    viewer: &Xvfb,
    dir: &tempfile::TempDir,
    password: &str,
) -> Result<(Option<i32>, String)> {
    let template = format!(
        "xfreerdp /v:{{host}}:{{port}} /u:tech /p:{password} /cert:ignore +auth-only /log-level:INFO"
    );
    let cfg = config(dir, &s.session.launch_url, "rdp", &template)?;
    let cfg = cfg.to_str().context("path")?;
    let mut helper = Helper::spawn(
        &["open", &s.session.launch_url, "--config", cfg],
        &[("DISPLAY", viewer.display.as_str())],
    )?;
    // The client's own output goes to the helper's stdout, which the test holds.
    let mut client = String::new();
    while let Some(line) = helper.line().await? {
        client.push_str(&line);
        client.push('\n');
    }
    let (status, stderr) = helper.exit().await?;
    Ok((status.code(), format!("{stderr}\n--- client ---\n{client}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfreerdp_authenticates_through_the_helper() -> Result<()> {
    let remote = Xvfb::start(640, 480, &[]).await?;
    remote.run("xsetroot", &["-solid", "#3366cc"]).await?;
    let dir = tempfile::tempdir()?;
    let (mut server, port) = shadow_server(&remote, &dir).await?;
    let broker = TestBroker::start().await?;
    let s = Setup::new(&broker, "rdp", port).await?;
    let viewer = Xvfb::start(800, 600, &["-br"]).await?;

    let (code, out) = rdp_auth_only(&s, &viewer, &dir, "secret").await?;
    ensure!(code == Some(0), "exit {code:?}:\n{out}");
    ensure!(out.contains("Authentication only, exit status 0"), "{out}");
    // The helper ends when the client's (only) connection ends, or when it sees it exit.
    ensure!(
        out.contains("the client exited (exit status: 0)") || out.contains("tunnel closed"),
        "{out}"
    );

    // The launch token serves the next connection too, and a wrong password is refused by the
    // real server at the other end, not by the helper.
    let (code, out) = rdp_auth_only(&s, &viewer, &dir, "wrong").await?;
    ensure!(
        out.contains("Authentication only, exit status 1"),
        "exit {code:?}:\n{out}"
    );
    ensure!(!out.contains("exit status: 0)"), "{out}");
    server.check_running()?;
    Ok(())
}
