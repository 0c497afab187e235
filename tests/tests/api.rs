//! The HTTP API's guards: authentication, roles, tenant isolation (404, never 403, across
//! tenants), input validation, and the presence checks of session creation.

use anyhow::{Result, ensure};
use passerelle_e2e::{
    Agent, AgentKey, EchoServer, Forward, Method, Role, StatusCode, TestBroker, Ws,
    assert_still_serving, expect_error, session_request,
};
use serde_json::{Value, json};

fn session_body(agent: &str, service: &str) -> Value {
    json!({"agent": agent, "service": service, "operator": "alice"})
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_other() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let key_a = broker.admin_key().to_owned();
    let key_b = broker.create_tenant_with_key("tenant-b", Role::Admin)?;
    let mut agent_a = Agent::registered(&broker, "pc-of-a").await?;
    let mut agent_b = Agent::registered_in(&broker, &key_b, "pc-of-b").await?;
    agent_a.connect(&[Forward::named("vnc", echo.port())])?;
    agent_b.connect(&[Forward::named("vnc", echo.port())])?;
    agent_a.wait_online(&broker, &["vnc"]).await?;
    agent_b.wait_online(&broker, &["vnc"]).await?;
    let sa = broker
        .create_session_as(&key_a, &session_request("pc-of-a", "vnc"))
        .await?;
    let sb = broker
        .create_session_as(&key_b, &session_request("pc-of-b", "vnc"))
        .await?;

    for (method, path) in [
        (Method::GET, format!("/api/v1/sessions/{}", sa.id)),
        (Method::DELETE, format!("/api/v1/sessions/{}", sa.id)),
        (Method::POST, format!("/api/v1/sessions/{}/tokens", sa.id)),
        (Method::GET, "/api/v1/agents/pc-of-a".to_owned()),
        (Method::DELETE, "/api/v1/agents/pc-of-a".to_owned()),
        (Method::GET, format!("/api/v1/recordings/{}", sa.id)),
    ] {
        let got = broker
            .api(method.clone(), &path, Some(&key_b), None)
            .await?;
        expect_error(&got, StatusCode::NOT_FOUND, "not_found")
            .map_err(|e| e.context(format!("tenant B: {method} {path}")))?;
    }
    let patch = json!({"vnc_password": "x"});
    let got = broker
        .api(
            Method::PATCH,
            "/api/v1/agents/pc-of-a",
            Some(&key_b),
            Some(&patch),
        )
        .await?;
    expect_error(&got, StatusCode::NOT_FOUND, "not_found")?;
    let got = broker
        .api(
            Method::POST,
            "/api/v1/sessions",
            Some(&key_b),
            Some(&session_body("pc-of-a", "vnc")),
        )
        .await?;
    expect_error(&got, StatusCode::NOT_FOUND, "not_found")?;

    // Lists and the audit show only one's own.
    let (status, list) = broker
        .api(Method::GET, "/api/v1/sessions", Some(&key_b), None)
        .await?;
    ensure!(
        status == StatusCode::OK && !list.to_string().contains(&sa.id),
        "{status} {list}"
    );
    ensure!(list.to_string().contains(&sb.id), "{list}");
    let (status, list) = broker
        .api(Method::GET, "/api/v1/agents", Some(&key_b), None)
        .await?;
    ensure!(
        status == StatusCode::OK && !list.to_string().contains("pc-of-a"),
        "{status} {list}"
    );
    let (status, audit) = broker
        .api(Method::GET, "/api/v1/audit", Some(&key_b), None)
        .await?;
    ensure!(status == StatusCode::OK, "{status} {audit}");
    ensure!(
        !audit.to_string().contains("pc-of-a") && !audit.to_string().contains(&sa.id),
        "{audit}"
    );

    // B's token does not open A's session; A's session and agent are intact.
    let url = sa.raw_ws_url.replace(&sa.token, &sb.token);
    let closed = Ws::connect(&url).await?.expect_close().await?;
    ensure!(
        closed.code == passerelle_e2e::close::TOKEN_INVALID.code,
        "{closed:?}"
    );
    ensure!(
        agent_a.process()?.exited()?.is_none(),
        "tenant B's DELETE disconnected A's agent"
    );
    let mut ws = Ws::connect(&sa.raw_ws_url).await?;
    ws.round_trip(b"tenant a").await?;
    ws.close().await
}

