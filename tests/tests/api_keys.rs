//! API keys as objects: an admin lists, creates (with a name and an expiry) and revokes its own
//! tenant's keys through `/api/v1/keys`, and the broker's administrator does the same with
//! `passerelle api-key list|revoke`. A revoked or expired key fails at the next request without
//! counting as a guess; every change is audited with the key's id; the last admin key of a
//! tenant cannot be revoked through the API.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::process::run_cli;
use passerelle_e2e::{
    Method, Role, StatusCode, TestBroker, WAIT, assert_still_serving, expect_error,
};
use passerelle_proto::api_keys::{ApiKeyInfo, CreatedApiKey};
use serde_json::json;
use tokio::time::{Instant, sleep};

/// `GET /api/v1/keys` with `key`; must answer 200.
async fn list(broker: &TestBroker, key: &str) -> Result<Vec<ApiKeyInfo>> {
    let (status, body) = broker
        .api(Method::GET, "/api/v1/keys", Some(key), None)
        .await?;
    ensure!(
        status == StatusCode::OK,
        "GET /api/v1/keys: {status} {body}"
    );
    Ok(serde_json::from_value(body)?)
}

/// `POST /api/v1/keys` with `key`; must answer 201.
async fn create(broker: &TestBroker, key: &str, body: serde_json::Value) -> Result<CreatedApiKey> {
    let (status, answer) = broker
        .api(Method::POST, "/api/v1/keys", Some(key), Some(&body))
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "POST /api/v1/keys {body}: {status} {answer}"
    );
    Ok(serde_json::from_value(answer)?)
}

async fn revoke(
    broker: &TestBroker,
    key: &str,
    id: &str,
) -> Result<(StatusCode, serde_json::Value)> {
    broker
        .api(
            Method::DELETE,
            &format!("/api/v1/keys/{id}"),
            Some(key),
            None,
        )
        .await
}

