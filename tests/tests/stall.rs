//! Isolation under a slow reader: one viewer that stops reading must not stall the other
//! sessions of the same agent nor the agent's connection; its own session ends, with a clear
//! reason, once its buffer limit is reached.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::{
    Agent, EchoServer, EndReason, Forward, SessionState, SourceServer, TestBroker, Ws, close,
    pattern, session_request,
};
use tokio::time::{Instant, timeout};

/// A round trip of a few KiB through an idle echo path takes milliseconds; this bound only
/// separates "flowing" from "stalled behind another channel".
const NOT_STALLED: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_stalled_viewer_does_not_stall_the_agents_other_session() -> Result<()> {
    let buffer = 256 * 1024;
    let broker = TestBroker::start_with(|c| c.session_buffer_bytes = buffer).await?;
    // A steady 2 MiB/s, like a busy screen: A's viewer stays stalled for a while (its socket
    // buffers fill first, then the session's) before the limit is reached.
    let source = SourceServer::start_paced(2 * 1024 * 1024).await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-stall").await?;
    agent.connect(&[
        Forward::named("vnc", source.port()),
        Forward::named("ssh", echo.port()),
    ])?;
    let before = agent.wait_online(&broker, &["vnc", "ssh"]).await?;

    // Session B on the same agent connection, flowing before A starts.
    let b = broker
        .create_session(&session_request("pc-stall", "ssh"))
        .await?;
    let mut flowing = Ws::connect(&b.raw_ws_url).await?;
    flowing.round_trip(b"warm-up").await?;

    // Session A: a viewer on the endless source that never reads.
    let a = broker
        .create_session(&session_request("pc-stall", "vnc"))
        .await?;
    let mut stalled = Ws::connect(&a.raw_ws_url).await?;
    source.wait_for("a connection", |s| s.accepted == 1).await?;

    // B's echo round trips keep succeeding while A is stalled, and after the broker has cut
    // A off.
    let t0 = Instant::now();
    let mut trips_while_stalled = 0u32;
    let mut trips = 0u32;
    let mut a_ended = None;
    loop {
        let data = pattern(8 * 1024, trips as u8);
        timeout(NOT_STALLED, flowing.round_trip(&data))
            .await
            .with_context(|| {
                format!(
                    "session B stalled at round trip {trips} ({:?} in)",
                    t0.elapsed()
                )
            })??;
        trips += 1;
        if a_ended.is_none() {
            let info = broker.session(&a.id).await?;
            if info.state == SessionState::Ended {
                a_ended = Some((t0.elapsed(), info));
            } else {
                trips_while_stalled += 1;
            }
        }
        // B goes on for a while after A's end; then A's viewer reads again, well within the
        // time the broker keeps a cut-off viewer's socket to deliver its close frame (5 s).
        if let Some((when, _)) = &a_ended
            && t0.elapsed() >= *when + Duration::from_secs(1)
        {
            break;
        }
        if t0.elapsed() > passerelle_e2e::WAIT {
            bail!(
                "session A never ended although its viewer reads nothing: {:#?}; source {:?}",
                broker.session(&a.id).await?,
                source.stats()
            );
        }
    }
    let (when, info) = a_ended.context("loop ends only once A has ended")?;
    ensure!(
        info.end_reason == Some(EndReason::ViewerTooSlow),
        "A after {when:?}: {info:#?}"
    );
    ensure!(
        trips_while_stalled >= 1,
        "no round trip of B completed while A was stalled (A ended after {when:?})"
    );

    // A's viewer, reading at last, finds what arrived and then the reason.
    let closed = stalled.expect_close().await?;
    ensure!(closed.code == close::VIEWER_TOO_SLOW.code, "{closed:?}");
    ensure!(!closed.reason.is_empty(), "close without a human reason");
    // A's end closes its channel: the source's connection ends.
    source.wait_closed(1).await?;
    let sent = source.stats().bytes_out;
    ensure!(
        sent <= closed.discarded as u64 + buffer as u64 + 32 * 1024 * 1024,
        "source wrote {sent} bytes; the viewer received {}",
        closed.discarded
    );

    // The agent's SSH connection stayed up the whole time: same connection, still online.
    ensure!(
        agent.process()?.exited()?.is_none(),
        "the agent's ssh exited"
    );
    let after = agent.wait_online(&broker, &["vnc", "ssh"]).await?;
    ensure!(
        after.connected_since == before.connected_since,
        "the agent reconnected: {after:#?}"
    );
    flowing.round_trip(b"still flowing").await?;
    flowing.close().await?;
    let b_info = broker.wait_ended(&b.id).await?;
    ensure!(
        b_info.end_reason == Some(EndReason::ViewerClosed),
        "{b_info:#?}"
    );
    Ok(())
}
