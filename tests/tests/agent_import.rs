//! Bulk registration: `POST /api/v1/agents/import` registers a batch that real OpenSSH agents
//! then sign in with; bad bodies and bad items get clear 4xx answers, register nothing and
//! leave the broker serving; `passerelle agent import FILE` names every bad line and imports
//! nothing until the file is clean.

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::{
    Agent, AgentKey, EchoServer, Forward, Method, Role, StatusCode, TestBroker, Ws,
    assert_still_serving, expect_error, passerelle_bin, pattern, session_request,
};
use serde_json::{Value, json};

const IMPORT: &str = "/api/v1/agents/import";

/// `n` agents `{prefix}-{i}` with fresh keys, as import items.
async fn items(prefix: &str, n: usize) -> Result<Vec<Value>> {
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let key = AgentKey::generate().await?;
        items.push(json!({"id": format!("{prefix}-{i}"), "public_key": key.public_key}));
    }
    Ok(items)
}

async fn agent_count(broker: &TestBroker) -> Result<usize> {
    let list: Vec<Value> = broker
        .admin(
            StatusCode::OK,
            Method::GET,
            "/api/v1/agents?limit=1000",
            None,
        )
        .await?;
    Ok(list.len())
}

/// The refused items of an `import_refused` answer as (index, id, code).
fn refused(got: &(StatusCode, Value), status: StatusCode) -> Result<Vec<(u64, String, String)>> {
    expect_error(got, status, "import_refused")?;
    got.1["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|i| {
            Ok((
                i["index"].as_u64().context("index")?,
                i["id"].as_str().context("id")?.to_owned(),
                i["code"].as_str().context("code")?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn an_imported_batch_signs_in_with_openssh() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::new(&broker, "ws-real").await?;
    let mut batch = items("ws", 30).await?;
    batch.insert(
        17,
        json!({"id": "ws-real", "public_key": agent.key.public_key, "vnc_password": "pw"}),
    );
    let done: Value = broker
        .admin(
            StatusCode::CREATED,
            Method::POST,
            IMPORT,
            Some(&json!({ "agents": batch })),
        )
        .await?;
    ensure!(done["imported"] == 31, "{done}");
    ensure!(done["agents"][17]["id"] == "ws-real", "{done}");
    ensure!(agent_count(&broker).await? == 31);

    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    let created = broker
        .create_session(&session_request("ws-real", "vnc"))
        .await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(4096, 7)).await?;
    ws.close().await?;
    let info: Value = broker
        .admin(StatusCode::OK, Method::GET, "/api/v1/agents/ws-real", None)
        .await?;
    ensure!(info["has_vnc_password"] == true, "{info}");
    // One audit event per agent, as one by one.
    broker
        .wait_event("agent_registered", |e| e.agent.as_deref() == Some("ws-29"))
        .await?;
    Ok(())
}

#[tokio::test]
async fn bad_imports_are_refused_whole_and_the_broker_keeps_serving() -> Result<()> {
    let broker = TestBroker::start().await?;
    let admin = broker.admin_key().to_owned();
    let post = |body: String| {
        let (broker, admin) = (&broker, admin.clone());
        async move {
            broker
                .request(
                    Method::POST,
                    IMPORT,
                    Some(&admin),
                    Some((body, "application/json")),
                    &[],
                )
                .await
        }
    };
    let good = items("pc", 3).await?;
    for body in ["not json", "[]", r#"{"agents": []}"#, r#"{"agent": []}"#] {
        let got = post(body.to_owned()).await?;
        expect_error(&got, StatusCode::BAD_REQUEST, "bad_request").context(body)?;
    }
    let many: Vec<Value> = (0..1001).map(|_| good[0].clone()).collect();
    let got = post(json!({ "agents": many }).to_string()).await?;
    expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")?;
    ensure!(got.1.to_string().contains("at most 1000"), "{}", got.1);
    let huge = format!(
        r#"{{"agents": [{{"id": "pc-x", "public_key": "{}"}}]}}"#,
        "A".repeat(1024 * 1024 + 1)
    );
    let got = post(huge).await?;
    expect_error(&got, StatusCode::PAYLOAD_TOO_LARGE, "too_large")?;

    // An invalid key and a refused field: 400, each item named.
    let mut bad = good.clone();
    bad.push(json!({"id": "pc-bad", "public_key": "ssh-ed25519 nope"}));
    let other = AgentKey::generate().await?.public_key;
    bad.push(json!({"id": "pc-ssh", "public_key": other, "ssh_password": "x"}));
    let got = broker
        .api(
            Method::POST,
            IMPORT,
            Some(&admin),
            Some(&json!({ "agents": bad })),
        )
        .await?;
    ensure!(
        refused(&got, StatusCode::BAD_REQUEST)?
            == vec![
                (3, "pc-bad".to_owned(), "invalid".to_owned()),
                (4, "pc-ssh".to_owned(), "invalid".to_owned()),
            ],
        "{}",
        got.1
    );
    ensure!(
        agent_count(&broker).await? == 0,
        "a refused import registered agents"
    );

    // Conflicts with a registered agent and within the batch: 409, nothing registered.
    broker
        .register_agent_as(&admin, "pc-1", &AgentKey::generate().await?.public_key)
        .await?;
    let mut clash = good.clone();
    clash.push(json!({"id": "pc-9", "public_key": good[2]["public_key"]}));
    let got = broker
        .api(
            Method::POST,
            IMPORT,
            Some(&admin),
            Some(&json!({ "agents": clash })),
        )
        .await?;
    ensure!(
        refused(&got, StatusCode::CONFLICT)?
            == vec![
                (1, "pc-1".to_owned(), "conflict".to_owned()),
                (3, "pc-9".to_owned(), "conflict".to_owned())
            ],
        "{}",
        got.1
    );
    ensure!(agent_count(&broker).await? == 1);

    // Not an admin: 403.
    let helpdesk = broker.create_key("default", Role::Helpdesk)?;
    let got = broker
        .api(
            Method::POST,
            IMPORT,
            Some(&helpdesk),
            Some(&json!({ "agents": good })),
        )
        .await?;
    expect_error(&got, StatusCode::FORBIDDEN, "forbidden")?;
    assert_still_serving(&broker).await?;

    // An agent named `import` is still an agent like any other.
    let key = AgentKey::generate().await?;
    broker
        .register_agent_as(&admin, "import", &key.public_key)
        .await?;
    let info: Value = broker
        .admin(StatusCode::OK, Method::GET, IMPORT, None)
        .await?;
    ensure!(info["id"] == "import", "{info}");
    let got = broker
        .api(Method::DELETE, IMPORT, Some(&admin), None)
        .await?;
    ensure!(got.0 == StatusCode::NO_CONTENT, "{got:?}");
    let got = broker.api(Method::GET, IMPORT, Some(&admin), None).await?;
    expect_error(&got, StatusCode::NOT_FOUND, "not_found")?;
    Ok(())
}

#[tokio::test]
async fn the_cli_names_every_bad_line_and_imports_nothing_until_the_file_is_clean() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cli = |file: &std::path::Path| -> Result<std::process::Output> {
        std::process::Command::new(passerelle_bin()?)
            .arg("--data-dir")
            .arg(broker.data_dir())
            .args(["agent", "import"])
            .arg(file)
            .output()
            .context("running passerelle agent import")
    };
    let keys: Vec<String> = {
        let mut keys = Vec::new();
        for _ in 0..3 {
            let line = AgentKey::generate().await?.public_key;
            // `ssh-ed25519 AAAA... comment`: the comment becomes the agent id below.
            let mut fields = line.split_whitespace();
            keys.push(format!(
                "{} {}",
                fields.next().context("type")?,
                fields.next().context("base64")?
            ));
        }
        keys
    };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("authorized_keys");
    let text = format!(
        "# the old shared account\n{} ws-a\n\n{}\n{} ws-c\nssh-ed25519 AAAAbroken ws-d\n",
        keys[0], keys[1], keys[2]
    );
    std::fs::write(&file, text)?;
    let out = cli(&file)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a file with bad lines was imported");
    ensure!(
        stderr.contains("authorized_keys:4: no agent id")
            && stderr.contains("authorized_keys:6:")
            && !stderr.contains(":2:")
            && stderr.contains("nothing was imported"),
        "{stderr}"
    );
    ensure!(agent_count(&broker).await? == 0);

    let text = format!("{} ws-a\n{} ws-b\n{} ws-c\n", keys[0], keys[1], keys[2]);
    std::fs::write(&file, text)?;
    let out = cli(&file)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("imported 3/3") && stdout.contains("3 agents imported"),
        "{stdout}"
    );
    ensure!(agent_count(&broker).await? == 3);
    // Again: every line is now taken, each named, nothing changes.
    let out = cli(&file)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains(":3: agent ws-c is already registered"),
        "{stderr}"
    );
    Ok(())
}
