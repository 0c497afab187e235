//! RDP in the browser, end to end with real parts: FreeRDP's shadow server on an Xvfb display
//! (TLS, NLA, standard security only) and xrdp as workstations, stock OpenSSH as their agent
//! (`-R rdp:0:127.0.0.1:PORT`), the broker speaking RDCleanPath with IronRDP's web client in
//! headless Chromium.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle::recording::SigningKey;
use passerelle_e2e::desktop::{self, XDisplay};
use passerelle_e2e::rdp::{RdpPage, Security, ShadowServer, XrdpServer, open_rdp, xrdp_usable};
use passerelle_e2e::{
    Agent, AgentInfo, CreatedSession, Forward, Method, TestBroker, WAIT, close, init,
    session_request, unique,
};
use passerelle_proto::rdp::Credentials;
use passerelle_proto::recording::{Content, Frames, Kind, Verdict, verify};
use serde_json::json;
use tokio::time::{Instant, sleep};

const BLUE: (u8, u8, u8) = (0x33, 0x66, 0xcc);
const INJECTED_LOGIN: &str = "CORP\\helpdesk";
const INJECTED_PASSWORD: &str = "Inj3cted-Pa55word!";

fn require() -> Result<()> {
    ensure!(
        desktop::have(&[
            "Xvfb",
            "xsetroot",
            "xterm",
            "freerdp-shadow-cli",
            "winpr-hash",
            "openssl"
        ]) && desktop::have_browser(),
        "Xvfb, xterm, freerdp2-shadow-x11, winpr-utils, openssl or the browser driver missing: \
         run scripts/install-test-deps.sh"
    );
    Ok(())
}

/// Stores RDP credentials for an agent through the API, and checks they stay write-only.
async fn store_credentials(
    broker: &TestBroker,
    agent: &str,
    login: &str,
    password: &str,
) -> Result<()> {
    let path = format!("/api/v1/agents/{agent}");
    let body = json!({ "rdp_username": login, "rdp_password": password });
    let (status, body) = broker
        .api(Method::PATCH, &path, Some(broker.admin_key()), Some(&body))
        .await?;
    ensure!(
        status.is_success(),
        "storing RDP credentials: {status} {body}"
    );
    ensure!(
        body["has_rdp_password"] == true && body["rdp_username"] == login,
        "{body}"
    );
    ensure!(
        !body.to_string().contains(password),
        "the password is write-only: {body}"
    );
    Ok(())
}

/// A broker and an agent announcing `rdp` in front of `port`.
async fn setup(port: u16) -> Result<(TestBroker, Agent)> {
    let broker = TestBroker::start().await?;
    let mut agent = Agent::registered(&broker, &unique("win")).await?;
    agent.connect(&[Forward::named("rdp", port)])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    Ok((broker, agent))
}

async fn agent_info(broker: &TestBroker, id: &str) -> Result<AgentInfo> {
    broker.agent_as(broker.admin_key(), id).await
}

/// Waits until `file` holds `needle`.
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

/// An xterm at (200, 180) whose shell writes what is typed to `file` (the page driver clicks
/// there before typing).
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

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn fetch_recording(broker: &TestBroker, id: &str) -> Result<Vec<u8>> {
    let res = broker
        .http()
        .get(format!("{}/api/v1/recordings/{id}", broker.base_url()))
        .bearer_auth(broker.admin_key())
        .send()
        .await?;
    ensure!(res.status().is_success(), "GET recording: {}", res.status());
    Ok(res.bytes().await?.to_vec())
}

/// The details of a session's `kind` audit events, once there is one.
async fn events(broker: &TestBroker, session: &str, kind: &str) -> Result<Vec<String>> {
    broker
        .wait_event(kind, |e| e.session.as_deref() == Some(session))
        .await?;
    let page = broker
        .audit(&format!("session={session}&kind={kind}"))
        .await?;
    Ok(page.events.into_iter().map(|e| e.detail).collect())
}

fn ensure_connected(page: &RdpPage, what: &str) -> Result<()> {
    ensure!(
        page.connected() && page.page_error.is_none(),
        "{what}: {page:?}"
    );
    Ok(())
}

