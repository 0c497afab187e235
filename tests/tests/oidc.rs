//! Console sign-in with OpenID Connect against a real provider (the certified `oidc-provider`
//! from npm, `tests/oidc/provider.mjs`) in headless Chromium: sign in through its login page,
//! open a session from the page, find your name as the operator in the audit, sign out; and the
//! refusals (another audience, another issuer, an expired token, a missing nonce, a foreign
//! signature, a replayed code, a forged state, no role), each with its page message and audit
//! event, while API keys keep working.

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::oidc::{OidcProvider, SignInReport, have_provider, sign_in};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, Role, StatusCode, TestBroker, desktop, init, unique,
};
use serde_json::{Value, json};

/// A broker whose `default` tenant signs in with a fresh provider.
async fn setup() -> Result<(TestBroker, OidcProvider)> {
    init();
    ensure!(
        desktop::have_browser() && have_provider(),
        "run scripts/install-test-deps.sh (Chromium, node, npm ci in tests/browser and tests/oidc)"
    );
    let broker = TestBroker::start().await?;
    let provider = OidcProvider::start(&format!("{}/auth/callback", broker.base_url())).await?;
    let put = json!({
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "role_claim": "passerelle_groups",
        "roles": {"helpdesk-team": "helpdesk", "passerelle-admins": "admin"},
        "display_name": "Test provider",
    });
    let info: Value = broker
        .admin(
            StatusCode::OK,
            Method::PUT,
            "/api/v1/tenant/oidc",
            Some(&put),
        )
        .await?;
    ensure!(
        info["redirect_uri"] == format!("{}/auth/callback", broker.base_url()),
        "{info}"
    );
    Ok((broker, provider))
}

async fn run(broker: &TestBroker, args: &[&str]) -> Result<SignInReport> {
    let dir = tempfile::tempdir()?;
    let report = sign_in(broker.base_url(), &dir.path().join("oidc.png"), args).await?;
    ensure!(report.error.is_none(), "the page failed: {report:#?}");
    Ok(report)
}

/// `GET /api/v1/console/me` etc. with a session cookie and optional `Origin`.
async fn with_cookie(
    broker: &TestBroker,
    method: Method,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    body: Option<&Value>,
) -> Result<(StatusCode, Value)> {
    let cookie = format!("passerelle_session={cookie}");
    let mut headers = vec![("cookie", cookie.as_str())];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    let body = body.map(|b| (b.to_string(), "application/json"));
    broker.request(method, path, None, body, &headers).await
}

