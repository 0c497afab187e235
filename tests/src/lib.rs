//! Shared harness for Passerelle's end-to-end tests.
//!
//! The tests drive the real broker ([`TestBroker`], in process, on ports chosen by the OS) with
//! real peers: stock OpenSSH as the workstation agent ([`Agent`]), plain TCP services on
//! `127.0.0.1:0` behind it ([`EchoServer`], [`SourceServer`]) and a WebSocket client as the
//! operator's viewer ([`Ws`]).
//!
//! Rules every helper follows, so that no test can hang or pass by luck:
//! - every wait on a peer is bounded ([`tokio::time::timeout`]), and fails with what was seen;
//! - conditions are awaited by polling or by notification, never by a fixed sleep;
//! - child processes are killed when their handle drops.

mod agent;
pub mod agent_loop;
mod broker;
pub mod cluster;
pub mod desktop;
pub mod faults;
pub mod haproxy;
pub mod oidc;
pub mod postgres;
pub mod process;
pub mod rdp;
mod rfb_server;
mod services;
pub mod sshd;
pub mod terminal;
pub mod tls_probe;
mod ws;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use agent::{Agent, AgentKey, Forward, SshOutput, SshProcess};
pub use broker::{Attached, TestBroker, admin_key_file, session_request};
pub use postgres::TestPostgres;
pub use process::passerelle_bin;
pub use rfb_server::FakeVnc;
pub use services::{ConnStats, EchoServer, SourceServer};
pub use ws::{Closed, Ws, WssStream};

pub use passerelle_proto::api::{
    AgentInfo, AuditEvent, AuditPage, CreateSession, CreatedSession, IssuedToken, Role,
    SessionInfo, SessionState,
};
pub use passerelle_proto::close;
pub use passerelle_proto::close::EndReason;
pub use reqwest::{Method, StatusCode};

/// How long any single wait on a peer may take before the test fails (generous: CI machines
/// are slow, and a passing test never waits this long).
pub const WAIT: Duration = Duration::from_secs(15);

/// The interval at which conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Installs the process-wide TLS provider and a tracing subscriber (`RUST_LOG` selects what
/// the broker logs; output goes through the test harness's capture).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Either we or the broker installs it first; both are the same provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// `len` bytes of a pattern that depends on `seed` and on the offset, so that a lost, duplicated
/// or reordered chunk is detected.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(i as u64, seed)).collect()
}

/// The byte at `offset` of [`pattern`]`(_, seed)`.
pub fn pattern_byte(offset: u64, seed: u8) -> u8 {
    // 251 is prime, so the pattern does not line up with power-of-two chunk sizes.
    ((offset % 251) as u8).wrapping_add(seed).wrapping_mul(7) ^ ((offset >> 16) as u8)
}

/// A name nobody else in this process has used, e.g. `probe-3`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A TCP connection to `to` from the local address `from` (e.g. 127.0.0.2, to be another
/// client), bounded by [`WAIT`].
pub async fn connect_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpStream> {
    use anyhow::Context as _;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    Ok(tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .context("tcp connect timed out")??)
}

/// Proves that `broker` still does its job: a fresh agent announcing `vnc` in front of a fresh
/// echo service, a session, a round trip of bytes through the raw WebSocket, a clean close.
/// Negative tests call this after provoking a refusal.
pub async fn assert_still_serving(broker: &TestBroker) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(broker, &unique("probe")).await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent
        .wait_online(broker, &["vnc"])
        .await
        .context("probe agent did not come online")?;
    let created = broker
        .create_session(&session_request(&agent.id, "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(4096, 42))
        .await
        .context("probe round trip")?;
    ws.close().await?;
    Ok(())
}

/// Checks that an API answer is the error `status` with `{"error":{"code": code, "message": ...}}`
/// and a non-empty message.
pub fn expect_error(
    (status, body): &(StatusCode, serde_json::Value),
    want_status: StatusCode,
    want_code: &str,
) -> anyhow::Result<()> {
    let code = body["error"]["code"].as_str();
    let message = body["error"]["message"].as_str().unwrap_or("");
    anyhow::ensure!(
        *status == want_status && code == Some(want_code) && !message.is_empty(),
        "expected {want_status} {want_code:?} with a message, got {status} {body}"
    );
    Ok(())
}

/// This crate's directory as the running test sees it: cargo and nextest set
/// `CARGO_MANIFEST_DIR` for test processes. The compile-time value may name another checkout,
/// since a target directory shared by two checkouts reuses a test binary built in either.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
