//! The `passerelle` binary as an operator runs it: `serve` on a fresh data dir (self-signed
//! HTTPS, then `--insecure-http`), what it prints, the files it leaves, its administration
//! subcommands, and a clean exit on SIGTERM.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::process::{Banner, BrokerProcess, passerelle_bin, run_cli};
use passerelle_e2e::{Agent, CreatedSession, FakeVnc, Forward, IssuedToken, WAIT, Ws};
use tokio::process::Command;
use tokio::time::timeout;

/// `passerelle serve` on `data_dir`, on ports chosen by the OS, HTTPS unless `insecure`.
async fn start_serve(data_dir: &Path, insecure: bool) -> Result<(BrokerProcess, Banner)> {
    start_serve_env(data_dir, insecure, &[]).await
}

/// [`start_serve`] with extra environment variables.
async fn start_serve_env(
    data_dir: &Path,
    insecure: bool,
    env: &[(&str, &str)],
) -> Result<(BrokerProcess, Banner)> {
    let mut args = vec![
        "--ssh-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    if insecure {
        args.push("--insecure-http");
    }
    BrokerProcess::serve_with_env(data_dir, &args, env).await
}

/// Runs a `passerelle` subcommand that must succeed; returns its stdout.
async fn passerelle(args: &[&str]) -> Result<String> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = run_cli(&args, &[]).await?;
    ensure!(out.success(), "passerelle {args:?}: {out:?}");
    Ok(out.stdout)
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

    // First start: self-signed HTTPS, a new admin key kept in a 0600 file (stdout is not a
    // terminal here, so it is not printed; tests/file_modes.rs has both cases).
    let (serve, banner) = start_serve(&data, false).await?;
    ensure!(banner.admin_key.is_none(), "the key was printed to a pipe");
    let admin_key = passerelle_e2e::admin_key_file(&data)?;
    let key_file = data.join("admin-api-key");
    let mode = std::fs::metadata(&key_file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "admin-api-key has mode {mode:o}");
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

/// The `token` parameter of a URL.
fn token_param(url: &str) -> Result<String> {
    let (_, rest) = url
        .split_once("token=")
        .with_context(|| format!("no token in {url}"))?;
    Ok(rest.split('&').next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_debug_level() -> Result<()> {
    let (log, _) = debug_log_without_secrets(&[]).await?;
    // stderr is a pipe here, as under systemd or with `2>file`: no colour codes.
    if let Some(line) = log.lines().find(|l| l.contains('\x1b')) {
        bail!("colour codes in a log that is not a terminal: {line:?}");
    }
    Ok(())
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_naming_session_agent_and_tenant() -> Result<()> {
    let (log, session) = debug_log_without_secrets(&[("PASSERELLE_LOG_FORMAT", "json")]).await?;
    let lines = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).with_context(|| l.to_owned()))
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        lines.iter().all(|l| l["level"].is_string()),
        "a line without a level"
    );
    let agent_line = lines.iter().any(|l| {
        l["span"]["name"] == "agent"
            && l["span"]["agent"] == "pc-logs"
            && l["span"]["tenant_id"].is_i64()
    });
    ensure!(
        agent_line,
        "no line of the agent's connection names it:\n{log}"
    );
    let viewer_line = lines.iter().any(|l| {
        l["span"]["name"] == "viewer"
            && l["span"]["session"] == session.as_str()
            && l["span"]["agent"] == "pc-logs"
            && l["span"]["tenant_id"].is_i64()
    });
    ensure!(
        viewer_line,
        "no line of the viewer names its session:\n{log}"
    );
    Ok(())
}

