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

#[tokio::test]
async fn six_hundred_recorded_sessions_at_once_are_all_recorded_by_a_few_threads() -> Result<()> {
    init();
    let broker = TestBroker::start_with(|c| c.http_max_connections_per_ip = 0).await?;
    let echo = EchoServer::start().await?;
    let mut agents = Vec::new();
    for i in 0..6 {
        let mut agent = Agent::registered(&broker, &unique(&format!("many{i}"))).await?;
        agent.connect(&[Forward::named("rdp", echo.port())])?;
        agent.wait_online(&broker, &["rdp"]).await?;
        agents.push(agent);
    }
    let mut created = Vec::new();
    for i in 0..600 {
        let mut req = session_request(&agents[i % agents.len()].id, "rdp");
        req.record = Some(true);
        created.push(broker.create_session(&req).await?);
    }
    // Every viewer connected and bridged at the same time.
    let viewers = futures_util::future::try_join_all(created.iter().map(|c| async move {
        let mut ws = Ws::connect(&c.raw_ws_url).await?;
        ws.round_trip(&pattern(1000, 7)).await?;
        anyhow::Ok(ws)
    }))
    .await?;
    let writer_threads = std::fs::read_dir("/proc/self/task")?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|n| n.starts_with("passerelle-rec"))
        .count();
    ensure!(
        (1..=8).contains(&writer_threads),
        "600 live recordings are written by {writer_threads} threads"
    );
    for ws in viewers {
        ws.close().await?;
    }
    let public = SigningKey::load_or_create(broker.data_dir())?.public_hex();
    let tenant = broker
        .store()
        .tenant_id(&passerelle_proto::ids::TenantName::new("default")?)?
        .context("tenant")?;
    let dir = broker.data_dir().join("recordings");
    for c in &created {
        let ended = broker.wait_ended(&c.id).await?;
        ensure!(ended.record && ended.bytes_up == 1000, "{ended:?}");
        let file = std::fs::read(passerelle::recording::path_for(&dir, tenant, &c.id, 1))?;
        match verify(&file, |m, s| check_signature(&public, m, s)) {
            Verdict::Intact { summary, .. } => {
                ensure!(summary.bytes_down == 1000, "{summary:?}")
            }
            other => anyhow::bail!("session {}: {other:?}", c.id),
        }
    }
    Ok(())
}

#[tokio::test]
async fn tokens_stay_out_of_urls_that_servers_log() -> Result<()> {
    init();
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, &unique("nolog")).await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    let launch = LaunchUrl::parse(&created.launch_url)?;
    // viewer_url carries its tokens in the fragment, and never the reusable launch token.
    let (_, fragment) = created.viewer_url.split_once('#').context("fragment")?;
    ensure!(
        !created.viewer_url.contains(&launch.token) && fragment.contains("exchange="),
        "{}",
        created.viewer_url
    );
    let exchange = fragment
        .split('&')
        .find_map(|kv| kv.strip_prefix("exchange="))
        .context("exchange token")?;
    // The exchange token buys one launch URL, once; no API key needed, none accepted instead.
    let url = format!(
        "{}/api/v1/sessions/{}/launch",
        broker.base_url(),
        created.id
    );
    let post = |token: String| {
        let (http, url) = (broker.http().clone(), url.clone());
        async move { http.post(url).bearer_auth(token).send().await }
    };
    let res = post(exchange.to_owned()).await?;
    ensure!(res.status() == StatusCode::OK, "{}", res.status());
    let body: serde_json::Value = res.json().await?;
    let fetched = LaunchUrl::parse(body["launch_url"].as_str().context("launch_url")?)?;
    ensure!(fetched.session == created.id, "{fetched:?}");
    for token in [exchange.to_owned(), broker.admin_key().to_owned()] {
        let res = post(token).await?;
        ensure!(res.status() == StatusCode::UNAUTHORIZED, "{}", res.status());
    }
    // An exchange token opens no connection.
    let issued = broker.new_token(&created.id).await?;
    let bare = created.raw_ws_url.split('?').next().context("url")?;
    let fresh_exchange = issued
        .viewer_url
        .split_once('#')
        .and_then(|(_, f)| f.split('&').find_map(|kv| kv.strip_prefix("exchange=")))
        .context("exchange token")?;
    let mut refused = Ws::connect(&format!("{bare}?token={fresh_exchange}")).await?;
    let closed = refused.expect_close().await?;
    ensure!(closed.code == close::TOKEN_INVALID.code, "{closed:?}");
    // The launch token in an Authorization header (the desktop helper's way)...
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(bare)?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", fetched.token).parse()?,
    );
    let (mut by_header, _) = tokio_tungstenite::connect_async(req).await?;
    use futures_util::{SinkExt as _, StreamExt as _};
    by_header
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            b"ping".to_vec().into(),
        ))
        .await?;
    let echoed = tokio::time::timeout(passerelle_e2e::WAIT, by_header.next())
        .await?
        .context("no answer")??;
    ensure!(echoed.into_data().as_ref() == b"ping", "echo by header");
    by_header.close(None).await?;
    // ...and a viewer token in a subprotocol (the browser's way): the broker answers `binary`.
    let token_protocol = format!("passerelle.token.{}", issued.token);
    let mut by_protocol =
        Ws::connect_with(bare, Some(&format!("binary, {token_protocol}"))).await?;
    ensure!(
        by_protocol.subprotocol.as_deref() == Some("binary"),
        "{:?}",
        by_protocol.subprotocol
    );
    by_protocol.round_trip(b"pong").await?;
    by_protocol.close().await?;
    Ok(())
}
