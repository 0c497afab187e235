//! `ssh` sessions in the browser, end to end with real parts: a real OpenSSH `sshd` started by
//! the test (its own config, host key and authorized_keys in a temporary directory), a stock
//! OpenSSH agent forwarding `-R ssh:0:127.0.0.1:PORT` to it, the broker as the SSH client,
//! and headless Chromium on the xterm.js page (or a WebSocket client speaking the terminal
//! protocol where a page adds nothing).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::desktop;
use passerelle_e2e::sshd::{Sshd, SshdOptions, TEST_USER, test_user_password};
use passerelle_e2e::terminal::{TermWs, open_terminal, open_terminal_replay};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, Role, StatusCode, TestBroker, WAIT, Ws, close, init,
    pattern, session_request, unique,
};
use passerelle_proto::terminal::ToViewer;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

fn require_browser() -> Result<()> {
    ensure!(
        desktop::have_browser(),
        "chromium or tests/browser/node_modules missing: run scripts/install-test-deps.sh"
    );
    Ok(())
}

/// The tenant's key as a workstation's authorized_keys line, restricted as the README says.
async fn tenant_key_line(broker: &TestBroker) -> Result<String> {
    let tenant: Value = broker
        .admin(StatusCode::OK, Method::GET, "/api/v1/tenant", None)
        .await?;
    let key = tenant["ssh_public_key"]
        .as_str()
        .context("GET /api/v1/tenant has no ssh_public_key")?;
    ensure!(key.starts_with("ssh-ed25519 "), "{tenant}");
    Ok(format!("from=\"127.0.0.1,::1\" {key}"))
}

async fn patch(broker: &TestBroker, path: &str, body: Value) -> Result<Value> {
    broker
        .admin(StatusCode::OK, Method::PATCH, path, Some(&body))
        .await
}

/// An agent announcing `ssh` in front of `sshd` (and any `extra` forwards).
async fn agent_for(broker: &TestBroker, sshd: &Sshd, extra: &[Forward]) -> Result<Agent> {
    let mut agent = Agent::registered(broker, &unique("ws")).await?;
    let mut forwards = vec![Forward::named("ssh", sshd.port)];
    forwards.extend_from_slice(extra);
    agent.connect(&forwards)?;
    agent.wait_online(broker, &["ssh"]).await?;
    Ok(agent)
}

/// A broker whose tenant logs in as the test user with its key, an sshd that has the key.
async fn key_setup(tweak: impl FnOnce(&mut passerelle::Config)) -> Result<(TestBroker, Sshd)> {
    let broker = TestBroker::start_with(tweak).await?;
    let line = tenant_key_line(&broker).await?;
    patch(
        &broker,
        "/api/v1/tenant",
        json!({ "ssh_username": TEST_USER }),
    )
    .await?;
    let sshd = Sshd::start(&SshdOptions {
        passwords: false,
        authorized_keys: vec![line],
    })
    .await?;
    Ok((broker, sshd))
}

/// The `ROWS COLS` line `stty size` printed in a screen.
fn stty_size(screen: &str) -> Option<(u16, u16)> {
    screen.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (a, b) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
        it.next().is_none().then_some((a, b))
    })
}

