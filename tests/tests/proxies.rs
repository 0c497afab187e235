//! Behind reverse proxies (`trusted_proxies`): a real HAProxy in front of the SSH listener sends
//! PROXY protocol v2 headers, and the broker counts, limits and audits the real clients; on HTTP,
//! `X-Forwarded-For` from a trusted proxy names the client, and from anyone else is ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::desktop::{free_port, wait_listening};
use passerelle_e2e::{Agent, EchoServer, Forward, StatusCode, TestBroker, WAIT, connect_from};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Everything the other side writes until it closes.
async fn read_to_close(stream: &mut TcpStream) -> Result<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!("still open after {WAIT:?}: {seen:?}"),
            Ok(Ok(0) | Err(_)) => return Ok(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The first line written on a new connection.
async fn first_line(stream: &mut TcpStream) -> Result<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + WAIT;
    while !seen.contains(&b'\n') {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!("no line within {WAIT:?}: {seen:?}"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&seen).into_owned())
}

/// HAProxy (Debian `haproxy`) relaying 127.0.0.1:`port` to `backend` with `send-proxy-v2`.
struct Haproxy {
    port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(backend: SocketAddr) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = format!(
            "global\n  maxconn 256\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend agents\n  bind 127.0.0.1:{port}\n  default_backend broker\n\
             backend broker\n  server broker {backend} send-proxy-v2\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting haproxy (scripts/install-test-deps.sh installs it)")?;
        wait_listening(port, &mut child, "haproxy").await?;
        Ok(Self {
            port,
            _child: child,
            _dir: dir,
        })
    }
}

/// An agent reaching the broker through `proxy` from the local address `from`.
async fn agent_through(
    broker: &TestBroker,
    proxy: &Haproxy,
    from: &str,
    echo: &EchoServer,
) -> Result<Agent> {
    let mut agent = Agent::registered(broker, &passerelle_e2e::unique("pc-proxied")).await?;
    agent.through_port(proxy.port, broker.host_key())?;
    agent.extra_args(&["-b", from]);
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(broker, &["vnc"]).await?;
    Ok(agent)
}

#[tokio::test]
async fn haproxy_in_front_of_ssh_gives_the_real_client_address() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
        c.ssh_connection_burst_per_source = 3;
        c.ssh_connections_per_source_per_sec = 0.2;
    })
    .await?;
    let proxy = Haproxy::start(broker.ssh_addr()).await?;
    let echo = EchoServer::start().await?;
    let proxy_addr = SocketAddr::new(local(1), proxy.port);

    // The agent's presence and audit show its own address, not HAProxy's.
    let agent = agent_through(&broker, &proxy, "127.0.0.3", &echo).await?;
    let info = broker.agent_as(broker.admin_key(), &agent.id).await?;
    let peer = info.peer_addr.unwrap_or_default();
    ensure!(peer.starts_with("127.0.0.3:"), "peer_addr {peer}");
    broker
        .wait_event("agent_connected", |e| {
            e.agent.as_deref() == Some(agent.id.as_str())
                && e.peer_addr
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("127.0.0.3:")
        })
        .await?;

    // A flood from one client through the proxy is paced for that client only.
    let mut refused = 0;
    for _ in 0..10 {
        let mut s = connect_from(local(4), proxy_addr).await?;
        if first_line(&mut s)
            .await?
            .starts_with("Not allowed at this time")
        {
            refused += 1;
        }
    }
    ensure!(refused >= 6, "only {refused} of 10 refused");
    agent_through(&broker, &proxy, "127.0.0.5", &echo).await?;

    // The trusted address connecting directly without a header: closed, nothing answered.
    let mut direct = connect_from(local(1), broker.ssh_addr()).await?;
    direct.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await?;
    let seen = read_to_close(&mut direct).await?;
    ensure!(seen.is_empty(), "answered without a PROXY header: {seen:?}");
    // Anyone else's PROXY header is not believed: it is SSH garbage to the broker.
    let mut forged = connect_from(local(6), broker.ssh_addr()).await?;
    let mut header = passerelle_proto::proxy::SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 1, 127, 0, 0, 1, 0, 1, 0, 2]);
    forged.write_all(&header).await?;
    let seen = read_to_close(&mut forged).await?;
    ensure!(seen.starts_with("SSH-2.0-"), "{seen:?}");
    Ok(())
}

