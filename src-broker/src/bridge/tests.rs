//! The bridge over in-memory pipes: what each way of ending does, back-pressure from a slow
//! viewer, and the filters.

use std::time::Duration;

use bytes::Bytes;
use passerelle_proto::close::{self, Closure, EndReason};

use super::*;
use crate::ends::{Fed, FilterError, PipeSink, PipeSource, pipe};

/// The test's side of a bridge: what it feeds each end with, and what each end got.
struct Peers {
    /// Frames "from the viewer".
    viewer_in: PipeSink,
    /// Frames the bridge sent to the viewer.
    viewer_out: PipeSource,
    /// Frames "from the agent".
    agent_in: PipeSink,
    /// Frames the bridge sent to the agent.
    agent_out: PipeSource,
}

type Ends = ((PipeSource, PipeSink), (PipeSource, PipeSink));

/// Pipes for both ends; `viewer_room` frames fit toward the viewer before it must read.
fn wire(viewer_room: usize) -> (Peers, Ends) {
    let (viewer_in, viewer_rx) = pipe(16);
    let (viewer_tx, viewer_out) = pipe(viewer_room);
    let (agent_in, agent_rx) = pipe(16);
    let (agent_tx, agent_out) = pipe(16);
    (
        Peers {
            viewer_in,
            viewer_out,
            agent_in,
            agent_out,
        },
        ((viewer_rx, viewer_tx), (agent_rx, agent_tx)),
    )
}

fn meter() -> Meter {
    Meter {
        session: Arc::default(),
        connection: Arc::default(),
        metrics: Arc::default(),
    }
}

fn opts(limit: usize) -> Options {
    Options::plain(limit, Duration::from_secs(30))
}

fn bin(b: &'static [u8]) -> Frame {
    Frame::Binary(Bytes::from_static(b))
}

