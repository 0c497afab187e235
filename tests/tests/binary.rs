//! The `passerelle` binary as an operator runs it: `serve` on a fresh data dir (self-signed
//! HTTPS, then `--insecure-http`), what it prints, the files it leaves, its administration
//! subcommands, and a clean exit on SIGTERM.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::WAIT;
use passerelle_e2e::process::{Banner, BrokerProcess, passerelle_bin};
use tokio::process::Command;
use tokio::time::timeout;

/// `passerelle serve` on `data_dir`, on ports chosen by the OS, HTTPS unless `insecure`.
async fn start_serve(data_dir: &Path, insecure: bool) -> Result<(BrokerProcess, Banner)> {
    let mut args = vec![
        "--ssh-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    if insecure {
        args.push("--insecure-http");
    }
    BrokerProcess::serve(data_dir, &args).await
}

/// Runs a `passerelle` subcommand to completion; returns its stdout.
async fn passerelle(args: &[&str]) -> Result<String> {
    let out = timeout(
        WAIT,
        Command::new(passerelle_bin()?)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("subcommand timed out")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "passerelle {args:?}: {}: {stderr}",
        out.status
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn client() -> Result<reqwest::Client> {
    passerelle_e2e::init();
    Ok(reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(WAIT)
        .build()?)
}

async fn get(client: &reqwest::Client, url: &str, key: Option<&str>) -> Result<(u16, String)> {
    let mut req = client.get(url);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

#[tokio::test]
async fn serve_first_start_restart_subcommands_and_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data_arg = data.to_str().context("utf-8 temp path")?;
    let http = client()?;

    // First start: self-signed HTTPS, a new admin key printed once and kept in a 0600 file.
    let (serve, banner) = start_serve(&data, false).await?;
    let admin_key = banner
        .admin_key
        .clone()
        .context("first start printed no admin key")?;
    let key_file = data.join("admin-api-key");
    let mode = std::fs::metadata(&key_file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "admin-api-key has mode {mode:o}");
    ensure!(
        std::fs::read_to_string(&key_file)?.trim() == admin_key,
        "admin-api-key content differs"
    );
    ensure!(
        banner.ssh.starts_with("127.0.0.1:") && !banner.ssh.ends_with(":0"),
        "{banner:?}"
    );
    ensure!(banner.http.starts_with("https://127.0.0.1:"), "{banner:?}");
    ensure!(banner.fingerprint.starts_with("SHA256:"), "{banner:?}");
    let (status, body) = get(&http, &format!("{}/healthz", banner.http), None).await?;
    ensure!(status == 200, "healthz: {status} {body}");
    let (status, body) = get(&http, &format!("{}/metrics", banner.http), Some(&admin_key)).await?;
    ensure!(
        status == 200 && body.contains("passerelle_agents_online"),
        "metrics: {status}\n{body}"
    );
    let (status, body) = get(
        &http,
        &format!("{}/api/v1/tenant", banner.http),
        Some(&admin_key),
    )
    .await?;
    ensure!(
        status == 200 && body.contains("default"),
        "the printed key is no admin key: {status} {body}"
    );
    let exit = serve.signal("TERM").await?;
    ensure!(exit.success(), "SIGTERM: {exit}");

    // Administration subcommands on the same store.
    let key = passerelle(&[
        "api-key",
        "add",
        "--data-dir",
        data_arg,
        "--tenant",
        "default",
        "--role",
        "helpdesk",
    ])
    .await?;
    let lines: Vec<&str> = key.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        lines.len() == 1 && !lines[0].contains(' '),
        "api-key add printed {key:?}"
    );
    let helpdesk = lines[0].trim().to_owned();
    let hk = passerelle(&[
        "host-key",
        "--data-dir",
        data_arg,
        "--known-hosts-host",
        "127.0.0.1:2222",
    ])
    .await?;
    ensure!(hk.contains(&banner.fingerprint), "host-key: {hk}");
    ensure!(
        hk.lines()
            .any(|l| l.starts_with("[127.0.0.1]:2222 ssh-ed25519 ")),
        "host-key: {hk}"
    );

    // Second start, plain HTTP: no admin key again, the same host key.
    let (serve, again) = start_serve(&data, true).await?;
    ensure!(again.admin_key.is_none(), "the admin key was printed twice");
    ensure!(
        again.fingerprint == banner.fingerprint,
        "host key changed: {again:?} vs {banner:?}"
    );
    ensure!(again.http.starts_with("http://127.0.0.1:"), "{again:?}");
    let (status, body) = get(&http, &format!("{}/healthz", again.http), None).await?;
    ensure!(status == 200, "healthz: {status} {body}");
    let (status, body) = get(
        &http,
        &format!("{}/api/v1/agents", again.http),
        Some(&helpdesk),
    )
    .await?;
    ensure!(
        status == 200,
        "helpdesk key from the subcommand: {status} {body}"
    );
    let new_key = passerelle_e2e::AgentKey::generate().await?;
    let resp = http
        .post(format!("{}/api/v1/agents", again.http))
        .bearer_auth(&helpdesk)
        .json(&serde_json::json!({"id": "pc-x", "public_key": new_key.public_key}))
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 403,
        "helpdesk registering an agent: {}",
        resp.status()
    );
    let exit = serve.signal("TERM").await?;
    ensure!(exit.success(), "SIGTERM: {exit}");
    Ok(())
}

#[tokio::test]
async fn serve_refuses_contradictory_tls_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = timeout(
        WAIT,
        Command::new(passerelle_bin()?)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--insecure-http",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
            ])
            .args([
                "--ssh-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("passerelle serve with contradictory flags did not exit")??;
    ensure!(
        !out.status.success(),
        "accepted --insecure-http with --tls-cert"
    );
    ensure!(!out.stderr.is_empty(), "no message on stderr");
    Ok(())
}
