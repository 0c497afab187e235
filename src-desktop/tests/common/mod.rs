//! What the helper's end-to-end tests share, on top of the workspace harness (`passerelle-e2e`:
//! the broker in process, OpenSSH agents, echo services): an API client that also talks to a
//! broker with a self-signed certificate, a session behind a fresh agent, and the CLI helper as
//! a child process whose every wait is bounded and which is killed, with its whole process
//! group (the clients it launched), when dropped.

#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod x11;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_e2e::{Agent, CreatedSession, Forward, POLL, TestBroker, WAIT, session_request};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// The broker's API through a client that accepts its self-signed certificate (the tests
/// check pinning in the helper, not here).
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// A client for `broker`'s API with its admin key.
    pub fn new(broker: &TestBroker) -> Result<Self> {
        passerelle_e2e::init();
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .danger_accept_invalid_certs(true)
                .build()?,
            base: broker.base_url().to_owned(),
            key: broker.admin_key().to_owned(),
        })
    }

    /// One call; the status must be `want`; the body as JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header("x-passerelle-operator", "alice");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        ensure!(status == want, "{method} {path}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers `agent`'s key.
    pub async fn register(&self, agent: &Agent) -> Result<()> {
        let body = json!({"id": agent.id, "public_key": agent.key.public_key});
        self.call(reqwest::Method::POST, "/api/v1/agents", Some(body), 201)
            .await
            .map(drop)
    }

    /// Polls until `agent` is online with `service`.
    pub async fn wait_online(&self, agent: &str, service: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let info = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/agents/{agent}"),
                    None,
                    200,
                )
                .await?;
            let has = info["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x["name"] == service));
            if info["online"] == true && has {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "agent {agent} never online: {info}"
            );
            sleep(POLL).await;
        }
    }

    /// Opens a session on `agent`'s `service`.
    pub async fn create_session(&self, agent: &str, service: &str) -> Result<CreatedSession> {
        let body = serde_json::to_value(session_request(agent, service))?;
        let v = self
            .call(reqwest::Method::POST, "/api/v1/sessions", Some(body), 201)
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Stops a session as operator alice.
    pub async fn stop(&self, id: &str) -> Result<Value> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/sessions/{id}"),
            None,
            200,
        )
        .await
    }
}

/// An agent announcing `service` in front of the local port `port`, online, and a session on it.
pub struct Setup {
    pub api: Api,
    pub agent: Agent,
    pub session: CreatedSession,
}

impl Setup {
    pub async fn new(broker: &TestBroker, service: &str, port: u16) -> Result<Self> {
        let api = Api::new(broker)?;
        let mut agent = Agent::new(broker, &passerelle_e2e::unique("desk")).await?;
        api.register(&agent).await?;
        agent.connect(&[Forward::named(service, port)])?;
        api.wait_online(&agent.id, service).await.with_context(|| {
            format!(
                "ssh stderr: {}",
                agent.process().map(|p| p.stderr()).unwrap_or_default()
            )
        })?;
        let session = api.create_session(&agent.id, service).await?;
        Ok(Self {
            api,
            agent,
            session,
        })
    }
}

/// Configuration lines that trust the broker a launch URL names (and allow it plain HTTP, as
/// the test brokers mostly are); empty for a URL that does not parse.
pub fn trusting(url: &str) -> String {
    passerelle_desktop::parse_launch_url(url)
        .ok()
        .and_then(|l| passerelle_desktop::trust::origin_of(&l.broker).ok())
        .map(|origin| format!("trusted_brokers = [\"{origin}\"]\nallow_http = true\n"))
        .unwrap_or_default()
}

/// The `passerelle-desktop` binary as a child process.
pub struct Helper {
    child: Child,
    stdout: Option<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
    stderr: Arc<Mutex<String>>,
    /// Its private configuration directory (`XDG_CONFIG_HOME`).
    home: tempfile::TempDir,
}