#[tokio::test]
async fn a_person_signs_in_opens_a_session_as_themself_and_signs_out() -> Result<()> {
    let (broker, _provider) = setup().await?;
    let echo = EchoServer::start().await?;
    let agent_id = unique("oidc-ws");
    let mut agent = Agent::registered(&broker, &agent_id).await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;

    // The settings never show the secret.
    let (status, got) = broker
        .api(
            Method::GET,
            "/api/v1/tenant/oidc",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::OK && got.get("client_secret").is_none(),
        "{got}"
    );
    ensure!(!got.to_string().contains("passerelle-test-secret"), "{got}");

    let page = run(
        &broker,
        &[
            "--login",
            "alice",
            "--agent",
            &agent_id,
            "--service",
            "rdp",
            "--signout",
        ],
    )
    .await?;
    let who = page
        .who
        .clone()
        .context(format!("not signed in: {page:#?}"))?;
    ensure!(
        (who.name.as_str(), who.role.as_str(), who.tenant.as_str())
            == ("Alice Martin", "helpdesk", "default"),
        "{who:?}"
    );
    let cookie = page
        .session_cookie()
        .cloned()
        .context(format!("no session cookie: {page:#?}"))?;
    ensure!(
        cookie.http_only && cookie.secure && cookie.same_site == "Strict" && cookie.path == "/",
        "session cookie attributes: {cookie:?}"
    );
    ensure!(
        !page
            .cookies
            .iter()
            .any(|c| c.name == "passerelle_oidc_flow"),
        "the flow cookie outlived the callback: {:?}",
        page.cookies
    );

    // The session the page opened records the signed-in person, not the forged operator.
    let opened = page.session.clone().context("no session answer")?;
    ensure!(opened.status == 201, "{opened:?}");
    let id = opened
        .body
        .as_ref()
        .and_then(|b| b["id"].as_str())
        .context("no session id")?
        .to_owned();
    let info = broker.session(&id).await?;
    ensure!(
        info.operator == "Alice Martin",
        "operator {:?}",
        info.operator
    );
    let created = broker
        .wait_event("session_created", |e| {
            e.session.as_deref() == Some(id.as_str())
        })
        .await?;
    ensure!(
        created.operator.as_deref() == Some("Alice Martin"),
        "{created:?}"
    );
    let signed_in = broker
        .wait_event("console_sign_in", |e| {
            e.operator.as_deref() == Some("Alice Martin")
        })
        .await?;
    ensure!(
        signed_in.detail.contains("as helpdesk") && signed_in.detail.contains("\"alice\""),
        "{signed_in:?}"
    );
    broker
        .wait_event("console_sign_out", |e| {
            e.operator.as_deref() == Some("Alice Martin")
        })
        .await?;

    // Signed out: the cookie is gone from the browser, and the old value opens nothing.
    let after = page.after_signout.clone().context("no sign-out")?;
    ensure!(
        after.me_status == 401 && !after.cookies.iter().any(|c| c.name == "passerelle_session"),
        "{after:?}"
    );
    let (status, _) = with_cookie(
        &broker,
        Method::GET,
        "/api/v1/console/me",
        &cookie.value,
        None,
        None,
    )
    .await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "old cookie: {status}");
    let (status, _) = broker
        .api(
            Method::GET,
            "/api/v1/sessions",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "API key after sign-out: {status}");

    // An admin by the provider's group: a cookie call that changes something must come from
    // the broker's own origin.
    let bob = run(&broker, &["--login", "bob"]).await?;
    ensure!(
        bob.who.as_ref().is_some_and(|w| w.role == "admin"),
        "{bob:#?}"
    );
    let bob_cookie = bob.session_cookie().context("bob's cookie")?.value.clone();
    let (status, me) = with_cookie(
        &broker,
        Method::GET,
        "/api/v1/console/me",
        &bob_cookie,
        None,
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::OK && me["name"] == "Bob Admin" && me["via"] == "session",
        "{status} {me}"
    );
    let req = json!({"agent": agent_id, "service": "rdp", "operator": "x"});
    for origin in [None, Some("https://evil.example")] {
        let (status, body) = with_cookie(
            &broker,
            Method::POST,
            "/api/v1/sessions",
            &bob_cookie,
            origin,
            Some(&req),
        )
        .await?;
        ensure!(
            status == StatusCode::FORBIDDEN,
            "origin {origin:?}: {status} {body}"
        );
    }
    let (status, body) = with_cookie(
        &broker,
        Method::POST,
        "/api/v1/sessions",
        &bob_cookie,
        Some(broker.base_url()),
        Some(&req),
    )
    .await?;
    ensure!(
        status == StatusCode::CREATED,
        "same origin: {status} {body}"
    );
    ensure!(body["id"].is_string(), "{body}");
    let info = broker
        .session(body["id"].as_str().unwrap_or_default())
        .await?;
    ensure!(info.operator == "Bob Admin", "{info:?}");
    Ok(())
}

/// Waits for the `console_sign_in_refused` event whose detail starts with `code`.
async fn refused_event(broker: &TestBroker, code: &str) -> Result<()> {
    let prefix = format!("{code}: ");
    broker
        .wait_event("console_sign_in_refused", |e| e.detail.starts_with(&prefix))
        .await?;
    Ok(())
}

