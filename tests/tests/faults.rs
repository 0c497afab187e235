//! Faults, for real: the broker binary killed with SIGKILL mid-session and restarted, an agent's
//! network dropping silently (a network namespace whose link is cut), and a full data disk.
//! Each checks that what was committed survives, that the state is clear, and that the broker
//! keeps serving. (An agent process killed mid-session is in lifecycle.rs.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle::recording::{SigningKey, check_signature};
use passerelle::store::Store;
use passerelle_e2e::desktop::{self, VncOverWs, VncServer, XDisplay};
use passerelle_e2e::faults::{NetNs, TinyDisk};
use passerelle_e2e::process::run_cli;
use passerelle_e2e::{
    Agent, EchoServer, EndReason, Forward, Method, StatusCode, TestBroker, WAIT, Ws, close, init,
    pattern, session_request, unique,
};
use passerelle_proto::recording::{Verdict, verify};
use tokio::time::{Instant, sleep, timeout};

const BLUE: (u8, u8, u8) = (0x33, 0x66, 0xcc);

/// `passerelle recording verify FILE`: exit code and stdout.
async fn cli_verify(data_dir: &std::path::Path, file: &std::path::Path) -> Result<(i32, String)> {
    let args = ["recording", "verify"].map(std::ffi::OsStr::new);
    let paths = [
        file.as_os_str(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ];
    let all: Vec<&std::ffi::OsStr> = args.into_iter().chain(paths).collect();
    let out = run_cli(&all, &[]).await?;
    Ok((out.code.unwrap_or(-1), out.stdout))
}

#[tokio::test]
async fn a_broker_killed_mid_session_restarts_with_its_store_and_recordings_intact() -> Result<()> {
    init();
    ensure!(
        desktop::have(&["Xvfb", "x11vnc", "xsetroot"]) && desktop::have_browser(),
        "run scripts/install-test-deps.sh"
    );
    let mut broker = TestBroker::spawn_binary().await?;
    let display = XDisplay::start(640, 480).await?;
    display.set_colour("#3366cc").await?;
    let server = VncServer::x11vnc(&display, None, &[]).await?;
    let echo = EchoServer::start().await?;
    let vnc_id = unique("crash-vnc");
    let rdp_id = unique("crash-rdp");
    let vnc_fwd = [Forward::named("vnc", server.port)];
    let rdp_fwd = [Forward::named("rdp", echo.port())];
    let mut vnc_agent = Agent::registered(&broker, &vnc_id).await?;
    vnc_agent.connect(&vnc_fwd)?;
    vnc_agent.wait_online(&broker, &["vnc"]).await?;
    let mut rdp_agent = Agent::registered(&broker, &rdp_id).await?;
    rdp_agent.connect(&rdp_fwd)?;
    rdp_agent.wait_online(&broker, &["rdp"]).await?;

    // Committed before the crash: a finished session with its byte counts.
    let done = broker
        .create_session(&session_request(&rdp_id, "rdp"))
        .await?;
    let mut ws = Ws::connect(&done.raw_ws_url).await?;
    ws.round_trip(&pattern(50_000, 1)).await?;
    ws.close().await?;
    let done_before = broker.wait_ended(&done.id).await?;

    // In flight at the crash: a raw session and a recorded VNC session.
    let raw = broker
        .create_session(&session_request(&rdp_id, "rdp"))
        .await?;
    let mut raw_ws = Ws::connect(&raw.raw_ws_url).await?;
    raw_ws.round_trip(&pattern(10_000, 2)).await?;
    let mut req = session_request(&vnc_id, "vnc");
    req.record = Some(true);
    let rec = broker.create_session(&req).await?;
    let vnc = VncOverWs::connect(&rec.ws_url).await?;
    let colour = vnc.first_rect_colour().await?;
    ensure!(
        desktop::close_to(colour, BLUE, 12),
        "live colour {colour:?}"
    );

    // Wait until the recorder has the screen on disk under a signed checkpoint.
    let public = SigningKey::load_or_create(broker.data_dir())?.public_hex();
    let tenant = Store::open(broker.data_dir())?
        .tenant_id(&passerelle_proto::ids::TenantName::new("default")?)?
        .context("tenant default")?;
    let path =
        passerelle::recording::path_for(&broker.data_dir().join("recordings"), tenant, &rec.id, 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let on_disk = std::fs::read(&path).unwrap_or_default();
        if let Verdict::Truncated { signed_frames, .. } =
            verify(&on_disk, |m, s| check_signature(&public, m, s))
            && signed_frames >= 2
            && on_disk.len() > 20_000
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the recording never reached the disk"
        );
        sleep(Duration::from_millis(100)).await;
    }

    let logs = broker.kill_and_restart().await?;
    ensure!(!logs.contains("panicked"), "the broker panicked: {logs}");
    drop(vnc);
    // The viewer of the raw session sees its connection end (no close frame: the process died).
    let _ = timeout(WAIT, raw_ws.expect_close()).await;

    // Sessions in flight ended as broker_crash, audited; the finished one is unchanged.
    for id in [&raw.id, &rec.id] {
        let s = broker.session(id).await?;
        ensure!(
            s.end_reason == Some(EndReason::BrokerCrash) && s.ended_at.is_some(),
            "{s:#?}"
        );
        broker
            .wait_event("session_ended", |e| {
                e.session.as_deref() == Some(id.as_str()) && e.detail.contains("broker_crash")
            })
            .await?;
    }
    let done_after = broker.session(&done.id).await?;
    ensure!(
        done_after.end_reason == Some(EndReason::ViewerClosed)
            && done_after.bytes_down == done_before.bytes_down
            && done_after.bytes_up == done_before.bytes_up,
        "{done_after:#?} vs {done_before:#?}"
    );
    let check = Store::open(broker.data_dir())?.quick_check()?;
    ensure!(check == "ok", "store damaged after SIGKILL: {check}");

    // The agents' ssh lost its connection; restarted (as systemd or autossh would), they are
    // back and serve new sessions.
    for (agent, forwards, service) in [
        (&mut vnc_agent, &vnc_fwd, "vnc"),
        (&mut rdp_agent, &rdp_fwd, "rdp"),
    ] {
        agent.process()?.wait(WAIT).await?;
        agent.disconnect().await?;
        agent.connect(forwards)?;
        agent.wait_online(&broker, &[service]).await?;
    }
    let again = broker
        .create_session(&session_request(&rdp_id, "rdp"))
        .await?;
    let mut ws = Ws::connect(&again.raw_ws_url).await?;
    ws.round_trip(&pattern(20_000, 3)).await?;
    ws.close().await?;

    // The recording: truncated, signed up to its last checkpoint, replays that signed part, and
    // one flipped byte is tampering.
    let res = broker
        .http()
        .get(format!(
            "{}/api/v1/recordings/{}",
            broker.base_url(),
            rec.id
        ))
        .bearer_auth(broker.admin_key())
        .send()
        .await?;
    ensure!(res.status().is_success(), "GET recording: {}", res.status());
    let file = res.bytes().await?.to_vec();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("crashed.psrec");
    std::fs::write(&path, &file)?;
    let (code, out) = cli_verify(broker.data_dir(), &path).await?;
    ensure!(
        code == 3 && out.starts_with("truncated:") && out.contains("are signed"),
        "verify said ({code}) {out}"
    );
    let mut bad = file.clone();
    let at = file.len() / 2;
    bad[at] ^= 0x01;
    let bad_path = dir.path().join("flipped.psrec");
    std::fs::write(&bad_path, &bad)?;
    let (code, out) = cli_verify(broker.data_dir(), &bad_path).await?;
    ensure!(
        code == 1 && out.starts_with("TAMPERED"),
        "verify said ({code}) {out}"
    );
    let url = format!(
        "{}/replay/{}#key={}",
        broker.base_url(),
        rec.id,
        broker.admin_key()
    );
    let played = desktop::open_replay(&url, &dir.path().join("replay.png"), &[]).await?;
    ensure!(
        played.error.is_none() && played.state.as_deref() == Some("ended") && played.shows(BLUE),
        "the replay of the crashed session: {played:?}"
    );
    broker.shutdown().await
}