#[tokio::test]
async fn shadow_over_tls_with_injected_credentials_shows_types_and_records() -> Result<()> {
    init();
    require()?;
    let display = XDisplay::start(800, 600).await?;
    display.set_colour("#3366cc").await?;
    let dir = tempfile::tempdir()?;
    let typed = dir.path().join("typed.txt");
    let _xterm = typing_target(&display, &typed).await?;
    let server = ShadowServer::start(&display, Security::Tls).await?;
    let (broker, agent) = setup(server.port).await?;
    store_credentials(&broker, &agent.id, INJECTED_LOGIN, INJECTED_PASSWORD).await?;

    let mut req = session_request(&agent.id, "rdp");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    ensure!(
        created.viewer_url.contains("creds=stored") && !created.viewer_url.contains("Pa55"),
        "the page is told credentials are stored, never what they are: {}",
        created.viewer_url
    );
    let shot = dir.path().join("rdp.png");
    let page = open_rdp(&created.viewer_url, &shot, &["--type", "hello from rdp"]).await?;
    ensure_connected(&page, "viewer")?;
    ensure!(!page.login_shown, "stored credentials: no login form");
    ensure!(
        page.shows(BLUE),
        "the page shows {:?}, the workstation {BLUE:?}",
        page.dominant
    );
    ensure!(page.recorded_badge, "a recorded session says so");
    ensure!(
        page.target
            .as_deref()
            .is_some_and(|t| t.contains(&agent.id)),
        "the page names the agent: {:?}",
        page.target
    );
    wait_file_contains(&typed, "hello from rdp").await?;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.bytes_down > 10_000 && ended.bytes_up > 100,
        "{ended:?}"
    );

    // The audit says how it connected, and what was pinned; the agent shows the pin.
    let connected = events(&broker, &created.id, "rdp_connected").await?;
    ensure!(
        connected
            .iter()
            .any(|d| d.starts_with("TLS") && d.contains("injected")),
        "{connected:?}"
    );
    let sha = server.certificate_sha256().await?;
    let pinned = events(&broker, &created.id, "rdp_certificate_pinned").await?;
    ensure!(
        pinned.iter().any(|d| d.contains(&sha)),
        "{pinned:?} vs {sha}"
    );
    let info = agent_info(&broker, &agent.id).await?;
    ensure!(
        info.rdp_certificate_sha256.as_deref() == Some(sha.as_str()),
        "{info:?}"
    );

    // The recording verifies, holds the RDP stream, and no byte of the password.
    let file = fetch_recording(&broker, &created.id).await?;
    let public = SigningKey::load_or_create(broker.data_dir())?.public_hex();
    match verify(&file, |m, s| {
        passerelle::recording::check_signature(&public, m, s)
    }) {
        Verdict::Intact { header, frames, .. } => {
            ensure!(
                header.content == Content::Rdp && frames > 10,
                "{header:?} {frames}"
            );
        }
        other => anyhow::bail!("recording: {other:?}"),
    }
    // It starts with what a player needs: the security the server selected.
    let (_, frames) = Frames::new(&file)?;
    let first_event = frames
        .filter(|f| f.kind == Kind::Event)
        .find_map(|f| serde_json::from_slice::<serde_json::Value>(f.payload).ok())
        .context("no event in the recording")?;
    ensure!(
        first_event["rdp"]["security"] == "TLS",
        "first event: {first_event}"
    );
    let creds = Credentials::from_login(INJECTED_LOGIN, INJECTED_PASSWORD);
    ensure!(
        !holds(&file, &creds.password_utf16()),
        "UTF-16 password in the recording"
    );
    ensure!(
        !holds(&file, INJECTED_PASSWORD.as_bytes()),
        "password in the recording"
    );
    let user: Vec<u8> = "helpdesk"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    ensure!(
        holds(&file, &user),
        "the Client Info PDU is recorded, without its password"
    );
    let path = dir.path().join("session.psrec");
    std::fs::write(&path, &file)?;
    let args = [
        "recording",
        "verify",
        "--public-key",
        public.as_str(),
        path.to_str().context("path")?,
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = passerelle_e2e::process::run_cli(&args, &[]).await?;
    ensure!(
        out.success() && out.stdout.starts_with("intact") && out.stdout.contains("rdp"),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test]
async fn view_only_input_never_reaches_the_server() -> Result<()> {
    init();
    require()?;
    let display = XDisplay::start(800, 600).await?;
    display.set_colour("#3366cc").await?;
    let dir = tempfile::tempdir()?;
    let typed = dir.path().join("typed.txt");
    let _xterm = typing_target(&display, &typed).await?;
    let server = ShadowServer::start(&display, Security::Tls).await?;
    let (broker, agent) = setup(server.port).await?;
    store_credentials(&broker, &agent.id, "viewer", "View-Only-Pw-2").await?;

    let mut req = session_request(&agent.id, "rdp");
    req.view_only = true;
    let watching = broker.create_session(&req).await?;
    let shot = dir.path().join("view-only.png");
    let page = open_rdp(
        &watching.viewer_url,
        &shot,
        &["--type", "typed-while-view-only"],
    )
    .await?;
    ensure_connected(&page, "view-only viewer")?;
    ensure!(page.shows(BLUE), "{page:?}");

    // The same typing through a normal session arrives: the check below could fail.
    let driving = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    let page = open_rdp(
        &driving.viewer_url,
        &shot,
        &["--type", "typed-while-driving"],
    )
    .await?;
    ensure_connected(&page, "driving viewer")?;
    let text = wait_file_contains(&typed, "typed-while-driving").await?;
    ensure!(
        !text.contains("typed-while-view-only"),
        "view-only input arrived: {text:?}"
    );
    let watched = broker.wait_ended(&watching.id).await?;
    ensure!(
        watched.bytes_up > 0,
        "the view-only viewer did send input: {watched:?}"
    );
    Ok(())
}

#[tokio::test]
async fn nla_takes_typed_credentials_and_says_when_they_are_wrong() -> Result<()> {
    init();
    require()?;
    let display = XDisplay::start(800, 600).await?;
    display.set_colour("#3366cc").await?;
    let security = Security::Nla {
        user: "alice".into(),
        password: "Typed-S3cret".into(),
    };
    let server = ShadowServer::start(&display, security).await?;
    let (broker, agent) = setup(server.port).await?;
    let dir = tempfile::tempdir()?;
    let shot = dir.path().join("nla.png");

    let mut req = session_request(&agent.id, "rdp");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    ensure!(
        !created.viewer_url.contains("creds="),
        "nothing stored: the page asks"
    );
    let page = open_rdp(
        &created.viewer_url,
        &shot,
        &["--login", "alice:Typed-S3cret"],
    )
    .await?;
    ensure!(page.login_shown, "the page asks for credentials: {page:?}");
    ensure_connected(&page, "NLA with the right password")?;
    ensure!(page.shows(BLUE), "{page:?}; server log: {}", server.log());
    broker.wait_ended(&created.id).await?;
    let connected = events(&broker, &created.id, "rdp_connected").await?;
    ensure!(
        connected
            .iter()
            .any(|d| d.starts_with("NLA") && d.contains("typed by the operator")),
        "{connected:?}"
    );
    let file = fetch_recording(&broker, &created.id).await?;
    let typed = Credentials::from_login("alice", "Typed-S3cret");
    ensure!(
        !holds(&file, &typed.password_utf16()),
        "a typed password in the recording"
    );

    let wrong = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    let page = open_rdp(
        &wrong.viewer_url,
        &shot,
        &["--login", "alice:wrong-password"],
    )
    .await?;
    ensure!(page.state.as_deref() == Some("disconnected"), "{page:?}");
    let notice = page.notice.clone().unwrap_or_default();
    ensure!(
        page.close_code == Some(close::RDP_LOGON_FAILED.code)
            && notice.contains("user name or password"),
        "wrong credentials get a clear message: {page:?}"
    );
    let ended = broker.wait_ended(&wrong.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::RdpLogonFailed),
        "{ended:?}"
    );
    let audit = events(&broker, &wrong.id, "rdp_failed").await?;
    ensure!(
        audit.iter().any(|d| d.contains("refused the credentials")),
        "{audit:?}"
    );
    Ok(())
}