/// Reads binary frames until `n` bytes arrived.
async fn read_bytes(src: &mut PipeSource, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match src.recv().await {
            Ok(Some(Frame::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("expected bytes, got {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn bytes_flow_both_ways_until_the_service_closes() {
    let (mut p, (viewer, agent)) = wire(16);
    let m = meter();
    let bridge = tokio::spawn(run(
        viewer,
        agent,
        opts(1 << 20),
        m.clone(),
        std::future::pending(),
    ));
    p.viewer_in.send(bin(b"hello")).await.unwrap();
    assert_eq!(read_bytes(&mut p.agent_out, 5).await, b"hello");
    p.agent_in.send(bin(b"world")).await.unwrap();
    assert_eq!(read_bytes(&mut p.viewer_out, 5).await, b"world");
    // The service says EOF after more data: the viewer gets all of it, then the bridge ends.
    p.agent_in.send(bin(b"bye")).await.unwrap();
    p.agent_in.finish().await.unwrap();
    assert_eq!(read_bytes(&mut p.viewer_out, 3).await, b"bye");
    let done = bridge.await.unwrap();
    assert_eq!(done.closure, Closure::ending(EndReason::ServiceClosed));
    assert_eq!(m.session.get(), (5, 8));
    assert_eq!(m.connection.get(), (5, 8));
}

#[tokio::test]
async fn a_viewer_that_closes_sends_eof_to_the_service() {
    let (mut p, (viewer, agent)) = wire(16);
    let bridge = tokio::spawn(run(
        viewer,
        agent,
        opts(1 << 20),
        meter(),
        std::future::pending(),
    ));
    p.viewer_in.finish().await.unwrap();
    let done = bridge.await.unwrap();
    assert_eq!(done.closure.end, Some(EndReason::ViewerClosed));
    assert!(
        matches!(p.agent_out.recv().await, Ok(None)),
        "the agent got EOF"
    );
}

#[tokio::test]
async fn stop_and_agent_loss_end_the_bridge_with_their_reason() {
    let (mut p, (viewer, agent)) = wire(16);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Closure>();
    let stop = async move {
        stop_rx
            .await
            .unwrap_or_else(|_| Closure::ending(EndReason::Stopped))
    };
    let bridge = tokio::spawn(run(viewer, agent, opts(1 << 20), meter(), stop));
    let stopped = Closure::ending_with(
        EndReason::Stopped,
        close::STOPPED,
        "session stopped by alice",
    );
    stop_tx.send(stopped.clone()).unwrap();
    assert_eq!(bridge.await.unwrap().closure, stopped);
    assert!(
        matches!(p.agent_out.recv().await, Ok(None)),
        "the agent got EOF"
    );

    let (mut p, (viewer, agent)) = wire(16);
    let bridge = tokio::spawn(run(
        viewer,
        agent,
        opts(1 << 20),
        meter(),
        std::future::pending(),
    ));
    p.agent_in.fail(EndError::Closed).await;
    let done = bridge.await.unwrap();
    assert_eq!(done.closure.end, Some(EndReason::AgentDisconnected));
    assert_eq!(done.closure.code, close::AGENT_DISCONNECTED);
}

#[tokio::test]
async fn what_the_viewer_breaks_ends_as_a_protocol_error() {
    for (sent, code) in [
        (Err(EndError::TooBig), close::MESSAGE_TOO_BIG),
        (
            Err(EndError::Protocol("bad frame".into())),
            close::PROTOCOL_ERROR,
        ),
        // A text frame to a service that takes bytes only.
        (Ok(Frame::Text("{}".into())), close::PROTOCOL_ERROR),
    ] {
        let (mut p, (viewer, (agent_rx, _))) = wire(16);
        let (agent_tx, _agent_out) = pipe(16);
        let byte_sink = IoSinkRefusingText(agent_tx);
        let bridge = tokio::spawn(run(
            viewer,
            (agent_rx, byte_sink),
            opts(1 << 20),
            meter(),
            std::future::pending(),
        ));
        match sent {
            Ok(frame) => p.viewer_in.send(frame).await.unwrap(),
            Err(e) => p.viewer_in.fail(e).await,
        }
        let done = bridge.await.unwrap();
        assert_eq!(done.closure.code, code);
        assert_eq!(done.closure.end, Some(EndReason::ProtocolError));
    }
}

/// A sink that takes bytes only, as a channel does.
struct IoSinkRefusingText(PipeSink);

impl Sink for IoSinkRefusingText {
    async fn send(&mut self, frame: Frame) -> Result<(), EndError> {
        match frame {
            Frame::Text(_) => Err(EndError::Protocol("binary frames only".into())),
            f => self.0.send(f).await,
        }
    }
    async fn flush(&mut self) -> Result<(), EndError> {
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), EndError> {
        self.0.finish().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_viewer_pauses_the_agent_and_ends_the_session_only_when_it_stalls() {
    // Room for 2 frames toward the viewer, 64 KiB of buffer: the agent soon cannot send more.
    let (mut p, (viewer, agent)) = wire(2);
    let bridge = tokio::spawn(run(
        viewer,
        agent,
        opts(64 * 1024),
        meter(),
        std::future::pending(),
    ));
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    let mut sent = 0usize;
    let blocked = loop {
        let send = p.agent_in.send(Frame::Binary(chunk.clone()));
        match tokio::time::timeout(Duration::from_secs(1), send).await {
            Ok(r) => r.unwrap(),
            Err(_) => break sent,
        }
        sent += chunk.len();
        assert!(sent < 4 << 20, "the agent was never paused");
    };
    assert!(
        blocked <= 64 * 1024 + 24 * 16 * 1024,
        "the bridge held {blocked} bytes for a viewer that reads nothing"
    );
    // A viewer that reads, however slowly, gets everything and the session goes on.
    let mut got = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        got += read_bytes(&mut p.viewer_out, 1).await.len();
    }
    assert!(got > 0);
    assert!(
        !bridge.is_finished(),
        "a slow viewer does not end the session"
    );
    // A viewer that takes nothing for the stall period does.
    let done = tokio::time::timeout(Duration::from_secs(60), bridge)
        .await
        .expect("the stall ends the bridge")
        .unwrap();
    assert_eq!(done.closure, Closure::ending(EndReason::ViewerTooSlow));
}

/// Drops bytes `x`, counts each one as an input event, and records `*` in its place.
struct DropX;

impl Filter for DropX {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, FilterError> {
        if input.contains(&b'!') {
            return Err(FilterError("no shouting".into()));
        }
        out.extend(input.iter().filter(|b| **b != b'x'));
        let dropped = input.iter().filter(|b| **b == b'x').count();
        Ok(Fed {
            input_events: dropped as u64,
            record: Some(
                input
                    .iter()
                    .map(|b| if *b == b'x' { b'*' } else { *b })
                    .collect(),
            ),
        })
    }
}

#[tokio::test]
async fn the_viewers_filter_drops_and_refuses() {
    let (mut p, (viewer, agent)) = wire(16);
    let mut o = opts(1 << 20);
    o.up = Some(Box::new(DropX));
    o.first_up = Bytes::from_static(b"axb");
    let bridge = tokio::spawn(run(viewer, agent, o, meter(), std::future::pending()));
    assert_eq!(
        read_bytes(&mut p.agent_out, 2).await,
        b"ab",
        "first_up is filtered too"
    );
    p.viewer_in.send(bin(b"xxcx")).await.unwrap();
    assert_eq!(read_bytes(&mut p.agent_out, 1).await, b"c");
    p.viewer_in.send(bin(b"stop!")).await.unwrap();
    let done = bridge.await.unwrap();
    assert_eq!(done.closure.code, close::PROTOCOL_ERROR);
    assert!(
        done.closure.reason.contains("no shouting"),
        "{:?}",
        done.closure
    );
}

#[tokio::test]
async fn control_frames_pass_to_ends_that_take_them() {
    let (mut p, (viewer, agent)) = wire(16);
    let bridge = tokio::spawn(run(
        viewer,
        agent,
        opts(1 << 20),
        meter(),
        std::future::pending(),
    ));
    p.viewer_in
        .send(Frame::Text("resize".into()))
        .await
        .unwrap();
    assert_eq!(
        p.agent_out.recv().await.unwrap(),
        Some(Frame::Text("resize".into()))
    );
    p.agent_in.send(Frame::Text("exit".into())).await.unwrap();
    assert_eq!(
        p.viewer_out.recv().await.unwrap(),
        Some(Frame::Text("exit".into()))
    );
    p.viewer_in.finish().await.unwrap();
    bridge.await.unwrap();
}

#[tokio::test]
async fn without_coalescing_each_agent_frame_reaches_the_viewer_alone() {
    // Room for one frame toward the viewer: the others wait in the buffer, where they would be
    // joined.
    let (mut p, (viewer, agent)) = wire(1);
    let mut o = opts(1 << 20);
    o.coalesce = false;
    let bridge = tokio::spawn(run(viewer, agent, o, meter(), std::future::pending()));
    for b in [&b"first"[..], b"second", b"third", b"fourth"] {
        p.agent_in
            .send(Frame::Binary(Bytes::from_static(b)))
            .await
            .unwrap();
    }
    for want in [&b"first"[..], b"second", b"third", b"fourth"] {
        let got = p.viewer_out.recv().await.unwrap();
        assert_eq!(got, Some(Frame::Binary(Bytes::from_static(want))));
    }
    bridge.abort();
}

/// Records control messages that start with "note" as events, refuses "bad", keeps the rest
/// out of the recording.
struct Notes;

impl Filter for Notes {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, FilterError> {
        out.extend_from_slice(input);
        Ok(Fed::default())
    }

    fn control(&mut self, text: &str) -> Result<Option<serde_json::Value>, FilterError> {
        match text {
            "bad" => Err(FilterError("a bad control message".into())),
            t if t.starts_with("note") => Ok(Some(serde_json::json!({ "note": t }))),
            _ => Ok(None),
        }
    }
}

#[tokio::test]
async fn filters_say_which_control_frames_the_recording_keeps_and_may_refuse_them() {
    use passerelle_proto::recording::{Content, Frames, Header, Kind as K};

    use crate::recording::SigningKey;

    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::load_or_create(dir.path()).unwrap());
    let header = Header {
        version: 1,
        session: "s".into(),
        tenant: "default".into(),
        agent: "pc1".into(),
        service: "ssh".into(),
        operator: "alice".into(),
        view_only: false,
        started_at: "2026-12-01T00:00:00.000Z".into(),
        content: Content::Terminal,
        signer: key.public_hex(),
        segment: 1,
    };
    let writers = crate::recording::Writers::start(1, 64 << 20).unwrap();
    let path = dir.path().join("s.psrec");
    let rec = Recording::start(path.clone(), &header, key, 1 << 20, &writers).unwrap();
    let (mut p, (viewer, agent)) = wire(16);
    let mut o = opts(1 << 20);
    o.up = Some(Box::new(Notes));
    o.down = Some(Box::new(Notes));
    o.first_events = vec![serde_json::json!({ "first": true })];
    o.recording = Some(rec.clone());
    let bridge = tokio::spawn(run(viewer, agent, o, meter(), std::future::pending()));
    for text in ["note up", "secret up"] {
        p.viewer_in.send(Frame::Text(text.into())).await.unwrap();
        let got = p.agent_out.recv().await.unwrap();
        assert_eq!(got, Some(Frame::Text(text.into())), "passes as it is");
    }
    for text in ["note down", "secret down"] {
        p.agent_in.send(Frame::Text(text.into())).await.unwrap();
        let got = p.viewer_out.recv().await.unwrap();
        assert_eq!(got, Some(Frame::Text(text.into())), "passes as it is");
    }
    p.viewer_in.send(Frame::Text("bad".into())).await.unwrap();
    let done = bridge.await.unwrap();
    assert_eq!(done.closure.code, close::PROTOCOL_ERROR);
    assert!(done.closure.reason.contains("a bad control message"));
    let summary = passerelle_proto::recording::Summary {
        ended_at: "x".into(),
        end_reason: "protocol_error".into(),
        duration_us: 1,
        bytes_up: 0,
        bytes_down: 0,
        frames: 0,
    };
    rec.finish(summary).await;
    let file = std::fs::read(&path).unwrap();
    let (_, frames) = Frames::new(&file).unwrap();
    let events: Vec<serde_json::Value> = frames
        .filter(|f| f.kind == K::Event)
        .map(|f| serde_json::from_slice(f.payload).unwrap())
        .collect();
    assert_eq!(
        events,
        [
            serde_json::json!({ "first": true }),
            serde_json::json!({ "note": "note up" }),
            serde_json::json!({ "note": "note down" }),
        ],
        "the first events first, then what the filters kept, never the rest"
    );
}
