//! VNC in the browser, end to end with real parts: Xvfb and x11vnc (or TigerVNC's Xvnc) as the
//! workstation, stock OpenSSH as its agent, the broker terminating the RFB handshake with the
//! stored password, and headless Chromium or a vnc-rs client as the viewer.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::desktop::{self, VncOverWs, VncServer, XDisplay};
use passerelle_e2e::{
    Agent, Forward, Method, TestBroker, WAIT, Ws, close, init, session_request, unique,
};
use serde_json::json;
use tokio::time::{Instant, sleep};

const BLUE: (u8, u8, u8) = (0x33, 0x66, 0xcc);

fn require_desktop() -> Result<()> {
    ensure!(
        desktop::have(&["Xvfb", "x11vnc", "xsetroot", "xterm"]),
        "Xvfb, x11vnc, xsetroot or xterm missing: run scripts/install-test-deps.sh"
    );
    Ok(())
}

/// A broker with an agent announcing `vnc` in front of `server`, its password stored.
async fn setup(server_port: u16, password: Option<&str>) -> Result<(TestBroker, Agent)> {
    let broker = TestBroker::start().await?;
    let mut agent = Agent::registered(&broker, &unique("desk")).await?;
    if let Some(pw) = password {
        let path = format!("/api/v1/agents/{}", agent.id);
        let (status, body) = broker
            .api(
                Method::PATCH,
                &path,
                Some(broker.admin_key()),
                Some(&json!({ "vnc_password": pw })),
            )
            .await?;
        ensure!(
            status.is_success(),
            "setting the VNC password: {status} {body}"
        );
        ensure!(
            body["has_vnc_password"] == true && body.get("vnc_password").is_none(),
            "password must be write-only: {body}"
        );
    }
    agent.connect(&[Forward::named("vnc", server_port)])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    Ok((broker, agent))
}

