//! What viewers may send that is legal but unusual, or malformed: binary messages fragmented
//! into many continuation frames (reassembled and bridged byte-exact, or refused with 1009 when
//! they add up to more than the limit), and malformed RFB after the handshake on a `vnc` session
//! whose messages the broker frames (view-only or recorded). Each refusal is a close frame with
//! a named code and a reason, the session ends audited, and the broker keeps serving.

use anyhow::{Result, ensure};
use bytes::Bytes;
use passerelle_e2e::{
    Agent, EchoServer, EndReason, FakeVnc, Forward, Method, TestBroker, Ws, assert_still_serving,
    close, pattern, session_request,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// `data` as one binary message in `parts` frames: a binary frame, then continuation frames,
/// the last one final.
async fn send_fragmented(ws: &mut Ws, data: &[u8], parts: usize) -> Result<()> {
    let size = data.len().div_ceil(parts);
    let chunks: Vec<&[u8]> = data.chunks(size).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let last = i + 1 == chunks.len();
        let frame = Frame::message(Bytes::copy_from_slice(chunk), opcode, last);
        ws.send_message(Message::Frame(frame)).await?;
    }
    Ok(())
}

async fn echo_setup(
    tweak: impl FnOnce(&mut passerelle::config::Config),
) -> Result<(TestBroker, EchoServer, Agent)> {
    let broker = TestBroker::start_with(tweak).await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-frag").await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    Ok((broker, echo, agent))
}

#[tokio::test]
async fn a_message_in_many_continuation_frames_is_bridged_byte_exact() -> Result<()> {
    let (broker, echo, _agent) = echo_setup(|_| {}).await?;
    let created = broker
        .create_session(&session_request("pc-frag", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    let data = pattern(200_000, 11);
    send_fragmented(&mut ws, &data, 400).await?;
    let back = ws.read_exact(data.len()).await?;
    ensure!(back == data, "the reassembled message came back different");
    // A fragmented message interleaved with single-frame ones keeps the order.
    send_fragmented(&mut ws, &pattern(3000, 12), 3).await?;
    ws.send(&pattern(100, 13)).await?;
    let mut want = pattern(3000, 12);
    want.extend(pattern(100, 13));
    ensure!(ws.read_exact(want.len()).await? == want, "order lost");
    ensure!(echo.stats().bytes_in == 203_100, "{:?}", echo.stats());
    ws.close().await
}

#[tokio::test]
async fn fragments_adding_up_to_more_than_the_limit_close_with_1009() -> Result<()> {
    let limit = 64 * 1024;
    let (broker, echo, _agent) = echo_setup(|c| c.max_ws_message_bytes = limit).await?;
    let created = broker
        .create_session(&session_request("pc-frag", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    // Exactly the limit, in fragments, is fine.
    send_fragmented(&mut ws, &pattern(limit, 1), 16).await?;
    ensure!(ws.read_exact(limit).await? == pattern(limit, 1));
    // Each fragment is small; together they are over.
    let _ = send_fragmented(&mut ws, &pattern(limit + 4096, 2), 20).await;
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::MESSAGE_TOO_BIG.code, "{closed:?}");
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(EndReason::ProtocolError),
        "{ended:#?}"
    );
    ensure!(
        echo.stats().bytes_in == limit as u64,
        "part of the oversized message went through: {:?}",
        echo.stats()
    );
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn malformed_rfb_from_the_viewer_ends_the_session_as_a_protocol_error() -> Result<()> {
    const PW: &str = "framing-pw";
    let broker = TestBroker::start().await?;
    let vnc = FakeVnc::start(PW).await?;
    let mut agent = Agent::registered(&broker, "pc-rfb").await?;
    let (status, body) = broker
        .api(
            Method::PATCH,
            "/api/v1/agents/pc-rfb",
            Some(broker.admin_key()),
            Some(&json!({ "vnc_password": PW })),
        )
        .await?;
    ensure!(status.is_success(), "{status} {body}");
    agent.connect(&[Forward::named("vnc", vnc.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;

    let cases: [(&str, &[u8]); 3] = [
        ("garbage", b"\xc7\x00garbage that is no RFB message"),
        ("an unknown message type", &[77, 0, 0, 0, 0, 0, 0, 0]),
        // ClientCutText claiming 2 GiB of clipboard.
        (
            "an oversized ClientCutText",
            &[6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff],
        ),
    ];
    // Every vnc session frames the viewer's messages, view-only or not.
    let runs = [true, false]
        .into_iter()
        .flat_map(|view_only| cases.into_iter().map(move |case| (view_only, case)));
    for (i, (view_only, (what, bad))) in runs.enumerate() {
        let what = format!("{what} (view_only {view_only})");
        let mut req = session_request("pc-rfb", "vnc");
        req.view_only = view_only;
        let created = broker.create_session(&req).await?;
        let mut ws = Ws::connect(&created.ws_url).await?;
        ws.rfb_handshake().await?;
        // ClientInit goes through (and comes back from the echoing server).
        ws.send(&[1]).await?;
        ensure!(ws.read_exact(1).await? == [1], "{what}: ClientInit lost");
        let before = vnc.received();
        ws.send(bad).await?;
        let closed = ws.expect_close().await?;
        ensure!(
            closed.code == close::PROTOCOL_ERROR.code && closed.reason.contains("protocol error"),
            "{what}: {closed:?}"
        );
        ensure!(
            vnc.received() == before,
            "{what}: malformed bytes reached the VNC server"
        );
        let ended = broker.wait_ended(&created.id).await?;
        ensure!(
            ended.end_reason == Some(EndReason::ProtocolError),
            "{what}: {ended:#?}"
        );
        broker
            .wait_event("session_ended", |e| {
                e.session.as_deref() == Some(created.id.as_str())
                    && e.detail.contains("protocol_error")
            })
            .await?;
        ensure!(
            vnc.authed() == i + 1,
            "{what}: {} authenticated",
            vnc.authed()
        );
    }
    assert_still_serving(&broker).await
}
