//! The console's session history: the audit API's session filters (agent, operator, date,
//! duration), and the console page in headless Chromium listing sessions with those filters and
//! linking recorded VNC sessions to their replay.

use std::time::Duration;

use anyhow::{Result, ensure};
use passerelle_e2e::desktop::{self, VncOverWs, VncServer, XDisplay};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, StatusCode, TestBroker, Ws, init, pattern, session_request,
    unique,
};

/// Session ids of `GET /api/v1/audit?{query}`.
async fn listed(broker: &TestBroker, query: &str) -> Result<Vec<String>> {
    Ok(broker
        .audit(query)
        .await?
        .sessions
        .into_iter()
        .map(|s| s.id)
        .collect())
}

#[tokio::test]
async fn session_history_filters_and_links_to_replays() -> Result<()> {
    init();
    ensure!(
        desktop::have(&["Xvfb", "x11vnc"]) && desktop::have_browser(),
        "run scripts/install-test-deps.sh"
    );
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let rdp_id = unique("hist-rdp");
    let mut rdp = Agent::registered(&broker, &rdp_id).await?;
    rdp.connect(&[Forward::named("rdp", echo.port())])?;
    rdp.wait_online(&broker, &["rdp"]).await?;
    let display = XDisplay::start(320, 240).await?;
    let server = VncServer::x11vnc(&display, None, &[]).await?;
    let vnc_id = unique("hist-vnc");
    let mut vnc = Agent::registered(&broker, &vnc_id).await?;
    vnc.connect(&[Forward::named("vnc", server.port)])?;
    vnc.wait_online(&broker, &["vnc"]).await?;

    // A long session by bob, a short one by carol, a recorded VNC session by alice.
    let mut req = session_request(&rdp_id, "rdp");
    req.operator = "bob".into();
    let long = broker.create_session(&req).await?;
    let mut ws = Ws::connect(&long.raw_ws_url).await?;
    ws.round_trip(&pattern(1000, 1)).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.close().await?;
    req.operator = "carol".into();
    let short = broker.create_session(&req).await?;
    let mut ws = Ws::connect(&short.raw_ws_url).await?;
    ws.round_trip(&pattern(1000, 2)).await?;
    ws.close().await?;
    let mut req = session_request(&vnc_id, "vnc");
    req.record = Some(true);
    let recorded = broker.create_session(&req).await?;
    let viewer = VncOverWs::connect(&recorded.ws_url).await?;
    viewer.first_rect_colour().await?;
    drop(viewer);
    for id in [&long.id, &short.id, &recorded.id] {
        broker.wait_ended(id).await?;
    }

    // The API's filters.
    let at_least_2s = listed(&broker, "min_duration_secs=2").await?;
    ensure!(
        at_least_2s.contains(&long.id) && !at_least_2s.contains(&short.id),
        "min_duration_secs=2 listed {at_least_2s:?}"
    );
    let at_most_1s = listed(&broker, "max_duration_secs=1").await?;
    ensure!(
        at_most_1s.contains(&short.id) && !at_most_1s.contains(&long.id),
        "max_duration_secs=1 listed {at_most_1s:?}"
    );
    ensure!(
        listed(&broker, "operator=carol").await? == vec![short.id.clone()],
        "operator filter"
    );
    ensure!(
        listed(&broker, &format!("agent={vnc_id}")).await? == vec![recorded.id.clone()],
        "agent filter"
    );
    ensure!(
        listed(&broker, "since=2999-01-01T00:00:00Z")
            .await?
            .is_empty(),
        "date filter"
    );
    for bad in [
        "min_duration_secs=-1",
        "min_duration_secs=soon",
        "since=yesterday",
    ] {
        let (status, body) = broker
            .api(
                Method::GET,
                &format!("/api/v1/audit?{bad}"),
                Some(broker.admin_key()),
                None,
            )
            .await?;
        ensure!(status == StatusCode::BAD_REQUEST, "{bad}: {status} {body}");
    }

    // The console page, signed in with an auditor key.
    let auditor = broker.create_key("default", passerelle_e2e::Role::Auditor)?;
    let dir = tempfile::tempdir()?;
    let url = format!("{}/console", broker.base_url());
    let shot = dir.path().join("console.png");
    let page =
        desktop::open_console(&url, &shot, &["--key", &auditor, "--operator", "bob"]).await?;
    ensure!(page.error.is_none(), "{page:?}");
    let ids: Vec<_> = page.rows.iter().filter_map(|r| r.session.clone()).collect();
    ensure!(
        ids == vec![long.id.clone()],
        "operator=bob in the page: {page:?}"
    );
    let row = &page.rows[0];
    ensure!(
        row.cells
            .iter()
            .any(|c| c.starts_with("0 min 2 s") || c.starts_with("0 min 3 s")),
        "the duration column: {row:?}"
    );
    let page = desktop::open_console(&url, &shot, &["--key", &auditor, "--agent", &vnc_id]).await?;
    let replay = page
        .rows
        .first()
        .and_then(|r| r.replay.clone())
        .unwrap_or_default();
    ensure!(
        replay == format!("/replay/{}", recorded.id),
        "no replay link for the recorded session: {page:?}"
    );
    ensure!(
        page.replay_state
            .as_deref()
            .is_some_and(|s| s != "loading" && s != "error"),
        "following the replay link: {page:?}"
    );
    let page =
        desktop::open_console(&url, &shot, &["--key", &auditor, "--min-minutes", "0.03"]).await?;
    let ids: Vec<_> = page.rows.iter().filter_map(|r| r.session.clone()).collect();
    ensure!(
        ids.contains(&long.id) && !ids.contains(&short.id),
        "at least 0.03 min in the page: {page:?}"
    );
    Ok(())
}
