//! The helper across a renewal of the broker's certificate (SIGHUP, here `Broker::reload_tls`):
//! a launch URL pins the certificate served when it was issued. A connection the helper has
//! open keeps working through the reload; a new connection for that launch URL meets the new
//! certificate and is refused as a pin mismatch, which ends the tunnel; a launch URL issued
//! after the reload pins the new certificate and works.

mod common;

use anyhow::{Context as _, Result, ensure};
use common::{Helper, Setup};
use passerelle::config::TlsMode;
use passerelle::server_cert::Reloaded;
use passerelle_desktop::LaunchUrl;
use passerelle_e2e::{EchoServer, TestBroker, WAIT, pattern};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Sends `data` through `conn` to the echo service and reads it back.
async fn round_trip(conn: &mut TcpStream, data: &[u8]) -> Result<()> {
    let (mut rd, mut wr) = conn.split();
    let write = async { wr.write_all(data).await };
    let read = async {
        let mut back = vec![0u8; data.len()];
        rd.read_exact(&mut back).await.map(|_| back)
    };
    let (w, back) = timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .context("echo round trip timed out")?;
    w?;
    ensure!(back? == data, "the echo differs from what was sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_url_pins_the_certificate_served_when_it_was_issued() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.tls = TlsMode::SelfSigned).await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let before = s.session.launch_url.clone();
    let old_pin = LaunchUrl::parse(&before)?.fingerprint.context("no pin")?;
    let config = format!("{}local_connections = \"any\"\n", common::trusting(&before));
    let mut helper = Helper::no_launch_with(&before, &config)?;
    let addr = helper.addr().await?;
    let mut open = TcpStream::connect(addr).await?;
    round_trip(&mut open, &pattern(100_000, 1)).await?;

    // The renewal: a new pair over the generated one, reloaded.
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .self_signed(&key)?;
    let dir = broker.data_dir();
    std::fs::write(
        dir.join(passerelle::keys::TLS_KEY_FILE),
        key.serialize_pem(),
    )?;
    std::fs::write(dir.join(passerelle::keys::TLS_CERT_FILE), cert.pem())?;
    let reloaded = broker.broker().reload_tls().await?;
    let Some(Reloaded::Replaced { fingerprint, .. }) = reloaded else {
        anyhow::bail!("not replaced: {reloaded:?}");
    };
    ensure!(fingerprint != old_pin);

    // The open connection goes on.
    round_trip(&mut open, &pattern(100_000, 2)).await?;
    // A client reconnecting through the old launch URL meets the new certificate.
    let _second = TcpStream::connect(addr).await?;
    let (status, stderr) = helper.exit().await?;
    ensure!(status.code() == Some(3), "exit {status}; stderr:\n{stderr}");
    ensure!(
        stderr.contains("does not match the pinned fingerprint")
            && stderr.contains(&old_pin)
            && stderr.contains(&fingerprint),
        "{stderr}"
    );

    // A launch URL issued now pins the new certificate and works.
    let fresh = s.api.create_session(&s.agent.id, "rdp").await?;
    ensure!(LaunchUrl::parse(&fresh.launch_url)?.fingerprint.as_deref() == Some(&*fingerprint));
    let mut helper = Helper::no_launch_with(&fresh.launch_url, &config)?;
    let addr = helper.addr().await?;
    let mut conn = TcpStream::connect(addr).await?;
    round_trip(&mut conn, &pattern(100_000, 3)).await?;
    helper.interrupt()?;
    let (status, stderr) = helper.exit().await?;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");
    Ok(())
}
