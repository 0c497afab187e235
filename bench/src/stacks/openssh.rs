//! Stack (b), the one Passerelle replaces: OpenSSH's sshd receives `ssh -R PORT:127.0.0.1:SVC`
//! from a stock OpenSSH agent and binds PORT on 127.0.0.1; websockify bridges WebSocket
//! connections to that port. Without websockify, PORT itself is the ceiling: the raw tunnel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

use super::{
    AgentSpec, Proc, banner_reachable, free_port, keygen, listening, spawn_agent, wait_for,
    write_key,
};

/// sshd, its agents and websockify, running.
pub struct Baseline {
    /// The agents first: dropping them closes the SSH connections before sshd goes. The main
    /// agent is `agents[0]`; the pool follows.
    agents: Vec<Proc>,
    websockify: Proc,
    pool_websockify: Option<Proc>,
    sshd: Proc,
    /// The port sshd bound for the main agent's forward: the raw `ssh -R` tunnel.
    pub forwarded: SocketAddr,
    /// websockify's URL in front of `forwarded`.
    pub ws_url: String,
    /// The pool agents' forwarded ports (the ceiling of spread sessions).
    pub pool_forwarded: Vec<SocketAddr>,
    /// One websockify with a token file in front of every pool port: `?token=<agent>`.
    pub pool_ws_urls: Vec<String>,
    /// The main agent's log (`ssh -v`).
    agent_log: PathBuf,
}

impl Baseline {
    /// Starts sshd from a config in `dir`, the main agent and `pool` more with `cipher`, and
    /// websockify (one for the main agent, one with a token file for the pool).
    pub async fn start(
        dir: &Path,
        service: SocketAddr,
        cipher: &str,
        agent_options: &[String],
        pool: usize,
    ) -> anyhow::Result<Self> {
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let host_key = dir.join("sshd_host_ed25519");
        let host_pub = keygen(&host_key, "bench-sshd").await?;
        let mut keys = Vec::new();
        let mut authorized = String::new();
        for i in 0..=pool {
            let key = dir.join(format!("agent_b{i:03}_ed25519"));
            let public = if i == 0 {
                keygen(&key, "bench-agent-b").await?
            } else {
                write_key(&key, b'b', i)?
            };
            authorized.push_str(&public);
            authorized.push('\n');
            keys.push(key);
        }
        let authorized_file = dir.join("authorized_keys");
        std::fs::write(&authorized_file, authorized)?;

        let port = free_port()?;
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            sshd_config(port, &host_key, &authorized_file, cipher),
        )?;
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.arg("-f").arg(&config).args(["-D", "-e"]);
        let mut sshd = Proc::spawn("sshd", &mut cmd, &dir.join("sshd.log"), false)?;
        let sshd_addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for("sshd to listen", Duration::from_secs(10), async || {
            sshd.check_alive()?;
            Ok(listening(sshd_addr).await.then_some(()))
        })
        .await?;

