//! How sessions and agents end: stop through the API, agent revocation, an agent that drops
//! mid-session, and a graceful broker shutdown.

use std::time::Duration;

use anyhow::{Result, ensure};
use passerelle_e2e::{
    Agent, EchoServer, EndReason, Forward, Method, SourceServer, StatusCode, TestBroker, Ws,
    assert_still_serving, close, pattern, pattern_byte, session_request,
};
use passerelle_proto::launch::LaunchUrl;
use tokio::time::Instant;

#[tokio::test]
async fn stop_closes_the_viewer_within_a_second_and_records_who() -> Result<()> {
    let broker = TestBroker::start().await?;
    // Paced like a busy screen: at full speed the broker's data threads outrun this test's
    // debug-built viewer, which shares one thread with the API, and end it as too slow.
    let source = SourceServer::start_paced(8 << 20).await?;
    let mut agent = Agent::registered(&broker, "pc-stop").await?;
    agent.connect(&[Forward::named("vnc", source.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;

    let created = broker
        .create_session(&session_request("pc-stop", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    // Bytes flow: the source's stream arrives intact.
    let head = ws.read_exact(256 * 1024).await?;
    let intact = head
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern_byte(i as u64, SourceServer::SEED));
    ensure!(intact, "the source's bytes arrived altered");

    // The viewer goes on reading, as a real one does, while the session is stopped.
    let t0 = Instant::now();
    let (stopped, closed) = tokio::join!(broker.stop_session(&created.id, Some("bob")), async {
        let closed = ws.expect_close().await;
        (closed, t0.elapsed())
    });
    let (stopped, (closed, elapsed)) = (stopped?, (closed.0?, closed.1));
    ensure!(closed.code == close::STOPPED.code, "{closed:?}");
    ensure!(!closed.reason.is_empty(), "close without a human reason");
    // The design's contract: bridging ends within 1 s of DELETE.
    ensure!(
        elapsed < Duration::from_secs(1),
        "close frame {elapsed:?} after DELETE"
    );
    ensure!(
        stopped.end_reason == Some(EndReason::Stopped),
        "{stopped:#?}"
    );
    ensure!(stopped.ended_by.as_deref() == Some("bob"), "{stopped:#?}");
    ensure!(
        stopped.ended_at.is_some() && stopped.bytes_down >= 256 * 1024,
        "{stopped:#?}"
    );
    // The workstation's service sees its connection end.
    source.wait_closed(1).await?;

    // Once ended, no token opens the session, not even the launch token.
    let launch = LaunchUrl::parse(&created.launch_url)?;
    let url = format!(
        "ws://{}/ws/sessions/{}/raw?token={}",
        broker.http_addr(),
        created.id,
        launch.token
    );
    let closed = Ws::connect(&url).await?.expect_close().await?;
    ensure!(
        closed.code == close::SESSION_ENDED.code,
        "launch token after stop: {closed:?}"
    );

    // Without the operator header, the API key is named; the agent is still usable.
    let created = broker
        .create_session(&session_request("pc-stop", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.read_exact(1024).await?;
    let stopped = broker.stop_session(&created.id, None).await?;
    let by = stopped.ended_by.unwrap_or_default();
    ensure!(by.starts_with("api-key:"), "ended_by {by:?}");
    ensure!(ws.expect_close().await?.code == close::STOPPED.code);
    ensure!(
        agent.process()?.exited()?.is_none(),
        "stopping a session ended the agent"
    );
    Ok(())
}

#[tokio::test]
async fn revoking_an_agent_disconnects_it_at_once() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-revoked").await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request("pc-revoked", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(b"before revocation").await?;

    let (status, body) = broker
        .api(
            Method::DELETE,
            "/api/v1/agents/pc-revoked",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    let exit = agent.process()?.wait(Duration::from_secs(2)).await?;
    ensure!(!exit.success(), "ssh exit {exit}");
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::AGENT_REVOKED.code, "{closed:?}");
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::AgentRevoked),
        "{ended:#?}"
    );

    let (status, _) = broker
        .api(
            Method::GET,
            "/api/v1/agents/pc-revoked",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "revoked agent still listed: {status}"
    );
    broker
        .wait_event("agent_revoked", |e| {
            e.agent.as_deref() == Some("pc-revoked")
        })
        .await?;
    // Its key no longer opens anything.
    agent.disconnect().await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    let exit = agent.process()?.wait(passerelle_e2e::WAIT).await?;
    let stderr = agent.process()?.stderr();
    ensure!(
        !exit.success() && stderr.contains("Permission denied"),
        "{exit}: {stderr}"
    );
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn an_agent_dropping_mid_session_closes_the_viewer() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-drop").await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request("pc-drop", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(10_000, 5)).await?;

    agent.disconnect().await?; // SIGKILL: the TCP connection just goes away
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::AGENT_DISCONNECTED.code, "{closed:?}");
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::AgentDisconnected),
        "{ended:#?}"
    );
    let info = agent.wait_offline(&broker).await?;
    ensure!(
        info.services.is_empty(),
        "offline agent still lists services: {info:#?}"
    );
    broker
        .wait_event("agent_disconnected", |e| {
            e.agent.as_deref() == Some("pc-drop")
        })
        .await?;

    // It comes back, and works again.
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request("pc-drop", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(b"back again").await?;
    ws.close().await
}

#[tokio::test]
async fn graceful_shutdown_ends_live_sessions_as_broker_shutdown() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-shutdown").await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request("pc-shutdown", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(b"live").await?;

    let running = broker.take_broker()?;
    let (closed, done) = tokio::join!(
        ws.expect_close(),
        tokio::time::timeout(passerelle_e2e::WAIT, running.shutdown())
    );
    let closed = closed?;
    ensure!(done.is_ok(), "Broker::shutdown did not finish");
    ensure!(closed.code == close::BROKER_SHUTDOWN.code, "{closed:?}");
    // The agent's connection ends with the broker.
    agent.process()?.wait(passerelle_e2e::WAIT).await?;

    // The store says why the session ended (and a restart does not call it a crash).
    let broker = broker.restart(|_| {}).await?;
    let info = broker.session(&created.id).await?;
    ensure!(
        info.end_reason == Some(EndReason::BrokerShutdown),
        "{info:#?}"
    );
    ensure!(info.bytes_up == 4 && info.bytes_down == 4, "{info:#?}");
    Ok(())
}