#[tokio::test]
async fn the_page_logs_in_with_the_tenant_key_follows_resizes_and_ends_on_exit() -> Result<()> {
    init();
    require_browser()?;
    let (broker, sshd) = key_setup(|_| {}).await?;
    let agent = agent_for(&broker, &sshd, &[]).await?;
    let mut req = session_request(&agent.id, "ssh");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let dir = tempfile::tempdir()?;
    let steps = json!([
        { "state": "connected" },
        { "type": "echo hello-$((6*7))\n" },
        { "wait": "hello-42" },
        { "type": "clear; stty size; echo size-$((1+1))\n" },
        { "wait": "size-2" },
        { "snapshot": "before" },
        { "viewport": [620, 380] },
        { "type": "clear; stty size; echo resized-$((2+2))\n" },
        { "wait": "resized-4" },
        { "snapshot": "after" },
        { "type": "exit\n" },
        { "close": true },
    ]);
    let page = open_terminal(&created.viewer_url, &dir.path().join("t.png"), &steps).await?;
    ensure!(page.error.is_none(), "{page:#?}");
    ensure!(page.user.as_deref() == Some(TEST_USER), "{page:#?}");
    ensure!(
        page.recorded == Some(true),
        "the recorded badge must show: {page:#?}"
    );
    // `stty size` says what the page's terminal is, before and after the window shrank.
    for name in ["before", "after"] {
        let snap = &page.snapshots[name];
        let size = stty_size(snap["screen"].as_str().unwrap_or_default());
        let page_size = (
            snap["rows"].as_u64().unwrap_or_default() as u16,
            snap["cols"].as_u64().unwrap_or_default() as u16,
        );
        ensure!(
            size == Some(page_size),
            "{name}: stty said {size:?}, the page is {page_size:?}: {snap}"
        );
    }
    ensure!(
        page.snapshots["before"]["cols"] != page.snapshots["after"]["cols"],
        "the window resize must change the terminal: {:?}",
        page.snapshots
    );
    // `exit` ends the session with its reason.
    ensure!(
        page.close_code == Some(close::SERVICE_CLOSED.code),
        "{page:#?}"
    );
    ensure!(
        page.close_reason.as_deref() == Some("the shell exited with status 0"),
        "{page:#?}"
    );
    ensure!(
        page.exit == Some(json!({"t": "exit", "status": 0})),
        "{page:#?}"
    );
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::ServiceClosed),
        "{ended:#?}"
    );
    // The host key was pinned on first use, and shows in the agent.
    let fp = sshd.fingerprint().await?;
    let info = broker.agent_as(broker.admin_key(), &agent.id).await?;
    ensure!(
        info.ssh_host_key.as_deref() == Some(fp.as_str()),
        "{info:#?} vs {fp}"
    );
    broker
        .wait_event("ssh_host_key_pinned", |e| e.detail.contains(&fp))
        .await?;
    // The CLI prints the same key, as the authorized_keys line the README says to install.
    let data_dir = broker.data_dir().as_os_str().to_owned();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--data-dir".as_ref(),
        &data_dir,
        "tenant".as_ref(),
        "ssh-key".as_ref(),
    ];
    let out = passerelle_e2e::process::run_cli(&args, &[]).await?;
    ensure!(
        out.success() && out.stdout.trim() == tenant_key_line(&broker).await?,
        "{out:?}"
    );
    Ok(())
}

#[tokio::test]
async fn control_messages_are_checked_and_view_only_is_allowed() -> Result<()> {
    init();
    let (broker, sshd) = key_setup(|_| {}).await?;
    let agent = agent_for(&broker, &sshd, &[]).await?;
    let mut req = session_request(&agent.id, "ssh");
    req.view_only = true;
    req.ssh_user = Some(TEST_USER.into());
    let created = broker.create_session(&req).await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    ws.wait_control(|c| matches!(c, ToViewer::Ready { .. }))
        .await?;
    // A size out of bounds ends the session: protocol error.
    ws.control(json!({"t": "resize", "cols": 0, "rows": 5}))
        .await?;
    let closed = ws.expect_close().await?;
    ensure!(
        closed.code == close::PROTOCOL_ERROR.code && closed.reason.contains("cols and rows"),
        "{closed:?}"
    );
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::ProtocolError),
        "{ended:#?}"
    );
    // An oversized control message: 1009.
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    ws.wait_control(|c| matches!(c, ToViewer::Ready { .. }))
        .await?;
    ws.control(json!({"t": "resize", "cols": 80, "rows": 24, "pad": "x".repeat(5000)}))
        .await?;
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::MESSAGE_TOO_BIG.code, "{closed:?}");
    // ssh_user is for ssh sessions only, and checked.
    let mut bad = session_request(&agent.id, "ssh");
    bad.ssh_user = Some("a\nb".into());
    let body = serde_json::to_value(&bad)?;
    let answer = broker
        .api(
            Method::POST,
            "/api/v1/sessions",
            Some(broker.admin_key()),
            Some(&body),
        )
        .await?;
    passerelle_e2e::expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request")?;
    Ok(())
}