fn client_from(from: IpAddr) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(from)
        .timeout(WAIT)
        .build()?)
}

async fn get_agents(
    client: &reqwest::Client,
    broker: &TestBroker,
    key: &str,
    forwarded_for: &str,
) -> Result<StatusCode> {
    Ok(client
        .get(format!("{}/api/v1/agents", broker.base_url()))
        .bearer_auth(key)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await?
        .status())
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_from_a_trusted_proxy() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
        c.auth_failure_limit = 2;
    })
    .await?;
    let (proxy, stranger) = (client_from(local(1))?, client_from(local(2))?);
    let admin = broker.admin_key().to_owned();
    // The admin key's id with a wrong secret: the lockout is then audited in its tenant.
    let mut wrong = admin.clone();
    let last = if wrong.ends_with('A') { 'B' } else { 'A' };
    wrong.pop();
    wrong.push(last);
    // Through the trusted proxy: client 203.0.113.9 guesses and is locked out...
    for _ in 0..2 {
        let s = get_agents(&proxy, &broker, &wrong, "203.0.113.9").await?;
        ensure!(s == StatusCode::UNAUTHORIZED, "{s}");
    }
    let s = get_agents(&proxy, &broker, &admin, "203.0.113.9").await?;
    ensure!(s == StatusCode::TOO_MANY_REQUESTS, "{s}");
    // ...while another client behind the same proxy is served.
    let s = get_agents(&proxy, &broker, &admin, "198.51.100.1, 203.0.113.10").await?;
    ensure!(s == StatusCode::OK, "{s}");
    let ev = broker
        .wait_event("token_guessing", |e| {
            e.peer_addr
                .as_deref()
                .unwrap_or("")
                .starts_with("203.0.113.9")
        })
        .await?;
    ensure!(ev.detail.contains("203.0.113.9"), "{}", ev.detail);
    // From an untrusted address the header is ignored: it is counted as itself.
    for _ in 0..2 {
        let s = get_agents(&stranger, &broker, &wrong, "192.0.2.77").await?;
        ensure!(s == StatusCode::UNAUTHORIZED, "{s}");
    }
    let s = get_agents(&stranger, &broker, &admin, "192.0.2.78").await?;
    ensure!(s == StatusCode::TOO_MANY_REQUESTS, "{s}");
    let s = get_agents(&proxy, &broker, &admin, "192.0.2.77").await?;
    ensure!(s == StatusCode::OK, "{s}");
    Ok(())
}

#[tokio::test]
async fn a_trusted_proxy_that_sends_no_header_is_cut_at_the_preauth_timeout() -> Result<()> {
    let limit = std::time::Duration::from_secs(2);
    let broker = TestBroker::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
        c.preauth_timeout = limit;
    })
    .await?;
    let started = Instant::now();
    let mut silent = connect_from(local(1), broker.ssh_addr()).await?;
    let seen = read_to_close(&mut silent).await?;
    let open_for = started.elapsed();
    ensure!(seen.is_empty(), "{seen:?}");
    ensure!(
        open_for >= limit - std::time::Duration::from_millis(300),
        "cut after {open_for:?}, before the {limit:?} timeout"
    );
    // A header trickled forever (announcing a body it never sends) is cut the same way.
    let started = Instant::now();
    let mut slow = connect_from(local(1), broker.ssh_addr()).await?;
    let mut head = passerelle_proto::proxy::SIGNATURE.to_vec();
    head.extend_from_slice(&[0x21, 0x11, 0, 12]);
    slow.write_all(&head).await?;
    let seen = read_to_close(&mut slow).await?;
    ensure!(seen.is_empty() && started.elapsed() >= limit - std::time::Duration::from_millis(300));
    Ok(())
}
