//! Session recording, end to end: a real x11vnc session recorded through the broker, verified
//! (intact, then tampered), replayed in headless Chromium; a full disk under each tenant policy;
//! retention; and metadata-only recordings of raw sessions.

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use passerelle::recording::{SigningKey, check_signature};
use passerelle_e2e::desktop::{self, VncOverWs, VncServer, XDisplay};
use passerelle_e2e::faults::TinyDisk;
use passerelle_e2e::{
    Agent, EchoServer, EndReason, Forward, Method, TestBroker, Ws, init, pattern, session_request,
    unique,
};
use passerelle_proto::recording::{Content, Frames, Kind, Verdict, Writer, verify};
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
    ensure!(
        played.shows(BLUE),
        "replay shows {:?}, the session showed {BLUE:?}",
        played.dominant
    );
    let seeked =
        desktop::open_replay(&url, &dir.path().join("seek.png"), &["--seek", "0.5"]).await?;
    ensure!(
        seeked.shows(BLUE),
        "seeking to the middle shows {:?}",
        seeked.dominant
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

const RED: (u8, u8, u8) = (0xcc, 0x33, 0x33);
const GREEN: (u8, u8, u8) = (0x33, 0xaa, 0x44);

/// A session recorded through the broker while the workstation's screen goes blue, red, green
/// (about 3 s each), viewed in noVNC: returns the recording and the test's directory.
struct Phases {
    broker: TestBroker,
    file: Vec<u8>,
    id: String,
    dir: tempfile::TempDir,
    _display: XDisplay,
    _server: VncServer,
    _agent: Agent,
}

/// Recorded seconds well inside each phase (the recording starts when the viewer is bridged,
/// just before the session is seen active).
const IN_PHASES: [(f64, (u8, u8, u8)); 3] = [(1.5, BLUE), (4.5, RED), (7.5, GREEN)];

async fn record_phases() -> Result<Phases> {
    let broker = TestBroker::start().await?;
    let display = XDisplay::start(640, 480).await?;
    display.set_colour("#3366cc").await?;
    let (server, agent) = vnc_setup(&broker, &display).await?;
    let mut req = session_request(&agent.id, "vnc");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let dir = tempfile::tempdir()?;
    let shot = dir.path().join("live.png");
    let page = desktop::watch_session(&broker, &created.id, &created.viewer_url, &shot).await?;
    // The phases' lengths are what is recorded, not a synchronisation.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    display.set_colour("#cc3333").await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    display.set_colour("#33aa44").await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    broker.stop_session(&created.id, None).await?;
    let live = page.await??;
    ensure!(
        live.dominant.is_some() && live.error.is_none(),
        "noVNC showed the live session with the recorded encodings: {live:?}"
    );
    broker.wait_ended(&created.id).await?;
    let file = fetch_recording(&broker, &created.id).await?;
    Ok(Phases {
        broker,
        file,
        id: created.id,
        dir,
        _display: display,
        _server: server,
        _agent: agent,
    })
}

/// Runs `passerelle recording export` (or another subcommand) with `path` as PATH.
async fn passerelle(args: &[&str], path: Option<&str>) -> Result<(bool, String, String)> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let env: Vec<(&str, &str)> = path.map(|p| ("PATH", p)).into_iter().collect();
    let out = passerelle_e2e::process::run_cli(&args, &env).await?;
    Ok((out.success(), out.stdout, out.stderr))
}

/// The most frequent colour of a PNG (x11vnc draws the cursor into the screen).
fn png_dominant(path: &Path) -> Result<(u8, u8, u8)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("png size")?];
    let info = reader.next_frame(&mut buf)?;
    ensure!(info.color_type == png::ColorType::Rgba, "{info:?}");
    let mut counts = std::collections::HashMap::new();
    for px in buf[..info.buffer_size()].chunks_exact(4) {
        *counts.entry((px[0], px[1], px[2])).or_insert(0u32) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| c)
        .context("empty png")
}