#[tokio::test]
async fn passwords_stored_typed_and_wrong() -> Result<()> {
    init();
    require_browser()?;
    let password = test_user_password()?;
    let broker = TestBroker::start().await?;
    let sshd = Sshd::start(&SshdOptions {
        passwords: true,
        authorized_keys: Vec::new(),
    })
    .await?;
    let agent = agent_for(&broker, &sshd, &[]).await?;
    let path = format!("/api/v1/agents/{}", agent.id);
    let body = patch(
        &broker,
        &path,
        json!({ "ssh_username": TEST_USER, "ssh_password": password }),
    )
    .await?;
    ensure!(
        body["has_ssh_password"] == true && body["ssh_username"] == TEST_USER,
        "{body}"
    );
    ensure!(!body.to_string().contains(&password), "write-only: {body}");

    // The agent's stored password: no prompt.
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    let ready = ws
        .wait_control(|c| matches!(c, ToViewer::Ready { .. }))
        .await?;
    ensure!(
        ready
            == ToViewer::Ready {
                user: TEST_USER.into()
            },
        "{ready:?}"
    );
    ws.keys("echo stored-$((3*3))\r").await?;
    ws.wait_output("stored-9").await?;
    ws.keys("exit\r").await?;
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::SERVICE_CLOSED.code, "{closed:?}");

    // No stored password: typed in the page, a wrong one first.
    patch(&broker, &path, json!({ "ssh_password": "" })).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let dir = tempfile::tempdir()?;
    let steps = json!([
        { "waitLogin": "type" },
        { "login": { "user": TEST_USER, "password": "not-the-password" } },
        { "waitLogin": "wrong user name or password" },
        { "snapshot": "wrong" },
        { "login": { "user": TEST_USER, "password": password } },
        { "state": "connected" },
        { "type": "echo typed-$((4*4))\n" },
        { "wait": "typed-16" },
    ]);
    let page = open_terminal(&created.viewer_url, &dir.path().join("p.png"), &steps).await?;
    ensure!(page.error.is_none(), "{page:#?}");
    ensure!(page.user.as_deref() == Some(TEST_USER), "{page:#?}");

    // Wrong three times: a clear refusal, the session ends, the audit says why.
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    for _ in 0..3 {
        let login = ws
            .wait_control(|c| matches!(c, ToViewer::Login { .. }))
            .await?;
        ensure!(
            matches!(&login, ToViewer::Login { user: Some(u), .. } if u == TEST_USER),
            "{login:?}"
        );
        ws.credentials(TEST_USER, "still-wrong").await?;
    }
    let closed = ws.expect_close().await?;
    ensure!(closed.code == close::SSH_AUTH_FAILED.code, "{closed:?}");
    ensure!(
        closed.reason.contains("wrong user name or password"),
        "{closed:?}"
    );
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::SshAuthFailed),
        "{ended:#?}"
    );
    broker
        .wait_event("ssh_failed", |e| e.session.as_deref() == Some(&created.id))
        .await?;
    // A stop reaches a viewer still at the login prompt at once.
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    ws.wait_control(|c| matches!(c, ToViewer::Login { .. }))
        .await?;
    broker.stop_session(&created.id, Some("carol")).await?;
    let closed = ws.expect_close().await?;
    ensure!(
        closed.code == close::STOPPED.code && closed.reason.contains("carol"),
        "{closed:?}"
    );
    let audit = serde_json::to_string(&broker.audit("limit=1000").await?.events)?;
    ensure!(
        !audit.contains(&password) && !audit.contains("still-wrong"),
        "passwords must never reach the audit"
    );
    Ok(())
}

