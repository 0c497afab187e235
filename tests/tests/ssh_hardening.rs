//! The agents' SSH listener under hostile and careless clients (issue 15): per-source connection
//! rate and pre-authentication share, lockout after rejected keys with a coalesced audit, the
//! audit of rejected keys kept inside the tenants concerned, forwards that give their place back
//! when cancelled, and an outside scanner (ssh-audit) finding nothing to fail or warn about.
//! Each attack comes from one local address (Linux routes all of 127/8 to the loopback) while a
//! real agent from another address gets in.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, StatusCode, TestBroker, WAIT, assert_still_serving,
    connect_from, manifest_dir, unique,
};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, timeout};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const OTHER: &str = "127.0.0.2";

/// The first line the broker writes on a new connection ("SSH-2.0-…" or a refusal), or what
/// it wrote before closing.
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

/// An agent connecting from [`OTHER`] comes online while the attack goes on.
async fn other_source_gets_in(broker: &TestBroker) -> Result<Agent> {
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(broker, &unique("pc-other")).await?;
    agent.extra_args(&["-b", OTHER]);
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(broker, &["vnc"]).await?;
    let info = broker.agent_as(broker.admin_key(), &agent.id).await?;
    let peer = info.peer_addr.unwrap_or_default();
    ensure!(peer.starts_with(OTHER), "connected from {peer}");
    Ok(agent)
}

#[tokio::test]
async fn a_connection_flood_from_one_source_is_paced_and_others_get_in() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.ssh_connection_burst_per_source = 5;
        c.ssh_connections_per_source_per_sec = 1.0;
    })
    .await?;
    // The DHEat pattern: many connections at once from one address.
    let (mut banners, mut refusals) = (0, 0);
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut s = connect_from(ATTACKER, broker.ssh_addr()).await?;
        let line = first_line(&mut s).await?;
        if line.starts_with("SSH-2.0-") {
            banners += 1;
        } else if line.starts_with("Not allowed at this time") {
            refusals += 1;
        } else {
            bail!("unexpected first line {line:?}");
        }
        held.push(s);
    }
    // The burst, and at most a few tokens refilled while the loop ran.
    ensure!(
        (5..=10).contains(&banners) && refusals == 30 - banners,
        "{banners} banners, {refusals} refusals"
    );
    other_source_gets_in(&broker).await?;
    drop(held);
    Ok(())
}

