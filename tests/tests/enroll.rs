//! Fleet enrolment (issue 18): workstations register their own keys with an enrolment token,
//! then connect with stock OpenSSH. 200 enrolments at once with a token of 200 uses; the 201st
//! and a replay refused; each refusal's code; re-enrolment replacing a key and ending the old
//! connection; wrong tokens locking the address out like wrong API keys; the CLI.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures_util::{StreamExt as _, TryStreamExt as _};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, StatusCode, TestBroker, assert_still_serving, expect_error,
    passerelle_bin, unique,
};
use serde_json::{Value, json};

/// `POST /api/v1/enrollment-tokens` with the admin key; returns (token id, secret).
async fn make_token(broker: &TestBroker, body: Value) -> Result<(String, String)> {
    let (status, created) = broker
        .api(
            Method::POST,
            "/api/v1/enrollment-tokens",
            Some(broker.admin_key()),
            Some(&body),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {created}");
    let id = created["id"].as_str().context("id")?.to_owned();
    let secret = created["token"].as_str().context("token")?.to_owned();
    ensure!(
        secret.starts_with("pet_") && secret.contains(&id),
        "{created}"
    );
    Ok((id, secret))
}

/// `POST /api/v1/enroll` without any API key.
async fn enroll(
    broker: &TestBroker,
    token: &str,
    id: &str,
    public_key: &str,
) -> Result<(StatusCode, Value)> {
    let body = json!({"token": token, "id": id, "public_key": public_key});
    broker
        .api(Method::POST, "/api/v1/enroll", None, Some(&body))
        .await
}

/// The token as `GET /api/v1/enrollment-tokens` lists it.
async fn listed(broker: &TestBroker, id: &str) -> Result<Value> {
    let (status, list) = broker
        .api(
            Method::GET,
            "/api/v1/enrollment-tokens",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {list}");
    ensure!(
        !list.to_string().contains("pet_"),
        "a secret in the list: {list}"
    );
    list.as_array()
        .and_then(|l| l.iter().find(|t| t["id"] == id))
        .cloned()
        .with_context(|| format!("token {id} not listed: {list}"))
}

#[tokio::test]
async fn two_hundred_workstations_enrol_at_once_with_one_token() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let (token_id, token) = make_token(
        &broker,
        json!({"name": "GPO wave 1", "uses": 200, "id_pattern": "pc-*"}),
    )
    .await?;
    // 201 workstations, each with its own ssh-keygen key (a few at a time).
    let agents: Vec<Agent> = futures_util::stream::iter(0..201)
        .map(|i| {
            let broker = &broker;
            async move { Agent::new(broker, &format!("pc-{i:03}")).await }
        })
        .buffered(8)
        .try_collect()
        .await?;

    // The first 200 enrol all at once: every one of them gets in, once.
    let answers = futures_util::future::join_all(
        agents[..200]
            .iter()
            .map(|a| enroll(&broker, &token, &a.id, &a.key.public_key)),
    )
    .await;
    let mut created = 0;
    for (a, answer) in agents.iter().zip(answers) {
        let (status, body) = answer?;
        ensure!(status == StatusCode::CREATED, "{}: {status} {body}", a.id);
        ensure!(
            body["id"] == a.id.as_str() && body["tenant"] == "default",
            "{body}"
        );
        created += 1;
    }
    ensure!(created == 200);
    let info = listed(&broker, &token_id).await?;
    ensure!(info["used"] == 200 && info["uses"] == 200, "{info}");

    // The 201st is refused: the token is spent, and nothing was registered.
    let last = &agents[200];
    let got = enroll(&broker, &token, &last.id, &last.key.public_key).await?;
    expect_error(&got, StatusCode::FORBIDDEN, "token_spent")?;
    let (status, _) = broker
        .api(
            Method::GET,
            &format!("/api/v1/agents/{}", last.id),
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NOT_FOUND, "the 201st was registered");
    // Replaying the used token for an enrolled id with another key changes nothing.
    let got = enroll(&broker, &token, "pc-000", &last.key.public_key).await?;
    expect_error(&got, StatusCode::FORBIDDEN, "token_spent")?;

    // Audited, with the token's id.
    let page = broker.audit("kind=agent_enrolled&limit=1000").await?;
    let enrolled = page
        .events
        .iter()
        .filter(|e| e.detail.contains(&token_id))
        .count();
    ensure!(
        enrolled == 200,
        "{enrolled} agent_enrolled events name the token"
    );
    let ev = &page.events[0];
    ensure!(
        ev.agent.as_deref().is_some_and(|a| a.starts_with("pc-")) && ev.peer_addr.is_some(),
        "{ev:?}"
    );

    // A sample of them connect with stock OpenSSH and come online.
    let mut sample: Vec<Agent> = agents.into_iter().step_by(10).take(20).collect();
    for a in &mut sample {
        a.connect(&[Forward::named("vnc", echo.port())])?;
    }
    for a in &mut sample {
        a.wait_online(&broker, &["vnc"]).await?;
    }
    let (status, online) = broker
        .api(
            Method::GET,
            "/api/v1/agents?online=true&limit=1000",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {online}");
    ensure!(online.as_array().map(Vec::len) == Some(20), "{online}");
    Ok(())
}

#[tokio::test]
async fn replays_and_unusable_tokens_are_refused_with_their_reason() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (token_id, token) = make_token(
        &broker,
        json!({"name": "lab", "uses": 5, "id_pattern": "lab-*"}),
    )
    .await?;
    let first = Agent::new(&broker, "lab-1").await?;
    let other = Agent::new(&broker, "lab-2").await?;
    let got = enroll(&broker, &token, "lab-1", &first.key.public_key).await?;
    ensure!(got.0 == StatusCode::CREATED, "{got:?}");

    // A replay of the token for the same id with another key: refused, the key unchanged.
    let got = enroll(&broker, &token, "lab-1", &other.key.public_key).await?;
    expect_error(&got, StatusCode::CONFLICT, "agent_exists")?;
    let agent = broker.agent_as(broker.admin_key(), "lab-1").await?;
    ensure!(
        agent.enrolled_by.as_deref() == Some(token_id.as_str()),
        "{agent:?}"
    );
    let fingerprint = agent.key_fingerprint.clone();
    // Another id with the first one's key: that key belongs to an agent already.
    let got = enroll(&broker, &token, "lab-3", &first.key.public_key).await?;
    expect_error(&got, StatusCode::CONFLICT, "conflict")?;
    // Outside the pattern; a malformed key; a malformed body.
    let got = enroll(&broker, &token, "pc-1", &other.key.public_key).await?;
    expect_error(&got, StatusCode::FORBIDDEN, "id_not_allowed")?;
    let got = enroll(&broker, &token, "lab-2", "ssh-ed25519 AAAAnotakey").await?;
    expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")?;
    let huge = format!("ssh-ed25519 {}", "A".repeat(9000));
    let got = enroll(&broker, &token, "lab-2", &huge).await?;
    expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")?;
    let typo =
        json!({"token": token, "id": "lab-2", "public_key": other.key.public_key, "tenant": "x"});
    let got = broker
        .api(Method::POST, "/api/v1/enroll", None, Some(&typo))
        .await?;
    expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")?;
    // None of that spent a use.
    ensure!(listed(&broker, &token_id).await?["used"] == 1);
    ensure!(
        broker
            .agent_as(broker.admin_key(), "lab-1")
            .await?
            .key_fingerprint
            == fingerprint,
        "a refused replay changed the key"
    );

    // Revoked: refused from then on; the agent it enrolled stays.
    let (status, body) = broker
        .api(
            Method::DELETE,
            &format!("/api/v1/enrollment-tokens/{token_id}"),
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    let got = enroll(&broker, &token, "lab-2", &other.key.public_key).await?;
    expect_error(&got, StatusCode::FORBIDDEN, "token_revoked")?;
    ensure!(listed(&broker, &token_id).await?["revoked_at"].is_string());
    broker.agent_as(broker.admin_key(), "lab-1").await?;
    broker
        .wait_event("request_refused", |e| {
            e.detail.contains(&token_id) && e.detail.contains("revoked")
        })
        .await?;

    // Expired (made in the store: the API refuses an expiry in the past).
    let tenant = broker
        .store()
        .tenant_id(&"default".parse()?)?
        .context("tenant default")?;
    let (_, expired) = broker.store().create_enrollment_token(
        tenant,
        &passerelle::store::NewToken {
            name: "old".into(),
            uses: 5,
            expires_at: Some(passerelle::store::now_ms() - 1000),
            id_pattern: None,
            reenrol: false,
        },
    )?;
    let got = enroll(&broker, &expired, "lab-2", &other.key.public_key).await?;
    expect_error(&got, StatusCode::FORBIDDEN, "token_expired")?;

    // Bodies of the admin calls: bounds, unknown fields, roles, a past expiry.
    for bad in [
        json!({"name": "x", "uses": 0}),
        json!({"name": "x", "uses": 2_000_000}),
        json!({"name": ""}),
        json!({"name": "x", "id_pattern": "pc-[0-9]"}),
        json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"name": "x", "usess": 3}),
    ] {
        let got = broker
            .api(
                Method::POST,
                "/api/v1/enrollment-tokens",
                Some(broker.admin_key()),
                Some(&bad),
            )
            .await?;
        expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")
            .with_context(|| format!("{bad}"))?;
    }
    let helpdesk = broker.create_key("default", passerelle_e2e::Role::Helpdesk)?;
    let got = broker
        .api(
            Method::GET,
            "/api/v1/enrollment-tokens",
            Some(&helpdesk),
            None,
        )
        .await?;
    expect_error(&got, StatusCode::FORBIDDEN, "forbidden")?;
    // Another tenant's admin neither sees nor revokes this tenant's tokens.
    let other_admin = broker.create_tenant_with_key("other", passerelle_e2e::Role::Admin)?;
    let got = broker
        .api(
            Method::DELETE,
            &format!("/api/v1/enrollment-tokens/{token_id}"),
            Some(&other_admin),
            None,
        )
        .await?;
    expect_error(&got, StatusCode::NOT_FOUND, "not_found")?;
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn re_enrolment_replaces_the_key_and_ends_the_old_connection() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let (_, token) = make_token(
        &broker,
        json!({"name": "reimage", "uses": 3, "reenrol": true}),
    )
    .await?;
    let mut old = Agent::new(&broker, "pc-7").await?;
    let got = enroll(&broker, &token, "pc-7", &old.key.public_key).await?;
    ensure!(got.0 == StatusCode::CREATED, "{got:?}");
    old.connect(&[Forward::named("vnc", echo.port())])?;
    old.wait_online(&broker, &["vnc"]).await?;

    // The workstation is reimaged: a new key under the same id.
    let mut new = Agent::new(&broker, "pc-7").await?;
    let (status, body) = enroll(&broker, &token, "pc-7", &new.key.public_key).await?;
    ensure!(
        status == StatusCode::OK && body["reenrolled"] == true,
        "{status} {body}"
    );
    let exit = old.process()?.wait(Duration::from_secs(15)).await?;
    ensure!(
        !exit.success(),
        "the old connection should have been ended: {exit}"
    );
    new.connect(&[Forward::named("vnc", echo.port())])?;
    new.wait_online(&broker, &["vnc"]).await?;
    // The old key no longer logs in.
    old.disconnect().await?;
    let out = old
        .run("pc-7", &["-N", "-o", "ConnectTimeout=5"], &[])
        .await?;
    ensure!(
        !out.status.success() && out.stderr.contains("Permission denied"),
        "the old key: {out:?}"
    );
    broker
        .wait_event("agent_enrolled", |e| {
            e.detail.contains("previous key was replaced")
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn wrong_tokens_lock_the_address_out_like_wrong_api_keys() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (token_id, token) = make_token(&broker, json!({"name": "wave", "uses": 10})).await?;
    let agent = Agent::new(&broker, &unique("pc")).await?;
    // 20 wrong tokens: unknown ids, and the real id with a wrong secret.
    for i in 0..20 {
        let wrong = if i % 2 == 0 {
            format!("pet_{:012x}_{}", i, "A".repeat(43))
        } else {
            format!("pet_{token_id}_{}", "B".repeat(43))
        };
        let got = enroll(&broker, &wrong, &agent.id, &agent.key.public_key).await?;
        expect_error(&got, StatusCode::UNAUTHORIZED, "unauthorized")
            .with_context(|| format!("wrong token {i}"))?;
    }
    // Now even the right token is refused from this address (so is the admin key)...
    let got = enroll(&broker, &token, &agent.id, &agent.key.public_key).await?;
    expect_error(&got, StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")?;
    let (status, _) = broker
        .api(
            Method::GET,
            "/api/v1/enrollment-tokens",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::TOO_MANY_REQUESTS, "{status}");
    // ...while another address is unaffected: nothing was spent, the lockout is audited once,
    // and the token still enrols from there.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(passerelle_e2e::WAIT)
        .build()?;
    let get = |path: &str| {
        elsewhere
            .get(format!("{}{path}", broker.base_url()))
            .bearer_auth(broker.admin_key())
            .send()
    };
    let tokens: Value = get("/api/v1/enrollment-tokens").await?.json().await?;
    ensure!(
        tokens[0]["id"] == token_id && tokens[0]["used"] == 0,
        "{tokens}"
    );
    let deadline = tokio::time::Instant::now() + passerelle_e2e::WAIT;
    loop {
        let audit: Value = get("/api/v1/audit?kind=token_guessing")
            .await?
            .json()
            .await?;
        let events = audit["events"].as_array().cloned().unwrap_or_default();
        if let Some(ev) = events.first() {
            ensure!(events.len() == 1, "{audit}");
            ensure!(
                ev["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("enrolment token")),
                "{ev}"
            );
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no token_guessing event"
        );
        tokio::time::sleep(passerelle_e2e::POLL).await;
    }
    let body = json!({"token": token, "id": agent.id, "public_key": agent.key.public_key});
    let resp = elsewhere
        .post(format!("{}/api/v1/enroll", broker.base_url()))
        .json(&body)
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::CREATED, "{}", resp.status());
    Ok(())
}

#[tokio::test]
async fn the_cli_makes_lists_and_revokes_tokens() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(passerelle_bin()?);
        cmd.arg("--data-dir").arg(broker.data_dir()).args(args);
        let out = cmd.output().context("running passerelle")?;
        ensure!(
            out.status.success(),
            "passerelle {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let secret = cli(&[
        "enroll-token",
        "add",
        "--name",
        "from the cli",
        "--uses",
        "2",
        "--valid-for",
        "7d",
        "--id-pattern",
        "ws-*",
    ])?;
    let secret = secret.trim();
    ensure!(
        secret.starts_with("pet_") && !secret.contains('\n'),
        "{secret:?}"
    );
    let agent = Agent::new(&broker, "ws-1").await?;
    let got = enroll(&broker, secret, "ws-1", &agent.key.public_key).await?;
    ensure!(got.0 == StatusCode::CREATED, "{got:?}");
    let list = cli(&["enroll-token", "list"])?;
    let row = list
        .lines()
        .find(|l| l.contains("from the cli"))
        .with_context(|| format!("not listed: {list}"))?;
    ensure!(
        row.contains("1/2") && row.contains("ws-*") && row.ends_with("valid"),
        "{row}"
    );
    ensure!(!list.contains(secret), "the list shows a secret");
    let id = row.split('\t').next().context("id column")?;
    cli(&["enroll-token", "revoke", id])?;
    ensure!(cli(&["enroll-token", "list"])?.contains("revoked"));
    let other = Agent::new(&broker, "ws-2").await?;
    let got = enroll(&broker, secret, "ws-2", &other.key.public_key).await?;
    expect_error(&got, StatusCode::FORBIDDEN, "token_revoked")?;
    Ok(())
}
