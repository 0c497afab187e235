//! The broker under hostile clients: slow-loris HTTP headers, stalled TLS handshakes and SSH
//! version exchanges, connection floods over the caps, and token or API-key guessing. Each
//! attack is cut within its limit, answered with a clear refusal, and the broker keeps serving
//! everyone else, during the attack and after it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle::config::{Config, TlsMode};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, StatusCode, TestBroker, WAIT, Ws, assert_still_serving,
    close, expect_error, pattern, session_request,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

/// Another client, as far as the broker can tell: Linux routes all of 127/8 to the loopback.
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// The trickle rate of slow clients.
const TRICKLE: Duration = Duration::from_millis(100);

/// A TCP connection to `to` from the local address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(timeout(WAIT, socket.connect(to))
        .await
        .context("tcp connect timed out")??)
}

/// Reads until the peer closes (end of file or reset); returns what was read. Fails if the
/// connection is still open after [`WAIT`].
async fn read_to_close(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!(
                "still open after {WAIT:?}; read {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0) | Err(_)) => return Ok(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Opens a connection, writes `head` then a never-ending header one byte per [`TRICKLE`]
/// (nothing at all when `head` is `None`), and returns how long the broker kept it open.
async fn slow_client(to: SocketAddr, head: Option<&'static [u8]>) -> Result<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect(to).await?;
    let (mut rd, mut wr) = stream.into_split();
    let writer = async move {
        let Some(head) = head else {
            return std::future::pending::<()>().await;
        };
        for &b in head.iter().chain(std::iter::repeat(&b'a')) {
            if wr.write_all(&[b]).await.is_err() {
                return; // closed by the broker
            }
            sleep(TRICKLE).await;
        }
    };
    let reader = async move {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = rd.read(&mut buf).await {}
    };
    timeout(WAIT, async {
        tokio::select! {
            () = reader => {}
            () = writer => {}
        }
    })
    .await
    .context("a slow client was never cut off")?;
    Ok(start.elapsed())
}

/// `/metrics` value of `name`.
async fn metric(broker: &TestBroker, name: &str) -> Result<u64> {
    let (status, body) = broker.api(Method::GET, "/metrics", None, None).await?;
    ensure!(status == StatusCode::OK, "/metrics: {status}");
    let text = body.as_str().context("metrics are text")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in:\n{text}"))
}

/// A keep-alive connection that has been served one request, so it holds a connection slot.
async fn served_connection(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let mut stream = connect_from(from, to).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\nok\n") {
        let n = timeout(WAIT, stream.read(&mut buf))
            .await
            .context("no answer to /healthz")??;
        ensure!(
            n > 0,
            "closed instead of served: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    ensure!(seen.starts_with(b"HTTP/1.1 200"), "{seen:?}");
    Ok(stream)
}

/// A connection the broker closes at once, before answering anything.
async fn refused_connection(from: IpAddr, to: SocketAddr) -> Result<()> {
    let mut stream = connect_from(from, to).await?;
    // The write may fail already: the broker may have closed before it.
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await;
    let seen = read_to_close(&mut stream).await?;
    ensure!(
        seen.is_empty(),
        "a connection over the cap was served: {:?}",
        String::from_utf8_lossy(&seen)
    );
    Ok(())
}

/// A broker with agent `id` online, announcing `vnc` in front of an echo service.
async fn with_agent(
    tweak: impl FnOnce(&mut Config),
    id: &str,
) -> Result<(TestBroker, EchoServer, Agent)> {
    let broker = TestBroker::start_with(tweak).await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, id).await?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    Ok((broker, echo, agent))
}

#[tokio::test]
async fn slow_and_silent_http_clients_are_cut_while_others_are_served() -> Result<()> {
    let limit = Duration::from_secs(2);
    let (broker, _echo, _agent) = with_agent(|c| c.http_header_timeout = limit, "pc-loris").await?;
    let addr = broker.http_addr();
    let mut attack = JoinSet::new();
    for i in 0..20 {
        let head: Option<&'static [u8]> =
            (i % 4 != 0).then_some(b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: ");
        attack.spawn(slow_client(addr, head));
    }
    // During the attack: the API and a WebSocket session work.
    let (status, body) = broker
        .api(
            Method::GET,
            "/api/v1/agents",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    let created = broker
        .create_session(&session_request("pc-loris", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(10_000, 3)).await?;
    // A bridged WebSocket is no request header: it outlives the header timeout.
    sleep(limit + Duration::from_millis(500)).await;
    ws.round_trip(&pattern(10_000, 4)).await?;
    ws.close().await?;
    let mut cut = 0;
    while let Some(open_for) = attack.join_next().await {
        let open_for = open_for??;
        // Cut by the timeout, not at once: the broker did accept and wait for them.
        ensure!(
            open_for >= limit - Duration::from_millis(300),
            "cut after {open_for:?}, before the {limit:?} header timeout"
        );
        cut += 1;
    }
    ensure!(cut == 20);
    let timeouts = metric(&broker, "passerelle_http_header_timeouts_total").await?;
    ensure!(timeouts >= 20, "{timeouts} header timeouts counted");
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_request_body_trickled_slowly_is_answered_408_and_cut() -> Result<()> {
    let limit = Duration::from_secs(2);
    let broker = TestBroker::start_with(|c| c.http_request_timeout = limit).await?;
    let addr = broker.http_addr();
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /api/v1/sessions HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"agent\"",
        broker.admin_key()
    );
    slow.write_all(head.as_bytes()).await?;
    let (mut rd, mut wr) = slow.into_split();
    let trickle = tokio::spawn(async move {
        while wr.write_all(b" ").await.is_ok() {
            sleep(TRICKLE).await;
        }
    });
    // Meanwhile the API answers others.
    let (status, body) = broker
        .api(
            Method::GET,
            "/api/v1/agents",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    let mut seen = Vec::new();
    timeout(WAIT, rd.read_to_end(&mut seen))
        .await
        .context("a trickled body was never cut")?
        .ok();
    let open_for = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&seen);
    ensure!(
        text.starts_with("HTTP/1.1 408") && text.contains("request_timeout"),
        "{text}"
    );
    ensure!(
        open_for >= limit - Duration::from_millis(300),
        "cut after {open_for:?}, before the {limit:?} request timeout"
    );
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_dropped() -> Result<()> {
    let limit = Duration::from_secs(2);
    let broker = TestBroker::start_with(|c| {
        c.tls = TlsMode::SelfSigned;
        c.tls_handshake_timeout = limit;
    })
    .await?;
    let addr = broker.http_addr();
    // One says nothing; one sends the first bytes of a ClientHello record and stops.
    let silent = tokio::spawn(slow_client(addr, None));
    let started = Instant::now();
    let mut partial = TcpStream::connect(addr).await?;
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await?;
    // Meanwhile HTTPS works.
    let https = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(WAIT)
        .build()?;
    let url = format!("https://{addr}/healthz");
    let resp = https.get(&url).send().await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    let seen = read_to_close(&mut partial).await?;
    let partial_open = started.elapsed();
    let silent_open = silent.await??;
    for open_for in [partial_open, silent_open] {
        ensure!(
            open_for >= limit - Duration::from_millis(300) && open_for < WAIT,
            "stalled handshake cut after {open_for:?} (limit {limit:?})"
        );
    }
    ensure!(
        !seen.starts_with(&[0x16]),
        "the broker answered a partial ClientHello with a handshake"
    );
    let metrics = https
        .get(format!("https://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("passerelle_tls_handshake_timeouts_total 2\n"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_service_resumes() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.http_max_connections = 6;
        c.http_header_timeout = Duration::from_secs(30);
    })
    .await?;
    let addr = broker.http_addr();
    let here = addr.ip();
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(served_connection(here, addr).await?);
    }
    refused_connection(here, addr).await?;
    refused_connection(OTHER, addr).await?;
    ensure!(
        broker
            .api(Method::GET, "/healthz", None, None)
            .await
            .is_err(),
        "the API answered over the cap"
    );
    // One slot frees up: service resumes.
    held.pop();
    let deadline = Instant::now() + WAIT;
    while broker
        .api(Method::GET, "/healthz", None, None)
        .await
        .is_err()
    {
        ensure!(
            Instant::now() < deadline,
            "no service after a slot freed up"
        );
        sleep(passerelle_e2e::POLL).await;
    }
    let refused = metric(&broker, "passerelle_http_connections_refused_total").await?;
    ensure!(refused >= 3, "{refused} refusals counted");
    drop(held);
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() -> Result<()> {
    let (broker, _echo, _agent) = with_agent(
        |c| {
            c.http_max_connections_per_ip = 3;
            c.http_header_timeout = Duration::from_secs(30);
        },
        "pc-per-ip",
    )
    .await?;
    let addr = broker.http_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(served_connection(OTHER, addr).await?);
    }
    refused_connection(OTHER, addr).await?;
    // Another address is served meanwhile, WebSockets included.
    let created = broker
        .create_session(&session_request("pc-per-ip", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(b"other clients are served").await?;
    ws.close().await?;
    // The address gets a slot again once one of its connections closes.
    held.pop();
    let deadline = Instant::now() + WAIT;
    loop {
        match served_connection(OTHER, addr).await {
            Ok(s) => {
                held.push(s);
                break;
            }
            Err(e) if Instant::now() >= deadline => return Err(e.context("never served again")),
            Err(_) => sleep(passerelle_e2e::POLL).await,
        }
    }
    drop(held);
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn ssh_clients_that_stall_before_authentication_are_cut_and_capped() -> Result<()> {
    let limit = Duration::from_secs(2);
    let broker = TestBroker::start_with(|c| {
        c.preauth_timeout = limit;
        c.max_agent_connections = 3;
    })
    .await?;
    let addr = broker.ssh_addr();
    // Silent after the broker's banner, and a banner sent one byte at a time forever.
    let silent = tokio::spawn(slow_client(addr, None));
    let slow = tokio::spawn(slow_client(addr, Some(b"SSH-2.0-")));
    for open_for in [silent.await??, slow.await??] {
        ensure!(
            open_for >= limit - Duration::from_millis(300),
            "cut after {open_for:?}, before the {limit:?} pre-auth timeout"
        );
    }
    // The cap: three connections wait in the version exchange; a fourth is closed unanswered.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await?;
        let mut banner = [0u8; 8];
        timeout(WAIT, s.read_exact(&mut banner))
            .await
            .context("no SSH banner")??;
        ensure!(&banner == b"SSH-2.0-", "{banner:?}");
        held.push(s);
    }
    let mut over = TcpStream::connect(addr).await?;
    let seen = read_to_close(&mut over).await?;
    ensure!(
        seen.is_empty(),
        "served over the cap: {:?}",
        String::from_utf8_lossy(&seen)
    );
    // The held ones are cut by the pre-auth timeout; then a real agent gets in.
    for s in &mut held {
        read_to_close(s).await?;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let mut probe = TcpStream::connect(addr).await?;
        let mut banner = [0u8; 8];
        if timeout(WAIT, probe.read_exact(&mut banner)).await?.is_ok() {
            break;
        }
        ensure!(Instant::now() < deadline, "slots never freed up");
        sleep(passerelle_e2e::POLL).await;
    }
    assert_still_serving(&broker).await
}

/// An HTTP client whose connections come from `from`.
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
) -> Result<(StatusCode, Option<String>, serde_json::Value)> {
    let resp = client
        .get(format!("{}/api/v1/agents", broker.base_url()))
        .bearer_auth(key)
        .send()
        .await?;
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, retry, body))
}

#[tokio::test]
async fn token_guessing_locks_the_address_out_and_is_audited_once() -> Result<()> {
    let (broker, _echo, _agent) = with_agent(
        |c| {
            c.auth_failure_limit = 5;
            // Long enough for the steps below on a slow machine, short enough to wait out.
            c.auth_lockout = Duration::from_secs(5);
        },
        "pc-guess",
    )
    .await?;
    let created = broker
        .create_session(&session_request("pc-guess", "vnc"))
        .await?;
    let guess = |n: usize| {
        let fake = format!("{n:0>43}");
        created.raw_ws_url.replace(&created.token, &fake)
    };
    for n in 0..5 {
        let closed = Ws::connect_from(&guess(n), OTHER)
            .await?
            .expect_close()
            .await?;
        ensure!(closed.code == close::TOKEN_INVALID.code, "{closed:?}");
    }
    // Locked out: even the right token is refused from there, and it is not spent.
    let closed = Ws::connect_from(&created.raw_ws_url, OTHER)
        .await?
        .expect_close()
        .await?;
    ensure!(
        closed.code == close::TOO_MANY_ATTEMPTS.code && closed.reason.contains("retry in"),
        "{closed:?}"
    );
    for n in 5..10 {
        let closed = Ws::connect_from(&guess(n), OTHER)
            .await?
            .expect_close()
            .await?;
        ensure!(closed.code == close::TOO_MANY_ATTEMPTS.code, "{closed:?}");
    }
    let other = client_from(OTHER)?;
    let (status, retry, body) = get_agents(&other, &broker, broker.admin_key()).await?;
    expect_error(
        &(status, body),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
    )?;
    let retry: u64 = retry.context("no Retry-After")?.parse()?;
    ensure!((1..=5).contains(&retry), "Retry-After: {retry}");
    // Everyone else is served, the right token included.
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(b"the rightful viewer").await?;
    ws.close().await?;
    // One audit event for the episode, in the tenant of the session guessed at.
    let ev = broker
        .wait_event("token_guessing", |e| {
            e.peer_addr
                .as_deref()
                .is_some_and(|p| p.starts_with("127.0.0.2:"))
        })
        .await?;
    ensure!(
        ev.detail.contains("5 failed") && ev.detail.contains(&created.id),
        "{ev:?}"
    );
    let page = broker.audit("kind=token_guessing").await?;
    ensure!(page.events.len() == 1, "{:#?}", page.events);
    ensure!(metric(&broker, "passerelle_auth_lockouts_total").await? == 1);
    // The cool-down ends.
    let deadline = Instant::now() + WAIT;
    while get_agents(&other, &broker, broker.admin_key()).await?.0 != StatusCode::OK {
        ensure!(Instant::now() < deadline, "the lockout never ended");
        sleep(Duration::from_millis(100)).await;
    }
    let again = broker
        .create_session(&session_request("pc-guess", "vnc"))
        .await?;
    let mut ws = Ws::connect_from(&again.raw_ws_url, OTHER).await?;
    ws.round_trip(b"forgiven").await?;
    ws.close().await?;
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn api_key_guessing_is_answered_429_with_retry_after() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.auth_failure_limit = 3;
        c.auth_lockout = Duration::from_secs(3);
    })
    .await?;
    let admin = broker.admin_key().to_owned();
    let other = client_from(OTHER)?;
    // No credentials at all is no guess.
    for _ in 0..5 {
        let resp = other
            .get(format!("{}/api/v1/agents", broker.base_url()))
            .send()
            .await?;
        ensure!(resp.status() == StatusCode::UNAUTHORIZED);
    }
    // The admin key's public id with made-up secrets.
    // `psk_<id>_<secret>`; the secret is base64url and may itself hold '_'.
    let (key_id, secret) = admin
        .strip_prefix("psk_")
        .and_then(|rest| rest.split_once('_'))
        .context("key format")?;
    let wrong: Vec<String> = (0..3)
        .map(|i| format!("psk_{key_id}_{}", format!("{i}").repeat(secret.len())))
        .collect();
    for key in &wrong {
        let (status, _, body) = get_agents(&other, &broker, key).await?;
        expect_error(&(status, body), StatusCode::UNAUTHORIZED, "unauthorized")?;
    }
    let (status, retry, body) = get_agents(&other, &broker, &admin).await?;
    expect_error(
        &(status, body),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
    )?;
    ensure!(retry.is_some(), "no Retry-After");
    // The rightful admin elsewhere is served; the event names the key id, never a secret.
    let ev = broker
        .wait_event("token_guessing", |e| {
            e.peer_addr
                .as_deref()
                .is_some_and(|p| p.starts_with("127.0.0.2:"))
        })
        .await?;
    ensure!(ev.detail.contains(key_id), "{ev:?}");
    ensure!(
        !ev.detail.contains(secret) && wrong.iter().all(|w| !ev.detail.contains(w)),
        "a secret in the audit: {ev:?}"
    );
    let deadline = Instant::now() + WAIT;
    while get_agents(&other, &broker, &admin).await?.0 != StatusCode::OK {
        ensure!(Instant::now() < deadline, "the lockout never ended");
        sleep(Duration::from_millis(100)).await;
    }
    assert_still_serving(&broker).await
}
