//! Stack (a): the release `passerelle` binary, driven as INTERFACE.md describes it — stdout lines
//! for its addresses and admin key, the HTTP API for agents and sessions, `passerelle host-key`
//! for the agent's `known_hosts` — with a stock OpenSSH agent announcing `vnc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use passerelle_proto::agent_import::ImportAgents;
use passerelle_proto::api::{AgentInfo, CreateSession, CreatedSession, RegisterAgent};
use passerelle_proto::{AgentId, ServiceName};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

use super::{AgentSpec, Proc, keygen, spawn_agent, wait_for, write_key};

/// The service name every benchmark agent announces.
pub const SERVICE: &str = "vnc";

/// How to start the broker: its binary, and environment variables for it alone (e.g.
/// `GLIBC_TUNABLES` to try allocator settings without touching the harness's own processes).
#[derive(Debug, Clone)]
pub struct BrokerCmd {
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
}

/// A running `passerelle serve`.
pub struct Broker {
    proc: Proc,
    pub ssh_addr: SocketAddr,
    pub base_url: String,
    pub admin_key: String,
}

impl Broker {
    /// Starts `bin serve` on `data_dir`; `ssh_listen` is `127.0.0.1:0` the first time and the
    /// previous address on a restart. Logs go to `log`.
    pub async fn start(
        bin: &BrokerCmd,
        data_dir: &Path,
        ssh_listen: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Self> {
        // Thousands of simulated workstations share the 8 source addresses: the broker's
        // per-source SSH limits (meant for one host each) would pace them, so they are off.
        let config = data_dir.join("bench.toml");
        std::fs::create_dir_all(data_dir)?;
        std::fs::write(
            &config,
            "ssh_connection_burst_per_source = 0\nmax_preauth_per_source = 0\n\
             ssh_auth_failure_limit = 0\nmax_agent_connections = 1000000\n",
        )?;
        let mut cmd = Command::new(&bin.bin);
        cmd.envs(bin.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--config").arg(&config);
        // Plain logs: the report quotes them.
        cmd.env("NO_COLOR", "1")
            .arg("serve")
            .arg("--insecure-http")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ssh-listen")
            .arg(ssh_listen.to_string())
            .args(["--http-listen", "127.0.0.1:0"]);
        let mut proc = Proc::spawn("passerelle", &mut cmd, log, true)?;
        let stdout = proc.child_mut().stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut admin_key, mut ssh_addr, mut base_url) = (None, None, None);
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, key)) = line
                    .split_once("admin API key")
                    .and_then(|(_, r)| r.split_once("): "))
                {
                    admin_key = Some(key.trim().to_owned());
                } else if let Some(a) = line.strip_prefix("ssh listening on ") {
                    ssh_addr = Some(a.trim().parse::<SocketAddr>()?);
                } else if let Some(u) = line.strip_prefix("http listening on ") {
                    base_url = Some(u.trim().trim_end_matches('/').to_owned());
                } else if line.starts_with("host key fingerprint") {
                    return anyhow::Ok(());
                }
            }
            bail!("stdout closed before the host key line")
        };
        let outcome = tokio::time::timeout(Duration::from_secs(30), read).await;
        if !matches!(outcome, Ok(Ok(()))) {
            proc.check_alive()?;
            bail!("passerelle did not print its addresses: {outcome:?}");
        }
        // Keep reading stdout so that the broker never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let admin_key = match admin_key {
            Some(k) => k,
            None => std::fs::read_to_string(data_dir.join("admin-api-key"))
                .context("reading admin-api-key")?
                .trim()
                .to_owned(),
        };
        Ok(Self {
            proc,
            ssh_addr: ssh_addr.context("no ssh address line")?,
            base_url: base_url.context("no http address line")?,
            admin_key,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn api(&self) -> anyhow::Result<Api> {
        Api::new(&self.base_url, &self.admin_key)
    }

    /// SIGKILL (a crash, as seen by the agents) and reap.
    pub async fn kill(mut self) {
        self.proc.kill().await;
    }
}

/// `passerelle host-key`'s `known_hosts` line for `addr`.
pub async fn known_hosts_line(
    bin: &Path,
    data_dir: &Path,
    addr: SocketAddr,
) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("host-key")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--known-hosts-host")
        .arg(addr.to_string())
        .output()
        .await
        .context("running passerelle host-key")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text
        .lines()
        .find(|l| l.starts_with('[') && l.contains("ssh-ed25519"))
    {
        Some(l) if out.status.success() => Ok(l.trim().to_owned()),
        _ => bail!("passerelle host-key printed no known_hosts line: {text}"),
    }
}