#[tokio::test]
async fn one_source_cannot_hold_every_preauth_slot() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.max_preauth_per_source = 3).await?;
    // Three connections that stop after the broker's banner hold the source's share.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(ATTACKER, broker.ssh_addr()).await?;
        let line = first_line(&mut s).await?;
        ensure!(line.starts_with("SSH-2.0-"), "{line:?}");
        held.push(s);
    }
    let mut fourth = connect_from(ATTACKER, broker.ssh_addr()).await?;
    let line = first_line(&mut fourth).await?;
    ensure!(
        line.starts_with("Not allowed at this time"),
        "a fourth pre-auth connection from the same source got {line:?}"
    );
    // Another source is not concerned, and an authenticated agent holds no pre-auth slot.
    let _other = other_source_gets_in(&broker).await?;
    drop(held);
    // Once the stalled ones are gone, the source gets in again.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = connect_from(ATTACKER, broker.ssh_addr()).await?;
        if first_line(&mut s).await?.starts_with("SSH-2.0-") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the source's slots never came back"
        );
        tokio::time::sleep(passerelle_e2e::POLL).await;
    }
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn rejected_keys_lock_the_source_out_and_are_audited_once() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.ssh_auth_failure_limit = 3;
        c.auth_lockout = Duration::from_secs(60);
    })
    .await?;
    let _victim = Agent::registered(&broker, "pc-victim").await?;
    let guesser = Agent::new(&broker, "pc-victim").await?;
    for _ in 0..3 {
        let out = guesser.run("pc-victim", &["-N"], &[]).await?;
        ensure!(
            !out.status.success() && out.stderr.contains("Permission denied"),
            "{}",
            out.stderr
        );
    }
    // Locked out: refused before the banner, valid keys included.
    let mut s = connect_from(ATTACKER, broker.ssh_addr()).await?;
    let line = first_line(&mut s).await?;
    ensure!(line.starts_with("Not allowed at this time"), "{line:?}");
    let lockout = broker
        .wait_event("ssh_key_guessing", |e| {
            e.peer_addr
                .as_deref()
                .unwrap_or("")
                .starts_with("127.0.0.1")
        })
        .await?;
    ensure!(
        lockout.detail.contains("3 rejected SSH keys"),
        "{}",
        lockout.detail
    );
    // Three identical rejected offers: one event (the repeats are counted, then written once
    // a minute as a single event with their number).
    let page = broker.audit("kind=auth_failed&agent=pc-victim").await?;
    ensure!(page.events.len() == 1, "{:#?}", page.events);
    // Everyone else is served, over SSH and HTTP.
    other_source_gets_in(&broker).await?;
    let (status, _) = broker
        .api(
            Method::GET,
            "/api/v1/agents",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_rejected_key_is_audited_only_in_the_tenants_concerned() -> Result<()> {
    let broker = TestBroker::start().await?;
    let acme = broker.create_tenant_with_key("acme", passerelle_e2e::Role::Admin)?;
    let globex = broker.create_tenant_with_key("globex", passerelle_e2e::Role::Admin)?;
    let acme_pc = Agent::registered_in(&broker, &acme, "pc-1").await?;
    let _globex_pc = Agent::registered_in(&broker, &globex, "pc-1").await?;
    let _globex_only = Agent::registered_in(&broker, &globex, "pc-globex").await?;

    // Acme's key offered as globex's agent: audited in acme (its key), nothing in globex.
    let out = acme_pc.run("pc-globex", &["-N"], &[]).await?;
    ensure!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    let audit = |key: String| {
        let broker = &broker;
        async move {
            let (status, body) = broker
                .api(
                    Method::GET,
                    "/api/v1/audit?kind=auth_failed",
                    Some(&key),
                    None,
                )
                .await?;
            ensure!(status == StatusCode::OK, "{status} {body}");
            Ok::<_, anyhow::Error>(body["events"].as_array().cloned().unwrap_or_default())
        }
    };
    let deadline = Instant::now() + WAIT;
    let acme_events = loop {
        let events = audit(acme.clone()).await?;
        if !events.is_empty() || Instant::now() >= deadline {
            break events;
        }
        tokio::time::sleep(passerelle_e2e::POLL).await;
    };
    ensure!(acme_events.len() == 1, "{acme_events:#?}");
    let detail = acme_events[0]["detail"].as_str().unwrap_or("");
    ensure!(
        detail.contains("of agent pc-1") && detail.contains("pc-globex"),
        "{detail}"
    );
    let globex_events = audit(globex.clone()).await?;
    ensure!(
        globex_events.is_empty(),
        "globex heard of acme's key: {globex_events:#?}"
    );

    // An unknown key offered for pc-1, which both tenants have: each hears of its own pc-1,
    // and nothing names another tenant's agent.
    let stranger = Agent::new(&broker, "pc-1").await?;
    let out = stranger.run("pc-1", &["-N"], &[]).await?;
    ensure!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    for key in [&acme, &globex] {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = audit(key.clone()).await?;
            let unknown: Vec<_> = events
                .iter()
                .filter(|e| {
                    e["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains("not registered")
                })
                .collect();
            if unknown.len() == 1 {
                let d = unknown[0]["detail"].as_str().unwrap_or("");
                ensure!(!d.contains("belongs") && !d.contains("globex") && !d.contains("acme"));
                break;
            }
            ensure!(Instant::now() < deadline, "{events:#?}");
            tokio::time::sleep(passerelle_e2e::POLL).await;
        }
    }

    // Registering acme's public key in globex tells globex nothing: no 409.
    let body = serde_json::json!({"id": "pc-copy", "public_key": acme_pc.key.public_key});
    let (status, answer) = broker
        .api(Method::POST, "/api/v1/agents", Some(&globex), Some(&body))
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {answer}");
    // Nor under acme's agent id, in a third tenant; and that does not take acme's agent over:
    // acme's pc-1 still logs in as acme's.
    let initech = broker.create_tenant_with_key("initech", passerelle_e2e::Role::Admin)?;
    let body = serde_json::json!({"id": "pc-1", "public_key": acme_pc.key.public_key});
    let (status, answer) = broker
        .api(Method::POST, "/api/v1/agents", Some(&initech), Some(&body))
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {answer}");
    let mut acme_pc = acme_pc;
    let echo = EchoServer::start().await?;
    acme_pc.connect(&[Forward::named("vnc", echo.port())])?;
    acme_pc.wait_online(&broker, &["vnc"]).await?;
    let initech_view = broker.agent_as(&initech, "pc-1").await?;
    ensure!(
        !initech_view.online,
        "initech's pc-1 came online with acme's connection"
    );
    Ok(())
}

#[tokio::test]
async fn cancelled_forwards_give_their_place_back() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let agent = Agent::registered(&broker, "pc-mux").await?;
    let dir = tempfile::tempdir()?;
    let control = dir.path().join("ctl");
    let control = control.to_string_lossy().into_owned();
    let master_args: Vec<String> = [
        "-M",
        "-S",
        &control,
        "-N",
        "-R",
        &format!("vnc:0:localhost:{}", echo.port()),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut master = agent.ssh_command("pc-mux", &master_args);
    master
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _master = master.spawn().context("ssh -M")?;
    let deadline = Instant::now() + WAIT;
    while !std::path::Path::new(&control).exists() {
        ensure!(Instant::now() < deadline, "no control socket");
        tokio::time::sleep(passerelle_e2e::POLL).await;
    }
    let rdp = format!("rdp:0:localhost:{}", echo.port());
    let mux = |op: &'static str| {
        let args: Vec<String> = ["-S", control.as_str(), "-O", op, "-R", rdp.as_str()]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut cmd = agent.ssh_command("pc-mux", &args);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        async move {
            let out = timeout(WAIT, cmd.output())
                .await
                .context("ssh -O timed out")??;
            ensure!(
                out.status.success(),
                "ssh -O {op}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<_, anyhow::Error>(())
        }
    };
    // Twice the 16-forward limit of announce/cancel cycles on one connection.
    for i in 0..32 {
        mux("forward").await.with_context(|| format!("cycle {i}"))?;
        let info = broker.agent_as(broker.admin_key(), "pc-mux").await?;
        ensure!(
            info.services.iter().any(|s| s.name.as_str() == "rdp"),
            "{info:?}"
        );
        mux("cancel").await.with_context(|| format!("cycle {i}"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            let info = broker.agent_as(broker.admin_key(), "pc-mux").await?;
            if !info.services.iter().any(|s| s.name.as_str() == "rdp") {
                ensure!(info.services.iter().any(|s| s.name.as_str() == "vnc"));
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "rdp still announced after cancel"
            );
            tokio::time::sleep(passerelle_e2e::POLL).await;
        }
    }
    Ok(())
}

/// ssh-audit (PyPI, installed by scripts/install-scan-deps.sh) through scripts/scan-ssh.sh,
/// against a broker with the default SSH settings.
#[tokio::test]
async fn ssh_audit_finds_no_failure_and_no_warning() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        let defaults = passerelle::Config::with_data_dir(&c.data_dir);
        c.ssh_connection_burst_per_source = defaults.ssh_connection_burst_per_source;
        c.ssh_connections_per_source_per_sec = defaults.ssh_connections_per_source_per_sec;
        c.ssh_auth_failure_limit = defaults.ssh_auth_failure_limit;
    })
    .await?;
    let script = manifest_dir().join("../scripts/scan-ssh.sh");
    let out = timeout(
        Duration::from_secs(120),
        Command::new("bash")
            .arg(&script)
            .arg("127.0.0.1")
            .arg(broker.ssh_addr().port().to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("ssh-audit ran over 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "scan-ssh.sh: {}\n{stdout}\n{stderr}",
        out.status
    );
    // The scan saw what an agent negotiates, and the rate test ran (curve25519 is DH-like).
    ensure!(stdout.contains("curve25519-sha256"), "{stdout}");
    ensure!(!stdout.contains("DHEat"), "{stdout}");
    // ssh-audit's rate test has just used up this address's connection bucket (20, then 5 a
    // second) and pre-authentication slots: a new connection from here may be refused at once,
    // as it should. The broker serves this address again as soon as the bucket refills.
    let deadline = Instant::now() + WAIT;
    loop {
        match assert_still_serving(&broker).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("not served yet ({e:#}); again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
