//! Renewing the HTTPS certificate without a restart: `passerelle serve` reads its certificate
//! and key again on SIGHUP (`systemctl reload`). New handshakes get the new pair at once, a
//! viewer's WebSocket and an API keep-alive opened before keep working, launch URLs pin the new
//! certificate, and a bad pair is refused with an ERROR naming the file while the previous one
//! stays in service.
//!
//! `cargo build -p passerelle --bin passerelle && PASSERELLE_BIN=$CARGO_TARGET_DIR/debug/passerelle
//! cargo nextest run -p passerelle-e2e --test tls_reload`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::tls_probe::presented;
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, POLL, StatusCode, TestBroker, WAIT, Ws, pattern,
    session_request,
};
use passerelle_proto::launch::LaunchUrl;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// A self-signed pair for 127.0.0.1 and localhost.
struct Pair {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Pair {
    fn new() -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?
            .self_signed(&key)?;
        Ok(Self {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    fn sha256(&self) -> String {
        sha256_hex(&self.der)
    }

    /// A line from the middle of the key's PEM body: must never reach a log.
    fn key_line(&self) -> String {
        self.key
            .lines()
            .find(|l| !l.starts_with("-----"))
            .unwrap_or_default()
            .to_owned()
    }
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(der))
}

/// Replaces `path` through a rename, as certbot's deploy hooks and `install` do.
fn replace(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// TLS client settings that trust exactly `pairs`' certificates.
fn trusting(pairs: &[&Pair]) -> Result<Arc<rustls::ClientConfig>> {
    let ders: Vec<&[u8]> = pairs.iter().map(|p| p.der.as_slice()).collect();
    passerelle_e2e::tls_probe::trusting(&ders)
}

/// A kept-alive HTTPS connection to the broker.
type KeptAlive = tokio_rustls::client::TlsStream<TcpStream>;

async fn keep_alive(
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<KeptAlive> {
    let tcp = timeout(WAIT, TcpStream::connect(addr)).await??;
    let name = ServerName::try_from("127.0.0.1")?;
    Ok(timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
    )
    .await??)
}

/// `GET /healthz` on `conn`, keeping it open: the status code.
async fn healthz(conn: &mut KeptAlive) -> Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    conn.flush().await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 8192, "an endless header");
        let n = timeout(WAIT, conn.read(&mut byte)).await??;
        ensure!(n == 1, "the kept-alive connection closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .context("no content-length")?
        .parse()?;
    let mut body = vec![0u8; length];
    timeout(WAIT, conn.read_exact(&mut body)).await??;
    let status = head.split(' ').nth(1).context("no status")?;
    Ok(status.parse()?)
}

/// Polls new handshakes until they present `want`.
async fn wait_presented(
    addr: std::net::SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    want: &Pair,
) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = presented(addr, tls).await?;
        if got == want.der {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("new handshakes still present sha256 {}", sha256_hex(&got));
        }
        sleep(POLL).await;
    }
}

