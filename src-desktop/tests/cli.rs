//! The helper against the real broker and a real OpenSSH agent: `passerelle-desktop open URL
//! --no-launch` bridges bytes to an echo service behind the agent (plain and pinned TLS), and
//! every failure (wrong pin, refused token, broker gone, bad URL) ends with a clear message, a
//! distinct exit code, and nothing left listening.

mod common;

use std::net::SocketAddr;

use anyhow::{Context as _, Result, ensure};
use common::{Helper, Setup, listening};
use passerelle::config::TlsMode;
use passerelle_desktop::LaunchUrl;
use passerelle_e2e::{EchoServer, TestBroker, WAIT, pattern};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Sends `data` through `conn` to the echo service and reads it back, both ways at once.
async fn round_trip(conn: &mut TcpStream, data: &[u8]) -> Result<()> {
    let (mut rd, mut wr) = conn.split();
    let write = async {
        wr.write_all(data).await?;
        Ok::<_, std::io::Error>(())
    };
    let read = async {
        let mut back = vec![0u8; data.len()];
        rd.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    let (w, back) = timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .context("echo round trip timed out")?;
    w?;
    ensure!(back? == data, "the echo differs from what was sent");
    Ok(())
}

fn code(status: std::process::ExitStatus) -> Option<i32> {
    status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_launch_bridges_bytes_and_serves_reconnections() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let url = &s.session.launch_url;
    let config = format!("{}local_connections = \"any\"\n", common::trusting(url));
    let mut helper = Helper::no_launch_with(url, &config)?;
    let addr = helper.addr().await?;
    ensure!(addr.ip().is_loopback(), "{addr} is not on loopback");
    // Native clients reconnect: with local_connections = "any", the launch token opens every
    // connection of the session.
    for seed in 0..3u8 {
        let mut conn = TcpStream::connect(addr).await?;
        round_trip(&mut conn, &pattern(200_000, seed)).await?;
    }
    helper.interrupt()?;
    let (status, stderr) = helper.exit().await?;
    ensure!(code(status) == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(stderr.contains("tunnel closed"), "{stderr}");
    ensure!(
        !stderr.contains(&token_of(&s.session.launch_url)?),
        "the token was logged"
    );
    ensure!(!listening(addr).await, "{addr} still listening");
    Ok(())
}

fn token_of(url: &str) -> Result<String> {
    Ok(LaunchUrl::parse(url)?.token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_tls_bridges_bytes_and_a_stop_ends_the_helper() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.tls = TlsMode::SelfSigned).await?;
    ensure!(broker.base_url().starts_with("https://"));
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "ssh", echo.port()).await?;
    let launch = LaunchUrl::parse(&s.session.launch_url)?;
    ensure!(
        launch.fingerprint.is_some(),
        "a self-signed broker pins its certificate"
    );
    let mut helper = Helper::no_launch(&s.session.launch_url)?;
    let addr = helper.addr().await?;
    let mut conn = TcpStream::connect(addr).await?;
    round_trip(&mut conn, &pattern(300_000, 9)).await?;
    // The operator stops the session while a client is connected.
    s.api.stop(&s.session.id).await?;
    let mut rest = Vec::new();
    timeout(WAIT, conn.read_to_end(&mut rest))
        .await
        .context("the local connection was not closed")??;
    let (status, stderr) = helper.exit().await?;
    ensure!(code(status) == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(
        stderr.contains("session ended: session stopped by alice (code 4020)"),
        "{stderr}"
    );
    ensure!(!listening(addr).await, "{addr} still listening");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_or_an_untrusted_certificate_is_refused_before_listening() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.tls = TlsMode::SelfSigned).await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let good = LaunchUrl::parse(&s.session.launch_url)?;
    let wrong = LaunchUrl {
        fingerprint: Some("ab".repeat(32)),
        ..good.clone()
    };
    let mut helper = Helper::no_launch(&wrong.to_url())?;
    ensure!(helper.line().await?.is_none(), "an address was printed");
    let (status, stderr) = helper.exit().await?;
    ensure!(code(status) == Some(3), "exit {status}; stderr:\n{stderr}");
    ensure!(
        stderr.contains("does not match the pinned fingerprint")
            && stderr.contains(&"ab".repeat(32))
            && stderr.contains(good.fingerprint.as_deref().unwrap_or("?")),
        "{stderr}"
    );
    // Without a pin, a self-signed certificate is not trusted.
    let unpinned = LaunchUrl {
        fingerprint: None,
        ..good
    };
    let mut helper = Helper::no_launch(&unpinned.to_url())?;
    ensure!(helper.line().await?.is_none(), "an address was printed");
    let (status, stderr) = helper.exit().await?;
    ensure!(code(status) == Some(3), "exit {status}; stderr:\n{stderr}");
    ensure!(stderr.contains("TLS with the broker failed"), "{stderr}");
    ensure!(echo.stats().accepted == 0, "the service was reached");
    Ok(())
}

/// Starts the helper on `url`, connects one client, and expects a refused token.
async fn expect_refused(url: &str, want: &str) -> Result<()> {
    let mut helper = Helper::no_launch(url)?;
    let addr = helper.addr().await?;
    let mut conn = TcpStream::connect(addr).await?;
    let mut rest = Vec::new();
    timeout(WAIT, conn.read_to_end(&mut rest))
        .await
        .context("the local connection was not closed")??;
    let (status, stderr) = helper.exit().await?;
    ensure!(code(status) == Some(4), "exit {status}; stderr:\n{stderr}");
    ensure!(
        stderr.contains("the broker refused the session token") && stderr.contains(want),
        "want {want:?} in:\n{stderr}"
    );
    ensure!(!listening(addr).await, "{addr} still listening");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_and_spent_tokens_are_reported() -> Result<()> {
    let broker =
        TestBroker::start_with(|c| c.token_ttl = std::time::Duration::from_millis(600)).await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let launch = LaunchUrl::parse(&s.session.launch_url)?;
    let forged = LaunchUrl {
        token: "not-the-token".into(),
        ..launch.clone()
    };
    expect_refused(&forged.to_url(), "(code 4001)").await?;
    // The launch token has to be used within its lifetime (not a synchronisation sleep: the
    // point is to let it expire).
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    expect_refused(&launch.to_url(), "token expired (code 4002)").await?;
    // A session that ended before the helper came: no token opens it any more.
    let other = s.api.create_session(&s.agent.id, "rdp").await?;
    s.api.stop(&other.id).await?;
    // (4001 today: the broker forgets an ended session's tokens; 4003 would say more.)
    expect_refused(&other.launch_url, "(code 400").await?;
    ensure!(echo.stats().accepted == 0, "the service was reached");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_ends_the_helper() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "ssh", echo.port()).await?;
    let mut helper = Helper::no_launch(&s.session.launch_url)?;
    let addr = helper.addr().await?;
    let mut conn = TcpStream::connect(addr).await?;
    round_trip(&mut conn, &pattern(10_000, 1)).await?;
    broker.shutdown().await?;
    let (status, stderr) = helper.exit().await?;
    ensure!(code(status) == Some(7), "exit {status}; stderr:\n{stderr}");
    ensure!(
        stderr.contains("the broker ended the session: broker shutting down (code 4022)"),
        "{stderr}"
    );
    ensure!(!listening(addr).await, "{addr} still listening");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_reported_before_listening() -> Result<()> {
    // A port nobody listens on (bound, then released).
    let closed: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let url = format!(
        "passerelle://open?broker=http%3A%2F%2F{}&session=abc&token=t&service=rdp",
        closed.to_string().replace(':', "%3A")
    );
    let mut helper = Helper::no_launch(&url)?;
    ensure!(helper.line().await?.is_none(), "an address was printed");
    let (status, stderr) = helper.exit().await?;
    ensure!(code(status) == Some(5), "exit {status}; stderr:\n{stderr}");
    ensure!(
        stderr.contains(&format!("cannot reach the broker at {closed}")),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_foreign_urls_are_refused() -> Result<()> {
    let good = "passerelle://open?broker=https%3A%2F%2Fb.example&session=abc&token=t&service=rdp";
    let cases = [
        (
            "https://evil.example/open?broker=x",
            "not a Passerelle launch URL",
        ),
        (
            "passerelle://open?broker=https%3A%2F%2Fb.example",
            "lacks the `session` parameter",
        ),
        (&format!("{good}&cmd=rm"), "unknown parameter `cmd`"),
        (
            &good.replace("https%3A", "file%3A"),
            "broker must be an http:// or https:// URL",
        ),
        (&format!("{good}&fp=12"), "fp is not valid"),
        ("passerelle://open?broker=%ZZ", "badly escaped"),
    ];
    for (url, want) in cases {
        let mut helper = Helper::no_launch(url)?;
        ensure!(
            helper.line().await?.is_none(),
            "an address was printed for {url}"
        );
        let (status, stderr) = helper.exit().await?;
        ensure!(
            code(status) == Some(2),
            "{url}: exit {status}; stderr:\n{stderr}"
        );
        ensure!(
            stderr.contains("error: invalid launch URL: ") && stderr.contains(want),
            "{url}: want {want:?} in:\n{stderr}"
        );
    }
    Ok(())
}
