//! Flow control of `ssh` terminals end to end: a viewer slower than a huge `cat` holds the
//! workstation back without ending anything or slowing anyone else; and a throughput measure.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::sshd::{Sshd, SshdOptions, TEST_USER};
use passerelle_e2e::terminal::{TermWs, agent_for, big_file, key_setup, patch, tenant_key_line};
use passerelle_e2e::{
    Agent, EchoServer, Forward, TestBroker, Ws, init, pattern, session_request, unique,
};
use passerelle_proto::terminal::ToViewer;
use serde_json::json;
use tokio::time::Instant;

#[tokio::test]
async fn a_slow_viewer_holds_back_a_huge_cat_and_nobody_else_waits() -> Result<()> {
    init();
    // A per-connection buffer of 64 KiB: the bridge holds that much for the viewer, then stops
    // reading the terminal, so the workstation is held back (the broker's SSH client grants no
    // more window), not buffered; only a viewer that takes nothing for `viewer_stall_secs`
    // would end the session.
    let (broker, sshd) = key_setup(|c| c.session_buffer_bytes = 64 * 1024).await?;
    let echo = EchoServer::start().await?;
    let agent = agent_for(&broker, &sshd, &[Forward::named("vnc", echo.port())]).await?;
    let other_echo = EchoServer::start().await?;
    let mut other = Agent::registered(&broker, &unique("other")).await?;
    other.connect(&[Forward::named("vnc", other_echo.port())])?;
    other.wait_online(&broker, &["vnc"]).await?;
    const SIZE: usize = 200 << 20;
    let file = sshd.dir().join("big.txt");
    big_file(&file, SIZE)?;

    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut term = TermWs::connect(&created.ws_url, 120, 40).await?;
    term.wait_control(|c| matches!(c, ToViewer::Ready { .. }))
        .await?;
    term.keys(&format!("cat {}; echo END-$((5*5))\r", file.display()))
        .await?;
    // Some output, then the viewer stops reading altogether while other sessions, of the same
    // agent and of another one, make round trips: none of them waits for this viewer.
    term.read_bytes(8 << 20).await?;
    for (name, id) in [("same agent", &agent.id), ("another agent", &other.id)] {
        let s = broker.create_session(&session_request(id, "vnc")).await?;
        let mut ws = Ws::connect(&s.raw_ws_url).await?;
        for i in 0..20 {
            ws.round_trip(&pattern(4096, i))
                .await
                .with_context(|| format!("round trip {i} on the {name}'s session"))?;
        }
        ws.close().await?;
    }
    // Then it reads slowly (10 MiB/s, below what the broker carries) to the end: the whole file
    // comes through.
    term.read_throttled("END-25", 10 << 20, Duration::from_secs(300))
        .await?;
    // Every line of the file came (the terminal turns each LF into CR LF).
    ensure!(
        term.bytes as usize >= SIZE,
        "{} bytes of {SIZE}",
        term.bytes
    );
    let info = broker.session(&created.id).await?;
    ensure!(
        info.end_reason.is_none(),
        "the session must go on: {info:#?}"
    );
    term.keys("echo after-$((7*7))\r").await?;
    term.wait_output("after-49").await?;
    Ok(())
}

/// Measures the terminal's throughput (README figures): `cat` of 200 MiB through the broker's
/// terminal to an unthrottled WebSocket viewer, next to OpenSSH's own client (`ssh -tt`, a PTY
/// too) straight to the same sshd.
/// `cargo nextest run -p passerelle-e2e --test terminal_flow --run-ignored only --no-capture`
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_terminal_throughput() -> Result<()> {
    init();
    let broker = TestBroker::start().await?;
    patch(
        &broker,
        "/api/v1/tenant",
        json!({ "ssh_username": TEST_USER }),
    )
    .await?;
    let mut agent = Agent::registered(&broker, &unique("measure")).await?;
    // The agent's own key logs OpenSSH's client in, for the comparison.
    let sshd = Sshd::start(&SshdOptions {
        passwords: false,
        authorized_keys: vec![
            tenant_key_line(&broker).await?,
            agent.key.public_key.clone(),
        ],
    })
    .await?;
    agent.connect(&[Forward::named("ssh", sshd.port)])?;
    agent.wait_online(&broker, &["ssh"]).await?;
    const SIZE: usize = 200 << 20;
    let file = sshd.dir().join("big.txt");
    big_file(&file, SIZE)?;
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut term = TermWs::connect(&created.ws_url, 120, 40).await?;
    term.wait_control(|c| matches!(c, ToViewer::Ready { .. }))
        .await?;
    term.keys(&format!("cat {}; echo END-$((5*5))\r", file.display()))
        .await?;
    let t0 = Instant::now();
    let got = term
        .read_throttled("END-25", u64::MAX, Duration::from_secs(600))
        .await?;
    let broker_secs = t0.elapsed().as_secs_f64();
    // OpenSSH's client with a PTY, straight to the sshd.
    let t1 = Instant::now();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ssh -F /dev/null -tt -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -i {} -p {} {TEST_USER}@127.0.0.1 cat {} | wc -c",
            agent.key.path.display(),
            sshd.port,
            file.display()
        ))
        .output()
        .await?;
    let ssh_secs = t1.elapsed().as_secs_f64();
    let mib = got as f64 / f64::from(1 << 20);
    eprintln!(
        "terminal through the broker: {mib:.0} MiB in {broker_secs:.1} s = {:.1} MiB/s; \
         ssh -tt straight to sshd: {} ({ssh_secs:.1} s)",
        mib / broker_secs,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(())
}
