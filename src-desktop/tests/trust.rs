//! Links from anywhere cannot send the helper anywhere: a broker it does not trust is refused
//! (exit 8, with how to trust it) before anything is opened, unless the person at the terminal
//! confirms it, which is then remembered; plain HTTP needs `allow_http`; and the local port
//! bridges only the first client connection unless configured otherwise.

mod common;

use std::process::Stdio;

use anyhow::{Context as _, Result, bail, ensure};
use common::{Helper, Setup, listening};
use passerelle::config::TlsMode;
use passerelle_desktop::trust::{TRUST_FILE, origin_of};
use passerelle_desktop::{LaunchUrl, Tunnel, TunnelEnd, TunnelEvent, TunnelOptions};
use passerelle_e2e::{EchoServer, TestBroker, WAIT, pattern};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

fn origin(url: &str) -> Result<String> {
    Ok(origin_of(&LaunchUrl::parse(url)?.broker)?)
}

/// Expects the helper to refuse before listening, with exit code 8 and `want` in its message.
async fn expect_untrusted(mut helper: Helper, want: &[&str]) -> Result<Helper> {
    ensure!(helper.line().await?.is_none(), "an address was printed");
    let (status, stderr) = helper.exit().await?;
    ensure!(status.code() == Some(8), "exit {status}; stderr:\n{stderr}");
    for w in want {
        ensure!(stderr.contains(w), "want {w:?} in:\n{stderr}");
    }
    Ok(helper)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_nobody_trusted_is_refused_with_the_way_to_trust_it() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.tls = TlsMode::SelfSigned).await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let url = &s.session.launch_url;
    let origin = origin(url)?;
    ensure!(origin.starts_with("https://127.0.0.1:"), "{origin}");
    // No configuration at all, and no terminal to ask on.
    let helper = Helper::spawn_with_config(&["open", url, "--no-launch"], &[], None)?;
    let helper = expect_untrusted(
        helper,
        &[
            &format!("{origin} is not a trusted broker"),
            "trusted_brokers",
            "desktop.toml",
        ],
    )
    .await?;
    ensure!(
        !helper.config_dir().join(TRUST_FILE).exists(),
        "a refusal was remembered as trust"
    );
    // Another broker is trusted, not this one; nor the same host on another port.
    let other = "trusted_brokers = [\"https://127.0.0.1:1\", \"https://broker.example\"]\n";
    expect_untrusted(Helper::no_launch_with(url, other)?, &[&origin]).await?;
    ensure!(echo.stats().accepted == 0, "the service was reached");
    // Trusted by configuration: it opens.
    let mut helper = Helper::no_launch(url)?;
    let addr = helper.addr().await?;
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"trusted").await?;
    let mut back = [0u8; 7];
    timeout(WAIT, conn.read_exact(&mut back)).await??;
    ensure!(&back == b"trusted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_refused_without_allow_http_even_when_trusted() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "ssh", echo.port()).await?;
    let url = &s.session.launch_url;
    let origin = origin(url)?;
    ensure!(origin.starts_with("http://"), "{origin}");
    let config = format!("trusted_brokers = [\"{origin}\"]\n");
    expect_untrusted(
        Helper::no_launch_with(url, &config)?,
        &["plain-HTTP broker", "allow_http = true"],
    )
    .await?;
    ensure!(echo.stats().accepted == 0, "the service was reached");
    Ok(())
}

