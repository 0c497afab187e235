//! The OpenAPI document (`GET /api/v1/openapi.json`): the served document is the committed
//! `docs/openapi.json` (`UPDATE_OPENAPI=1` rewrites the copy), a property-based API tester
//! (schemathesis, PyPI, installed by scripts/install-api-test-deps.sh) finds no 5xx and no
//! answer that the document does not describe, and the defects it found stay fixed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::{Method, StatusCode, TestBroker, expect_error, manifest_dir, session_request};
use serde_json::Value;
use tokio::process::Command;
use tokio::time::timeout;

/// The pinned tester's entry point, from the virtualenv the install script makes.
fn schemathesis() -> std::path::PathBuf {
    let tools = std::env::var_os("PASSERELLE_TOOLS").map_or_else(
        || "/var/cache/passerelle/tools".into(),
        std::path::PathBuf::from,
    );
    tools.join("schemathesis-venv/bin/schemathesis")
}

/// The served document, as text.
async fn served(broker: &TestBroker) -> Result<String> {
    let resp = broker
        .http()
        .get(format!("{}/api/v1/openapi.json", broker.base_url()))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    ensure!(content_type == "application/json", "{content_type}");
    Ok(resp.text().await?)
}

#[tokio::test]
async fn the_served_document_is_the_committed_copy() -> Result<()> {
    let broker = TestBroker::start().await?;
    let text = served(&broker).await?;
    let doc: Value = serde_json::from_str(&text)?;
    ensure!(doc["openapi"] == "3.1.0", "{}", doc["openapi"]);
    let path = manifest_dir().join("../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    ensure!(
        committed == text,
        "{} differs from GET /api/v1/openapi.json: if the API changed on purpose, refresh it with \
         `UPDATE_OPENAPI=1 cargo nextest run -p passerelle-e2e --test openapi \
         the_served_document_is_the_committed_copy` and commit it",
        path.display()
    );
    // Every route under /api/v1 of the router is described (the catch-all aside).
    let paths = doc["paths"].as_object().context("paths")?;
    for want in [
        "/api/v1/sessions",
        "/api/v1/sessions/{id}/launch",
        "/api/v1/agents/{id}/ssh-host-key",
        "/api/v1/enroll",
        "/api/v1/keys/{id}",
        "/api/v1/recordings/{id}/screen",
        "/ws/sessions/{id}/raw",
    ] {
        ensure!(paths.contains_key(want), "{want} is not in the document");
    }
    Ok(())
}

