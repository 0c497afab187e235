//! The `passerelle` binary as an operator runs it: `serve` on a fresh data dir (self-signed
//! HTTPS, then `--insecure-http`), what it prints, the files it leaves, its administration
//! subcommands, and a clean exit on SIGTERM.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::{WAIT, passerelle_bin};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// What `passerelle serve` printed on stdout.
#[derive(Debug)]
struct Banner {
    admin_key: Option<String>,
    ssh: String,
    http: String,
    fingerprint: String,
}

/// A running `passerelle serve`.
struct Serve {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Serve {
    async fn start(data_dir: &Path, insecure: bool) -> Result<(Self, Banner)> {
        let mut cmd = Command::new(passerelle_bin()?);
        cmd.arg("serve").arg("--data-dir").arg(data_dir);
        cmd.args([
            "--ssh-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]);
        if insecure {
            cmd.arg("--insecure-http");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning passerelle serve")?;
        // Logs go to stderr; keep the pipe drained so that logging never blocks the broker.
        let mut stderr = child.stderr.take().context("stderr")?;
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink).await;
        });
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut serve = Self { child, stdout };
        let mut line = serve.line().await?;
        let mut admin_key = None;
        if let Some(rest) = line.strip_prefix("admin API key (tenant default, shown once, also in ")
        {
            let (_, key) = rest
                .rsplit_once(": ")
                .context("admin key line without the key")?;
            admin_key = Some(key.trim().to_owned());
            line = serve.line().await?;
        }
        let ssh = line
            .strip_prefix("ssh listening on ")
            .context(line.clone())?
            .to_owned();
        let line = serve.line().await?;
        let http = line
            .strip_prefix("http listening on ")
            .context(line.clone())?
            .to_owned();
        let line = serve.line().await?;
        let fingerprint = line
            .strip_prefix("host key fingerprint: ")
            .context(line.clone())?
            .to_owned();
        Ok((
            serve,
            Banner {
                admin_key,
                ssh,
                http,
                fingerprint,
            },
        ))
    }

    async fn line(&mut self) -> Result<String> {
        match timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!(
                "passerelle serve closed stdout (exit: {:?})",
                self.child.try_wait()
            ),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("passerelle serve printed nothing for {WAIT:?}"),
        }
    }

    /// SIGTERM, then the exit status (bounded).
    async fn terminate(mut self) -> Result<ExitStatus> {
        let pid = self.child.id().context("already exited")?;
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        ensure!(kill.success(), "kill -TERM {pid} failed");
        Ok(timeout(WAIT, self.child.wait())
            .await
            .context("no exit after SIGTERM")??)
    }
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
    let (serve, banner) = Serve::start(&data, false).await?;
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
    let exit = serve.terminate().await?;
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
    let (serve, again) = Serve::start(&data, true).await?;
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
    let exit = serve.terminate().await?;
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