#[tokio::test]
async fn roles_limit_what_a_key_may_do() -> Result<()> {
    let broker = TestBroker::start().await?;
    let helpdesk = broker.create_key("default", Role::Helpdesk)?;
    let auditor = broker.create_key("default", Role::Auditor)?;
    let _agent = Agent::registered(&broker, "pc-roles").await?;
    let new_key = AgentKey::generate().await?;
    let agent_body = json!({"id": "pc-new", "public_key": new_key.public_key});

    let got = broker
        .api(
            Method::POST,
            "/api/v1/agents",
            Some(&helpdesk),
            Some(&agent_body),
        )
        .await?;
    expect_error(&got, StatusCode::FORBIDDEN, "forbidden")?;
    let got = broker
        .api(
            Method::DELETE,
            "/api/v1/agents/pc-roles",
            Some(&helpdesk),
            None,
        )
        .await?;
    expect_error(&got, StatusCode::FORBIDDEN, "forbidden")?;
    let got = broker
        .api(
            Method::PATCH,
            "/api/v1/tenant",
            Some(&helpdesk),
            Some(&json!({})),
        )
        .await?;
    expect_error(&got, StatusCode::FORBIDDEN, "forbidden")?;
    let legacy = json!({"agent": "pc-roles", "service": "vnc", "operator": "bob", "legacy": true});
    let got = broker
        .api(
            Method::POST,
            "/api/v1/sessions",
            Some(&auditor),
            Some(&legacy),
        )
        .await?;
    expect_error(&got, StatusCode::FORBIDDEN, "forbidden")?;
    let got = broker
        .api(
            Method::POST,
            "/api/v1/agents",
            Some(&auditor),
            Some(&agent_body),
        )
        .await?;
    expect_error(&got, StatusCode::FORBIDDEN, "forbidden")?;

    // What each role may do, it can.
    let (status, body) = broker
        .api(
            Method::POST,
            "/api/v1/sessions",
            Some(&helpdesk),
            Some(&legacy),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "helpdesk creating a session: {status} {body}"
    );
    let (status, body) = broker
        .api(Method::GET, "/api/v1/audit", Some(&auditor), None)
        .await?;
    ensure!(
        status == StatusCode::OK,
        "auditor reading the audit: {status} {body}"
    );
    let (status, body) = broker
        .api(
            Method::POST,
            "/api/v1/agents",
            Some(broker.admin_key()),
            Some(&agent_body),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "admin registering an agent: {status} {body}"
    );

    // No key, a wrong key.
    let got = broker
        .api(Method::GET, "/api/v1/agents", None, None)
        .await?;
    expect_error(&got, StatusCode::UNAUTHORIZED, "unauthorized")?;
    let got = broker
        .api(Method::GET, "/api/v1/agents", Some("not-a-key"), None)
        .await?;
    expect_error(&got, StatusCode::UNAUTHORIZED, "unauthorized")?;
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn malformed_requests_are_bad_requests() -> Result<()> {
    let broker = TestBroker::start().await?;
    let key = broker.admin_key().to_owned();
    let post = |body: String| {
        let broker = &broker;
        let key = key.clone();
        async move {
            broker
                .request(
                    Method::POST,
                    "/api/v1/sessions",
                    Some(&key),
                    Some((body, "application/json")),
                    &[],
                )
                .await
        }
    };
    for body in [
        r#"{"agent": "pc-1", "service": "#.to_owned(),
        "not json at all".to_owned(),
        r#"{"agent": "pc-1", "service": "vnc", "operator": "alice", "legcy": true}"#.to_owned(),
        r#"{"agent": "../etc", "service": "vnc", "operator": "alice"}"#.to_owned(),
        r#"{"agent": "pc-1", "service": "v n c", "operator": "alice"}"#.to_owned(),
        r#"{"service": "vnc", "operator": "alice"}"#.to_owned(),
    ] {
        let got = post(body.clone()).await?;
        expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")
            .map_err(|e| e.context(format!("body {body}")))?;
    }
    let huge = json!({"agent": "pc-1", "service": "vnc", "operator": "x".repeat(70 * 1024)});
    let got = post(huge.to_string()).await?;
    expect_error(&got, StatusCode::PAYLOAD_TOO_LARGE, "too_large")?;
    let got = broker
        .api(Method::GET, "/api/v1/agents/bad..id%2F", Some(&key), None)
        .await?;
    ensure!(
        got.0 == StatusCode::BAD_REQUEST || got.0 == StatusCode::NOT_FOUND,
        "{got:?}"
    );
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn sessions_need_an_online_agent_with_the_service() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let key = broker.admin_key().to_owned();
    let create = |agent: &'static str, service: &'static str| {
        let body = session_body(agent, service);
        let broker = &broker;
        let key = key.clone();
        async move {
            broker
                .api(Method::POST, "/api/v1/sessions", Some(&key), Some(&body))
                .await
        }
    };
    expect_error(
        &create("pc-nobody", "vnc").await?,
        StatusCode::NOT_FOUND,
        "not_found",
    )?;
    let mut agent = Agent::registered(&broker, "pc-presence").await?;
    expect_error(
        &create("pc-presence", "vnc").await?,
        StatusCode::CONFLICT,
        "agent_offline",
    )?;
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(&broker, &["vnc"]).await?;
    expect_error(
        &create("pc-presence", "rdp").await?,
        StatusCode::CONFLICT,
        "service_unavailable",
    )?;
    let (status, body) = create("pc-presence", "vnc").await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");

    // Registration conflicts: the same id, or the same key for another id.
    let dup = json!({"id": "pc-presence", "public_key": agent.key.public_key});
    let got = broker
        .api(Method::POST, "/api/v1/agents", Some(&key), Some(&dup))
        .await?;
    expect_error(&got, StatusCode::CONFLICT, "conflict")?;
    let same_key = json!({"id": "pc-clone", "public_key": agent.key.public_key});
    let got = broker
        .api(Method::POST, "/api/v1/agents", Some(&key), Some(&same_key))
        .await?;
    expect_error(&got, StatusCode::CONFLICT, "conflict")?;
    let garbage = json!({"id": "pc-garbage", "public_key": "ssh-ed25519 notbase64"});
    let got = broker
        .api(Method::POST, "/api/v1/agents", Some(&key), Some(&garbage))
        .await?;
    expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")?;
    // Secrets are write-only.
    let path = "/api/v1/agents/pc-presence";
    let patch = json!({"vnc_password": "s3cret-vnc"});
    let (status, body) = broker
        .api(Method::PATCH, path, Some(&key), Some(&patch))
        .await?;
    ensure!(status.is_success(), "{status} {body}");
    let (status, info) = broker.api(Method::GET, path, Some(&key), None).await?;
    ensure!(
        status == StatusCode::OK && info["has_vnc_password"] == json!(true),
        "{info}"
    );
    ensure!(
        !info.to_string().contains("s3cret-vnc"),
        "the password is readable: {info}"
    );
    Ok(())
}