/// Opens `created` and checks the page ends with `code` and a notice containing `says`.
async fn expect_refusal(
    created: &CreatedSession,
    dir: &Path,
    code: close::CloseCode,
    says: &str,
) -> Result<RdpPage> {
    let page = open_rdp(
        &created.viewer_url,
        &dir.join("refused.png"),
        &["--login", "u:p"],
    )
    .await?;
    ensure!(
        page.state.as_deref() == Some("disconnected") && page.close_code == Some(code.code),
        "expected {code:?}: {page:?}"
    );
    let notice = page.notice.clone().unwrap_or_default();
    ensure!(
        notice.contains(says),
        "expected {says:?} in the notice: {page:?}"
    );
    Ok(page)
}

#[tokio::test]
async fn each_failure_says_why_in_the_page_and_the_audit() -> Result<()> {
    init();
    require()?;
    let display = XDisplay::start(640, 480).await?;
    display.set_colour("#3366cc").await?;
    let first = ShadowServer::start(&display, Security::Tls).await?;
    let (broker, mut agent) = setup(first.port).await?;
    store_credentials(&broker, &agent.id, "tester", "Failures-Pw-1").await?;
    let dir = tempfile::tempdir()?;

    // A bad token.
    let created = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    let forged = created.viewer_url.replace("#token=", "#token=x");
    let forged = CreatedSession {
        viewer_url: forged,
        ..created.clone()
    };
    expect_refusal(&forged, dir.path(), close::TOKEN_INVALID, "not valid").await?;
    broker
        .wait_event("token_refused", |e| {
            e.session.as_deref() == Some(created.id.as_str())
        })
        .await?;

    // The first session pins the certificate.
    let ok = open_rdp(&created.viewer_url, &dir.path().join("ok.png"), &[]).await?;
    ensure_connected(&ok, "first session")?;
    let pinned = agent_info(&broker, &agent.id).await?.rdp_certificate_sha256;
    ensure!(
        pinned == Some(first.certificate_sha256().await?),
        "{pinned:?}"
    );

    // Another server (another certificate) behind the same agent: refused, audited.
    let second = ShadowServer::start(&display, Security::Tls).await?;
    agent
        .reconnect(&broker, &[Forward::named("rdp", second.port)], &["rdp"])
        .await?;
    let changed = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    expect_refusal(
        &changed,
        dir.path(),
        close::RDP_CERTIFICATE_CHANGED,
        "certificate",
    )
    .await?;
    let audit = events(&broker, &changed.id, "rdp_certificate_changed").await?;
    let new_sha = second.certificate_sha256().await?;
    ensure!(audit.iter().any(|d| d.contains(&new_sha)), "{audit:?}");
    ensure!(
        broker.wait_ended(&changed.id).await?.end_reason
            == Some(passerelle_e2e::EndReason::RdpCertificateChanged)
    );
    // An admin resets the pin: the next session pins the new certificate.
    let path = format!("/api/v1/agents/{}/rdp-certificate", agent.id);
    let (status, body) = broker
        .api(Method::DELETE, &path, Some(broker.admin_key()), None)
        .await?;
    ensure!(status.as_u16() == 204, "reset: {status} {body}");
    broker
        .wait_event("rdp_certificate_reset", |e| {
            e.agent.as_deref() == Some(agent.id.as_str())
        })
        .await?;
    let again = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    ensure_connected(
        &open_rdp(&again.viewer_url, &dir.path().join("again.png"), &[]).await?,
        "after reset",
    )?;
    ensure!(agent_info(&broker, &agent.id).await?.rdp_certificate_sha256 == Some(new_sha));

    // A server that refuses TLS (standard RDP security only).
    let legacy = ShadowServer::start(&display, Security::RdpOnly).await?;
    agent
        .reconnect(&broker, &[Forward::named("rdp", legacy.port)], &["rdp"])
        .await?;
    let refused = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    let page = expect_refusal(
        &refused,
        dir.path(),
        close::RDP_NEGOTIATION_FAILED,
        "security",
    )
    .await?;
    ensure!(
        page.close_reason
            .as_deref()
            .is_some_and(|r| r.contains("TLS")),
        "{page:?}"
    );
    let audit = events(&broker, &refused.id, "rdp_failed").await?;
    ensure!(
        audit.iter().any(|d| d.contains("does not allow TLS")),
        "{audit:?}"
    );

    // An agent that no longer announces rdp.
    let gone = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    agent
        .reconnect(&broker, &[Forward::named("vnc", legacy.port)], &["vnc"])
        .await?;
    expect_refusal(
        &gone,
        dir.path(),
        close::SERVICE_UNAVAILABLE,
        "not available",
    )
    .await?;
    let ended = broker.wait_ended(&gone.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::ServiceUnavailable),
        "{ended:?}"
    );
    Ok(())
}

