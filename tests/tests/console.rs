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

/// 50,000 agents registered straight into the store: the API answers its first page and an id
/// prefix search, pages follow their cursor, and the console's agent table renders its first
/// page, pages on, finds one agent by prefix, and greys offline agents out with when they were
/// last seen. The times are printed for BENCHMARKS.md, never asserted.
#[tokio::test]
async fn fifty_thousand_agents_page_and_search_in_the_console() -> Result<()> {
    use anyhow::Context as _;
    use passerelle_proto::ids::AgentId;
    init();
    ensure!(desktop::have_browser(), "run scripts/install-test-deps.sh");
    let broker = TestBroker::start().await?;
    let tenant = broker
        .store()
        .tenant_id(&"default".parse()?)?
        .context("tenant default")?;
    let ids = (0..50_000)
        .map(|i| AgentId::new(format!("ws-{i:05}")))
        .collect::<Result<Vec<_>, _>>()?;
    let started = std::time::Instant::now();
    broker.store().insert_agents_for_tests(tenant, &ids)?;
    let inserted = started.elapsed();
    let hour_ago = passerelle::store::now_ms() - 3_600_000;
    broker
        .store()
        .set_last_seen(tenant, &ids[31337], hour_ago)?;
    let echo = EchoServer::start().await?;
    let mut online = Agent::registered(&broker, "aaa-online").await?;
    online.connect(&[Forward::named("vnc", echo.port())])?;
    online.wait_online(&broker, &["vnc"]).await?;

    // The API: the first page (the default 100), and the next one by its cursor.
    let get = |path: String| {
        let req = broker
            .http()
            .get(format!("{}{path}", broker.base_url()))
            .bearer_auth(broker.admin_key());
        async move {
            let started = std::time::Instant::now();
            let resp = req.send().await?;
            let status = resp.status();
            let next = resp
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: serde_json::Value = resp.json().await?;
            anyhow::Ok((status, next, body, started.elapsed()))
        }
    };
    let (status, next, first, first_took) = get("/api/v1/agents".into()).await?;
    ensure!(status == StatusCode::OK, "{status} {first}");
    let first: Vec<passerelle_e2e::AgentInfo> = serde_json::from_value(first)?;
    ensure!(
        first.len() == 100,
        "{} agents on the first page",
        first.len()
    );
    ensure!(
        first[0].id.as_str() == "aaa-online" && first[0].online,
        "{:?}",
        first[0]
    );
    ensure!(
        first[1].id.as_str() == "ws-00000" && !first[1].online,
        "{:?}",
        first[1]
    );
    let next = next.context("no next cursor")?;
    ensure!(next == "ws-00098", "cursor {next}");
    let (_, _, second, _) = get(format!("/api/v1/agents?cursor={next}")).await?;
    ensure!(second[0]["id"] == "ws-00099", "{}", second[0]);
    // A prefix search finds the one agent, offline, with when it was last seen.
    let (status, next, found, search_took) = get("/api/v1/agents?q=ws-31337".into()).await?;
    ensure!(
        status == StatusCode::OK && next.is_none(),
        "{status} {found}"
    );
    let found: Vec<passerelle_e2e::AgentInfo> = serde_json::from_value(found)?;
    ensure!(
        found.len() == 1 && !found[0].online && found[0].last_seen.is_some(),
        "{found:?}"
    );
    // Presence filters work from memory; a wide prefix pages at the most allowed.
    for (path, want) in [
        ("/api/v1/agents?online=true", 1),
        ("/api/v1/agents?service=vnc", 1),
        ("/api/v1/agents?service=rdp", 0),
        ("/api/v1/agents?online=false&limit=1000", 1000),
        ("/api/v1/agents?q=ws-4&limit=1000", 1000),
    ] {
        let (status, _, body, _) = get(path.into()).await?;
        let n = body.as_array().map_or(0, Vec::len);
        ensure!(
            status == StatusCode::OK && n == want,
            "{path}: {status}, {n} agents"
        );
    }
    let (_, _, offline, _) = get("/api/v1/agents?online=false&limit=1".into()).await?;
    ensure!(offline[0]["id"] == "ws-00000", "{offline}");
    for bad in [
        "limit=0",
        "limit=1001",
        "q=a/b",
        "cursor=../x",
        "online=maybe",
        "sort=id",
    ] {
        let (status, _, body, _) = get(format!("/api/v1/agents?{bad}")).await?;
        ensure!(status == StatusCode::BAD_REQUEST, "{bad}: {status} {body}");
    }

    // The console: first page, next page, a prefix search.
    let dir = tempfile::tempdir()?;
    let url = format!("{}/console", broker.base_url());
    let shot = dir.path().join("agents.png");
    let page = desktop::open_agents(
        &url,
        &shot,
        &["--key", broker.admin_key(), "--q", "ws-31337"],
    )
    .await?;
    ensure!(page.error.is_none(), "{page:?}");
    ensure!(
        page.first_page.len() == 50,
        "first page: {:?}",
        page.first_page.len()
    );
    let (on, off) = (&page.first_page[0], &page.first_page[1]);
    ensure!(
        on.id == "aaa-online" && !on.offline && on.state == "online",
        "{on:?}"
    );
    ensure!(
        off.id == "ws-00000"
            && off.offline
            && off.opacity < 1.0
            && off.state.contains("never seen"),
        "offline rows are greyed out: {off:?}"
    );
    ensure!(page.next_enabled == Some(true), "{page:?}");
    ensure!(
        page.second_page.first().map(|r| r.id.as_str()) == Some("ws-00049"),
        "second page: {:?}",
        page.second_page.first()
    );
    ensure!(page.rows.len() == 1, "search: {:?}", page.rows);
    let row = &page.rows[0];
    ensure!(
        row.id == "ws-31337" && row.offline && row.state.contains("last seen"),
        "{row:?}"
    );
    eprintln!(
        "fleet list, 50,000 agents: inserted in {inserted:.2?}; API first page {first_took:.2?}, \
         prefix search {search_took:.2?}; console first page rendered {} ms after sign-in",
        page.first_page_ms.unwrap_or_default()
    );
    Ok(())
}