#[tokio::test]
async fn a_changed_host_key_is_refused_and_audited_until_an_admin_resets_the_pin() -> Result<()> {
    init();
    let (broker, first) = key_setup(|_| {}).await?;
    let mut agent = agent_for(&broker, &first, &[]).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    ws.wait_control(|c| matches!(c, ToViewer::Ready { .. }))
        .await?;
    drop(ws);
    let pinned = first.fingerprint().await?;

    // The workstation is reinstalled: same place, another host key.
    let line = tenant_key_line(&broker).await?;
    let second = Sshd::start(&SshdOptions {
        passwords: false,
        authorized_keys: vec![line],
    })
    .await?;
    let presented = second.fingerprint().await?;
    agent.disconnect().await?;
    agent.connect(&[Forward::named("ssh", second.port)])?;
    agent.wait_online(&broker, &["ssh"]).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    let closed = ws.expect_close().await?;
    ensure!(
        closed.code == close::SSH_HOST_KEY_CHANGED.code,
        "{closed:?}"
    );
    ensure!(closed.reason.contains(&presented), "{closed:?}");
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::SshHostKeyChanged),
        "{ended:#?}"
    );
    broker
        .wait_event("ssh_host_key_changed", |e| {
            e.session.as_deref() == Some(&created.id)
                && e.detail.contains(&presented)
                && e.detail.contains(&pinned)
        })
        .await?;
    let info = broker.agent_as(broker.admin_key(), &agent.id).await?;
    ensure!(
        info.ssh_host_key.as_deref() == Some(pinned.as_str()),
        "{info:#?}"
    );

    // Only an admin resets the pin; the next session pins the new key.
    let reset = format!("/api/v1/agents/{}/ssh-host-key", agent.id);
    let helpdesk = broker.create_key("default", Role::Helpdesk)?;
    let (status, _) = broker
        .api(Method::DELETE, &reset, Some(&helpdesk), None)
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}");
    let (status, body) = broker
        .api(Method::DELETE, &reset, Some(broker.admin_key()), None)
        .await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    broker
        .wait_event("ssh_host_key_reset", |e| e.detail.contains(&pinned))
        .await?;
    let created = broker
        .create_session(&session_request(&agent.id, "ssh"))
        .await?;
    let mut ws = TermWs::connect(&created.ws_url, 80, 24).await?;
    ws.wait_control(|c| matches!(c, ToViewer::Ready { .. }))
        .await?;
    let info = broker.agent_as(broker.admin_key(), &agent.id).await?;
    ensure!(
        info.ssh_host_key.as_deref() == Some(presented.as_str()),
        "{info:#?}"
    );
    Ok(())
}

/// Writes `bytes` of printable lines to `path`, readable by the test user.
fn big_file(path: &Path, bytes: usize) -> Result<()> {
    let line: Vec<u8> = (0..99)
        .map(|i| b'a' + (i % 26) as u8)
        .chain([b'\n'])
        .collect();
    let mut data = Vec::with_capacity(bytes);
    while data.len() < bytes {
        data.extend_from_slice(&line);
    }
    data.truncate(bytes);
    std::fs::write(path, data)?;
    passerelle_e2e::sshd::set_mode(path, 0o644)
}