/// A broker at debug level (with `env` added) through a whole session's life, with every kind
/// of secret in play; fails if any reaches its log. Returns the log and the session's id.
async fn debug_log_without_secrets(env: &[(&str, &str)]) -> Result<(String, String)> {
    const AGENT_PW: &str = "agentVNC-pw-31337";
    const TENANT_PW: &str = "tenantVNC-pw-4242";
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data_arg = data.to_str().context("utf-8 temp path")?;
    let http = client()?;
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "debug"));
    let (serve, banner) = start_serve_env(&data, true, &env).await?;
    let admin = passerelle_e2e::admin_key_file(&data)?;
    let base = banner.http.clone();
    let ssh_addr: std::net::SocketAddr = banner.ssh.parse()?;
    let mut secrets: Vec<(&str, String)> = vec![
        ("the admin API key", admin.clone()),
        ("the agent's VNC password", AGENT_PW.into()),
        ("the tenant's VNC password", TENANT_PW.into()),
    ];

    // The tenant's and the agent's VNC passwords; an agent in front of a VNC server.
    let vnc = FakeVnc::start(AGENT_PW).await?;
    let resp = http
        .patch(format!("{base}/api/v1/tenant"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "vnc_password": TENANT_PW }))
        .send()
        .await?;
    ensure!(
        resp.status().is_success(),
        "PATCH tenant: {}",
        resp.status()
    );
    let known = passerelle(&[
        "host-key",
        "--data-dir",
        data_arg,
        "--known-hosts-host",
        &banner.ssh,
    ])
    .await?;
    let host_key = known
        .lines()
        .find_map(|l| l.split_once(' ').filter(|(h, _)| h.starts_with('[')))
        .map(|(_, key)| key.to_owned())
        .context(known.clone())?;
    let mut agent = Agent::for_broker(ssh_addr, &host_key, &admin, "pc-logs").await?;
    let resp = http
        .post(format!("{base}/api/v1/agents"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({
            "id": "pc-logs",
            "public_key": agent.key.public_key,
            "vnc_password": AGENT_PW,
        }))
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 201,
        "POST agents: {}",
        resp.status()
    );
    agent.connect(&[Forward::named("vnc", vnc.port())])?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(
            &http,
            &format!("{base}/api/v1/agents/pc-logs"),
            Some(&admin),
        )
        .await?;
        ensure!(status == 200, "{status} {body}");
        if body.contains("\"online\":true") && body.contains("\"vnc\"") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "agent never online: {body}"
        );
        tokio::time::sleep(passerelle_e2e::POLL).await;
    }

    // A session, its viewer (the broker answers the VNC challenge), its launch token, a fresh
    // token, and failed attempts.
    let resp = http
        .post(format!("{base}/api/v1/sessions"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"agent": "pc-logs", "service": "vnc", "operator": "alice"}))
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 201,
        "POST sessions: {}",
        resp.status()
    );
    let created: CreatedSession = resp.json().await?;
    secrets.push(("the viewer token", created.token.clone()));
    let launch = token_param(&created.launch_url)?;
    secrets.push(("the launch token", launch.clone()));
    let mut ws = Ws::connect(&created.ws_url).await?;
    ws.rfb_handshake().await?;
    ws.round_trip(&[1]).await?;
    ensure!(vnc.authed() == 1, "the VNC password was not used");
    let raw = format!(
        "ws://{}/ws/sessions/{}/raw?token={launch}",
        host_port(&base),
        created.id
    );
    let mut native = Ws::connect(&raw).await?;
    ensure!(
        native.read_exact(12).await? == b"RFB 003.008\n",
        "launch token not bridged"
    );
    native.close().await?;
    let resp = http
        .post(format!("{base}/api/v1/sessions/{}/tokens", created.id))
        .bearer_auth(&admin)
        .send()
        .await?;
    let issued: IssuedToken = resp.json().await?;
    secrets.push(("a fresh token", issued.token.clone()));
    let guess = "G".repeat(43);
    secrets.push(("a guessed token", guess.clone()));
    let closed = Ws::connect(&created.ws_url.replace(&created.token, &guess))
        .await?
        .expect_close()
        .await?;
    ensure!(
        closed.code == passerelle_e2e::close::TOKEN_INVALID.code,
        "{closed:?}"
    );
    // `psk_<id>_<secret>`; the secret is base64url and may itself hold '_'.
    let (key_id, admin_secret) = admin
        .strip_prefix("psk_")
        .and_then(|rest| rest.split_once('_'))
        .context("key format")?;
    let wrong_key = format!("psk_{key_id}_{}", "W".repeat(43));
    secrets.push(("a wrong API key", wrong_key.clone()));
    let (status, _) = get(&http, &format!("{base}/api/v1/agents"), Some(&wrong_key)).await?;
    ensure!(status == 401, "wrong key: {status}");
    ws.close().await?;
    agent.disconnect().await?;

    let (exit, log) = serve.terminate_with_log().await?;
    ensure!(exit.success(), "SIGTERM: {exit}");
    ensure!(
        log.contains("DEBUG") && log.contains("bridging"),
        "the log is not at debug level, or the session never ran:\n{log}"
    );
    for (what, secret) in &secrets {
        ensure!(!secret.is_empty(), "{what} is empty");
        if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
            bail!("{what} appears in the log: {line}");
        }
    }
    // The secret part of the API key alone, too.
    ensure!(
        !log.contains(admin_secret),
        "the admin key's secret is in the log"
    );
    Ok((log, created.id))
}

/// `http://HOST:PORT` → `HOST:PORT`.
fn host_port(base: &str) -> &str {
    base.trim_start_matches("http://").trim_end_matches('/')
}