/// `passerelle-desktop open URL --no-launch` on a pseudo-terminal (util-linux `script`), with
/// its configuration directory under `home`, answering `answer` when asked. Returns what the
/// terminal showed and the local address, if it printed one (then it is stopped).
async fn on_a_terminal(
    url: &str,
    home: &std::path::Path,
    answer: &str,
) -> Result<(String, Option<std::net::SocketAddr>)> {
    let bin = env!("CARGO_BIN_EXE_passerelle-desktop");
    let line = format!("exec {bin} open '{url}' --no-launch");
    let mut child = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env("XDG_CONFIG_HOME", home)
        .env_remove("PASSERELLE_DESKTOP_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting script (util-linux)")?;
    let pgid = child.id().context("script exited at once")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut seen = String::new();
    let mut addr = None;
    let read = async {
        let mut answered = false;
        let mut buf = [0u8; 4096];
        loop {
            // The question ends without a newline: read what comes, not lines.
            let n = out.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if !answered && seen.contains("[y/N]") {
                stdin.write_all(format!("{answer}\n").as_bytes()).await?;
                answered = true;
            }
            addr = seen.lines().find_map(|l| l.trim().parse().ok());
            if addr.is_some() {
                return Ok(());
            }
        }
    };
    timeout(WAIT, read)
        .await
        .context("the helper on a terminal did not finish")??;
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .status()
        .await;
    let _ = timeout(WAIT, child.wait()).await;
    Ok((seen, addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_asks_once_and_remembers_the_answer() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.tls = TlsMode::SelfSigned).await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let origin = origin(&s.session.launch_url)?;
    let home = tempfile::tempdir()?;
    let trust_file = home.path().join("passerelle").join(TRUST_FILE);

    // "no": refused, nothing remembered.
    let (seen, addr) = on_a_terminal(&s.session.launch_url, home.path(), "n").await?;
    ensure!(
        seen.contains(&format!("open a session on {origin}?")),
        "no question:\n{seen}"
    );
    ensure!(addr.is_none(), "it listened after a no:\n{seen}");
    ensure!(seen.contains("you declined it"), "{seen}");
    ensure!(!trust_file.exists(), "a no was remembered");

    // "y": it opens, and remembers.
    let (seen, addr) = on_a_terminal(&s.session.launch_url, home.path(), "y").await?;
    ensure!(addr.is_some(), "nothing listened after a yes:\n{seen}");
    let remembered = std::fs::read_to_string(&trust_file)?;
    ensure!(remembered.lines().any(|l| l == origin), "{remembered}");

    // Next time, without a terminal, it is trusted.
    let next = s.api.create_session(&s.agent.id, "rdp").await?;
    let mut helper = Helper::spawn(
        &["open", &next.launch_url, "--no-launch"],
        &[(
            "XDG_CONFIG_HOME",
            home.path().to_str().context("utf-8 path")?,
        )],
    )?;
    let addr = helper.addr().await?;
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"again").await?;
    let mut back = [0u8; 5];
    timeout(WAIT, conn.read_exact(&mut back)).await??;
    ensure!(&back == b"again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_local_connection_is_bridged_by_default() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let mut helper = Helper::no_launch(&s.session.launch_url)?;
    let addr = helper.addr().await?;
    let mut first = TcpStream::connect(addr).await?;
    first.write_all(&pattern(50_000, 1)).await?;
    let mut back = vec![0u8; 50_000];
    timeout(WAIT, first.read_exact(&mut back)).await??;
    ensure!(back == pattern(50_000, 1));
    // A second client is closed at once, and never reaches the service.
    let mut second = TcpStream::connect(addr).await?;
    let _ = second.write_all(b"intruder").await;
    let mut rest = Vec::new();
    let read = timeout(WAIT, second.read_to_end(&mut rest)).await;
    ensure!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))) && rest.is_empty(),
        "the second connection was served: {read:?} {rest:?}"
    );
    ensure!(echo.stats().accepted == 1, "{:?}", echo.stats());
    // The first still works; when it closes, the helper is done.
    first.write_all(b"still here").await?;
    let mut back = [0u8; 10];
    timeout(WAIT, first.read_exact(&mut back)).await??;
    drop(first);
    let (status, stderr) = helper.exit().await?;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(
        stderr.contains("a second local connection was refused"),
        "{stderr}"
    );
    ensure!(!listening(addr).await, "{addr} still listening");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_later_connections_and_ends_with_the_first() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "ssh", echo.port()).await?;
    let launch = passerelle_desktop::parse_launch_url(&s.session.launch_url)?;
    let tunnel = Tunnel::start(launch, TunnelOptions::default()).await?;
    let mut events = tunnel.subscribe();
    let addr = tunnel.local_addr();
    let mut first = TcpStream::connect(addr).await?;
    first.write_all(b"one").await?;
    let mut back = [0u8; 3];
    timeout(WAIT, first.read_exact(&mut back)).await??;
    let second = TcpStream::connect(addr).await?;
    let refused = loop {
        match timeout(WAIT, events.recv()).await?? {
            TunnelEvent::Refused { peer } => break peer,
            TunnelEvent::Connected { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    };
    ensure!(refused == second.local_addr()?, "{refused}");
    drop(first);
    let end = timeout(WAIT, tunnel.wait()).await?;
    ensure!(end == TunnelEnd::Closed, "{end:?}");
    ensure!(!listening(addr).await);
    // Closing the helper's tunnel does not end the session.
    let info = s
        .api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/sessions/{}", s.session.id),
            None,
            200,
        )
        .await?;
    ensure!(info["state"] != "ended", "{info}");
    Ok(())
}
