//! Close frames carry their named code whatever text goes into the reason: a reason built from
//! long outside text (an operator's name) is cut to WebSocket's 123 bytes instead of making the
//! frame invalid (which a viewer sees as 1006), and no server path reaches a viewer.

use anyhow::{Result, ensure};
use passerelle_e2e::{
    Agent, EchoServer, EndReason, Forward, TestBroker, Ws, assert_still_serving, close,
    session_request,
};
use passerelle_proto::close::MAX_REASON_BYTES;

#[tokio::test]
async fn a_stop_by_an_operator_with_a_long_name_closes_with_4020_and_a_bounded_reason() -> Result<()>
{
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-long-name").await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(b"before the stop").await?;

    // 120 characters: "session stopped by " + the name is 139 bytes, over the limit.
    let operator: String = "operator-with-a-very-long-login-"
        .chars()
        .cycle()
        .take(120)
        .collect();
    let (stopped, closed) = tokio::join!(
        broker.stop_session(&created.id, Some(&operator)),
        ws.expect_close()
    );
    let (stopped, closed) = (stopped?, closed?);
    ensure!(
        closed.code == close::STOPPED.code,
        "expected 4020, got {closed:?}"
    );
    ensure!(
        closed.reason.len() <= MAX_REASON_BYTES
            && closed
                .reason
                .starts_with("session stopped by operator-with")
            && closed.reason.ends_with('\u{2026}'),
        "reason {:?} ({} bytes)",
        closed.reason,
        closed.reason.len()
    );
    // The audit keeps the whole name.
    ensure!(
        stopped.end_reason == Some(EndReason::Stopped),
        "{stopped:?}"
    );
    ensure!(
        stopped.ended_by.as_deref() == Some(operator.as_str()),
        "{stopped:?}"
    );
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_recording_that_cannot_start_tells_the_viewer_without_naming_paths() -> Result<()> {
    // The recordings directory lies under a regular file: it can never be created.
    let blocker = tempfile::NamedTempFile::new()?;
    let recordings = blocker.path().join("recordings");
    let broker = TestBroker::start_with(|c| c.recordings_dir = recordings.clone()).await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-no-disk").await?;
    // An RDP session: its raw stream is recorded (metadata and byte counts).
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let mut req = session_request(&agent.id, "rdp");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    let closed = ws.expect_close().await?;
    ensure!(
        closed.code == close::RECORDING_FAILED.code,
        "expected 4025, got {closed:?}"
    );
    let tmp = std::env::temp_dir();
    ensure!(
        !closed.reason.contains('/')
            && !closed.reason.contains(&*tmp.to_string_lossy())
            && closed.reason.contains("recording"),
        "the reason names a path or says nothing: {:?}",
        closed.reason
    );
    // The audit, for the broker's administrators, says where.
    let ev = broker
        .wait_event("recording_failed", |e| {
            e.session.as_deref() == Some(created.id.as_str())
        })
        .await?;
    ensure!(
        ev.detail.contains(&*recordings.to_string_lossy()),
        "the audit lost the path: {ev:?}"
    );
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::RecordingFailed),
        "{ended:?}"
    );
    Ok(())
}