/// The broker's HTTP API with the admin key.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    pub fn new(base: &str, key: &str) -> anyhow::Result<Self> {
        Self::build(base, key, None)
    }

    /// An `https://` API whose certificate `tls` trusts (a cluster node's, `--cluster`).
    pub fn with_tls(base: &str, key: &str, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        Self::build(base, key, Some(tls))
    }

    fn build(base: &str, key: &str, tls: Option<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            http = http.use_preconfigured_tls(tls);
        }
        let http = http.build()?;
        Ok(Self {
            http,
            base: base.to_owned(),
            key: key.to_owned(),
        })
    }

    /// `POST /api/v1/agents`.
    pub async fn register_agent(&self, id: &str, public_key: &str) -> anyhow::Result<()> {
        let body = bare_agent(id, public_key)?;
        self.post_created("/api/v1/agents", &body, || format!("registering {id}"))
            .await
    }

    /// `POST /api/v1/agents/import`: `agents` as (id, public key line), all in one request
    /// (at most `MAX_IMPORT_ITEMS`).
    pub async fn import_agents(&self, agents: &[(String, String)]) -> anyhow::Result<()> {
        let body = ImportAgents {
            agents: (agents.iter())
                .map(|(id, key)| bare_agent(id, key))
                .collect::<anyhow::Result<_>>()?,
        };
        self.post_created("/api/v1/agents/import", &body, || {
            format!("importing {} agents", agents.len())
        })
        .await
    }

    /// POSTs `body` to `path`; an error naming `what` unless the answer is 201 Created.
    async fn post_created(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        what: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?;
        if r.status() != reqwest::StatusCode::CREATED {
            bail!(
                "{}: {} {}",
                what(),
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// `POST /api/v1/sessions` for the agent's `vnc` service. While the agent is offline (409
    /// `agent_offline`, e.g. during its restart) the call is retried for up to 10 s.
    pub async fn create_session(&self, agent: &str) -> anyhow::Result<CreatedSession> {
        self.create_session_with(agent, false).await
    }

    /// [`Self::create_session`], recorded or not.
    pub async fn create_session_with(
        &self,
        agent: &str,
        record: bool,
    ) -> anyhow::Result<CreatedSession> {
        let body = CreateSession {
            agent: AgentId::new(agent)?,
            service: ServiceName::new(SERVICE)?,
            operator: "bench".to_owned(),
            record: Some(record),
            view_only: false,
            legacy: false,
            ttl_secs: None,
            ssh_user: None,
        };
        let start = Instant::now();
        loop {
            let r = self
                .http
                .post(format!("{}/api/v1/sessions", self.base))
                .bearer_auth(&self.key)
                .json(&body)
                .send()
                .await?;
            if r.status() == reqwest::StatusCode::CREATED {
                return Ok(r.json().await?);
            }
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            if !(status == reqwest::StatusCode::CONFLICT && text.contains("agent_offline"))
                || start.elapsed() > Duration::from_secs(10)
            {
                bail!("creating a session: {status} {text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /api/v1/agents`, every page (1,000 agents each, following `X-Next-Cursor`).
    pub async fn agents(&self) -> anyhow::Result<Vec<AgentInfo>> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let r = self
                .http
                .get(format!(
                    "{}/api/v1/agents?limit=1000&cursor={cursor}",
                    self.base
                ))
                .bearer_auth(&self.key)
                .send()
                .await?
                .error_for_status()?;
            let next = r
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let page: Vec<AgentInfo> = r.json().await?;
            all.extend(page);
            match next {
                Some(next) => cursor = next,
                None => return Ok(all),
            }
        }
    }
}

/// An agent's registration with its id and key only.
fn bare_agent(id: &str, public_key: &str) -> anyhow::Result<RegisterAgent> {
    Ok(RegisterAgent::with_key(AgentId::new(id)?, public_key))
}

/// The broker and its OpenSSH agents, each announcing `vnc` -> the service: the main agent (bulk,
/// round trips, set-up), a dedicated agent for the "N sessions on ONE agent" figures, and a pool
/// of agents over which the concurrent sessions are spread (sessions of different workstations).
pub struct PasserelleStack {
    agents: Vec<Supervised>,
    log: PathBuf,
    pub broker: Broker,
    pub api: Api,
    /// The main agent.
    pub agent_id: String,
    /// The agent that carries every session of the "ONE agent" figures, and nothing else.
    pub one_agent_id: String,
    /// The pool agents, in order.
    pub pool_ids: Vec<String>,
    /// The main agent's log (`ssh -v`).
    agent_log: PathBuf,
}

/// One agent process kept running by a supervisor task.
struct Supervised {
    id: String,
    /// Owns the agent process; aborting it kills the agent.
    task: tokio::task::JoinHandle<()>,
    restarts: Arc<AtomicUsize>,
}

/// A supervised agent is restarted at most this many times.
const MAX_AGENT_RESTARTS: usize = 20;

impl PasserelleStack {
    /// Starts the broker and `2 + pool` agents, and waits until every agent announces `vnc`.
    pub async fn start(
        bin: &BrokerCmd,
        dir: &Path,
        service: SocketAddr,
        cipher: &str,
        agent_options: &[String],
        pool: usize,
    ) -> anyhow::Result<Self> {
        let data_dir = dir.join("passerelle-data");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let log = dir.join("passerelle.log");
        let broker = Broker::start(bin, &data_dir, any, &log).await?;
        let api = broker.api()?;
        let known_hosts = dir.join("known_hosts_a");
        let line = known_hosts_line(&bin.bin, &data_dir, broker.ssh_addr).await?;
        std::fs::write(&known_hosts, format!("{line}\n"))?;

        let agent_id = "bench-agent-a".to_owned();
        let one_agent_id = "bench-one-a".to_owned();
        let pool_ids: Vec<String> = (0..pool).map(|i| format!("bench-pool-a{i:03}")).collect();
        let mut agents = Vec::new();
        let ids = [agent_id.clone(), one_agent_id.clone()]
            .into_iter()
            .chain(pool_ids.iter().cloned());
        for (i, id) in ids.enumerate() {
            let key = dir.join(format!("{id}_ed25519"));
            let public = if i == 0 {
                keygen(&key, &id).await?
            } else {
                write_key(&key, b'a', i)?
            };
            api.register_agent(&id, &public).await?;
            let spec = AgentSpec {
                key,
                known_hosts: known_hosts.clone(),
                cipher: cipher.to_owned(),
                port: broker.ssh_addr.port(),
                user: id.clone(),
                forward: format!("{SERVICE}:0:127.0.0.1:{}", service.port()),
                verbose: i == 0,
                options: agent_options.to_vec(),
            };
            let agent_log = dir.join(format!("{id}.log"));
            let agent = spawn_agent(&spec, &agent_log)?;
            let restarts = Arc::new(AtomicUsize::new(0));
            let task = tokio::spawn(supervise(agent, spec, agent_log, restarts.clone()));
            agents.push(Supervised { id, task, restarts });
        }
        let n = agents.len();
        let limit = Duration::from_secs(15 + n as u64 / 5);
        wait_for("the agents to announce vnc", limit, async || {
            if let Some(a) = agents.iter().find(|a| a.task.is_finished()) {
                bail!("the agent {} could not be started", a.id);
            }
            let online = api
                .agents()
                .await?
                .iter()
                .filter(|a| a.online && a.services.iter().any(|s| s.name.as_str() == SERVICE))
                .count();
            Ok((online >= n).then_some(()))
        })
        .await?;
        // The wait above counts restarts of agents that failed their first attempt: start at 0.
        for a in &agents {
            a.restarts.store(0, Ordering::Relaxed);
        }
        Ok(Self {
            agent_log: dir.join(format!("{agent_id}.log")),
            agents,
            log,
            broker,
            api,
            agent_id,
            one_agent_id,
            pool_ids,
        })
    }

    /// How often each agent's connection ended and the agent was started again, with the
    /// reasons the broker logged for that agent; `None` if it never happened.
    pub fn agent_drops(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = Vec::new();
        for a in &self.agents {
            let tag = format!("agent={} ", a.id);
            let ended: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&tag) && l.contains("connection ended"))
                .collect();
            // The restart counter may lag the broker's log by a moment, and the log may miss a
            // drop the broker did not see: the larger of the two.
            let n = a.restarts.load(Ordering::Relaxed).max(ended.len());
            if n == 0 {
                continue;
            }
            let mut reasons: Vec<&str> = ended
                .iter()
                .filter_map(|l| l.split_once("error=").map(|(_, e)| e.trim()))
                .collect();
            reasons.sort_unstable();
            reasons.dedup();
            out.push(format!(
                "{} ended {n} time(s) (the broker logged: {})",
                a.id,
                if reasons.is_empty() {
                    "no reason".to_owned()
                } else {
                    reasons.join("; ")
                }
            ));
        }
        (!out.is_empty()).then(|| {
            format!(
                "(a): OpenSSH agent connections ended during the measurements and the agents were \
                 started again (sessions meanwhile waited for them): {}",
                out.join(", ")
            )
        })
    }

    /// The cipher the main agent negotiated, from its log.
    pub fn cipher(&self) -> Option<String> {
        super::negotiated_cipher(&self.agent_log)
    }

    /// The broker's warnings and errors so far.
    pub fn log_summary(&self) -> Option<String> {
        super::log_summary(&self.log)
    }

    /// Stops the agents and the broker.
    pub async fn stop(self) {
        for a in &self.agents {
            a.task.abort();
        }
        for a in self.agents {
            let _ = a.task.await;
        }
        self.broker.kill().await;
    }
}

/// Keeps the agent running, as a real agent's service manager does: when a connection drop would
/// otherwise leave every later figure empty, the agent is started again and the drop counted.
async fn supervise(mut agent: Proc, spec: AgentSpec, log: PathBuf, restarts: Arc<AtomicUsize>) {
    for _ in 0..MAX_AGENT_RESTARTS {
        let _ = agent.child_mut().wait().await;
        restarts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        match spawn_agent(&spec, &log) {
            Ok(p) => agent = p,
            Err(_) => return,
        }
    }
    let _ = agent.child_mut().wait().await;
}