#[tokio::test]
async fn xrdp_logs_on_with_injected_credentials_and_follows_the_window_size() -> Result<()> {
    init();
    require()?;
    ensure!(
        xrdp_usable(),
        "xrdp, xorgxrdp or root missing: run scripts/install-test-deps.sh as root"
    );
    let dir = tempfile::tempdir()?;
    let typed = dir.path().join("typed.txt");
    let server = XrdpServer::start("#3366cc", &typed).await?;
    let (broker, agent) = setup(server.port).await?;
    store_credentials(
        &broker,
        &agent.id,
        passerelle_e2e::rdp::XRDP_USER,
        &server.password,
    )
    .await?;
    let mut req = session_request(&agent.id, "rdp");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let shot = dir.path().join("xrdp.png");
    let page = open_rdp(
        &created.viewer_url,
        &shot,
        &[
            "--type",
            "hello xrdp",
            "--wait-file",
            typed.to_str().context("path")?,
            "--resize",
            "1200x800",
            "--timeout",
            "45000",
        ],
    )
    .await?;
    ensure_connected(&page, "xrdp")?;
    ensure!(
        page.shows(BLUE),
        "no login prompt, the user's desktop: {page:?}; xrdp log: {}",
        server.log()
    );
    wait_file_contains(&typed, "hello xrdp")
        .await
        .with_context(|| format!("{page:?}"))?;
    broker.wait_ended(&created.id).await?;
    let file = fetch_recording(&broker, &created.id).await?;
    let password = Credentials::from_login("", &server.password).password_utf16();
    ensure!(
        !holds(&file, &password),
        "the injected password in the recording"
    );
    let before = page.desktop.context("size")?;
    let after = page
        .resized
        .with_context(|| format!("no resize seen: {page:?}; xrdp log: {}", server.log()))?;
    ensure!(
        after != before,
        "the remote desktop follows the window: {before:?} -> {after:?}"
    );
    Ok(())
}