#[tokio::test]
async fn a_silent_network_drop_ends_the_session_and_the_agent_comes_back() -> Result<()> {
    init();
    let ns = NetNs::create()?;
    let host = IpAddr::V4(ns.host_ip());
    let broker = TestBroker::start_with(|c| {
        c.ssh_listen = SocketAddr::new(host, 0);
        c.keepalive_interval = Duration::from_secs(1);
        c.keepalive_max = 2;
    })
    .await?;
    let echo = EchoServer::start_on(SocketAddr::new(host, 0)).await?;
    let forward = [Forward::Raw(format!("rdp:0:{host}:{}", echo.port()))];

    // One agent behind the link that will drop, one on this host's loopback path.
    let far_id = unique("far");
    let mut far = Agent::registered(&broker, &far_id).await?;
    far.reach_via(ns.prefix(), &host.to_string(), broker.host_key())?;
    far.connect(&forward)?;
    far.wait_online(&broker, &["rdp"]).await?;
    let near_id = unique("near");
    let mut near = Agent::registered(&broker, &near_id).await?;
    near.reach_via(Vec::new(), &host.to_string(), broker.host_key())?;
    near.connect(&forward)?;
    near.wait_online(&broker, &["rdp"]).await?;

    let far_s = broker
        .create_session(&session_request(&far_id, "rdp"))
        .await?;
    let mut far_ws = Ws::connect(&far_s.raw_ws_url).await?;
    far_ws.round_trip(&pattern(30_000, 4)).await?;
    let near_s = broker
        .create_session(&session_request(&near_id, "rdp"))
        .await?;
    let mut near_ws = Ws::connect(&near_s.raw_ws_url).await?;
    near_ws.round_trip(&pattern(30_000, 5)).await?;

    ns.cut()?;
    let cut_at = Instant::now();
    // Nothing reaches the broker any more: keepalives (1 s, 2 unanswered) find out.
    let closed = far_ws.expect_close_within(WAIT).await?;
    let noticed = cut_at.elapsed();
    ensure!(
        closed.code == close::AGENT_DISCONNECTED.code,
        "the viewer got {closed:?}"
    );
    ensure!(
        noticed < Duration::from_secs(10),
        "the drop took {noticed:?} to notice"
    );
    let ended = broker.wait_ended(&far_s.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::AgentDisconnected),
        "{ended:#?}"
    );
    far.wait_offline(&broker).await?;
    // The other agent's session never noticed.
    near_ws.round_trip(&pattern(30_000, 6)).await?;

    // The network comes back; the agent's supervisor restarts ssh; it works again.
    ns.restore()?;
    far.disconnect().await?;
    far.connect(&forward)?;
    far.wait_online(&broker, &["rdp"]).await?;
    let back = broker
        .create_session(&session_request(&far_id, "rdp"))
        .await?;
    let mut ws = Ws::connect(&back.raw_ws_url).await?;
    ws.round_trip(&pattern(30_000, 7)).await?;
    ws.close().await?;
    near_ws.close().await
}

