//! Recorded `ssh` terminals end to end: the recording verifies, exports a transcript and an
//! asciicast, replays in the page to the live page's last screen, and is found by the search;
//! each connection of a session (a launch-token reconnect) is its own recording and search hit.

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::terminal::{
    TermWs, agent_for, key_setup, open_terminal, open_terminal_replay, patch, require_browser,
};
use passerelle_e2e::{Method, Role, StatusCode, TestBroker, WAIT, close, init, session_request};
use passerelle_proto::launch::LaunchUrl;
use passerelle_proto::terminal::ToViewer;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

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
    ensure!(
        lines.iter().all(|l| l["segment"] == 1),
        "one connection, the first: {found}"
    );
    let at = hit["replay_url"].as_str().context("replay_url")?;
    ensure!(at.contains("#connection=1&t="), "{at}");
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

/// Waits (bounded) until the search for `q` finds something; the first session's matches.
async fn search(broker: &TestBroker, key: &str, q: &str) -> Result<(Value, Vec<Value>)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let path = format!("/api/v1/audit/search?q={q}");
        let (status, body) = broker.api(Method::GET, &path, Some(key), None).await?;
        ensure!(status == StatusCode::OK, "{status} {body}");
        if let Some(hit) = body["sessions"].as_array().and_then(|s| s.first()) {
            let matches = hit["matches"].as_array().context("matches")?.clone();
            return Ok((hit.clone(), matches));
        }
        ensure!(Instant::now() < deadline, "{q} never found: {body}");
        sleep(passerelle_e2e::POLL).await;
    }
}

#[tokio::test]
async fn each_connection_of_a_terminal_session_is_its_own_recording_replay_and_search_hit()
-> Result<()> {
    init();
    let (broker, sshd) = key_setup(|_| {}).await?;
    let agent = agent_for(&broker, &sshd, &[]).await?;
    let mut req = session_request(&agent.id, "ssh");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    // The desktop helper's launch token opens connections while the session lasts: a shell
    // that exits ends its connection only (4000), and the next one is recorded on its own.
    let launch = LaunchUrl::parse(&created.launch_url)?;
    let url = created.ws_url.replace(&created.token, &launch.token);
    for (n, word) in [(1, "first"), (2, "second")] {
        let mut term = TermWs::connect(&url, 80, 24).await?;
        term.wait_control(|c| matches!(c, ToViewer::Ready { .. }))
            .await?;
        term.keys(&format!("echo {word}-$((40+{n}))\r")).await?;
        term.wait_output(&format!("{word}-4{n}")).await?;
        term.keys("exit\r").await?;
        let closed = term.expect_close().await?;
        ensure!(
            closed.code == close::SERVICE_CLOSED.code
                && closed.reason == "the shell exited with status 0",
            "connection {n}: {closed:?}"
        );
    }
    let info = broker.session(&created.id).await?;
    ensure!(info.end_reason.is_none(), "the session goes on: {info:#?}");
    // Two logins, audited each.
    let logins = broker
        .audit(&format!("session={}&kind=ssh_login", created.id))
        .await?
        .events;
    ensure!(
        logins.len() == 2 && logins.iter().all(|e| e.detail.contains("tenant's SSH key")),
        "{logins:?}"
    );

    // Two terminal recordings, each with its own connection's output.
    let auditor = broker.create_key("default", Role::Auditor)?;
    let path = format!("/api/v1/recordings/{}/segments", created.id);
    let (status, segments) = broker.api(Method::GET, &path, Some(&auditor), None).await?;
    ensure!(status == StatusCode::OK, "{status} {segments}");
    ensure!(
        segments.as_array().map(Vec::len) == Some(2)
            && segments
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["content"] == "terminal")),
        "{segments}"
    );
    for (n, mine, other) in [(1, "first-41", "second-42"), (2, "second-42", "first-41")] {
        let path = format!("/api/v1/recordings/{}/asciicast?segment={n}", created.id);
        let (status, cast) = broker.api(Method::GET, &path, Some(&auditor), None).await?;
        let cast = cast.as_str().unwrap_or_default();
        ensure!(status == StatusCode::OK, "{status} {cast:.300}");
        ensure!(
            cast.contains(mine) && !cast.contains(other),
            "segment {n}: {cast:.600}"
        );
    }

    // The search names the connection of each match, and its replay URL opens that one.
    for (n, word) in [(1, "first-41"), (2, "second-42")] {
        let (hit, matches) = search(&broker, &auditor, word).await?;
        ensure!(hit["session"] == created.id.as_str(), "{hit}");
        ensure!(
            !matches.is_empty() && matches.iter().all(|m| m["segment"] == n),
            "{word}: {hit}"
        );
        let at = hit["replay_url"].as_str().context("replay_url")?;
        ensure!(at.contains(&format!("#connection={n}&t=")), "{at}");
    }
    Ok(())
}
