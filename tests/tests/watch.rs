//! `/ws/sessions/{id}/watch`: what the desktop helper keeps open per tunnel. Only a launch
//! token watches; other tokens are refused there and stay unspent; the watcher hears the
//! session's end (stopped, expired) with its close code.

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::{Agent, EchoServer, Forward, TestBroker, Ws, close, session_request};
use passerelle_proto::launch::{LaunchUrl, WATCH_ADMITTED};

fn watch_url(ws_url: &str, token: &str) -> String {
    let base = ws_url.split('?').next().unwrap_or(ws_url);
    format!("{base}/watch?token={token}")
}

#[tokio::test]
async fn a_launch_token_watches_other_tokens_are_refused_and_unspent() -> Result<()> {
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-w").await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let created = broker
        .create_session(&session_request(&agent.id, "rdp"))
        .await?;
    let launch = LaunchUrl::parse(&created.launch_url)?;
    ensure!(
        launch.agent.as_ref().map(|a| a.as_str()) == Some("pc-w"),
        "{launch:?}"
    );
    let mut watch = Ws::connect(&watch_url(&created.ws_url, &launch.token)).await?;
    ensure!(watch.expect_text().await? == WATCH_ADMITTED);

    // The viewer token is no watch's, and stays usable for what it is for.
    let mut refused = Ws::connect(&watch_url(&created.ws_url, &created.token)).await?;
    let closed = refused.expect_close().await?;
    ensure!(closed.code == close::TOKEN_INVALID.code, "{closed:?}");
    let mut garbage = Ws::connect(&watch_url(&created.ws_url, "not-a-token")).await?;
    let closed = garbage.expect_close().await?;
    ensure!(closed.code == close::TOKEN_INVALID.code, "{closed:?}");
    let mut viewer = Ws::connect(&created.raw_ws_url).await?;
    viewer.round_trip(b"still unspent").await?;
    // Its viewer leaves, which ends a session opened with a viewer token: the watcher hears it.
    viewer.close().await?;
    let closed = watch.expect_close().await.context("the end never came")?;
    let ended = broker.wait_ended(&created.id).await?;
    ensure!(
        ended.end_reason == Some(passerelle_e2e::EndReason::ViewerClosed),
        "{ended:#?}"
    );
    ensure!(closed.code == close::SESSION_ENDED.code, "{closed:?}");

    // A session's time limit reaches its watcher too.
    let mut request = session_request(&agent.id, "rdp");
    request.ttl_secs = Some(2);
    let timed = broker.create_session(&request).await?;
    let launch = LaunchUrl::parse(&timed.launch_url)?;
    let mut watch = Ws::connect(&watch_url(&timed.ws_url, &launch.token)).await?;
    ensure!(watch.expect_text().await? == WATCH_ADMITTED);
    let closed = watch.expect_close().await.context("the end never came")?;
    ensure!(closed.code == close::TTL_EXPIRED.code, "{closed:?}");
    Ok(())
}
