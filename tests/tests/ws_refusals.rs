//! What the broker refuses from viewers: expired, reused, foreign and made-up tokens, oversized
//! and text frames, and viewers for an agent that is not there. Each refusal is a close frame
//! with a named code and a human reason, and the broker keeps serving.

use std::time::Duration;

use anyhow::{Result, ensure};
use bytes::Bytes;
use passerelle_e2e::{
    Agent, Closed, EchoServer, EndReason, Forward, TestBroker, Ws, assert_still_serving, close,
    pattern, session_request,
};
use tokio_tungstenite::tungstenite::Message;

/// A broker (configured by `tweak`) with agent `pc-ws` online, announcing `vnc` and `ssh` in
/// front of an echo service.
async fn setup(
    tweak: impl FnOnce(&mut passerelle::config::Config),
) -> Result<(TestBroker, EchoServer, Agent)> {
    let broker = TestBroker::start_with(tweak).await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-ws").await?;
    agent.connect(&[
        Forward::named("vnc", echo.port()),
        Forward::named("ssh", echo.port()),
    ])?;
    agent.wait_online(&broker, &["vnc", "ssh"]).await?;
    Ok((broker, echo, agent))
}

async fn refused(url: &str, code: close::CloseCode) -> Result<Closed> {
    let closed = Ws::connect(url).await?.expect_close().await?;
    ensure!(
        closed.code == code.code,
        "expected {code:?}, got {closed:?}"
    );
    ensure!(
        !closed.reason.is_empty(),
        "close {} without a human reason",
        closed.code
    );
    Ok(closed)
}

#[tokio::test]
async fn an_expired_token_is_refused_and_a_fresh_one_works() -> Result<()> {
    let (broker, _echo, _agent) = setup(|c| c.token_ttl = Duration::from_secs(1)).await?;
    let created = broker
        .create_session(&session_request("pc-ws", "vnc"))
        .await?;
    // Time passing, not synchronisation: the token's lifetime must run out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    refused(&created.raw_ws_url, close::TOKEN_EXPIRED).await?;
    broker
        .wait_event("token_refused", |e| {
            e.session.as_deref() == Some(created.id.as_str())
        })
        .await?;
    let issued = broker.new_token(&created.id).await?;
    let mut ws = Ws::connect(&issued.raw_ws_url).await?;
    ws.round_trip(b"fresh token").await?;
    ws.close().await
}

#[tokio::test]
async fn a_used_token_does_not_open_a_second_connection() -> Result<()> {
    let (broker, _echo, _agent) = setup(|_| {}).await?;
    let created = broker
        .create_session(&session_request("pc-ws", "vnc"))
        .await?;
    let mut first = Ws::connect(&created.raw_ws_url).await?;
    first.round_trip(b"first viewer").await?;
    refused(&created.raw_ws_url, close::TOKEN_INVALID).await?;
    refused(&created.ws_url, close::TOKEN_INVALID).await?;
    // The first viewer is not disturbed.
    first.round_trip(b"still mine").await?;
    first.close().await?;
    // Once the session has ended, its URLs answer that it has ended (or that the token is
    // spent); either way nothing opens.
    broker.wait_ended(&created.id).await?;
    let closed = Ws::connect(&created.raw_ws_url)
        .await?
        .expect_close()
        .await?;
    ensure!(
        [close::TOKEN_INVALID.code, close::SESSION_ENDED.code].contains(&closed.code),
        "{closed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tokens_are_bound_to_their_session() -> Result<()> {
    let (broker, echo, _agent) = setup(|_| {}).await?;
    let a = broker
        .create_session(&session_request("pc-ws", "vnc"))
        .await?;
    let b = broker
        .create_session(&session_request("pc-ws", "ssh"))
        .await?;
    // B's token on A's URL.
    let url = a.raw_ws_url.replace(&a.token, &b.token);
    ensure!(url != a.raw_ws_url, "token not found in the URL");
    refused(&url, close::TOKEN_INVALID).await?;
    // A made-up token, and none at all.
    refused(
        &a.raw_ws_url.replace(&a.token, &"A".repeat(43)),
        close::TOKEN_INVALID,
    )
    .await?;
    let bare = format!("ws://{}/ws/sessions/{}/raw", broker.http_addr(), a.id);
    refused(&bare, close::TOKEN_INVALID).await?;
    ensure!(
        echo.stats().accepted == 0,
        "a refused viewer reached the service"
    );
    // Session B itself is unharmed.
    let issued = broker.new_token(&b.id).await?;
    let mut ws = Ws::connect(&issued.raw_ws_url).await?;
    ws.round_trip(b"b is fine").await?;
    ws.close().await
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() -> Result<()> {
    let limit = 64 * 1024;
    let (broker, echo, _agent) = setup(|c| c.max_ws_message_bytes = limit).await?;
    let created = broker
        .create_session(&session_request("pc-ws", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(limit, 1)).await?; // exactly the limit is fine
    ws.send_message(Message::Binary(Bytes::from(pattern(limit + 1, 2))))
        .await?;
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::MESSAGE_TOO_BIG.code, "{closed:?}");
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::ProtocolError),
        "{ended:#?}"
    );
    ensure!(
        ended.bytes_up == limit as u64,
        "the oversized frame went through: {ended:#?}"
    );
    ensure!(echo.stats().bytes_in == limit as u64, "{:?}", echo.stats());
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_text_frame_is_a_protocol_error() -> Result<()> {
    let (broker, _echo, _agent) = setup(|_| {}).await?;
    let created = broker
        .create_session(&session_request("pc-ws", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.send_message(Message::text("hello")).await?;
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::PROTOCOL_ERROR.code, "{closed:?}");
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_viewer_for_an_agent_that_left_is_told_so() -> Result<()> {
    let (broker, _echo, mut agent) = setup(|_| {}).await?;
    let created = broker
        .create_session(&session_request("pc-ws", "vnc"))
        .await?;
    agent.disconnect().await?;
    agent.wait_offline(&broker).await?;
    refused(&created.raw_ws_url, close::AGENT_OFFLINE).await?;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::AgentOffline),
        "{ended:#?}"
    );
    assert_still_serving(&broker).await
}
