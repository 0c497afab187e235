//! `ssh` sessions in the browser, end to end with real parts: a real OpenSSH `sshd` started by
//! the test (its own config, host key and authorized_keys in a temporary directory), a stock
//! OpenSSH agent forwarding `-R ssh:0:127.0.0.1:PORT` to it, the broker as the SSH client,
//! and headless Chromium on the xterm.js page (or a WebSocket client speaking the terminal
//! protocol where a page adds nothing). Recordings: `terminal_recording.rs`; flow control:
//! `terminal_flow.rs`.

use anyhow::{Result, ensure};
use passerelle_e2e::sshd::{Sshd, SshdOptions, TEST_USER, test_user_password};
use passerelle_e2e::terminal::{
    TermWs, agent_for, key_setup, open_terminal, patch, require_browser, tenant_key_line,
};
use passerelle_e2e::{Forward, Method, Role, StatusCode, TestBroker, close, init, session_request};
use passerelle_proto::terminal::ToViewer;
use serde_json::json;

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
        { "waitLogin": "wrong password for" },
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
    agent
        .reconnect(&broker, &[Forward::named("ssh", second.port)], &["ssh"])
        .await?;
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
