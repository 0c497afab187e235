//! [`Agent`]: a workstation agent played by stock OpenSSH (`ssh -N -R service:0:localhost:PORT`),
//! with its own ed25519 key and a `known_hosts` file that pins the broker's host key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle_proto::api::AgentInfo;
use tempfile::TempDir;
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::{POLL, StatusCode, TestBroker, WAIT};

/// An ed25519 key pair made by `ssh-keygen`, in its own temporary directory.
pub struct AgentKey {
    dir: TempDir,
    /// The private key file, for `ssh -i`.
    pub path: PathBuf,
    /// The OpenSSH public key line, `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
}

impl AgentKey {
    /// Runs `ssh-keygen -t ed25519 -N ''` in a fresh temporary directory.
    pub async fn generate() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("passerelle-agent-")
            .tempdir()?;
        let path = dir.path().join("id_ed25519");
        let out = timeout(
            WAIT,
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "passerelle-e2e",
                    "-f",
                ])
                .arg(&path)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("ssh-keygen timed out")?
        .context("running ssh-keygen (is openssh-client installed?)")?;
        ensure!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public_key = std::fs::read_to_string(path.with_extension("pub"))?
            .trim()
            .to_owned();
        Ok(Self {
            dir,
            path,
            public_key,
        })
    }
}

/// One `-R` forward of an agent.
#[derive(Debug, Clone)]
pub enum Forward {
    /// `-R SERVICE:0:localhost:PORT`: announces a named service.
    Named { service: String, port: u16 },
    /// `-R REMOTE:127.0.0.1:PORT`: the legacy numeric form, matched to a pending session.
    Numeric { remote_port: u16, port: u16 },
    /// Any `-R` argument as is.
    Raw(String),
}

impl Forward {
    /// `-R SERVICE:0:localhost:PORT`.
    pub fn named(service: &str, port: u16) -> Self {
        Self::Named {
            service: service.to_owned(),
            port,
        }
    }

    /// `-R REMOTE:127.0.0.1:PORT`.
    pub fn legacy(remote_port: u16, port: u16) -> Self {
        Self::Numeric { remote_port, port }
    }

    pub(crate) fn arg(&self) -> String {
        match self {
            Self::Named { service, port } => format!("{service}:0:localhost:{port}"),
            Self::Numeric { remote_port, port } => format!("{remote_port}:127.0.0.1:{port}"),
            Self::Raw(arg) => arg.clone(),
        }
    }
}

/// A running `ssh` process whose stderr is being collected.
pub struct SshProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl SshProcess {
    fn spawn(mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .context("spawning ssh (is openssh-client installed?)")?;
        let mut pipe = child.stderr.take().context("ssh stderr not piped")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                sink.lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            child,
            stderr,
            reader: Some(reader),
        })
    }

    /// What ssh has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Polls ssh's stderr until it contains `needle`; fails with what it says otherwise.
    pub async fn wait_stderr(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.stderr();
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                bail!("ssh never wrote {needle:?} to stderr; it wrote:\n{text}");
            }
            sleep(POLL).await;
        }
    }

    /// The exit status if ssh has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits (at most `within`) for ssh to exit, and for its stderr to be read to the end.
    pub async fn wait(&mut self, within: Duration) -> Result<ExitStatus> {
        let status = match timeout(within, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => bail!("ssh still runs after {within:?}; stderr: {}", self.stderr()),
        };
        if let Some(reader) = self.reader.take() {
            // ssh has exited, so its stderr reaches end of file now.
            let _ = timeout(WAIT, reader).await;
        }
        Ok(status)
    }

    /// Kills ssh (SIGKILL) and reaps it: the broker sees the TCP connection drop.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill().ok();
        self.wait(WAIT).await?;
        Ok(())
    }
}

/// What a one-shot `ssh` run gave.
#[derive(Debug)]
pub struct SshOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A workstation agent: an id, a key, a pinned broker host key, and (once connected) a running
/// `ssh -N` with its forwards.
pub struct Agent {
    /// The agent id, also its SSH user name.
    pub id: String,
    /// Its key pair.
    pub key: AgentKey,
    api_key: String,
    known_hosts: PathBuf,
    /// The broker's address as ssh is given it.
    host: String,
    /// Runs ssh through this (e.g. `ip netns exec NAME`).
    prefix: Vec<String>,
    /// The port ssh connects to (the broker's, or a proxy's in front of it).
    port: u16,
    /// Extra ssh arguments for every run (e.g. `-b 127.0.0.2`).
    extra: Vec<String>,
    process: Option<SshProcess>,
}

