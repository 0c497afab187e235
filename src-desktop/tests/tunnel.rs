//! The library's [`Tunnel`] against the real broker: statistics and events while bytes flow,
//! and the end of the session as the broker tells it, after which nothing listens.

mod common;

use anyhow::{Context as _, Result, ensure};
use common::{Setup, listening};
use passerelle_desktop::{Tunnel, TunnelEnd, TunnelEvent, TunnelOptions};
use passerelle_e2e::{EchoServer, TestBroker, WAIT, pattern};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_events_and_the_stop_of_a_session() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let launch = passerelle_desktop::parse_launch_url(&s.session.launch_url)?;
    let tunnel = Tunnel::start(launch, TunnelOptions::default()).await?;
    let mut events = tunnel.subscribe();
    let addr = tunnel.local_addr();

    let data = pattern(64 * 1024, 3);
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(&data).await?;
    let mut back = vec![0u8; data.len()];
    timeout(WAIT, conn.read_exact(&mut back)).await??;
    ensure!(back == data);
    let first = timeout(WAIT, events.recv()).await??;
    ensure!(
        matches!(first, TunnelEvent::Connected { id: 1, .. }),
        "{first:?}"
    );
    let stats = tunnel.stats();
    ensure!(stats.bytes_up == data.len() as u64, "{stats:?}");
    ensure!(stats.bytes_down == data.len() as u64, "{stats:?}");
    ensure!(stats.connections == 1 && stats.active == 1, "{stats:?}");

    let info = s.api.stop(&s.session.id).await?;
    ensure!(info["ended_by"] == "alice", "{info}");
    let end = timeout(WAIT, tunnel.wait())
        .await
        .context("the tunnel did not end")?;
    let TunnelEnd::SessionEnded(end) = end else {
        anyhow::bail!("unexpected end {end:?}");
    };
    ensure!(
        end.code == 4020 && end.reason == "session stopped by alice",
        "{end:?}"
    );
    ensure!(end.is_normal());
    ensure!(!listening(addr).await, "{addr} still listening");
    let mut saw_disconnect = false;
    let mut saw_end = false;
    while let Ok(Ok(ev)) = timeout(WAIT, events.recv()).await {
        match ev {
            TunnelEvent::Disconnected {
                id: 1,
                bytes_up,
                close,
                ..
            } => {
                ensure!(bytes_up == data.len() as u64);
                ensure!(close.as_ref().is_some_and(|(c, _)| *c == 4020), "{close:?}");
                saw_disconnect = true;
            }
            TunnelEvent::Ended(TunnelEnd::SessionEnded(_)) => {
                saw_end = true;
                break;
            }
            other => anyhow::bail!("unexpected event {other:?}"),
        }
    }
    ensure!(saw_disconnect && saw_end, "events missing");
    ensure!(tunnel.stats().active == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_tunnel_closes_its_connections() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "ssh", echo.port()).await?;
    let launch = passerelle_desktop::parse_launch_url(&s.session.launch_url)?;
    let tunnel = Tunnel::start(launch, TunnelOptions::default()).await?;
    let addr = tunnel.local_addr();
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    timeout(WAIT, conn.read_exact(&mut back)).await??;
    let end = timeout(WAIT, tunnel.shutdown()).await?;
    ensure!(end == TunnelEnd::Closed, "{end:?}");
    let mut rest = Vec::new();
    timeout(WAIT, conn.read_to_end(&mut rest)).await??;
    ensure!(!listening(addr).await, "{addr} still listening");
    // The launch token still opens the session: closing the helper does not end it.
    let info = s
        .api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/sessions/{}", s.session.id),
            None,
            200,
        )
        .await?;
    ensure!(info["state"] != "ended", "{info}");
    Ok(())
}

/// Polls until the broker has admitted the tunnel's watch.
async fn watched(tunnel: &Tunnel) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !tunnel.watched() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the watch was never admitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits (at most 2 s, the app's promise) for a tunnel with no connection ever opened to end
/// with the session; returns the end's close code and reason.
async fn ended_without_connections(tunnel: &Tunnel) -> Result<(u16, String)> {
    let end = timeout(std::time::Duration::from_secs(2), tunnel.wait())
        .await
        .context("the tunnel did not learn of the end within 2 s")?;
    let TunnelEnd::SessionEnded(end) = end else {
        anyhow::bail!("unexpected end {end:?}");
    };
    ensure!(tunnel.stats().connections == 0, "{:?}", tunnel.stats());
    ensure!(!listening(tunnel.local_addr()).await, "still listening");
    Ok((end.code, end.reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_learns_that_its_session_was_stopped_or_lost_its_agent() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let launch = passerelle_desktop::parse_launch_url(&s.session.launch_url)?;
    ensure!(
        launch.agent.as_ref().map(|a| a.as_str()) == Some(s.agent.id.as_str()),
        "the launch URL names the agent: {launch:?}"
    );
    let tunnel = Tunnel::start(launch, TunnelOptions::default()).await?;
    watched(&tunnel).await?;
    s.api.stop(&s.session.id).await?;
    let (code, reason) = ended_without_connections(&tunnel).await?;
    ensure!(
        code == passerelle_proto::close::STOPPED.code && reason == "session stopped by alice",
        "{code} {reason}"
    );

    // Another session of the same agent; the agent goes: the session ends, the tunnel too.
    let mut s = s;
    let second = s.api.create_session(&s.agent.id, "rdp").await?;
    let launch = passerelle_desktop::parse_launch_url(&second.launch_url)?;
    let tunnel = Tunnel::start(launch, TunnelOptions::default()).await?;
    watched(&tunnel).await?;
    s.agent.disconnect().await?;
    let (code, reason) = ended_without_connections(&tunnel).await?;
    ensure!(
        code == passerelle_proto::close::AGENT_DISCONNECTED.code,
        "{code} {reason}"
    );
    let ended = broker.wait_ended(&second.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::AgentDisconnected),
        "{ended:#?}"
    );
    Ok(())
}
