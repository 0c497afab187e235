//! Session recording, end to end: a real x11vnc session recorded through the broker, verified
//! (intact, then tampered), replayed in headless Chromium; a full disk under each tenant policy;
//! retention; and metadata-only recordings of raw sessions.

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use passerelle::recorder::{SigningKey, check_signature};
use passerelle_e2e::desktop::{self, VncOverWs, VncServer, XDisplay};
use passerelle_e2e::faults::TinyDisk;
use passerelle_e2e::{
    Agent, EchoServer, EndReason, Forward, Method, TestBroker, Ws, init, pattern, session_request,
    unique,
};
use passerelle_proto::recording::{Content, Frames, Kind, Verdict, verify};
use serde_json::json;

const BLUE: (u8, u8, u8) = (0x33, 0x66, 0xcc);

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

fn verdict(broker: &TestBroker, file: &[u8]) -> Result<Verdict> {
    let public = SigningKey::load_or_create(broker.data_dir())?.public_hex();
    Ok(verify(file, |m, s| check_signature(&public, m, s)))
}

async fn vnc_setup(broker: &TestBroker, display: &XDisplay) -> Result<(VncServer, Agent)> {
    let server = VncServer::x11vnc(display, None, &[]).await?;
    let mut agent = Agent::registered(broker, &unique("rec")).await?;
    agent.connect(&[Forward::named("vnc", server.port)])?;
    agent.wait_online(broker, &["vnc"]).await?;
    Ok((server, agent))
}