impl Helper {
    /// `passerelle-desktop ARGS` with extra environment variables, in its own process group,
    /// with a configuration directory of its own (empty: nothing trusted).
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_with_config(args, envs, None)
    }

    /// [`Self::spawn`] with `config` as its default configuration file
    /// (`$XDG_CONFIG_HOME/passerelle/desktop.toml`).
    pub fn spawn_with_config(
        args: &[&str],
        envs: &[(&str, &str)],
        config: Option<&str>,
    ) -> Result<Self> {
        let home = tempfile::tempdir()?;
        std::fs::create_dir_all(home.path().join("passerelle"))?;
        if let Some(text) = config {
            std::fs::write(home.path().join("passerelle").join("desktop.toml"), text)?;
        }
        // Defined for passerelle-desktop's own tests (the app's tests share this module).
        let bin = option_env!("CARGO_BIN_EXE_passerelle-desktop")
            .context("the CLI binary is only known to passerelle-desktop's tests")?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("XDG_CONFIG_HOME", home.path())
            .env_remove("PASSERELLE_DESKTOP_CONFIG")
            .envs(envs.iter().copied())
            .env("RUST_LOG", "passerelle_desktop=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting passerelle-desktop")?;
        let stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("stderr lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ok(Self {
            child,
            stdout,
            stderr,
            home,
        })
    }

    /// `open URL --no-launch`, trusting the URL's broker.
    pub fn no_launch(url: &str) -> Result<Self> {
        Self::no_launch_with(url, &trusting(url))
    }

    /// `open URL --no-launch` with `config` as its configuration.
    pub fn no_launch_with(url: &str, config: &str) -> Result<Self> {
        Self::spawn_with_config(&["open", url, "--no-launch"], &[], Some(config))
    }

    /// Its configuration directory (`$XDG_CONFIG_HOME/passerelle`).
    pub fn config_dir(&self) -> std::path::PathBuf {
        self.home.path().join("passerelle")
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// The next line of stdout.
    pub async fn line(&mut self) -> Result<Option<String>> {
        let lines = self.stdout.as_mut().context("stdout taken")?;
        match timeout(WAIT, lines.next_line()).await {
            Ok(line) => Ok(line?),
            Err(_) => bail!("no stdout line in time; stderr:\n{}", self.stderr()),
        }
    }

    /// The address printed by `--no-launch`: the first stdout line, alone.
    pub async fn addr(&mut self) -> Result<SocketAddr> {
        let line = self
            .line()
            .await?
            .with_context(|| format!("the helper printed nothing; stderr:\n{}", self.stderr()))?;
        line.parse()
            .with_context(|| format!("stdout line {line:?} is not an address"))
    }

    /// Waits (bounded) for the helper to exit; its status and all of stderr.
    pub async fn exit(&mut self) -> Result<(ExitStatus, String)> {
        let status = match timeout(WAIT, self.child.wait()).await {
            Ok(s) => s?,
            Err(_) => bail!("the helper did not exit; stderr:\n{}", self.stderr()),
        };
        // Let the stderr reader take the last bytes.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = String::new();
        while Instant::now() < deadline {
            let now = self.stderr();
            if now == last && !now.is_empty() {
                break;
            }
            last = now;
            sleep(Duration::from_millis(50)).await;
        }
        Ok((status, self.stderr()))
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) -> Result<()> {
        let pid = self.child.id().context("already exited")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        Ok(())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // The helper and every client it started share its process group.
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether something accepts TCP connections at `addr` right now.
pub async fn listening(addr: SocketAddr) -> bool {
    matches!(
        timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The local address of the tunnel for `session`, from the helper's log line "tunnel listening"
/// (the app's, or the CLI's stderr).
pub fn tunnel_addr(log: &str, session: &str) -> Result<SocketAddr> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("session={session}")) && l.contains("tunnel listening"))
        .with_context(|| format!("no tunnel for {session} in the log:\n{log}"))?;
    let addr = line
        .split("local_addr=")
        .nth(1)
        .and_then(|rest| rest.split(['}', ' ']).next())
        .with_context(|| format!("no local_addr in {line:?}"))?;
    Ok(addr.parse()?)
}
