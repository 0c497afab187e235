//! What the broker refuses from SSH clients, each with a clear reason to the client, an audit
//! event, and the broker still serving others afterwards.

use anyhow::{Result, ensure};
use passerelle_e2e::{
    Agent, EchoServer, Forward, SshOutput, TestBroker, WAIT, Ws, assert_still_serving, pattern,
    session_request,
};

fn refused(out: &SshOutput, needle: &str) -> Result<()> {
    ensure!(
        !out.status.success() && out.stderr.contains(needle),
        "expected ssh to fail with {needle:?}; got {} with stderr:\n{}",
        out.status,
        out.stderr
    );
    Ok(())
}

/// Runs `ssh -N -R ...` as `agent` and expects it to exit with an error containing `needle`.
async fn tunnel_refused(agent: &mut Agent, forwards: &[Forward], needle: &str) -> Result<String> {
    agent.connect(forwards)?;
    let status = agent.process()?.wait(WAIT).await?;
    let stderr = agent.process()?.stderr();
    agent.disconnect().await?;
    ensure!(
        !status.success() && stderr.contains(needle),
        "{status}; stderr:\n{stderr}"
    );
    Ok(stderr)
}

#[tokio::test]
async fn an_unknown_key_is_refused_and_audited() -> Result<()> {
    let broker = TestBroker::start().await?;
    let _owner = Agent::registered(&broker, "pc-victim").await?;
    // Same id, another key that nobody registered.
    let mut intruder = Agent::new(&broker, "pc-victim").await?;
    tunnel_refused(
        &mut intruder,
        &[Forward::named("vnc", 9)],
        "Permission denied",
    )
    .await?;
    broker
        .wait_event("auth_failed", |e| e.agent.as_deref() == Some("pc-victim"))
        .await?;
    // An id nobody registered is refused the same way.
    let mut ghost = Agent::new(&broker, "pc-ghost").await?;
    tunnel_refused(&mut ghost, &[Forward::named("vnc", 9)], "Permission denied").await?;
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_key_only_opens_its_own_agent_id() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut a = Agent::registered(&broker, "pc-a").await?;
    let _b = Agent::registered(&broker, "pc-b").await?;
    let mut wrong = a.spawn_as("pc-b", &[Forward::named("vnc", echo.port())])?;
    let status = wrong.wait(WAIT).await?;
    let stderr = wrong.stderr();
    ensure!(
        !status.success() && stderr.contains("Permission denied"),
        "{status}: {stderr}"
    );
    broker
        .wait_event("auth_failed", |e| e.agent.as_deref() == Some("pc-b"))
        .await?;
    // The key still works for its own id.
    a.connect(&[Forward::named("vnc", echo.port())])?;
    a.wait_online(&broker, &["vnc"]).await?;
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn direct_tcpip_is_refused_the_broker_is_no_proxy() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let agent = Agent::registered(&broker, "pc-proxy").await?;
    let target = format!("127.0.0.1:{}", echo.port());
    let out = agent.run("pc-proxy", &["-W", &target], &[]).await?;
    refused(&out, "administratively prohibited")?;
    ensure!(
        out.stderr.contains("passerelle"),
        "no reason from the broker: {}",
        out.stderr
    );
    ensure!(
        echo.stats().accepted == 0,
        "the broker connected to {target}"
    );
    let ev = broker
        .wait_event("request_refused", |e| e.detail.contains("direct-tcpip"))
        .await?;
    ensure!(ev.detail.contains(&target), "{ev:?}");
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn shell_exec_and_subsystems_are_refused_with_a_message() -> Result<()> {
    let broker = TestBroker::start().await?;
    let agent = Agent::registered(&broker, "pc-shell").await?;
    // `ssh AGENT@broker echo hi`, a shell, a subsystem: each fails with the broker's reason.
    for (before, after) in [
        (&["-T"][..], &["echo", "hi"][..]),
        (&["-T"], &[]),
        (&["-T", "-s"], &["sftp"]),
    ] {
        let out = agent.run("pc-shell", before, after).await?;
        refused(&out, "passerelle: ")?;
        ensure!(
            out.stderr.contains("agents may not run"),
            "unclear reason: {}",
            out.stderr
        );
        ensure!(!out.stdout.contains("hi"), "a command ran: {out:?}");
    }
    let ev = broker
        .wait_event("request_refused", |e| {
            e.agent.as_deref() == Some("pc-shell")
        })
        .await?;
    ensure!(!ev.detail.is_empty(), "{ev:?}");
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn an_unknown_service_name_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-bogus").await?;
    let forwards = [
        Forward::named("vnc", echo.port()),
        Forward::named("bogus", echo.port()),
    ];
    tunnel_refused(&mut agent, &forwards, "remote port forwarding failed").await?;
    let ev = broker
        .wait_event("request_refused", |e| e.detail.contains("unknown service"))
        .await?;
    ensure!(
        ev.detail.contains("bogus") && ev.agent.as_deref() == Some("pc-bogus"),
        "{ev:?}"
    );
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn more_than_sixteen_forwards_are_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-many").await?;
    // 17 forwards that are each valid on their own: the ports of 17 pending legacy sessions.
    let mut forwards = Vec::new();
    for _ in 0..17 {
        let mut req = session_request("pc-many", "vnc");
        req.legacy = true;
        let created = broker.create_session(&req).await?;
        let port = created.legacy_port.expect("legacy_port");
        forwards.push(Forward::legacy(port, echo.port()));
    }
    tunnel_refused(&mut agent, &forwards, "remote port forwarding failed").await?;
    broker
        .wait_event("request_refused", |e| {
            e.detail.contains("too many forwards")
        })
        .await?;
    // Sixteen are fine.
    agent.connect(&forwards[..16])?;
    agent.wait_online(&broker, &[]).await?;
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_legacy_port_belongs_to_its_sessions_agent_only() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut owner = Agent::registered(&broker, "pc-owner").await?;
    let mut other = Agent::registered(&broker, "pc-other").await?;
    let mut req = session_request("pc-owner", "vnc");
    req.legacy = true;
    let created = broker.create_session(&req).await?;
    let port = created.legacy_port.expect("legacy_port");

    let forward = [Forward::legacy(port, echo.port())];
    tunnel_refused(&mut other, &forward, "remote port forwarding failed").await?;
    let detail = format!("port {port} belongs to another agent");
    broker
        .wait_event("request_refused", |e| e.detail.contains(&detail))
        .await?;

    // The rightful agent still gets its session.
    owner.connect(&forward)?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(1000, 9)).await?;
    ws.close().await?;
    ensure!(echo.stats().accepted == 1, "{:?}", echo.stats());
    Ok(())
}