#[tokio::test]
async fn a_slow_viewer_holds_back_a_huge_cat_and_nobody_else_waits() -> Result<()> {
    init();
    // A per-session buffer of 64 KiB: a terminal that buffered for its viewer would end
    // `viewer_too_slow` at once. The terminal is held back at the workstation instead.
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

#[tokio::test]
async fn a_recorded_session_verifies_replays_exports_and_is_found() -> Result<()> {
    init();
    require_browser()?;
    let (broker, sshd) = key_setup(|_| {}).await?;
    patch(
        &broker,
        "/api/v1/tenant",
        json!({ "record_terminal_input": true }),
    )
    .await?;
    let agent = agent_for(&broker, &sshd, &[]).await?;
    let mut req = session_request(&agent.id, "ssh");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let dir = tempfile::tempdir()?;
    let steps = json!([
        { "state": "connected" },
        { "type": "printf 'one\\ntwo\\n'; echo searchable-$((20+3))\n" },
        { "wait": "searchable-23" },
        { "type": "exit\n" },
        { "close": true },
    ]);
    let live = open_terminal(&created.viewer_url, &dir.path().join("live.png"), &steps).await?;
    ensure!(live.error.is_none(), "{live:#?}");
    broker.wait_ended(&created.id).await?;

    // The recording verifies intact, as a terminal.
    let res = broker
        .http()
        .get(format!(
            "{}/api/v1/recordings/{}",
            broker.base_url(),
            created.id
        ))
        .bearer_auth(broker.admin_key())
        .send()
        .await?;
    ensure!(res.status().is_success(), "GET recording: {}", res.status());
    let path = dir.path().join("session.psrec");
    std::fs::write(&path, res.bytes().await?)?;
    let data_dir = broker.data_dir().to_string_lossy().into_owned();
    let file = path.to_string_lossy().into_owned();
    let cli = |args: Vec<String>| async move {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        passerelle_e2e::process::run_cli(&args, &[]).await
    };
    let out = cli(vec![
        "--data-dir".into(),
        data_dir.clone(),
        "recording".into(),
        "verify".into(),
        file.clone(),
    ])
    .await?;
    ensure!(out.success() && out.stdout.starts_with("intact"), "{out:?}");

    // The transcript has the command's output; the asciicast is asciicast v2.
    let text = dir.path().join("t.txt");
    let cast = dir.path().join("t.cast");
    let out = cli(vec![
        "--data-dir".into(),
        data_dir,
        "recording".into(),
        "export".into(),
        file,
        "--text".into(),
        text.to_string_lossy().into_owned(),
        "--asciicast".into(),
        cast.to_string_lossy().into_owned(),
    ])
    .await?;
    ensure!(out.success(), "{out:?}");
    let transcript = std::fs::read_to_string(&text)?;
    ensure!(
        transcript.lines().any(|l| l == "searchable-23") && transcript.lines().any(|l| l == "two"),
        "{transcript}"
    );
    let cast = std::fs::read_to_string(&cast)?;
    let header: Value = serde_json::from_str(cast.lines().next().unwrap_or_default())?;
    ensure!(
        header["version"] == 2 && header["width"].as_u64() == live.cols.map(u64::from),
        "{header}"
    );
    ensure!(
        cast.contains("\"i\""),
        "input is recorded when the tenant asks: {cast:.300}"
    );

    // The replay page ends on the live page's last screen.
    let auditor = broker.create_key("default", Role::Auditor)?;
    let replay_url = format!("{}/replay/{}#key={auditor}", broker.base_url(), created.id);
    let replay = open_terminal_replay(&replay_url, &dir.path().join("r.png"), &[]).await?;
    ensure!(
        replay.error.is_none() && replay.state.as_deref() == Some("ended"),
        "{replay:#?}"
    );
    ensure!(
        replay.screen == live.screen,
        "replay {:?}\nlive {:?}",
        replay.screen,
        live.screen
    );

    // The search finds it (the index is filled when the session ends), with the time, and the
    // replay opens there.
    let deadline = Instant::now() + WAIT;
    let found = loop {
        let (status, body) = broker
            .api(
                Method::GET,
                "/api/v1/audit/search?q=SEARCHABLE-23",
                Some(&auditor),
                None,
            )
            .await?;
        ensure!(status == StatusCode::OK, "{status} {body}");
        if body["sessions"].as_array().is_some_and(|s| !s.is_empty()) {
            break body;
        }
        ensure!(Instant::now() < deadline, "never found: {body}");
        sleep(passerelle_e2e::POLL).await;
    };
    let hit = &found["sessions"][0];
    ensure!(hit["session"] == created.id.as_str(), "{found}");
    let lines = hit["matches"].as_array().context("matches")?;
    ensure!(
        lines
            .iter()
            .any(|l| l["input"] == false && l["text"] == "searchable-23"),
        "{found}"
    );
    // What was typed is found too (the tenant records input here).
    let (status, typed) = broker
        .api(
            Method::GET,
            "/api/v1/audit/search?q=echo%20searchable-%24",
            Some(&auditor),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {typed}");
    let typed_lines = typed["sessions"][0]["matches"]
        .as_array()
        .context("typed matches")?;
    ensure!(
        typed_lines.iter().any(|l| l["input"] == true
            && l["text"]
                .as_str()
                .is_some_and(|t| t.ends_with("echo searchable-$((20+3))"))),
        "{typed}"
    );
    let at = hit["replay_url"].as_str().context("replay_url")?;
    ensure!(at.contains("#t="), "{at}");
    let replay = open_terminal_replay(
        &format!("{at}&key={auditor}"),
        &dir.path().join("s.png"),
        &["--no-play"],
    )
    .await?;
    ensure!(
        replay
            .screen
            .as_deref()
            .is_some_and(|s| s.contains("searchable-23")),
        "{replay:#?}"
    );
    // Not for helpdesk keys, and not across tenants.
    let helpdesk = broker.create_key("default", Role::Helpdesk)?;
    let (status, _) = broker
        .api(
            Method::GET,
            "/api/v1/audit/search?q=searchable",
            Some(&helpdesk),
            None,
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}");
    let other = broker.create_tenant_with_key("other", Role::Auditor)?;
    let (status, body) = broker
        .api(
            Method::GET,
            "/api/v1/audit/search?q=searchable",
            Some(&other),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::OK && body["sessions"] == json!([]),
        "{status} {body}"
    );
    Ok(())
}

/// Measures the terminal's throughput (README figures): `cat` of 200 MiB through the broker's
/// terminal to an unthrottled WebSocket viewer, next to OpenSSH's own client (`ssh -tt`, a PTY
/// too) straight to the same sshd.
/// `cargo nextest run -p passerelle-e2e --test terminal --run-ignored only --no-capture`
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