#[tokio::test]
async fn a_recording_exports_to_png_and_video_as_it_was_at_each_time() -> Result<()> {
    init();
    ensure!(
        desktop::have(&["Xvfb", "x11vnc", "xsetroot", "ffmpeg", "ffprobe"])
            && desktop::have_browser(),
        "run scripts/install-test-deps.sh"
    );
    let rec = record_phases().await?;
    let dir = rec.dir.path();
    let file = dir.join("session.psrec");
    std::fs::write(&file, &rec.file)?;
    let data_dir = rec.broker.data_dir().display().to_string();
    let file_arg = file.display().to_string();
    let export = |extra: &[&str]| {
        let mut args = vec!["--data-dir", &data_dir, "recording", "export", &file_arg];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, path: Option<&'static str>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        passerelle(&args, path).await
    };

    // PNG frames inside each phase show that phase's colour.
    let pngs = dir.join("png");
    let png_arg = pngs.display().to_string();
    let started = std::time::Instant::now();
    let (ok, out, err) = run(export(&["--png", &png_arg, "--at", "1.5,4.5,7.5"]), None).await?;
    let png_time = started.elapsed();
    ensure!(ok, "export --png failed: {err}");
    let written: Vec<&str> = out.lines().collect();
    ensure!(written.len() == 3, "{out}");
    for ((t, want), path) in IN_PHASES.iter().zip(&written) {
        let got = png_dominant(Path::new(path))?;
        ensure!(
            desktop::close_to(got, *want, 12),
            "at {t} s the export shows {got:?}, the screen was {want:?} ({path})"
        );
    }

    // A video of the whole recording, as long as the recording.
    let Verdict::Intact { summary, .. } = verdict(&rec.broker, &rec.file)? else {
        anyhow::bail!("not intact");
    };
    let duration = summary.duration_us as f64 / 1e6;
    let video = dir.join("session.mp4");
    let video_arg = video.display().to_string();
    let started = std::time::Instant::now();
    let (ok, _, err) = run(export(&["--video", &video_arg, "--fps", "10"]), None).await?;
    let video_time = started.elapsed();
    ensure!(ok, "export --video failed: {err}");
    let probe = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(["-show_entries", "stream=nb_read_frames,width,height"])
        .args(["-show_entries", "format=duration", "-of", "json"])
        .arg(&video)
        .output()
        .await?;
    let probe: serde_json::Value = serde_json::from_slice(&probe.stdout)?;
    let stream = &probe["streams"][0];
    let frames: u64 = stream["nb_read_frames"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("frames")?;
    let expected = (duration * 10.0).ceil() as u64;
    ensure!(
        frames == expected && stream["width"] == 640 && stream["height"] == 480,
        "{probe} for {duration} s at 10 fps"
    );
    let seconds: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("duration")?;
    ensure!(
        (seconds - duration).abs() < 0.2,
        "{seconds} s vs {duration} s"
    );

    // A truncated copy (cut in the red phase) exports its signed part, up to its last
    // checkpoint, and says so; the frames after it only on request, marked UNSIGNED.
    let (_, frames_iter) = Frames::new(&rec.file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let frames_before: Vec<_> = frames_iter.collect();
    // Cut inside the first checkpoint of the green phase: the green screen's frames are whole
    // but no signature covers them; the last signature is from the red phase.
    let cut_frame = frames_before
        .iter()
        .position(|f| f.kind == Kind::Checkpoint && f.time_us > 6_000_000)
        .context("no checkpoint in the green phase")?;
    let (cut_at, last) = (
        frames_before[cut_frame].offset + 10,
        frames_before[cut_frame - 1].time_us,
    );
    ensure!(last > 6_000_000, "nothing recorded in the green phase");
    let cut = dir.join("cut.psrec");
    std::fs::write(&cut, &rec.file[..cut_at])?;
    let Verdict::Truncated { signed_end_us, .. } = verdict(&rec.broker, &rec.file[..cut_at])?
    else {
        anyhow::bail!("a cut recording is truncated");
    };
    ensure!(
        (3_000_000..6_000_000).contains(&signed_end_us),
        "signed up to {signed_end_us} µs (the red phase), last frame at {last} µs"
    );
    let cut_arg = cut.display().to_string();
    let signed_arg = format!("{:.6}", signed_end_us as f64 / 1e6);
    let mut args = export(&["--png", &png_arg, "--at", &signed_arg]);
    args[4] = cut_arg.clone();
    let (ok, out, err) = run(args.clone(), None).await?;
    ensure!(
        ok && err.contains("truncated") && err.contains("signed part"),
        "{err}"
    );
    let got = png_dominant(Path::new(out.trim()))?;
    ensure!(desktop::close_to(got, RED, 12), "truncated export: {got:?}");
    let last_arg = format!("{:.6}", last as f64 / 1e6);
    args[8] = last_arg.clone();
    let (ok, _, err) = run(args.clone(), None).await?;
    ensure!(
        !ok && err.contains("past the end"),
        "past the signed part: {err}"
    );
    args.push("--include-unsigned".into());
    let (ok, out, err) = run(args, None).await?;
    ensure!(ok && out.trim().ends_with("-UNSIGNED.png"), "{out} {err}");
    // The unsigned frames exported are the recorded ones: the same screen as the whole file's.
    let (ok, whole, err) = run(export(&["--png", &png_arg, "--at", &last_arg]), None).await?;
    ensure!(ok, "{err}");
    let (unsigned, recorded) = (
        png_dominant(Path::new(out.trim()))?,
        png_dominant(Path::new(whole.trim()))?,
    );
    ensure!(
        unsigned == recorded,
        "--include-unsigned shows {unsigned:?}, the recording {recorded:?}"
    );

    // The attack: whoever can write the file cuts it after a checkpoint of the blue phase and
    // appends the rest with a recomputed hash chain. Every frame checks; verify says which
    // are signed, export and replay show only those.
    let cp = frames_before
        .iter()
        .rposition(|f| f.kind == Kind::Checkpoint && f.time_us < 2_500_000)
        .context("no checkpoint in the blue phase")?;
    let cut_len = frames_before[cp + 1].offset;
    let (mut forger, _) = Writer::after(&rec.file[..cut_len]).context("resume the chain")?;
    let mut forged = rec.file[..cut_len].to_vec();
    for f in &frames_before[cp + 1..] {
        if matches!(f.kind, Kind::Down | Kind::Up | Kind::Event) {
            forger.frame(f.kind, f.time_us, f.payload, &mut forged);
        }
    }
    let forged_file = dir.join("forged.psrec");
    std::fs::write(&forged_file, &forged)?;
    let forged_arg = forged_file.display().to_string();
    let out = passerelle_e2e::process::run_cli(
        &[
            std::ffi::OsStr::new("--data-dir"),
            std::ffi::OsStr::new(&data_dir),
            std::ffi::OsStr::new("recording"),
            std::ffi::OsStr::new("verify"),
            std::ffi::OsStr::new(&forged_arg),
        ],
        &[],
    )
    .await?;
    ensure!(
        out.code == Some(3) && out.stdout.contains("NOT SIGNED"),
        "verify of a forged tail: {out:?}"
    );
    let mut args = export(&["--png", &png_arg, "--at", "4.5"]);
    args[4] = forged_arg.clone();
    let (ok, _, err) = run(args.clone(), None).await?;
    ensure!(
        !ok && err.contains("past the end"),
        "forged frames exported: {err}"
    );
    let Verdict::Truncated { signed_end_us, .. } = verdict(&rec.broker, &forged)? else {
        anyhow::bail!("a forged tail reads as truncated");
    };
    args[8] = format!("{:.6}", signed_end_us as f64 / 1e6);
    let (ok, out, err) = run(args, None).await?;
    ensure!(ok, "{err}");
    ensure!(desktop::close_to(
        png_dominant(Path::new(out.trim()))?,
        BLUE,
        12
    ));

    // A tampered copy is refused, with the reason.
    let mut bad = rec.file.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    let bad_file = dir.join("bad.psrec");
    std::fs::write(&bad_file, &bad)?;
    let mut args = export(&["--png", &png_arg, "--at", "1"]);
    args[4] = bad_file.display().to_string();
    let (ok, _, err) = run(args, None).await?;
    ensure!(
        !ok && err.contains("TAMPERED") && err.contains("--force"),
        "{err}"
    );

    // Without ffmpeg on PATH, a clear message.
    let (ok, _, err) = run(export(&["--video", &video_arg]), Some("/nonexistent")).await?;
    ensure!(
        !ok && err.contains("ffmpeg not found on PATH") && err.contains("--png"),
        "{err}"
    );

    // The replay page seeking to the middle shows red, drawn from a keyframe after the start:
    // it fetched part of the screen stream, not all of it.
    let url = format!(
        "{}/replay/{}#key={}",
        rec.broker.base_url(),
        rec.id,
        rec.broker.admin_key()
    );
    let seeked = desktop::open_replay(&url, &dir.join("seek.png"), &["--seek", "0.5"]).await?;
    ensure!(
        seeked.error.is_none() && seeked.shows(RED),
        "seeking to the middle: {seeked:?}"
    );
    let (key, number) = (
        seeked.keyframe.unwrap_or_default(),
        seeked.keyframe_number.unwrap_or_default(),
    );
    let (fetched, total) = (
        seeked.fetched_bytes.unwrap_or_default(),
        seeked.total_bytes.unwrap_or_default(),
    );
    ensure!(
        number > 0 && key > 2.0 && key <= duration / 2.0 && fetched < total,
        "the seek started from keyframe {number} at {key} s and fetched {fetched} of {total} bytes"
    );
    // Played to the end at 16x, one keyframe interval per fetch: green is only in the last
    // interval, so showing it proves the page fetched on as it played.
    let played =
        desktop::open_replay(&format!("{url}&segment=1"), &dir.join("played.png"), &[]).await?;
    ensure!(
        played.error.is_none()
            && played.state.as_deref() == Some("ended")
            && played.shows(GREEN)
            && played.fetched_bytes.unwrap_or_default() > 0,
        "playing to the end: {played:?}"
    );
    eprintln!(
        "figures: recording {} bytes, {duration:.1} s; export --png (3 times) {png_time:.2?}, --video 10 fps {video_time:.2?}; screen stream {total} bytes, the seek fetched {fetched} from keyframe {number} at {key:.2} s",
        rec.file.len()
    );

    // The forged file in the broker's place of the recording: the replay shows the signed
    // part only (blue, about 2 s), never the appended red and green.
    let tenant = rec
        .broker
        .store()
        .tenant_id(&passerelle_proto::ids::TenantName::new("default")?)?
        .context("tenant")?;
    let stored = passerelle::recording::path_for(
        &rec.broker.data_dir().join("recordings"),
        tenant,
        &rec.id,
        1,
    );
    std::fs::write(&stored, &forged)?;
    let replayed = desktop::open_replay(&url, &dir.join("forged.png"), &[]).await?;
    ensure!(
        replayed.error.is_none()
            && replayed.shows(BLUE)
            && replayed.duration.is_some_and(|d| d < 3.0),
        "the replay of a forged tail: {replayed:?}"
    );
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
        text.iter()
            .any(|t| t.contains("only metadata and byte counts are recorded")),
        "it says what it is: {text:?}"
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rdp.psrec");
    std::fs::write(&path, &file)?;
    let (data_dir, path) = (
        broker.data_dir().display().to_string(),
        path.display().to_string(),
    );
    let png_dir = dir.path().join("png").display().to_string();
    let (ok, _, err) = passerelle(
        &[
            "--data-dir",
            &data_dir,
            "recording",
            "export",
            &path,
            "--png",
            &png_dir,
            "--at",
            "0",
        ],
        None,
    )
    .await?;
    ensure!(
        !ok && err.contains("holds metadata only; nothing to export"),
        "{err}"
    );
    Ok(())
}