#[tokio::test]
async fn faulty_tokens_replayed_codes_forged_state_and_roleless_people_are_refused() -> Result<()> {
    let (broker, provider) = setup().await?;
    for (fault, code, says) in [
        ("audience", "audience", "another client"),
        ("issuer", "issuer", "not issued by the configured issuer"),
        ("expired", "expired", "expired"),
        ("nonce", "missing_nonce", "no nonce"),
        ("signature", "signature", "signature does not verify"),
    ] {
        provider.fault(fault).await?;
        let page = run(&broker, &["--login", "alice"]).await?;
        let refused = page
            .refused
            .clone()
            .context(format!("{fault}: not refused: {page:#?}"))?;
        ensure!(
            refused.code.as_deref() == Some(code)
                && refused.text.as_deref().is_some_and(|t| t.contains(says)),
            "{fault}: {refused:?}"
        );
        ensure!(
            page.session_cookie().is_none() && page.who.is_none(),
            "{fault}: signed in anyway: {page:#?}"
        );
        refused_event(&broker, code).await?;
    }

    // The callback URL replayed with its flow cookie: the provider refuses the spent code.
    let page = run(&broker, &["--login", "alice", "--replay"]).await?;
    ensure!(page.who.is_some(), "{page:#?}");
    let replay = page
        .replay
        .clone()
        .context(format!("no replay: {page:#?}"))?;
    ensure!(
        replay.code.as_deref() == Some("code_refused")
            && replay
                .text
                .as_deref()
                .is_some_and(|t| t.contains("invalid_grant")),
        "{replay:?}"
    );
    refused_event(&broker, "code_refused").await?;

    // A callback whose state is not this browser's sign-in.
    let page = run(&broker, &["--login", "alice", "--bad-state"]).await?;
    let bad = page.bad_state.clone().context(format!("{page:#?}"))?;
    ensure!(
        bad.code.as_deref() == Some("bad_state")
            && bad
                .text
                .as_deref()
                .is_some_and(|t| t.contains("state mismatch")),
        "{bad:?}"
    );
    refused_event(&broker, "bad_state").await?;

    // Nobody's group maps to a role; a tenant without sign-in says so.
    let page = run(&broker, &["--login", "eve"]).await?;
    let refused = page.refused.clone().context(format!("{page:#?}"))?;
    ensure!(refused.code.as_deref() == Some("no_role"), "{refused:?}");
    refused_event(&broker, "no_role").await?;
    let page = run(&broker, &["--login", "alice", "--tenant", "nosuch"]).await?;
    let refused = page.refused.clone().context(format!("{page:#?}"))?;
    ensure!(
        refused.code.as_deref() == Some("not_configured"),
        "{refused:?}"
    );

    // Everything else still runs: a clean sign-in works after all that, and so do keys.
    let page = run(&broker, &["--login", "alice"]).await?;
    ensure!(page.who.is_some(), "{page:#?}");
    passerelle_e2e::assert_still_serving(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn the_settings_api_checks_input_roles_and_hides_the_secret() -> Result<()> {
    init();
    let broker = TestBroker::start().await?;
    let helpdesk = broker.create_key("default", Role::Helpdesk)?;
    let good = json!({
        "issuer": "https://login.example.test/realms/it",
        "client_id": "passerelle",
        "client_secret": "very-secret-value",
        "role_claim": "groups",
        "roles": {"it": "helpdesk"},
    });
    let (status, _) = broker
        .api(
            Method::GET,
            "/api/v1/tenant/oidc",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NOT_FOUND, "before: {status}");
    let (status, _) = broker
        .api(
            Method::PUT,
            "/api/v1/tenant/oidc",
            Some(&helpdesk),
            Some(&good),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "helpdesk: {status}");
    for (field, bad) in [
        ("issuer", json!("http://login.example.test")),
        ("issuer", json!("https://login.example.test/")),
        ("roles", json!({})),
        ("client_secret", json!("")),
    ] {
        let mut body = good.clone();
        body[field] = bad.clone();
        let (status, answer) = broker
            .api(
                Method::PUT,
                "/api/v1/tenant/oidc",
                Some(broker.admin_key()),
                Some(&body),
            )
            .await?;
        ensure!(
            status == StatusCode::BAD_REQUEST,
            "{field}={bad}: {status} {answer}"
        );
    }
    let put: Value = broker
        .admin(
            StatusCode::OK,
            Method::PUT,
            "/api/v1/tenant/oidc",
            Some(&good),
        )
        .await?;
    ensure!(
        put["display_name"] == "login.example.test" && put.get("client_secret").is_none(),
        "{put}"
    );
    let (_, audit) = broker
        .api(
            Method::GET,
            "/api/v1/audit?kind=oidc_changed",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(
        audit.to_string().contains("login.example.test")
            && !audit.to_string().contains("very-secret-value"),
        "{audit}"
    );
    let (status, _) = broker
        .api(
            Method::DELETE,
            "/api/v1/tenant/oidc",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT, "delete: {status}");
    let (status, _) = broker
        .api(
            Method::DELETE,
            "/api/v1/tenant/oidc",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NOT_FOUND, "delete again: {status}");
    // A forged or unknown session cookie is 401, never a tenant's data.
    let (status, _) = with_cookie(
        &broker,
        Method::GET,
        "/api/v1/sessions",
        "pcs_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        None,
        None,
    )
    .await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "forged cookie: {status}"
    );
    Ok(())
}
