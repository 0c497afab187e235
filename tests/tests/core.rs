//! The main path: a stock OpenSSH agent announces services, the console opens sessions through
//! the HTTP API, bytes cross the WebSocket both ways, and the audit tells what happened.

use std::time::Duration;

use anyhow::{Result, ensure};
use passerelle_e2e::{
    Agent, EchoServer, EndReason, Forward, SessionState, TestBroker, Ws, close, pattern,
    session_request,
};
use passerelle_proto::launch::LaunchUrl;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn named_forward_carries_bytes_both_ways_and_is_audited() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-core").await?;
    agent.connect(&[
        Forward::named("vnc", echo.port()),
        Forward::named("ssh", echo.port()),
    ])?;
    let info = agent.wait_online(&broker, &["vnc", "ssh"]).await?;
    ensure!(
        info.connected_since.is_some() && info.peer_addr.is_some(),
        "presence: {info:#?}"
    );
    ensure!(
        info.services.iter().all(|s| s.port != 0),
        "placeholder ports: {info:#?}"
    );
    // The port OpenSSH was told is the one the API shows.
    for s in &info.services {
        agent
            .process()?
            .wait_stderr(&format!("Allocated port {} ", s.port))
            .await?;
    }

    // Session 1: the raw endpoint, 1 MiB of patterned bytes each way.
    let created = broker
        .create_session(&session_request("pc-core", "vnc"))
        .await?;
    ensure!(created.state == SessionState::Pending, "{created:?}");
    ensure!(
        created
            .raw_ws_url
            .contains(&format!("/ws/sessions/{}/raw?token=", created.id))
    );
    ensure!(
        created.viewer_url.contains("#token="),
        "token must ride in the fragment"
    );
    let launch = LaunchUrl::parse(&created.launch_url)?;
    ensure!(
        launch.session == created.id && launch.service.as_str() == "vnc",
        "{launch:?}"
    );
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    let data = pattern(MIB, 1);
    ws.round_trip(&data).await?;
    let live = broker.session(&created.id).await?;
    ensure!(
        live.state == SessionState::Active && live.started_at.is_some(),
        "{live:#?}"
    );
    ws.close().await?;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(ended.state == SessionState::Ended, "{ended:#?}");
    ensure!(
        ended.end_reason == Some(EndReason::ViewerClosed),
        "{ended:#?}"
    );
    ensure!(
        ended.bytes_up == MIB as u64 && ended.bytes_down == MIB as u64,
        "{ended:#?}"
    );
    ensure!(
        ended.started_at.is_some() && ended.ended_at.is_some(),
        "{ended:#?}"
    );
    ensure!(
        ended.operator == "alice" && ended.client_addr.is_some(),
        "{ended:#?}"
    );
    ensure!(
        echo.stats().accepted == 1,
        "one channel, one service connection"
    );

    let page = broker.audit(&format!("session={}", created.id)).await?;
    for kind in ["session_created", "session_started", "session_ended"] {
        ensure!(
            page.events.iter().any(|e| e.kind == kind),
            "no {kind}: {:#?}",
            page.events
        );
    }
    let row = page.sessions.iter().find(|s| s.id == created.id);
    ensure!(
        row.is_some_and(|r| r.bytes_up == MIB as u64),
        "audit row: {:#?}",
        page.sessions
    );
    let connected = broker.audit("agent=pc-core&kind=agent_connected").await?;
    ensure!(!connected.events.is_empty(), "no agent_connected event");

    // Session 2: the raw endpoint of the ssh service (its ws_url is the browser terminal), with
    // the `binary` subprotocol offered: it is echoed.
    let created = broker
        .create_session(&session_request("pc-core", "ssh"))
        .await?;
    let mut ws = Ws::connect_with(&created.raw_ws_url, Some("binary")).await?;
    ensure!(
        ws.subprotocol.as_deref() == Some("binary"),
        "subprotocol {:?}",
        ws.subprotocol
    );
    let data = pattern(100_000, 2);
    ws.round_trip(&data).await?;
    ws.round_trip(b"and once more").await?;
    ws.close().await?;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.bytes_up == 100_013 && ended.bytes_down == 100_013,
        "{ended:#?}"
    );
    ensure!(
        ended.end_reason == Some(EndReason::ViewerClosed),
        "{ended:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn no_subprotocol_is_imposed() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-noproto").await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let created = broker
        .create_session(&session_request("pc-noproto", "rdp"))
        .await?;
    // The raw stream: `ws_url` of an rdp session speaks RDCleanPath (IronRDP's web client).
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ensure!(
        ws.subprotocol.is_none(),
        "unrequested subprotocol {:?}",
        ws.subprotocol
    );
    ws.round_trip(b"hello").await?;
    ws.close().await
}

#[tokio::test]
async fn legacy_viewer_waits_for_the_numeric_forward() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-legacy").await?;
    let mut req = session_request("pc-legacy", "vnc");
    req.legacy = true;
    // The agent is offline: a legacy session is still created, with a port for the agent.
    let created = broker.create_session(&req).await?;
    let port = created
        .legacy_port
        .expect("legacy session without legacy_port");
    ensure!(port != 0, "legacy port 0");

    // The viewer comes first and waits.
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ensure!(echo.stats().accepted == 0);
    agent.connect(&[Forward::legacy(port, echo.port())])?;
    agent.wait_online(&broker, &[]).await?;
    let data = pattern(256 * 1024, 3);
    ws.round_trip(&data).await?;
    ws.close().await?;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.legacy && ended.legacy_port == Some(port),
        "{ended:#?}"
    );
    ensure!(ended.bytes_up == data.len() as u64, "{ended:#?}");
    ensure!(ended.bytes_down == data.len() as u64, "{ended:#?}");
    ensure!(
        ended.end_reason == Some(EndReason::ViewerClosed),
        "{ended:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn legacy_viewer_gives_up_when_the_agent_never_comes() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.legacy_wait = Duration::from_secs(1)).await?;
    let _agent = Agent::registered(&broker, "pc-late").await?;
    let mut req = session_request("pc-late", "vnc");
    req.legacy = true;
    let created = broker.create_session(&req).await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::AGENT_TIMEOUT.code, "{closed:?}");
    ensure!(!closed.reason.is_empty(), "close without a human reason");
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::AgentTimeout),
        "{ended:#?}"
    );
    passerelle_e2e::assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_fresh_token_opens_the_same_session_again() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-tokens").await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request("pc-tokens", "vnc"))
        .await?;
    let issued = broker.new_token(&created.id).await?;
    ensure!(issued.token != created.token, "the same token twice");
    let mut ws = Ws::connect(&issued.raw_ws_url).await?;
    ws.round_trip(b"with the second token").await?;
    ws.close().await
}
