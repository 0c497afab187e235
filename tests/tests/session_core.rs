//! The session core's promises, end to end: every connection of a recorded session is recorded
//! (reconnects and simultaneous connections included) and replays what it saw; the raw stream
//! of a recorded VNC session is refused; a tenant can make recording mandatory; API-driven
//! audit events name the API key; a stalled store does not stall live bridges; per-session
//! connection caps.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle::recording::{SigningKey, check_signature};
use passerelle_e2e::desktop::{self, VncOverWs, VncServer, XDisplay};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, StatusCode, TestBroker, Ws, close, init, pattern,
    session_request, unique,
};
use passerelle_proto::api::RecordingSegment;
use passerelle_proto::launch::LaunchUrl;
use passerelle_proto::recording::{Verdict, verify};
use serde_json::json;

const BLUE: (u8, u8, u8) = (0x33, 0x66, 0xcc);
const RED: (u8, u8, u8) = (0xcc, 0x33, 0x33);
const GREEN: (u8, u8, u8) = (0x33, 0xaa, 0x44);

#[tokio::test]
async fn every_connection_of_a_recorded_session_is_recorded_and_replays_what_it_saw() -> Result<()>
{
    init();
    ensure!(
        desktop::have(&["Xvfb", "x11vnc", "xsetroot"]) && desktop::have_browser(),
        "run scripts/install-test-deps.sh"
    );
    let broker = TestBroker::start().await?;
    let display = XDisplay::start(320, 240).await?;
    display.set_colour("#3366cc").await?;
    let server = VncServer::x11vnc(&display, None, &[]).await?;
    let mut agent = Agent::registered(&broker, &unique("segments")).await?;
    agent.connect(&[Forward::named("vnc", server.port)])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let mut req = session_request(&agent.id, "vnc");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let launch = LaunchUrl::parse(&created.launch_url)?;
    let launch_ws = created.ws_url.replace(&created.token, &launch.token);

    // A recorded VNC session's raw stream would escape the recording: refused, and it does
    // not end the session.
    let mut raw = Ws::connect(&created.raw_ws_url).await?;
    let refused = raw.expect_close().await?;
    ensure!(refused.code == close::RAW_REFUSED.code, "{refused:?}");

    // Connection 1 (the desktop helper's launch token) sees blue, then goes away.
    let first = VncOverWs::connect(&launch_ws).await?;
    ensure!(first.first_rect_colour().await? == BLUE);
    drop(first);
    // Connection 2 reconnects with the launch token and sees red.
    display.set_colour("#cc3333").await?;
    let second = VncOverWs::connect(&launch_ws).await?;
    ensure!(second.first_rect_colour().await? == RED);
    // Connection 3 joins at the same time with a fresh viewer token and sees green.
    display.set_colour("#33aa44").await?;
    let issued = broker.new_token(&created.id).await?;
    let third = VncOverWs::connect(&issued.ws_url).await?;
    ensure!(third.first_rect_colour().await? == GREEN);
    drop(third);
    drop(second);
    broker.stop_session(&created.id, Some("alice")).await?;
    broker.wait_ended(&created.id).await?;

    let (status, body) = broker
        .api(
            Method::GET,
            &format!("/api/v1/recordings/{}/segments", created.id),
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    let segments: Vec<RecordingSegment> = serde_json::from_value(body)?;
    let numbers: Vec<u32> = segments.iter().map(|s| s.segment).collect();
    ensure!(
        numbers == [1, 2, 3],
        "one recording per connection: {segments:?}"
    );

    let public = SigningKey::load_or_create(broker.data_dir())?.public_hex();
    let dir = tempfile::tempdir()?;
    for (n, colour) in [(1u32, BLUE), (2, RED), (3, GREEN)] {
        let res = broker
            .http()
            .get(format!(
                "{}/api/v1/recordings/{}?segment={n}",
                broker.base_url(),
                created.id
            ))
            .bearer_auth(broker.admin_key())
            .send()
            .await?;
        ensure!(res.status().is_success(), "segment {n}: {}", res.status());
        let file = res.bytes().await?;
        let path = dir.path().join(format!("{n}.psrec"));
        std::fs::write(&path, &file)?;
        match verify(&file, |m, s| check_signature(&public, m, s)) {
            Verdict::Intact { header, .. } => {
                ensure!(header.segment == n, "{header:?}");
            }
            other => anyhow::bail!("segment {n} is not intact: {other:?}"),
        }
        let args = [broker.data_dir().as_os_str(), path.as_os_str()];
        let out = passerelle_e2e::process::run_cli(
            &[
                std::ffi::OsStr::new("--data-dir"),
                args[0],
                std::ffi::OsStr::new("recording"),
                std::ffi::OsStr::new("verify"),
                args[1],
            ],
            &[],
        )
        .await?;
        ensure!(
            out.success() && out.stdout.starts_with("intact"),
            "passerelle recording verify on segment {n}: {out:?}"
        );
        let url = format!(
            "{}/replay/{}#key={}&connection={n}",
            broker.base_url(),
            created.id,
            broker.admin_key()
        );
        let played = desktop::open_replay(&url, &dir.path().join(format!("{n}.png")), &[]).await?;
        ensure!(
            played.error.is_none() && played.shows(colour),
            "connection {n} replays {:?}, it saw {colour:?}: {played:?}",
            played.dominant
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_tenant_can_make_recording_mandatory_and_the_audit_names_the_key() -> Result<()> {
    init();
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, &unique("must")).await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let (status, tenant) = broker
        .api(
            Method::PATCH,
            "/api/v1/tenant",
            Some(broker.admin_key()),
            Some(&json!({ "recording_required": true })),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && tenant["recording_required"] == true,
        "{status} {tenant}"
    );
    let helpdesk = broker.create_key("default", passerelle_e2e::Role::Helpdesk)?;
    let key_id = helpdesk.split('_').nth(1).context("key id")?.to_owned();
    let mut req = session_request(&agent.id, "rdp");
    req.record = Some(false);
    let (status, body) = broker
        .api(
            Method::POST,
            "/api/v1/sessions",
            Some(&helpdesk),
            Some(&serde_json::to_value(&req)?),
        )
        .await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"]["code"] == "recording_required",
        "{status} {body}"
    );
    let refused = broker
        .audit(&format!("kind=request_refused&agent={}", agent.id))
        .await?;
    ensure!(
        refused
            .events
            .iter()
            .any(|e| e.api_key.as_deref() == Some(key_id.as_str())
                && e.operator.as_deref() == Some("alice")),
        "the refusal names the key that spoke for alice: {:?}",
        refused.events
    );
    // Without `record`, the session is recorded anyway; its events name the key too.
    req.record = None;
    let created = broker.create_session_as(&helpdesk, &req).await?;
    let info = broker.session(&created.id).await?;
    ensure!(info.record, "{info:?}");
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(1000, 9)).await?;
    broker
        .api(
            Method::DELETE,
            &format!("/api/v1/sessions/{}", created.id),
            Some(&helpdesk),
            None,
        )
        .await?;
    broker.wait_ended(&created.id).await?;
    let events = broker
        .audit(&format!("session={}", created.id))
        .await?
        .events;
    for kind in ["session_created", "session_ended"] {
        ensure!(
            events
                .iter()
                .any(|e| e.kind == kind && e.api_key.as_deref() == Some(key_id.as_str())),
            "{kind} names the API key: {events:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_stalled_store_does_not_stall_live_bridges() -> Result<()> {
    init();
    // One data thread: the agent that connects during the stall shares it with the session.
    let broker = TestBroker::start_with(|c| c.data_threads = 1).await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, &unique("busy")).await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let mut late = Agent::registered(&broker, &unique("late")).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(64, 1)).await?;

    // The store's lock is held for 2 s (a long write on a slow disk) while another agent
    // authenticates (its key lookup and audit need the store) on the same data thread.
    let store = broker.broker().db().shared();
    let stall = std::thread::spawn(move || store.stall_for_tests(Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    late.connect(&[Forward::named("vnc", echo.port())])?;
    let mut worst = Duration::ZERO;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1800) {
        let t = tokio::time::Instant::now();
        ws.round_trip(&pattern(64, 2)).await?;
        worst = worst.max(t.elapsed());
    }
    stall
        .join()
        .map_err(|_| anyhow::anyhow!("the stall panicked"))?;
    ensure!(
        worst < Duration::from_millis(50),
        "a round trip took {worst:?} while the store was stalled"
    );
    // The late agent got through once the store was back.
    late.wait_online(&broker, &["vnc"]).await?;
    ws.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_session_takes_a_bounded_number_of_connections() -> Result<()> {
    init();
    let broker = TestBroker::start_with(|c| c.quotas.connections_per_session = 2).await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, &unique("cap")).await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    let launch = LaunchUrl::parse(&created.launch_url)?;
    let url = created.raw_ws_url.replace(&created.token, &launch.token);
    let mut a = Ws::connect(&url).await?;
    a.round_trip(&pattern(100, 1)).await?;
    let mut b = Ws::connect(&url).await?;
    b.round_trip(&pattern(100, 2)).await?;
    let mut c = Ws::connect(&url).await?;
    let refused = c.expect_close().await?;
    ensure!(
        refused.code == close::TOO_MANY_CONNECTIONS.code,
        "{refused:?}"
    );
    // The refusal ends nothing: both connections go on, and a place frees on close.
    a.round_trip(&pattern(100, 3)).await?;
    a.close().await?;
    let mut d = Ws::connect(&url).await?;
    d.round_trip(&pattern(100, 4)).await?;
    b.round_trip(&pattern(100, 5)).await?;
    let events = broker
        .audit(&format!("session={}&kind=request_refused", created.id))
        .await?
        .events;
    ensure!(events.len() == 1, "{events:?}");
    Ok(())
}
