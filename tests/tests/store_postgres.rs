//! The broker binary on PostgreSQL (`--store postgres://...`): an OpenSSH agent online, a
//! session carrying bytes both ways, the audit readable; a restart on the same database keeps
//! tenants, keys and agents (and nothing is in a SQLite file). A wrong URL or an unreachable
//! server fails the start with a clear error that does not show the password.
//!
//! `cargo build -p passerelle --bin passerelle && PASSERELLE_BIN=$CARGO_TARGET_DIR/debug/passerelle
//! cargo nextest run -p passerelle-e2e --test store_postgres` (a PostgreSQL server is started for
//! each test unless `PASSERELLE_TEST_PG` names one).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::{
    Agent, EchoServer, Forward, Method, StatusCode, TestBroker, TestPostgres, WAIT, Ws,
    passerelle_bin, pattern, session_request, unique,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_serves_and_restarts_on_postgresql() -> Result<()> {
    let pg = TestPostgres::start().await?;
    let url = pg.database().await?;
    let mut broker = TestBroker::spawn_binary_with(&["--store", &url]).await?;
    ensure!(
        !broker.data_dir().join("passerelle.db").exists(),
        "a SQLite store was made next to PostgreSQL"
    );

    let echo = EchoServer::start().await?;
    let id = unique("pg-agent");
    let forwards = [Forward::named("rdp", echo.port())];
    let mut agent = Agent::registered(&broker, &id).await?;
    agent.connect(&forwards)?;
    agent.wait_online(&broker, &["rdp"]).await?;

    let session = broker.create_session(&session_request(&id, "rdp")).await?;
    let mut ws = Ws::connect(&session.raw_ws_url).await?;
    ws.round_trip(&pattern(200_000, 7)).await?;
    ws.close().await?;
    let ended = broker.wait_ended(&session.id).await?;
    ensure!(
        ended.bytes_up >= 200_000 && ended.bytes_down >= 200_000,
        "byte counts: {ended:?}"
    );
    broker
        .wait_event("session_ended", |e| {
            e.session.as_deref() == Some(session.id.as_str())
        })
        .await?;
    broker
        .wait_event("agent_connected", |e| {
            e.agent.as_deref() == Some(id.as_str())
        })
        .await?;

    // A graceful restart on the same database: the admin key, the agent's registration and
    // the session's row are still there; the agent comes back and a new session works.
    broker.restart_binary().await?;
    let (status, agents) = broker
        .api(
            Method::GET,
            "/api/v1/agents",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::OK && agents.to_string().contains(&id),
        "the admin key or the agent was lost: {status} {agents}"
    );
    broker.agent_as(broker.admin_key(), &id).await?;
    let kept = broker.session(&session.id).await?;
    ensure!(kept.bytes_up == ended.bytes_up, "{kept:?}");
    agent.reconnect(&broker, &forwards, &["rdp"]).await?;
    let again = broker.create_session(&session_request(&id, "rdp")).await?;
    let mut ws = Ws::connect(&again.raw_ws_url).await?;
    ws.round_trip(&pattern(50_000, 9)).await?;
    ws.close().await?;
    broker.wait_ended(&again.id).await?;
    ensure!(!broker.data_dir().join("passerelle.db").exists());
    Ok(())
}

/// Runs `passerelle serve --store URL` and returns its exit status and stderr, bounded.
async fn serve_fails(url: &str) -> Result<(std::process::ExitStatus, String)> {
    let dir = tempfile::tempdir()?;
    let child = tokio::process::Command::new(passerelle_bin()?)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--ssh-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--insecure-http",
        ])
        .env("PASSERELLE_STORE", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .context("the broker neither started nor failed")??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn a_bad_store_url_or_an_unreachable_server_fails_the_start_clearly() -> Result<()> {
    // Nothing listens on the port: refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (status, stderr) = serve_fails(&format!(
        "postgres://app:s3cret@127.0.0.1:{port}/passerelle"
    ))
    .await?;
    ensure!(!status.success(), "started without its store: {stderr}");
    ensure!(
        stderr.contains("connecting to the store postgres://app:***@127.0.0.1"),
        "{stderr}"
    );
    ensure!(
        !stderr.contains("s3cret"),
        "the password was shown: {stderr}"
    );
    ensure!(!stderr.contains("panicked"), "{stderr}");

    // A server that accepts and never answers: the connect timeout ends the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let started = tokio::time::Instant::now();
    let (status, stderr) = serve_fails(&format!(
        "postgres://app:s3cret@127.0.0.1:{port}/passerelle?connect_timeout=2"
    ))
    .await?;
    ensure!(!status.success(), "{stderr}");
    ensure!(stderr.contains("no connection within"), "{stderr}");
    ensure!(started.elapsed() < Duration::from_secs(12), "{stderr}");
    drop(silent);

    // Not a PostgreSQL URL at all.
    let (status, stderr) = serve_fails("mysql://app:s3cret@db/passerelle").await?;
    ensure!(
        !status.success() && stderr.contains("store_url"),
        "{stderr}"
    );
    ensure!(!stderr.contains("s3cret"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn the_store_speaks_tls_to_postgresql_and_verifies_the_server() -> Result<()> {
    let (pg, ca) = TestPostgres::start_own_tls().await?;
    let url = pg.database().await?;

    // Verified TLS: the broker serves, and the server sees the broker's connections encrypted.
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let broker = TestBroker::spawn_binary_with(&["--store", &verified]).await?;
    let (status, body) = broker
        .api(
            Method::GET,
            "/api/v1/agents",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    let seen = pg
        .psql(
            &url,
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'passerelle'",
        )
        .await?;
    let (encrypted, all) = seen.split_once('|').context("psql's answer")?;
    ensure!(
        all != "0" && encrypted == all,
        "the broker's connections, encrypted|all: {seen}"
    );
    drop(broker);

    // A server whose certificate no trusted root signed (here: the web PKI's roots only).
    let (status, stderr) = serve_fails(&format!("{url}?sslmode=require")).await?;
    ensure!(
        !status.success(),
        "started on an unverified server: {stderr}"
    );
    ensure!(
        stderr.contains("connecting to the store") && stderr.contains("certificate"),
        "{stderr}"
    );
    ensure!(!stderr.contains("panicked"), "{stderr}");

    // Without TLS, this server refuses the broker, and the broker says why.
    let (status, stderr) = serve_fails(&url).await?;
    ensure!(!status.success(), "{stderr}");
    ensure!(
        stderr.contains("pg_hba.conf") && stderr.contains("no encryption"),
        "{stderr}"
    );

    // A root file that is not there is named.
    let (status, stderr) = serve_fails(&format!(
        "{url}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
    ))
    .await?;
    ensure!(
        !status.success() && stderr.contains("reading sslrootcert /nonexistent/ca.pem"),
        "{stderr}"
    );
    Ok(())
}
