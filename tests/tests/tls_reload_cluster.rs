//! A cluster's certificate renewed without a restart: every node serves the cluster
//! directory's certificate, and the node link trusts the one its own node serves. After a new
//! pair is written into the cluster directory and both nodes get SIGHUP, new handshakes on
//! either node present it, a viewer forwarded over the link before the reload keeps working,
//! and a new viewer forwarded over the link after it works too (the link's pin followed).
//!
//! Needs PostgreSQL, as `tests/tests/cluster.rs`: `source scripts/lib/postgres.sh &&
//! pg_test_start`, then `cargo build -p passerelle --bin passerelle &&
//! PASSERELLE_BIN=$CARGO_TARGET_DIR/debug/passerelle cargo nextest run -p passerelle-e2e --test
//! tls_reload_cluster`. Without `PASSERELLE_TEST_PG` it says so and passes.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::cluster::{CLUSTER_CERT, TestCluster};
use passerelle_e2e::postgres::ENV as PG_ENV;
use passerelle_e2e::tls_probe::{presented, trusting};
use passerelle_e2e::{
    Agent, EchoServer, Forward, IssuedToken, POLL, TestPostgres, WAIT, Ws, pattern,
    session_request, unique,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::time::{Instant, sleep};

/// `url` (a session's `raw_ws_url`) with node `via` as its host.
fn via(url: &str, via: SocketAddr) -> Result<String> {
    let rest = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path)
        .with_context(|| format!("not an absolute URL: {url}"))?;
    Ok(format!("wss://{via}/{rest}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_cluster_still_forwards_over_its_node_link() -> Result<()> {
    if std::env::var(PG_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .is_none()
    {
        eprintln!("SKIPPED: {PG_ENV} is unset; this test needs PostgreSQL");
        return Ok(());
    }
    let cluster = TestCluster::start(TestPostgres::start().await?, 2).await?;
    let result = reload_both(&cluster).await;
    if result.is_err() {
        cluster.print_logs(40);
    }
    result
}

async fn reload_both(cluster: &TestCluster) -> Result<()> {
    let dir = cluster.cluster_dir();
    let old = CertificateDer::from_pem_slice(&std::fs::read(dir.join(CLUSTER_CERT))?)?.to_vec();

    // The agent on node1; a viewer through node2, forwarded over the link.
    let echo = EchoServer::start().await?;
    let id = unique("pc-reload");
    let holder = cluster.node(0)?;
    let mut agent = Agent::registered(holder, &id).await?;
    // Straight to the node, from an address that is not its trusted proxy.
    agent.extra_args(&["-b", "127.0.0.2"]);
    agent.connect(&[Forward::named("vnc", echo.port())])?;
    agent.wait_online(holder, &["vnc"]).await?;
    let created = holder.create_session(&session_request(&id, "vnc")).await?;
    let mut before = cluster
        .viewer(&created.raw_ws_url, cluster.https_addr(1))
        .await?;
    before.round_trip(&pattern(16 * 1024, 1)).await?;

    // A new cluster certificate on "every node" (they share the directory here), SIGHUP both.
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .self_signed(&key)?;
    let new = cert.der().to_vec();
    for (file, text) in [
        (passerelle::keys::TLS_KEY_FILE, key.serialize_pem()),
        (passerelle::keys::TLS_CERT_FILE, cert.pem()),
    ] {
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(file))?;
    }
    for i in 0..2 {
        cluster.node(i)?.signal_binary("HUP").await?;
    }
    let both = trusting(&[&old, &new])?;
    let deadline = Instant::now() + WAIT;
    for i in 0..2 {
        while presented(cluster.https_addr(i), &both).await? != new {
            if Instant::now() >= deadline {
                bail!(
                    "{} still presents the old certificate",
                    TestCluster::name(i)
                );
            }
            sleep(POLL).await;
        }
    }

    // The viewer forwarded before the reload still carries bytes.
    before.round_trip(&pattern(16 * 1024, 2)).await?;
    // A new viewer through node2: node2's link now has to accept node1's new certificate.
    let only_new = trusting(&[&new])?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*only_new).clone())
        .timeout(WAIT)
        .build()?;
    let resp = http
        .post(format!(
            "https://{}/api/v1/sessions/{}/tokens",
            cluster.https_addr(0),
            created.id
        ))
        .bearer_auth(cluster.admin_key())
        .send()
        .await?;
    ensure!(resp.status().is_success(), "new token: {}", resp.status());
    let issued: IssuedToken = resp.json().await?;
    let mut after = Ws::connect_tls(&via(&issued.raw_ws_url, cluster.https_addr(1))?, only_new)
        .await
        .context("a viewer through node2 after the reload")?;
    after.round_trip(&pattern(16 * 1024, 3)).await?;
    before.round_trip(&pattern(1024, 4)).await?;
    Ok(())
}