impl Agent {
    /// A new agent with a fresh key, not registered; presence is read with the admin key.
    pub async fn new(broker: &TestBroker, id: &str) -> Result<Self> {
        Self::new_in(broker, broker.admin_key(), id).await
    }

    /// A new agent with a fresh key, not registered; presence is read with `api_key`.
    pub async fn new_in(broker: &TestBroker, api_key: &str, id: &str) -> Result<Self> {
        Self::for_broker(broker.ssh_addr(), broker.host_key(), api_key, id).await
    }

    /// A new agent with a fresh key for any broker (e.g. the `passerelle` binary) listening
    /// for agents on `ssh_addr` (on 127.0.0.1) with `host_key` (`ssh-ed25519 AAAA...`).
    pub async fn for_broker(
        ssh_addr: SocketAddr,
        host_key: &str,
        api_key: &str,
        id: &str,
    ) -> Result<Self> {
        let key = AgentKey::generate().await?;
        let known_hosts = key.dir.path().join("known_hosts");
        let line = format!("[127.0.0.1]:{} {}\n", ssh_addr.port(), host_key.trim());
        std::fs::write(&known_hosts, line)?;
        Ok(Self {
            id: id.to_owned(),
            key,
            api_key: api_key.to_owned(),
            known_hosts,
            host: "127.0.0.1".into(),
            prefix: Vec::new(),
            port: ssh_addr.port(),
            extra: Vec::new(),
            process: None,
        })
    }

    /// Makes ssh run through `prefix` (e.g. `ip netns exec NAME`) and reach the broker at
    /// `host` (on the broker's SSH port) instead of 127.0.0.1.
    pub fn reach_via(&mut self, prefix: Vec<String>, host: &str, host_key: &str) -> Result<()> {
        let line = format!("[{host}]:{} {}\n", self.port, host_key.trim());
        std::fs::write(&self.known_hosts, line)?;
        self.prefix = prefix;
        self.host = host.to_owned();
        Ok(())
    }

    /// Makes ssh connect to `port` on 127.0.0.1 (e.g. a proxy in front of the broker, which
    /// still answers with `host_key`).
    pub fn through_port(&mut self, port: u16, host_key: &str) -> Result<()> {
        self.port = port;
        let line = format!("[{}]:{port} {}\n", self.host, host_key.trim());
        std::fs::write(&self.known_hosts, line)?;
        Ok(())
    }