/// Not a check: the time from `POST /api/v1/sessions` to the first RDP frame drawn in the page
/// (FreeRDP's shadow server over TLS, credentials injected), over a few sessions, for
/// BENCHMARKS.md. Run it alone:
/// `cargo nextest run -p passerelle-e2e --test rdp --run-ignored only measure`.
#[tokio::test]
#[ignore = "a measurement, not a check: run it for BENCHMARKS.md"]
async fn measure_api_call_to_first_rdp_frame() -> Result<()> {
    init();
    require()?;
    let display = XDisplay::start(1024, 768).await?;
    display.set_colour("#3366cc").await?;
    let server = ShadowServer::start(&display, Security::Tls).await?;
    let (broker, agent) = setup(server.port).await?;
    store_credentials(&broker, &agent.id, "bench", "Bench-Pw-3").await?;
    let dir = tempfile::tempdir()?;
    let (mut total, mut in_page) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        };
        let asked = now();
        let created = broker
            .create_session(&session_request(&agent.id, "rdp"))
            .await?;
        let page = open_rdp(&created.viewer_url, &dir.path().join("m.png"), &[]).await?;
        ensure_connected(&page, "measured session")?;
        let drawn = page.first_frame_at.context("no frame drawn")?;
        total.push(drawn - asked);
        in_page.push(drawn - page.navigated_at.context("no navigation time")?);
        broker.stop_session(&created.id, None).await?;
    }
    total.sort_unstable();
    in_page.sort_unstable();
    eprintln!(
        "API call to first RDP frame: median {} ms (min {}, max {}), of which from page load: median {} ms (min {}, max {}); ms per run: {total:?} / {in_page:?}",
        total[total.len() / 2],
        total[0],
        total[total.len() - 1],
        in_page[in_page.len() / 2],
        in_page[0],
        in_page[in_page.len() - 1]
    );
    Ok(())
}