        let known_hosts = dir.join("known_hosts_b");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}\n"))?;
        let mut agents = Vec::new();
        let mut specs = Vec::new();
        let mut forwarded = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let fwd_port = free_port()?;
            let spec = AgentSpec {
                key,
                known_hosts: known_hosts.clone(),
                cipher: cipher.to_owned(),
                port,
                user: "root".to_owned(),
                forward: format!("{fwd_port}:127.0.0.1:{}", service.port()),
                verbose: i == 0,
                options: agent_options.to_vec(),
            };
            agents.push(spawn_agent(&spec, &agent_log(dir, i))?);
            specs.push(spec);
            forwarded.push(SocketAddr::from(([127, 0, 0, 1], fwd_port)));
        }
        let limit = Duration::from_secs(15 + pool as u64 / 5);
        let mut up = vec![false; forwarded.len()];
        let mut retries = vec![0u32; forwarded.len()];
        wait_for("the ssh -R tunnels", limit, async || {
            sshd.check_alive()?;
            for i in 0..forwarded.len() {
                if up[i] {
                    continue;
                }
                if let Err(e) = agents[i].check_alive() {
                    // Most likely another process took the "free" port before sshd bound it
                    // (see `free_port`): try again with another port, a few times.
                    if retries[i] >= 3 {
                        return Err(e);
                    }
                    retries[i] += 1;
                    let fwd_port = free_port()?;
                    specs[i].forward = format!("{fwd_port}:127.0.0.1:{}", service.port());
                    forwarded[i] = SocketAddr::from(([127, 0, 0, 1], fwd_port));
                    agents[i] = spawn_agent(&specs[i], &agent_log(dir, i))?;
                    continue;
                }
                up[i] = banner_reachable(forwarded[i]).await;
            }
            Ok(up.iter().all(|&u| u).then_some(()))
        })
        .await?;

        let main = forwarded[0];
        let (main_ws, ws_url) = start_websockify(dir, "websockify", &[main.to_string()]).await?;
        let pool_forwarded = forwarded[1..].to_vec();
        let (pool_websockify, pool_ws_urls) = if pool_forwarded.is_empty() {
            (None, Vec::new())
        } else {
            let tokens = dir.join("websockify-tokens");
            let lines: String = pool_forwarded
                .iter()
                .enumerate()
                .map(|(i, a)| format!("agent{i:03}: {a}\n"))
                .collect();
            std::fs::write(&tokens, lines)?;
            let args = [
                "--token-plugin".to_owned(),
                "TokenFile".to_owned(),
                "--token-source".to_owned(),
                tokens.display().to_string(),
            ];
            let (p, base) = start_websockify(dir, "websockify-pool", &args).await?;
            let urls = (0..pool_forwarded.len())
                .map(|i| format!("{base}?token=agent{i:03}"))
                .collect();
            (Some(p), urls)
        };
        Ok(Self {
            agent_log: dir.join("agent_b000.log"),
            agents,
            websockify: main_ws,
            pool_websockify,
            sshd,
            forwarded: main,
            ws_url,
            pool_forwarded,
            pool_ws_urls,
        })
    }

    /// The cipher the main agent negotiated, from its log.
    pub fn cipher(&self) -> Option<String> {
        super::negotiated_cipher(&self.agent_log)
    }

    /// sshd's process id (its per-connection processes are its descendants).
    pub fn sshd_pid(&self) -> u32 {
        self.sshd.pid()
    }

    /// The main websockify's process id (its per-connection workers are its descendants).
    pub fn websockify_pid(&self) -> u32 {
        self.websockify.pid()
    }

    /// Stops everything, agents first.
    pub async fn stop(mut self) {
        for a in &mut self.agents {
            a.kill().await;
        }
        self.websockify.kill().await;
        if let Some(mut p) = self.pool_websockify {
            p.kill().await;
        }
        self.sshd.kill().await;
    }
}

fn agent_log(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("agent_b{i:03}.log"))
}

/// Starts `websockify 127.0.0.1:PORT <args>` and returns it with its base URL.
async fn start_websockify(
    dir: &Path,
    name: &str,
    args: &[String],
) -> anyhow::Result<(Proc, String)> {
    let ws_port = free_port()?;
    let mut cmd = Command::new("websockify");
    cmd.arg(format!("127.0.0.1:{ws_port}")).args(args);
    let mut proc = Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")), false)?;
    let ws_addr = SocketAddr::from(([127, 0, 0, 1], ws_port));
    wait_for(
        "websockify to listen",
        Duration::from_secs(10),
        async || {
            proc.check_alive()?;
            Ok(listening(ws_addr).await.then_some(()))
        },
    )
    .await?;
    Ok((proc, format!("ws://{ws_addr}/")))
}

/// A config that allows exactly what the agent needs: public-key login and remote forwards bound
/// on loopback, with the benchmark's cipher only.
fn sshd_config(port: u16, host_key: &Path, authorized: &Path, cipher: &str) -> String {
    format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {}\n\
         AuthorizedKeysFile {}\n\
         PidFile none\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         GatewayPorts no\n\
         AllowTcpForwarding remote\n\
         AllowAgentForwarding no\n\
         X11Forwarding no\n\
         PermitTTY no\n\
         UseDNS no\n\
         PrintMotd no\n\
         MaxStartups 200:30:400\n\
         Ciphers {cipher}\n\
         LogLevel ERROR\n",
        host_key.display(),
        authorized.display(),
    )
}