    /// Extra ssh arguments for every later run, e.g. `["-b", "127.0.0.2"]` to connect from
    /// another local address.
    pub fn extra_args(&mut self, args: &[&str]) {
        self.extra = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// A new agent registered in tenant `default` (`POST /api/v1/agents` with the admin key).
    pub async fn registered(broker: &TestBroker, id: &str) -> Result<Self> {
        Self::registered_in(broker, broker.admin_key(), id).await
    }

    /// A new agent registered with `api_key` (an admin key of some tenant).
    pub async fn registered_in(broker: &TestBroker, api_key: &str, id: &str) -> Result<Self> {
        let agent = Self::new_in(broker, api_key, id).await?;
        broker
            .register_agent_as(api_key, id, &agent.key.public_key)
            .await?;
        Ok(agent)
    }

    /// `ssh` with the options every run shares, logging in as `user`, then `args`.
    pub fn ssh_command(&self, user: &str, args: &[String]) -> Command {
        let mut cmd = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg("ssh");
                cmd
            }
            None => Command::new("ssh"),
        };
        cmd.args(["-F", "/dev/null"]);
        for opt in [
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=yes",
            "GlobalKnownHostsFile=/dev/null",
            "ExitOnForwardFailure=yes",
            "ServerAliveInterval=15",
            "ConnectTimeout=10",
        ] {
            cmd.args(["-o", opt]);
        }
        cmd.arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()));
        cmd.arg("-i").arg(&self.key.path);
        cmd.args(&self.extra);
        cmd.args(["-p", &self.port.to_string()]);
        cmd.args(args);
        cmd.arg(format!("{user}@{}", self.host));
        cmd
    }

    fn tunnel_command(&self, user: &str, forwards: &[Forward]) -> Command {
        let mut args = vec!["-N".to_owned()];
        for f in forwards {
            args.push("-R".into());
            args.push(f.arg());
        }
        self.ssh_command(user, &args)
    }

    /// Starts `ssh -N -R ...` as this agent; see [`Self::wait_online`].
    pub fn connect(&mut self, forwards: &[Forward]) -> Result<()> {
        ensure!(
            self.process.is_none(),
            "agent {} is already connected",
            self.id
        );
        self.process = Some(SshProcess::spawn(self.tunnel_command(&self.id, forwards))?);
        Ok(())
    }

    /// Starts `ssh -N -R ...` with this agent's key but logging in as `user`.
    pub fn spawn_as(&self, user: &str, forwards: &[Forward]) -> Result<SshProcess> {
        SshProcess::spawn(self.tunnel_command(user, forwards))
    }

    /// The running `ssh -N` started by [`Self::connect`].
    pub fn process(&mut self) -> Result<&mut SshProcess> {
        self.process.as_mut().context("agent not connected")
    }

    /// Kills the agent's ssh and forgets it, so that it may connect again.
    pub async fn disconnect(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.kill().await?;
        }
        Ok(())
    }

    /// Disconnects, waits until the broker has noticed (so that the old connection cannot
    /// answer for the new one), connects with `forwards` and waits until `services` are online.
    pub async fn reconnect(
        &mut self,
        broker: &TestBroker,
        forwards: &[Forward],
        services: &[&str],
    ) -> Result<AgentInfo> {
        self.disconnect().await?;
        self.wait_offline(broker).await?;
        self.connect(forwards)?;
        self.wait_online(broker, services).await
    }

    /// Polls the agent's presence until it is online with at least `services`; fails early,
    /// with ssh's stderr, if ssh exits.
    pub async fn wait_online(
        &mut self,
        broker: &TestBroker,
        services: &[&str],
    ) -> Result<AgentInfo> {
        let deadline = Instant::now() + WAIT;
        let path = format!("/api/v1/agents/{}", self.id);
        loop {
            let process = self.process()?;
            if let Some(status) = process.exited()? {
                let _ = process.wait(WAIT).await;
                bail!(
                    "ssh exited ({status}) before {path} was online; stderr:\n{}",
                    process.stderr()
                );
            }
            let (status, body) = broker
                .api(crate::Method::GET, &path, Some(&self.api_key), None)
                .await?;
            // An agent that signs in with a certificate is registered by its first connection.
            let registered = status == StatusCode::OK;
            if !registered && status != StatusCode::NOT_FOUND {
                bail!("GET {path}: {status} {body}");
            }
            let info: Option<AgentInfo> = registered
                .then(|| serde_json::from_value(body))
                .transpose()?;
            if let Some(ready) = info.as_ref().filter(|i| {
                let has = |s: &&str| i.services.iter().any(|x| x.name.as_str() == *s);
                i.online && services.iter().all(has)
            }) {
                return Ok(ready.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "agent never online with {services:?}: {info:#?}\nssh stderr:\n{}",
                    self.process()?.stderr()
                );
            }
            sleep(POLL).await;
        }
    }

    /// Polls the agent's presence until it is offline.
    pub async fn wait_offline(&self, broker: &TestBroker) -> Result<AgentInfo> {
        let deadline = Instant::now() + WAIT;
        loop {
            let info = broker.agent_as(&self.api_key, &self.id).await?;
            if !info.online {
                return Ok(info);
            }
            if Instant::now() >= deadline {
                bail!("agent {} still online: {info:#?}", self.id);
            }
            sleep(POLL).await;
        }
    }

    /// Runs one `ssh` as `user` with `args` (e.g. `["-W", "127.0.0.1:22"]` or `["echo", "hi"]`
    /// after the destination) to completion, bounded by [`WAIT`].
    pub async fn run(&self, user: &str, before: &[&str], after: &[&str]) -> Result<SshOutput> {
        let before: Vec<String> = before.iter().map(|s| (*s).to_owned()).collect();
        let mut cmd = self.ssh_command(user, &before);
        cmd.args(after).stdin(Stdio::null()).kill_on_drop(true);
        let out = timeout(WAIT, cmd.output())
            .await
            .context("one-shot ssh timed out")??;
        Ok(SshOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