#[tokio::test]
async fn a_full_data_disk_refuses_writes_clearly_and_recovers() -> Result<()> {
    init();
    let disk = TinyDisk::mount("24m")?;
    let broker = TestBroker::start_under(disk.path(), |_| {}).await?;
    let echo = EchoServer::start().await?;
    let id = unique("full");
    let mut agent = Agent::registered(&broker, &id).await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;

    let done = broker.create_session(&session_request(&id, "rdp")).await?;
    let mut ws = Ws::connect(&done.raw_ws_url).await?;
    ws.round_trip(&pattern(40_000, 1)).await?;
    ws.close().await?;
    let done_before = broker.wait_ended(&done.id).await?;
    let live = broker.create_session(&session_request(&id, "rdp")).await?;
    let mut live_ws = Ws::connect(&live.raw_ws_url).await?;
    live_ws.round_trip(&pattern(40_000, 2)).await?;

    let filler = disk.fill("filler")?;
    // SQLite may still have room in pages it holds; a few writes later it has none.
    let body = serde_json::to_value(session_request(&id, "rdp"))?;
    let mut refused = None;
    for _ in 0..200 {
        let (status, reply) = broker
            .api(
                Method::POST,
                "/api/v1/sessions",
                Some(broker.admin_key()),
                Some(&body),
            )
            .await?;
        if status != StatusCode::CREATED {
            refused = Some((status, reply));
            break;
        }
    }
    let (status, reply) = refused.context("200 sessions created on a full disk")?;
    ensure!(
        status == StatusCode::INSUFFICIENT_STORAGE
            && reply["error"]["code"] == "storage_full"
            && reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("disk is full")),
        "on a full disk: {status} {reply}"
    );

    // Reads and live sessions go on.
    let (status, _) = broker.api(Method::GET, "/healthz", None, None).await?;
    ensure!(status == StatusCode::OK, "healthz {status}");
    let seen = broker.session(&done.id).await?;
    ensure!(seen.bytes_down == done_before.bytes_down, "{seen:#?}");
    live_ws.round_trip(&pattern(40_000, 3)).await?;
    let (status, _) = broker
        .api(
            Method::GET,
            "/api/v1/sessions",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "listing sessions: {status}");

    // Space comes back: writes work again, and nothing committed was lost.
    std::fs::remove_file(&filler)?;
    let after = broker.create_session(&session_request(&id, "rdp")).await?;
    let mut ws = Ws::connect(&after.raw_ws_url).await?;
    ws.round_trip(&pattern(40_000, 4)).await?;
    ws.close().await?;
    broker.wait_ended(&after.id).await?;
    live_ws.close().await?;
    let ended = broker.wait_ended(&live.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::ViewerClosed),
        "{ended:#?}"
    );
    let check = broker.store().quick_check()?;
    ensure!(check == "ok", "store after a full disk: {check}");
    Ok(())
}