/// Polls the broker's log until a line contains every one of `needles`; returns that line.
async fn wait_log(broker: &TestBroker, needles: &[&str]) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let logs = broker.logs();
        if let Some(line) = logs.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return Ok(line.to_owned());
        }
        if Instant::now() >= deadline {
            bail!("no log line with {needles:?}; the log:\n{logs}");
        }
        sleep(POLL).await;
    }
}

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_and_keeps_open_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = files(dir.path());
    let (a, b) = (Pair::new()?, Pair::new()?);
    replace(&cert, &a.cert)?;
    replace(&key, &a.key)?;
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let broker =
        TestBroker::spawn_binary_https(&["--tls-cert", &cert_arg, "--tls-key", &key_arg]).await?;
    let addr = broker.http_addr();
    let tls = trusting(&[&a, &b])?;
    ensure!(presented(addr, &tls).await? == a.der, "A is not served");

    // A viewer's WebSocket over TLS, to an echo service behind a real OpenSSH agent.
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-reload").await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request("pc-reload", "vnc"))
        .await?;
    ensure!(
        created.raw_ws_url.starts_with("wss://"),
        "{}",
        created.raw_ws_url
    );
    let launch = LaunchUrl::parse(&created.launch_url)?;
    ensure!(
        launch.fingerprint.as_deref() == Some(a.sha256().as_str()),
        "launch URL pins {:?}",
        launch.fingerprint
    );
    let mut viewer = Ws::connect_tls(&created.raw_ws_url, tls.clone()).await?;
    viewer.round_trip(&pattern(64 * 1024, 1)).await?;
    // And an API client's kept-alive connection.
    let mut kept = keep_alive(addr, &tls).await?;
    ensure!(healthz(&mut kept).await? == 200);

    // Renewal: B over the files, then SIGHUP.
    replace(&cert, &b.cert)?;
    replace(&key, &b.key)?;
    broker.signal_binary("HUP").await?;
    wait_presented(addr, &tls, &b).await?;
    let line = wait_log(&broker, &["reloaded the TLS certificate", &b.sha256()]).await?;
    ensure!(
        line.contains("INFO") && line.contains(&a.sha256()) && line.contains("not_after"),
        "{line}"
    );
    // The viewer and the kept-alive connection opened before the reload still work, with A.
    viewer.round_trip(&pattern(64 * 1024, 2)).await?;
    ensure!(healthz(&mut kept).await? == 200);
    let kept_cert = kept.get_ref().1.peer_certificates().context("no chain")?;
    ensure!(kept_cert[0].as_ref() == a.der.as_slice());
    // Launch URLs issued from now on pin B.
    let (status, issued) = broker
        .api(
            Method::POST,
            &format!("/api/v1/sessions/{}/tokens", created.id),
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "{status} {issued}"
    );
    let launch_url = issued["launch_url"].as_str().context("launch_url")?;
    let launch = LaunchUrl::parse(launch_url)?;
    ensure!(
        launch.fingerprint.as_deref() == Some(b.sha256().as_str()),
        "launch URL after the reload pins {:?}",
        launch.fingerprint
    );

    // A key that belongs to another certificate: refused, named, B stays.
    replace(&key, &a.key)?;
    broker.signal_binary("HUP").await?;
    let line = wait_log(&broker, &["reload refused", "does not match"]).await?;
    ensure!(
        line.contains("ERROR") && line.contains(&key_arg) && line.contains(&b.sha256()),
        "{line}"
    );
    ensure!(
        presented(addr, &tls).await? == b.der,
        "B is no longer served"
    );
    // Garbage for a certificate: refused too.
    replace(&cert, "not a certificate\n")?;
    broker.signal_binary("HUP").await?;
    wait_log(
        &broker,
        &["reload refused", &cert_arg, "no PEM certificate"],
    )
    .await?;
    ensure!(
        presented(addr, &tls).await? == b.der,
        "B is no longer served"
    );

    // Still running and serving: the API, the open viewer.
    let (status, body) = broker
        .api(
            Method::GET,
            "/api/v1/agents/pc-reload",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::OK && body["online"] == true,
        "{status} {body}"
    );
    viewer.round_trip(&pattern(4096, 3)).await?;
    ensure!(healthz(&mut kept).await? == 200);
    let logs = broker.logs();
    for p in [&a, &b] {
        ensure!(!logs.contains(&p.key_line()), "key material in the log");
    }
    viewer.close().await?;
    let mut broker = broker;
    broker.shutdown().await
}

#[tokio::test]
async fn sighup_reloads_the_generated_pair_in_the_data_dir() -> Result<()> {
    let broker = TestBroker::spawn_binary_https(&[]).await?;
    let addr = broker.http_addr();
    let (cert, key) = (
        broker.data_dir().join(passerelle::keys::TLS_CERT_FILE),
        broker.data_dir().join(passerelle::keys::TLS_KEY_FILE),
    );
    let generated = Pair {
        cert: std::fs::read_to_string(&cert)?,
        key: String::new(),
        der: CertificateDer::from_pem_slice(&std::fs::read(&cert)?)?.to_vec(),
    };
    let b = Pair::new()?;
    let tls = trusting(&[&generated, &b])?;
    ensure!(presented(addr, &tls).await? == generated.der);
    replace(&cert, &b.cert)?;
    replace(&key, &b.key)?;
    broker.signal_binary("HUP").await?;
    wait_presented(addr, &tls, &b).await?;
    wait_log(&broker, &["reloaded the TLS certificate", &b.sha256()]).await?;
    let (status, _) = broker.api(Method::GET, "/healthz", None, None).await?;
    ensure!(status == StatusCode::OK, "{status}");
    let mut broker = broker;
    broker.shutdown().await
}

#[tokio::test]
async fn the_library_reload_reports_what_it_did_and_the_fingerprint_follows() -> Result<()> {
    use passerelle::server_cert::{PairError, Reloaded};
    let dir = tempfile::tempdir()?;
    let (cert, key) = files(dir.path());
    let (a, b) = (Pair::new()?, Pair::new()?);
    replace(&cert, &a.cert)?;
    replace(&key, &a.key)?;
    let files = passerelle::TlsMode::Files {
        cert: cert.clone(),
        key: key.clone(),
    };
    let broker = TestBroker::start_with(|c| c.tls = files).await?;
    let core = broker.broker();
    ensure!(core.tls_fingerprint() == Some(a.sha256()));
    ensure!(
        core.reload_tls().await?
            == Some(Reloaded::Unchanged {
                fingerprint: a.sha256()
            }),
        "an unchanged pair"
    );
    replace(&cert, &b.cert)?;
    replace(&key, &b.key)?;
    let done = core.reload_tls().await?;
    ensure!(
        done == Some(Reloaded::Replaced {
            previous: a.sha256(),
            fingerprint: b.sha256()
        }),
        "{done:?}"
    );
    ensure!(core.tls_fingerprint() == Some(b.sha256()));
    std::fs::remove_file(&key)?;
    match core.reload_tls().await {
        Err(PairError::Read { path, .. }) if path == key => {}
        other => bail!("a missing key: {other:?}"),
    }
    ensure!(core.tls_fingerprint() == Some(b.sha256()));

    // Over plain HTTP there is nothing to reload.
    let plain = TestBroker::start().await?;
    ensure!(plain.broker().reload_tls().await? == None);
    Ok(())
}