async fn wait_file_contains(path: &Path, needle: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        ensure!(
            Instant::now() < deadline,
            "{needle:?} never reached the workstation; it has {text:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// An xterm at the screen's centre whose shell writes what is typed to `file`.
async fn typing_target(display: &XDisplay, file: &Path) -> Result<tokio::process::Child> {
    let child = tokio::process::Command::new("xterm")
        .args([
            "-display",
            &display.name(),
            "-geometry",
            "40x8+200+180",
            "-e",
            "sh",
            "-c",
        ])
        .arg(format!("cat > '{}'", file.display()))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting xterm")?;
    let deadline = Instant::now() + WAIT;
    while !file.exists() {
        ensure!(Instant::now() < deadline, "xterm did not start its shell");
        sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}

#[tokio::test]
async fn browser_shows_the_desktop_and_types_into_it() -> Result<()> {
    init();
    require_desktop()?;
    ensure!(
        desktop::have_browser(),
        "chromium or tests/browser/node_modules missing: run scripts/install-test-deps.sh"
    );
    let display = XDisplay::start(640, 480).await?;
    display.set_colour("#3366cc").await?;
    let server = VncServer::x11vnc(&display, Some("s3cret-pw"), &[]).await?;
    let (broker, agent) = setup(server.port, Some("s3cret-pw")).await?;
    let dir = tempfile::tempdir()?;
    let typed = dir.path().join("typed.txt");
    let _xterm = typing_target(&display, &typed).await?;

    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    ensure!(
        !created.viewer_url.contains("s3cret"),
        "the password must never reach the browser"
    );
    let launch = passerelle_proto::launch::LaunchUrl::parse(&created.launch_url)?;
    ensure!(
        !created.viewer_url.contains(&launch.token),
        "the reusable launch token stays out of viewer_url"
    );
    let shot = dir.path().join("viewer.png");
    let report = desktop::open_viewer(
        &created.viewer_url,
        &shot,
        &["--type", "hello from passerelle"],
    )
    .await?;
    ensure!(report.error.is_none(), "page error: {report:?}");
    ensure!(
        report.state.as_deref() == Some("connected"),
        "viewer did not connect: {report:?}"
    );
    ensure!(
        report.shows(BLUE),
        "the page shows {:?}, the workstation shows {BLUE:?}",
        report.dominant
    );
    ensure!(std::fs::metadata(&shot)?.len() > 1000, "no screenshot");
    // The page traded its one-time exchange token for a launch URL of this session.
    let link = report.desktop_link.as_deref().unwrap_or_default();
    let fetched = passerelle_proto::launch::LaunchUrl::parse(link)?;
    ensure!(
        fetched.session == created.id && fetched.token != launch.token,
        "the page's desktop link: {link:?}"
    );
    wait_file_contains(&typed, "hello from passerelle").await?;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.bytes_down > 1000 && ended.bytes_up > 0,
        "audit bytes: {ended:?}"
    );
    Ok(())
}

#[tokio::test]
async fn view_only_input_never_reaches_the_server() -> Result<()> {
    init();
    require_desktop()?;
    ensure!(
        desktop::have_browser(),
        "chromium or tests/browser/node_modules missing: run scripts/install-test-deps.sh"
    );
    let display = XDisplay::start(640, 480).await?;
    display.set_colour("#3366cc").await?;
    let server = VncServer::x11vnc(&display, None, &[]).await?;
    let (broker, agent) = setup(server.port, None).await?;
    let dir = tempfile::tempdir()?;
    let typed = dir.path().join("typed.txt");
    let _xterm = typing_target(&display, &typed).await?;

    let mut req = session_request(&agent.id, "vnc");
    req.view_only = true;
    let watching = broker.create_session(&req).await?;
    ensure!(
        watching.viewer_url.contains("view_only=1"),
        "the page is told it is view-only"
    );
    // The raw stream would bypass the filter: it is refused for view-only sessions.
    let mut raw = Ws::connect(&watching.raw_ws_url).await?;
    let closed = raw.expect_close().await?;
    ensure!(
        closed.code == close::RAW_REFUSED.code,
        "raw view-only: {closed:?}"
    );
    let fresh = broker.new_token(&watching.id).await?;
    let shot = dir.path().join("view-only.png");
    let report = desktop::open_viewer(
        &fresh.viewer_url,
        &shot,
        &["--type", "typed-while-view-only"],
    )
    .await?;
    ensure!(
        report.state.as_deref() == Some("connected"),
        "view-only viewer: {report:?}"
    );

    // The same typing through a normal session arrives: the check above could fail.
    let driving = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let report = desktop::open_viewer(
        &driving.viewer_url,
        &shot,
        &["--type", "typed-while-driving"],
    )
    .await?;
    ensure!(
        report.state.as_deref() == Some("connected"),
        "driving viewer: {report:?}"
    );
    let text = wait_file_contains(&typed, "typed-while-driving").await?;
    ensure!(
        !text.contains("view-only"),
        "view-only input reached the workstation: {text:?}"
    );
    Ok(())
}

#[tokio::test]
async fn vnc_rs_decodes_a_framebuffer_update_through_the_broker() -> Result<()> {
    init();
    require_desktop()?;
    let display = XDisplay::start(320, 240).await?;
    display.set_colour("#3366cc").await?;
    let server = VncServer::x11vnc(&display, Some("pw-123"), &[]).await?;
    let (broker, agent) = setup(server.port, Some("pw-123")).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let vnc = VncOverWs::connect(&created.ws_url).await?;
    let colour = vnc.first_rect_colour().await?;
    ensure!(
        desktop::close_to(colour, BLUE, 12),
        "decoded {colour:?}, expected {BLUE:?}"
    );
    Ok(())
}

#[tokio::test]
async fn rfb_3_3_servers_and_tigervnc_work_too() -> Result<()> {
    init();
    require_desktop()?;
    ensure!(
        desktop::have(&["Xvnc", "vncpasswd"]),
        "TigerVNC missing: run scripts/install-test-deps.sh"
    );
    // x11vnc speaking RFB 3.3, with a password.
    let display = XDisplay::start(320, 240).await?;
    display.set_colour("#3366cc").await?;
    let old = VncServer::x11vnc(&display, Some("old-pw"), &["-rfbversion", "3.3"]).await?;
    let (broker, agent) = setup(old.port, Some("old-pw")).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let colour = VncOverWs::connect(&created.ws_url)
        .await?
        .first_rect_colour()
        .await?;
    ensure!(
        desktop::close_to(colour, BLUE, 12),
        "RFB 3.3: decoded {colour:?}"
    );
    drop(broker);

    // TigerVNC's Xvnc, VNC Authentication only.
    let tiger = VncServer::xvnc(320, 240, "tiger-pw").await?;
    let (broker, agent) = setup(tiger.port, Some("tiger-pw")).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let colour = VncOverWs::connect(&created.ws_url)
        .await?
        .first_rect_colour()
        .await?;
    ensure!(
        desktop::close_to(colour, (0xcc, 0x33, 0x33), 12),
        "Xvnc: decoded {colour:?}"
    );
    Ok(())
}

#[tokio::test]
async fn handshake_failures_close_with_a_reason_and_are_audited() -> Result<()> {
    init();
    require_desktop()?;
    let display = XDisplay::start(320, 240).await?;
    let server = VncServer::x11vnc(&display, Some("right-pw"), &[]).await?;

    // A wrong stored password.
    let (broker, agent) = setup(server.port, Some("wrong-pw")).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.ws_url).await?;
    let closed = ws.expect_close().await?;
    ensure!(
        closed.code == close::VNC_AUTH_FAILED.code,
        "wrong password: {closed:?}"
    );
    ensure!(
        closed.reason.contains("authentication failed"),
        "reason: {closed:?}"
    );
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::VncAuthFailed),
        "{ended:?}"
    );
    let page = broker
        .audit(&format!("session={}&kind=vnc_failed", created.id))
        .await?;
    ensure!(
        page.events.len() == 1 && !page.events[0].detail.contains("wrong-pw"),
        "audit: {:?}",
        page.events
    );

    // No password at all, for a server that wants one.
    let mut agent2 = Agent::registered(&broker, &unique("nopw")).await?;
    agent2.connect(&[Forward::named("vnc", server.port)])?;
    agent2.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request(&agent2.id, "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.ws_url).await?;
    let closed = ws.expect_close().await?;
    ensure!(
        closed.code == close::VNC_AUTH_FAILED.code && closed.reason.contains("none is configured"),
        "{closed:?}"
    );

    // Something that is not a VNC server at all.
    let source = passerelle_e2e::SourceServer::start().await?;
    let mut agent3 = Agent::registered(&broker, &unique("notvnc")).await?;
    agent3.connect(&[Forward::named("vnc", source.port())])?;
    agent3.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request(&agent3.id, "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.ws_url).await?;
    let closed = ws.expect_close().await?;
    ensure!(
        closed.code == close::VNC_HANDSHAKE_FAILED.code,
        "not a VNC server: {closed:?}"
    );

    // The tenant-wide password is used when the agent has none.
    let (status, body) = broker
        .api(
            Method::PATCH,
            "/api/v1/tenant",
            Some(broker.admin_key()),
            Some(&json!({ "vnc_password": "right-pw" })),
        )
        .await?;
    ensure!(
        status.is_success() && body["has_vnc_password"] == true,
        "{status} {body}"
    );
    let created = broker
        .create_session(&session_request(&agent2.id, "vnc"))
        .await?;
    VncOverWs::connect(&created.ws_url)
        .await?
        .first_rect_colour()
        .await?;
    passerelle_e2e::assert_still_serving(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn the_page_says_who_stopped_the_session() -> Result<()> {
    init();
    require_desktop()?;
    ensure!(
        desktop::have_browser(),
        "chromium or tests/browser/node_modules missing: run scripts/install-test-deps.sh"
    );
    let display = XDisplay::start(320, 240).await?;
    display.set_colour("#3366cc").await?;
    let server = VncServer::x11vnc(&display, None, &[]).await?;
    let (broker, agent) = setup(server.port, None).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let dir = tempfile::tempdir()?;
    let shot = dir.path().join("stopped.png");
    let page = desktop::watch_session(&broker, &created.id, &created.viewer_url, &shot).await?;
    broker.stop_session(&created.id, Some("bob")).await?;
    let report = page.await??;
    ensure!(report.close_code == Some(close::STOPPED.code), "{report:?}");
    let text = report.title.unwrap_or_default();
    ensure!(
        text.contains("stopped") && text.contains("bob"),
        "the page should say who stopped it: {text:?}"
    );
    Ok(())
}