#[tokio::test]
async fn a_recorded_session_verifies_and_replays_the_same_pixels() -> Result<()> {
    init();
    ensure!(
        desktop::have(&["Xvfb", "x11vnc", "xsetroot"]) && desktop::have_browser(),
        "run scripts/install-test-deps.sh"
    );
    let broker = TestBroker::start().await?;
    let display = XDisplay::start(640, 480).await?;
    display.set_colour("#3366cc").await?;
    let (_server, agent) = vnc_setup(&broker, &display).await?;
    let mut req = session_request(&agent.id, "vnc");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let dir = tempfile::tempdir()?;
    let live = desktop::open_viewer(
        &created.viewer_url,
        &dir.path().join("live.png"),
        &["--type", "ls"],
    )
    .await?;
    ensure!(live.state.as_deref() == Some("connected"), "{live:?}");
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(ended.record, "{ended:?}");

    let file = fetch_recording(&broker, &created.id).await?;
    match verdict(&broker, &file)? {
        Verdict::Intact {
            header,
            summary,
            frames,
        } => {
            ensure!(
                header.content == Content::Rfb && header.operator == "alice",
                "{header:?}"
            );
            ensure!(
                summary.end_reason == "viewer_closed" && summary.bytes_down == ended.bytes_down,
                "{summary:?} vs {ended:?}"
            );
            ensure!(frames > 3, "only {frames} frames");
        }
        other => anyhow::bail!("expected an intact recording, got {other:?}"),
    }
    let (_, frames) = Frames::new(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let inputs = frames
        .filter(|f| f.kind == Kind::Event && f.payload.starts_with(b"{\"input\""))
        .count();
    ensure!(inputs >= 1, "the operator's typing is not on the timeline");
    // One flipped byte anywhere after the header is tampering.
    for at in [file.len() / 3, file.len() / 2, file.len() - 3] {
        let mut bad = file.clone();
        bad[at] ^= 0x20;
        ensure!(
            matches!(verdict(&broker, &bad)?, Verdict::Tampered(_)),
            "flip at {at} went unnoticed"
        );
    }

    let url = format!(
        "{}/replay/{}#key={}",
        broker.base_url(),
        created.id,
        broker.admin_key()
    );
    let played = desktop::open_replay(&url, &dir.path().join("replay.png"), &[]).await?;
    ensure!(
        played.error.is_none() && played.state.as_deref() == Some("ended"),
        "{played:?}"
    );
    let dom = played
        .dominant
        .as_deref()
        .with_context(|| format!("no replayed pixels: {played:?}"))?;
    ensure!(
        desktop::close_to((dom[0], dom[1], dom[2]), BLUE, 12),
        "replay shows {dom:?}, the session showed {BLUE:?}"
    );
    let seeked =
        desktop::open_replay(&url, &dir.path().join("seek.png"), &["--seek", "0.5"]).await?;
    let dom = seeked
        .dominant
        .as_deref()
        .context("no pixels after seeking")?;
    ensure!(
        desktop::close_to((dom[0], dom[1], dom[2]), BLUE, 12),
        "seeking to the middle shows {dom:?}"
    );
    let page = broker
        .audit(&format!("session={}&kind=recording_viewed", created.id))
        .await?;
    ensure!(
        page.events.len() >= 3,
        "each fetch and replay is audited: {:?}",
        page.events
    );

    // Another tenant's auditor cannot fetch it.
    let other = broker.create_tenant_with_key(&unique("other"), passerelle_e2e::Role::Auditor)?;
    let (status, _) = broker
        .api(
            Method::GET,
            &format!("/api/v1/recordings/{}", created.id),
            Some(&other),
            None,
        )
        .await?;
    ensure!(status == passerelle_e2e::StatusCode::NOT_FOUND, "{status}");
    Ok(())
}

#[tokio::test]
async fn a_full_disk_ends_the_session_or_not_by_tenant_policy() -> Result<()> {
    init();
    ensure!(
        desktop::have(&["Xvfb", "x11vnc", "xsetroot"]),
        "run scripts/install-test-deps.sh"
    );
    let disk = TinyDisk::mount("96k")?;
    let recordings = disk.path().to_path_buf();
    let broker = TestBroker::start_with(|c| c.recordings_dir = recordings).await?;
    let display = XDisplay::start(320, 240).await?;
    display.set_colour("#3366cc").await?;
    let (_server, agent) = vnc_setup(&broker, &display).await?;

    // fail_closed, the default: a raw 320x240 frame (300 KiB) cannot be written.
    let mut req = session_request(&agent.id, "vnc");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let vnc = VncOverWs::connect(&created.ws_url).await?;
    let _ = vnc.first_rect_colour().await;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::RecordingFailed),
        "{ended:?}"
    );
    let events = broker
        .audit(&format!("session={}&kind=recording_failed", created.id))
        .await?
        .events;
    ensure!(
        events.len() == 1 && events[0].detail.contains("fail_closed"),
        "{events:?}"
    );
    drop(vnc);
    for entry in walk(disk.path()) {
        std::fs::remove_file(entry)?;
    }

    // fail_open: the session goes on, unrecorded.
    let (status, body) = broker
        .api(
            Method::PATCH,
            "/api/v1/tenant",
            Some(broker.admin_key()),
            Some(&json!({ "recording_policy": "fail_open" })),
        )
        .await?;
    ensure!(status.is_success(), "{status} {body}");
    let created = broker.create_session(&req).await?;
    let vnc = VncOverWs::connect(&created.ws_url).await?;
    let colour = vnc.first_rect_colour().await?;
    ensure!(desktop::close_to(colour, BLUE, 12), "{colour:?}");
    broker
        .wait_event("recording_failed", |e| {
            e.session.as_deref() == Some(&created.id)
        })
        .await?;
    let events = broker
        .audit(&format!("session={}&kind=recording_failed", created.id))
        .await?
        .events;
    ensure!(
        events[0].detail.contains("continues unrecorded"),
        "{events:?}"
    );
    let _ = vnc.client.input(vnc::X11Event::FullRefresh).await;
    let again = vnc.first_rect_colour().await?;
    ensure!(
        desktop::close_to(again, BLUE, 12),
        "the session stopped after the failure: {again:?}"
    );
    let info = broker.session(&created.id).await?;
    ensure!(
        info.end_reason.is_none(),
        "fail_open must not end the session: {info:?}"
    );
    Ok(())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn retention_deletes_old_recordings_and_audits_it() -> Result<()> {
    init();
    let broker = TestBroker::start().await?;
    let tenant_dir = broker.data_dir().join("recordings").join("1");
    std::fs::create_dir_all(&tenant_dir)?;
    let old = tenant_dir.join("old-session.psrec");
    let fresh = tenant_dir.join("fresh-session.psrec");
    std::fs::write(&old, b"x")?;
    std::fs::write(&fresh, b"x")?;
    let status = std::process::Command::new("touch")
        .args(["-d", "100 days ago"])
        .arg(&old)
        .status()?;
    ensure!(status.success(), "touch -d failed");
    // Retention runs at start (and hourly): the default is 90 days.
    let broker = broker.restart(|_| {}).await?;
    broker
        .wait_event("recording_deleted", |e| {
            e.session.as_deref() == Some("old-session")
        })
        .await?;
    ensure!(
        !old.exists() && fresh.exists(),
        "only the old recording goes"
    );
    Ok(())
}

#[tokio::test]
async fn raw_sessions_record_metadata_and_byte_counts_only() -> Result<()> {
    init();
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, &unique("rdp")).await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let mut req = session_request(&agent.id, "rdp");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(100_000, 3)).await?;
    ws.close().await?;
    broker.wait_ended(&created.id).await?;
    let file = fetch_recording(&broker, &created.id).await?;
    let Verdict::Intact {
        header, summary, ..
    } = verdict(&broker, &file)?
    else {
        anyhow::bail!("not intact")
    };
    ensure!(header.content == Content::Metadata, "{header:?}");
    ensure!(
        summary.bytes_up == 100_000 && summary.bytes_down == 100_000,
        "{summary:?}"
    );
    let (_, frames) = Frames::new(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let frames: Vec<_> = frames.collect();
    ensure!(
        frames
            .iter()
            .all(|f| f.kind != Kind::Down && f.kind != Kind::Up),
        "raw bytes were recorded"
    );
    let text: Vec<String> = frames
        .iter()
        .map(|f| String::from_utf8_lossy(f.payload).into_owned())
        .collect();
    ensure!(
        text.iter().any(|t| t.contains("encrypted end to end")),
        "it says what it is: {text:?}"
    );
    Ok(())
}