/// `GET /api/v1/sessions` with `key`: the status and body.
async fn use_key(broker: &TestBroker, key: &str) -> Result<(StatusCode, serde_json::Value)> {
    broker
        .api(Method::GET, "/api/v1/sessions", Some(key), None)
        .await
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_at_once_and_audited() -> Result<()> {
    // A low guessing limit: presenting a revoked key many times must not reach it.
    let broker = TestBroker::start_with(|c| c.auth_failure_limit = 3).await?;
    let admin = broker.admin_key().to_owned();
    let in_a_year = passerelle::store::rfc3339(passerelle::store::now_ms() + 365 * 86_400_000);
    let created = create(
        &broker,
        &admin,
        json!({"name": "helpdesk console", "role": "helpdesk", "expires_at": in_a_year}),
    )
    .await?;
    ensure!(
        created
            .key
            .starts_with(&format!("psk_{}_", created.info.id)),
        "{created:?}"
    );
    ensure!(
        created.info.active
            && created.info.role == Role::Helpdesk
            && created.info.expires_at.is_some(),
        "{created:?}"
    );
    ensure!(use_key(&broker, &created.key).await?.0 == StatusCode::OK);

    // Listed without secrets, next to the first admin key.
    let keys = list(&broker, &admin).await?;
    let text = serde_json::to_string(&keys)?;
    ensure!(
        !text.contains(&created.key) && !text.contains(&admin),
        "a secret is listed"
    );
    ensure!(keys.len() == 2, "{keys:#?}");
    ensure!(
        keys.iter()
            .any(|k| k.name == "first admin key" && k.role == Role::Admin && k.active),
        "{keys:#?}"
    );

    // Revoked: the next request fails, 401, saying so.
    let (status, body) = revoke(&broker, &admin, &created.info.id).await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    let refused = use_key(&broker, &created.key).await?;
    expect_error(&refused, StatusCode::UNAUTHORIZED, "unauthorized")?;
    ensure!(
        refused.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{refused:?}"
    );
    // A revoked key is no guess: ten tries do not lock the address out.
    for _ in 0..10 {
        ensure!(use_key(&broker, &created.key).await?.0 == StatusCode::UNAUTHORIZED);
    }
    ensure!(
        use_key(&broker, &admin).await?.0 == StatusCode::OK,
        "the admin was locked out by a revoked key"
    );
    // Revoking it again changes nothing.
    ensure!(revoke(&broker, &admin, &created.info.id).await?.0 == StatusCode::NO_CONTENT);
    let listed = list(&broker, &admin).await?;
    let gone = listed
        .iter()
        .find(|k| k.id == created.info.id)
        .context("a revoked key stays listed")?;
    ensure!(!gone.active && gone.revoked_at.is_some(), "{gone:?}");

    // The audit names the key changed and the key that changed it, never a secret.
    let admin_id = &keys
        .iter()
        .find(|k| k.role == Role::Admin)
        .context("admin key")?
        .id;
    for kind in ["api_key_created", "api_key_revoked"] {
        let ev = broker
            .wait_event(kind, |e| e.detail.contains(&created.info.id))
            .await?;
        ensure!(ev.detail.contains(admin_id.as_str()), "{ev:?}");
        ensure!(
            !ev.detail.contains(&created.key) && !ev.detail.contains(&admin),
            "a secret in the audit: {ev:?}"
        );
    }
    let revoked_events = broker.audit("kind=api_key_revoked").await?.events;
    ensure!(revoked_events.len() == 1, "{revoked_events:#?}");
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn an_expired_key_fails_without_counting_as_a_guess() -> Result<()> {
    let broker = TestBroker::start_with(|c| c.auth_failure_limit = 3).await?;
    let admin = broker.admin_key().to_owned();
    let soon = passerelle::store::rfc3339(passerelle::store::now_ms() + 1_500);
    let short = create(
        &broker,
        &admin,
        json!({"name": "short", "role": "auditor", "expires_at": soon}),
    )
    .await?;
    ensure!(use_key(&broker, &short.key).await?.0 == StatusCode::OK);
    // Poll until the expiry passes (the point is to let it expire).
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let got = use_key(&broker, &short.key).await?;
        if got.0 != StatusCode::OK {
            break got;
        }
        ensure!(Instant::now() < deadline, "the key never expired");
        sleep(Duration::from_millis(100)).await;
    };
    expect_error(&refused, StatusCode::UNAUTHORIZED, "unauthorized")?;
    ensure!(
        refused.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{refused:?}"
    );
    for _ in 0..5 {
        ensure!(use_key(&broker, &short.key).await?.0 == StatusCode::UNAUTHORIZED);
    }
    ensure!(use_key(&broker, &admin).await?.0 == StatusCode::OK);
    let listed = list(&broker, &admin).await?;
    ensure!(
        listed
            .iter()
            .any(|k| k.id == short.info.id && !k.active && k.revoked_at.is_none()),
        "{listed:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn keys_stay_in_their_tenant_and_bad_requests_are_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let admin = broker.admin_key().to_owned();
    let other_admin = broker.create_tenant_with_key("other", Role::Admin)?;
    let helpdesk = broker.create_key("default", Role::Helpdesk)?;
    let mine = create(&broker, &admin, json!({"name": "mine", "role": "auditor"})).await?;

    // Another tenant neither sees nor revokes it: 404, like a missing key.
    let theirs = list(&broker, &other_admin).await?;
    ensure!(
        theirs.iter().all(|k| k.id != mine.info.id),
        "another tenant's key is listed: {theirs:#?}"
    );
    let answer = revoke(&broker, &other_admin, &mine.info.id).await?;
    expect_error(&answer, StatusCode::NOT_FOUND, "not_found")?;
    expect_error(
        &revoke(&broker, &admin, "000000000000").await?,
        StatusCode::NOT_FOUND,
        "not_found",
    )?;
    ensure!(use_key(&broker, &mine.key).await?.0 == StatusCode::OK);

    // Only admins manage keys.
    let (status, body) = broker
        .api(Method::GET, "/api/v1/keys", Some(&helpdesk), None)
        .await?;
    expect_error(&(status, body), StatusCode::FORBIDDEN, "forbidden")?;
    let body = json!({"name": "escalate", "role": "admin"});
    let answer = broker
        .api(Method::POST, "/api/v1/keys", Some(&helpdesk), Some(&body))
        .await?;
    expect_error(&answer, StatusCode::FORBIDDEN, "forbidden")?;

    // Bad bodies: 400 with a message.
    let past = passerelle::store::rfc3339(passerelle::store::now_ms() - 1_000);
    for body in [
        json!({"name": "", "role": "auditor"}),
        json!({"name": "x\ny", "role": "auditor"}),
        json!({"name": "x".repeat(65), "role": "auditor"}),
        json!({"name": "x", "role": "root"}),
        json!({"name": "x", "role": "auditor", "expires_at": "tomorrow"}),
        json!({"name": "x", "role": "auditor", "expires_at": past}),
        json!({"name": "x", "role": "auditor", "secret": "mine"}),
    ] {
        let answer = broker
            .api(Method::POST, "/api/v1/keys", Some(&admin), Some(&body))
            .await?;
        expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request")
            .with_context(|| format!("body {body}"))?;
    }
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn the_last_admin_key_cannot_be_revoked_through_the_api() -> Result<()> {
    let broker = TestBroker::start().await?;
    let admin = broker.admin_key().to_owned();
    let first = list(&broker, &admin).await?;
    let first_id = first.first().context("the first admin key")?.id.clone();
    let answer = revoke(&broker, &admin, &first_id).await?;
    expect_error(&answer, StatusCode::CONFLICT, "last_admin_key")?;
    ensure!(use_key(&broker, &admin).await?.0 == StatusCode::OK);
    // With a second admin key, either may go, but not both.
    let second = create(&broker, &admin, json!({"name": "second", "role": "admin"})).await?;
    ensure!(revoke(&broker, &second.key, &first_id).await?.0 == StatusCode::NO_CONTENT);
    ensure!(use_key(&broker, &admin).await?.0 == StatusCode::UNAUTHORIZED);
    let answer = revoke(&broker, &second.key, &second.info.id).await?;
    expect_error(&answer, StatusCode::CONFLICT, "last_admin_key")?;
    ensure!(use_key(&broker, &second.key).await?.0 == StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn the_command_line_lists_and_revokes_keys_of_a_running_broker() -> Result<()> {
    let broker = TestBroker::start().await?;
    let admin = broker.admin_key().to_owned();
    let data_dir = broker.data_dir().as_os_str().to_owned();
    let cli = |args: &[&str]| {
        let mut all: Vec<std::ffi::OsString> = vec!["--data-dir".into(), data_dir.clone()];
        all.extend(args.iter().map(Into::into));
        async move {
            let refs: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_os_str()).collect();
            run_cli(&refs, &[]).await
        }
    };
    let out = cli(&[
        "api-key",
        "add",
        "--tenant",
        "default",
        "--role",
        "helpdesk",
        "--name",
        "from the cli",
    ])
    .await?;
    ensure!(out.success(), "{out:?}");
    let key = out.stdout.trim().to_owned();
    ensure!(use_key(&broker, &key).await?.0 == StatusCode::OK);
    let out = cli(&["api-key", "list", "--tenant", "default"]).await?;
    ensure!(out.success(), "{out:?}");
    ensure!(
        !out.stdout.contains(&key) && !out.stdout.contains(&admin),
        "a secret listed"
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.ends_with("\tfrom the cli"))
        .with_context(|| format!("the new key is not listed:\n{}", out.stdout))?;
    let id = line.split('\t').next().context("id column")?.to_owned();
    ensure!(line.contains("\thelpdesk\tactive\t"), "{line}");
    ensure!(key.contains(&id), "{id} is not the key's id");

    // The running broker refuses it from the next request on.
    let out = cli(&["api-key", "revoke", "--tenant", "default", &id]).await?;
    ensure!(out.success(), "{out:?}");
    ensure!(use_key(&broker, &key).await?.0 == StatusCode::UNAUTHORIZED);
    let out = cli(&["api-key", "list", "--tenant", "default"]).await?;
    ensure!(
        out.stdout.contains(&format!("{id}\thelpdesk\trevoked\t")),
        "{out:?}"
    );
    broker
        .wait_event("api_key_revoked", |e| {
            e.detail.contains(&id) && e.operator.as_deref() == Some("cli")
        })
        .await?;
    // Unknown ids and other tenants' keys are errors with a message.
    let out = cli(&["api-key", "revoke", "--tenant", "default", "000000000000"]).await?;
    ensure!(
        !out.success() && out.stderr.contains("no API key 000000000000"),
        "{out:?}"
    );
    Ok(())
}