/// An agent and a (legacy, so pending without the agent) session for the operations that read
/// one: schemathesis gives their ids to those operations (its config file), so that they get
/// past 404 to their answers.
async fn seed(broker: &TestBroker, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let agent = serde_json::json!({"id": "pc-1", "public_key": SEED_KEY});
    let _: Value = broker
        .admin(
            StatusCode::CREATED,
            Method::POST,
            "/api/v1/agents",
            Some(&agent),
        )
        .await?;
    let mut request = session_request("pc-1", "vnc");
    request.legacy = true;
    let session = broker.create_session(&request).await?.id;
    let config = format!(
        "[[operations]]\n\
         include-name = [\"GET /api/v1/agents/{{id}}\", \"PATCH /api/v1/agents/{{id}}\", \
         \"DELETE /api/v1/agents/{{id}}/rdp-certificate\", \"DELETE /api/v1/agents/{{id}}/ssh-host-key\"]\n\
         parameters = {{ \"path.id\" = \"pc-1\" }}\n\n\
         [[operations]]\n\
         include-name = [\"GET /api/v1/sessions/{{id}}\", \"DELETE /api/v1/sessions/{{id}}\", \
         \"POST /api/v1/sessions/{{id}}/tokens\", \"GET /api/v1/recordings/{{id}}/segments\"]\n\
         parameters = {{ \"path.id\" = \"{session}\" }}\n"
    );
    let path = dir.join("schemathesis.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// A public key for the seeded agent (any valid OpenSSH key line; its private half is unused).
const SEED_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIR5GKmep7Fop1fM38Sa+kHXhLla1SW0+qb8pOmplDi2 seed";

/// schemathesis against a live broker with an admin key: examples, coverage and fuzzing of
/// every operation, with a fixed seed and a bounded number of cases.
#[tokio::test]
async fn schemathesis_finds_nothing() -> Result<()> {
    let bin = schemathesis();
    ensure!(
        bin.exists(),
        "{} is missing: run scripts/install-api-test-deps.sh (or scripts/install-test-deps.sh)",
        bin.display()
    );
    // Its unknown enrolment tokens and exchange tokens would lock this address out after a
    // few; the lockout has tests of its own (api_keys.rs, enroll.rs).
    let broker = TestBroker::start_with(|c| c.auth_failure_limit = 0).await?;
    let base = broker.base_url().to_owned();
    let report = tempfile::tempdir()?;
    let config = seed(&broker, report.path()).await?;
    let started = Instant::now();
    let out = timeout(
        Duration::from_secs(300),
        Command::new(&bin)
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(format!("{base}/api/v1/openapi.json"))
            .args(["--url", &base])
            .args([
                "--header",
                &format!("Authorization: Bearer {}", broker.admin_key()),
            ])
            .args(["--checks", CHECKS])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--seed", "19"])
            .args(["--max-examples", "60"])
            .args(["--workers", "1"])
            .args(["--request-timeout", "10"])
            .args(["--output-truncate", "false"])
            .arg("--report-dir")
            .arg(report.path())
            .env("NO_COLOR", "1")
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .current_dir(report.path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("schemathesis ran over 300 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis ran {:.0} s:\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        out.status.success(),
        "schemathesis: {}\n{stdout}\n{stderr}",
        out.status
    );
    Ok(())
}

/// What the tester checks: no 5xx; status codes, content types, headers and bodies as the
/// document says (error bodies included, with their codes); invalid input refused; other
/// methods answered 405 with `Allow`; no operation that needs a key works without one.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
unsupported_method,allow_header_conformance,missing_required_header,ignored_auth";

/// Fixed with the document (what `unsupported_method` checks): a known path with another method
/// answered 405 with an empty body.
#[tokio::test]
async fn another_method_is_a_json_405_with_allow() -> Result<()> {
    let broker = TestBroker::start().await?;
    let resp = broker
        .http()
        .put(format!("{}/api/v1/tenant", broker.base_url()))
        .bearer_auth(broker.admin_key())
        .send()
        .await?;
    let allow = resp
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    ensure!(
        allow.contains("GET") && allow.contains("PATCH"),
        "{allow:?}"
    );
    let status = resp.status();
    let body: Value = resp.json().await.context("a JSON body")?;
    expect_error(
        &(status, body),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
}

/// Found by schemathesis (undocumented `text/plain` answer): the replay routes answered a
/// malformed query with a plain-text 400.
#[tokio::test]
async fn a_malformed_replay_query_is_a_json_400() -> Result<()> {
    let broker = TestBroker::start().await?;
    for path in [
        "/api/v1/recordings/s1/screen?from=soon",
        "/api/v1/recordings/s1/screen/index?segment=-1",
        "/api/v1/recordings/s1/screen?colour=red",
    ] {
        let got = broker
            .api(Method::GET, path, Some(broker.admin_key()), None)
            .await?;
        expect_error(&got, StatusCode::BAD_REQUEST, "bad_request").context(path)?;
    }
    Ok(())
}

/// Found by schemathesis (undocumented `text/plain` answer): a plain GET of a viewer's
/// WebSocket endpoint answered a plain-text 400.
#[tokio::test]
async fn a_websocket_endpoint_without_an_upgrade_is_a_json_400() -> Result<()> {
    let broker = TestBroker::start().await?;
    for path in ["/ws/sessions/s1?token=x", "/ws/sessions/s1/raw"] {
        let got = broker.api(Method::GET, path, None, None).await?;
        expect_error(&got, StatusCode::BAD_REQUEST, "bad_request").context(path)?;
    }
    Ok(())
}

/// Found by schemathesis (`negative_data_rejection`): a JSON array was read as a struct, field by
/// field, so `[null, null]` was a valid `PATCH /api/v1/tenant` (200) and `["pc-2", KEY]` could
/// register an agent.
#[tokio::test]
async fn a_body_must_be_a_json_object() -> Result<()> {
    let broker = TestBroker::start().await?;
    let key = Some(broker.admin_key());
    let before = broker.api(Method::GET, "/api/v1/tenant", key, None).await?;
    for body in ["[null, null]", "[true]", "[]"] {
        let got = broker
            .request(
                Method::PATCH,
                "/api/v1/tenant",
                key,
                Some((body.to_owned(), "application/json")),
                &[],
            )
            .await?;
        expect_error(&got, StatusCode::BAD_REQUEST, "bad_request").context(body)?;
    }
    let agent = serde_json::json!(["pc-2", SEED_KEY]);
    let got = broker
        .api(Method::POST, "/api/v1/agents", key, Some(&agent))
        .await?;
    expect_error(&got, StatusCode::BAD_REQUEST, "bad_request")?;
    let missing = broker
        .api(Method::GET, "/api/v1/agents/pc-2", key, None)
        .await?;
    expect_error(&missing, StatusCode::NOT_FOUND, "not_found")?;
    let after = broker.api(Method::GET, "/api/v1/tenant", key, None).await?;
    ensure!(before == after, "{before:?} became {after:?}");
    // An object is still read as before.
    let days = serde_json::json!({"retention_days": 7});
    let (status, body) = broker
        .api(Method::PATCH, "/api/v1/tenant", key, Some(&days))
        .await?;
    ensure!(
        status == StatusCode::OK && body["retention_days"] == 7,
        "{status} {body}"
    );
    Ok(())
}
