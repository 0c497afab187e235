//! `/metrics` counts every tenant's agents and sessions: it can be moved to a listener of its
//! own (`metrics_listen`) or made to require a token (`metrics_token`); either way the public
//! listener's `/metrics` answers 404 to whoever lacks the token.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use passerelle::config::Secret;
use passerelle_e2e::{Method, StatusCode, TestBroker, WAIT, assert_still_serving};

const TOKEN: &str = "scrape-token-0123456789abcdef";

async fn get(url: &str, token: Option<&str>) -> Result<(StatusCode, String)> {
    let http = reqwest::Client::builder().timeout(WAIT).build()?;
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    Ok((resp.status(), resp.text().await?))
}

#[tokio::test]
async fn without_options_the_public_listener_serves_metrics() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (status, body) = get(&format!("{}/metrics", broker.base_url()), None).await?;
    ensure!(
        status == StatusCode::OK && body.contains("passerelle_agents_online"),
        "{status} {body}"
    );
    ensure!(broker.broker().metrics_addr().is_none());
    Ok(())
}

#[tokio::test]
async fn a_separate_listener_takes_metrics_off_the_public_one() -> Result<()> {
    let broker =
        TestBroker::start_with(|c| c.metrics_listen = Some(([127, 0, 0, 1], 0).into())).await?;
    let addr = broker
        .broker()
        .metrics_addr()
        .context("no metrics listener")?;
    ensure!(addr.port() != 0 && addr.ip().is_loopback(), "{addr}");
    let (status, body) = get(&format!("{}/metrics", broker.base_url()), None).await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "public /metrics: {status} {body}"
    );
    ensure!(!body.contains("passerelle_"), "{body}");
    let (status, body) = get(&format!("http://{addr}/metrics"), None).await?;
    ensure!(
        status == StatusCode::OK && body.contains("passerelle_sessions_active"),
        "{status} {body}"
    );
    // It serves nothing else: not the API, not the pages.
    for path in ["/api/v1/agents", "/console", "/healthz"] {
        let (status, _) = get(&format!("http://{addr}{path}"), None).await?;
        ensure!(status == StatusCode::NOT_FOUND, "{path}: {status}");
    }
    // A stalled client is cut (header timeout) and does not block scrapes meanwhile.
    let idle = tokio::net::TcpStream::connect(addr).await?;
    let (status, _) = get(&format!("http://{addr}/metrics"), None).await?;
    ensure!(status == StatusCode::OK);
    drop(idle);
    assert_still_serving(&broker).await
}

#[tokio::test]
async fn a_token_hides_metrics_from_whoever_lacks_it() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.metrics_token = Some(Secret::new(TOKEN));
        c.auth_failure_limit = 3;
        c.auth_lockout = Duration::from_secs(60);
    })
    .await?;
    let url = format!("{}/metrics", broker.base_url());
    let (status, body) = get(&url, Some(TOKEN)).await?;
    ensure!(
        status == StatusCode::OK && body.contains("passerelle_agents_online"),
        "{status}"
    );
    // No token, or an API key: as if there were no such page.
    for token in [None, Some(broker.admin_key())] {
        let (status, body) = get(&url, token).await?;
        ensure!(status == StatusCode::NOT_FOUND, "{status} {body}");
        ensure!(!body.contains("passerelle_"), "{body}");
    }
    // Wrong tokens are guesses (the API key above was one): at the limit, the address is
    // locked out, the right token included.
    for wrong in ["scrape-token-0123456789abcdeX", &TOKEN[..TOKEN.len() - 1]] {
        let (status, _) = get(&url, Some(wrong)).await?;
        ensure!(status == StatusCode::NOT_FOUND, "{wrong}: {status}");
    }
    let (status, _) = get(&url, Some(TOKEN)).await?;
    ensure!(
        status == StatusCode::TOO_MANY_REQUESTS,
        "not locked out: {status}"
    );
    let (status, _) = broker.api(Method::GET, "/healthz", None, None).await?;
    ensure!(status == StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn both_options_together_need_the_token_on_the_separate_listener() -> Result<()> {
    let broker = TestBroker::start_with(|c| {
        c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
        c.metrics_token = Some(Secret::new(TOKEN));
    })
    .await?;
    let addr = broker
        .broker()
        .metrics_addr()
        .context("no metrics listener")?;
    let url = format!("http://{addr}/metrics");
    ensure!(get(&url, None).await?.0 == StatusCode::NOT_FOUND);
    ensure!(get(&url, Some(TOKEN)).await?.0 == StatusCode::OK);
    let public = format!("{}/metrics", broker.base_url());
    ensure!(get(&public, Some(TOKEN)).await?.0 == StatusCode::NOT_FOUND);
    Ok(())
}
