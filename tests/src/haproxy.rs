//! [`TestHaproxy`]: Debian's HAProxy in front of a cluster's nodes, in the shape of the
//! deployment the README shows (`docs/haproxy.cfg`): a TCP frontend for the agents' SSH that
//! sends a PROXY protocol v2 header to each node, and a TCP frontend that passes the operators'
//! HTTPS through to the nodes untouched (TLS ends on the nodes, which share one certificate).
//! Health checks (the node's SSH banner behind a PROXY header; `GET /healthz` over TLS) take a
//! dead node out of rotation within about two seconds.
//!
//! HAProxy cannot listen on port 0: its ports are reserved by binding `127.0.0.1:0` and
//! releasing, and a start that loses the race for one is retried with new ports. Its stats
//! socket (in its temp dir) tells when it is ready, which servers are up and how many
//! connections each holds.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::{POLL, WAIT};

/// The backend of the agents' SSH frontend.
pub const SSH_BACKEND: &str = "passerelle_ssh";
/// The backend of the operators' HTTPS frontend.
pub const HTTPS_BACKEND: &str = "passerelle_https";

/// One node behind the load balancer.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Its server name in HAProxy (the node's name).
    pub name: String,
    /// Its SSH listener.
    pub ssh: SocketAddr,
    /// Its HTTPS listener.
    pub https: SocketAddr,
}

/// Connections HAProxy takes at once by default (a test's handful of agents and viewers).
pub const DEFAULT_MAXCONN: u32 = 4096;

/// HAProxy's configuration for `backends`, listening on 127.0.0.1:`ssh_port` (agents) and
/// 127.0.0.1:`https_port` (operators), with its stats socket at `socket`; health checks of
/// HTTPS verify the nodes' certificate against `ca_file`; at most `maxconn` client connections
/// (HAProxy, started as root, raises its own open-files limit to match).
pub fn config(
    backends: &[Backend],
    ssh_port: u16,
    https_port: u16,
    socket: &Path,
    ca_file: &Path,
    maxconn: u32,
) -> String {
    let mut ssh = String::new();
    let mut https = String::new();
    for b in backends {
        let _ = writeln!(ssh, "    server {} {}", b.name, b.ssh);
        let _ = writeln!(https, "    server {} {}", b.name, b.https);
    }
    format!(
        "global\n\
         \x20   maxconn {maxconn}\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   maxconn {maxconn}\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout check 2s\n\
         \x20   retries 2\n\
         \x20   option redispatch\n\
         \n\
         frontend agents_ssh\n\
         \x20   bind 127.0.0.1:{ssh_port}\n\
         \x20   default_backend {SSH_BACKEND}\n\
         \n\
         backend {SSH_BACKEND}\n\
         \x20   balance leastconn\n\
         \x20   option tcp-check\n\
         \x20   tcp-check expect string SSH-2.0-
\
         \x20   default-server send-proxy-v2 check check-send-proxy inter 1s fall 2 rise 2\n\
         {ssh}\
         \n\
         frontend operators_https\n\
         \x20   bind 127.0.0.1:{https_port}\n\
         \x20   default_backend {HTTPS_BACKEND}\n\
         \n\
         backend {HTTPS_BACKEND}\n\
         \x20   balance leastconn\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost\n\
         \x20   http-check expect status 200\n\
         \x20   default-server check check-ssl verify required ca-file {ca} inter 1s fall 2 rise 2\n\
         {https}",
        socket = socket.display(),
        ca = ca_file.display(),
    )
}

/// One server's line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    /// Connections it holds now (`scur`).
    pub current: u64,
    /// `UP`, `DOWN`, `UP 1/2`, `no check`...
    pub status: String,
    /// The last check's result: `L7OK`, `L4CON`, `L7STS`... (HAProxy counts a server up
    /// before its first check: `UP` alone says nothing yet.)
    pub check: String,
}

/// A running HAProxy, killed (and its files removed) when dropped.
pub struct TestHaproxy {
    /// Where agents connect (127.0.0.1).
    pub ssh_port: u16,
    /// Where operators connect (127.0.0.1).
    pub https_port: u16,
    socket: PathBuf,
    child: Child,
    dir: TempDir,
}

impl TestHaproxy {
    /// Starts HAProxy in front of `backends` and waits until it answers on its stats socket.
    pub async fn start(backends: &[Backend], ca_file: &Path) -> Result<Self> {
        Self::start_with_maxconn(backends, ca_file, DEFAULT_MAXCONN).await
    }

    /// [`Self::start`] taking up to `maxconn` client connections (the benchmark's 10,000 idle
    /// agents).
    pub async fn start_with_maxconn(
        backends: &[Backend],
        ca_file: &Path,
        maxconn: u32,
    ) -> Result<Self> {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(backends, ca_file, maxconn, None).await? {
                Ok(started) => return Ok(started),
                // Another process took a reserved port between its release and HAProxy's bind.
                Err(log) if log.contains("cannot bind socket") => last = log,
                Err(log) => bail!("haproxy did not start:\n{log}"),
            }
        }
        bail!("haproxy lost its ports five times; last:\n{last}")
    }

    /// Another HAProxy process with the same configuration on the same ports: HAProxy binds
    /// with `SO_REUSEPORT`, so the kernel spreads new connections over both. For more
    /// connections than one process's open-files limit allows (two files per connection).
    pub async fn start_sibling(
        &self,
        backends: &[Backend],
        ca_file: &Path,
        maxconn: u32,
    ) -> Result<Self> {
        let ports = (self.ssh_port, self.https_port);
        Self::try_start(backends, ca_file, maxconn, Some(ports))
            .await?
            .map_err(|log| anyhow::anyhow!("a second haproxy did not start:\n{log}"))
    }

    /// One attempt, on `ports` or on new ones: `Ok(Err(log))` when HAProxy exited during its
    /// start.
    async fn try_start(
        backends: &[Backend],
        ca_file: &Path,
        maxconn: u32,
        ports: Option<(u16, u16)>,
    ) -> Result<Result<Self, String>> {
        let dir = tempfile::Builder::new()
            .prefix("passerelle-haproxy-")
            .tempdir()?;
        let (ssh_port, https_port) = match ports {
            Some(ports) => ports,
            None => {
                let a = std::net::TcpListener::bind("127.0.0.1:0")?;
                let b = std::net::TcpListener::bind("127.0.0.1:0")?;
                (a.local_addr()?.port(), b.local_addr()?.port())
            }
        };
        let socket = dir.path().join("admin.sock");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(
            &path,
            config(backends, ssh_port, https_port, &socket, ca_file, maxconn),
        )?;
        let log_path = dir.path().join("haproxy.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting haproxy (scripts/install-test-deps.sh installs it)")?;
        let mut started = Self {
            ssh_port,
            https_port,
            socket,
            child,
            dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if started.command("show info").await.is_ok() {
                return Ok(Ok(started));
            }
            if let Some(status) = started.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Ok(Err(format!("haproxy exited ({status}):\n{log}")));
            }
            if Instant::now() >= deadline {
                bail!("haproxy's stats socket never answered:\n{}", started.log());
            }
            sleep(POLL).await;
        }
    }

    /// What HAProxy wrote (warnings, alerts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The configuration it runs.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.cfg")).unwrap_or_default()
    }

    /// Where agents connect.
    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ssh_port))
    }

    /// Where operators connect.
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.https_port))
    }

    /// One command on the stats socket; its whole answer.
    pub async fn command(&self, command: &str) -> Result<String> {
        let exchange = async {
            let mut s = UnixStream::connect(&self.socket).await?;
            s.write_all(format!("{command}\n").as_bytes()).await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            anyhow::Ok(out)
        };
        timeout(Duration::from_secs(5), exchange)
            .await
            .with_context(|| format!("haproxy {command:?} timed out"))?
    }

    /// Every backend server's connections and status.
    pub async fn servers(&self) -> Result<Vec<ServerStat>> {
        let csv = self.command("show stat").await?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .with_context(|| format!("no header in show stat: {csv}"))?
            .split(',')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .with_context(|| format!("no {name} column in show stat"))
        };
        let (px, sv, scur, status) = (col("pxname")?, col("svname")?, col("scur")?, col("status")?);
        let check = col("check_status")?;
        let mut out = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or_default();
            if matches!(field(sv), "FRONTEND" | "BACKEND") {
                continue;
            }
            out.push(ServerStat {
                backend: field(px).to_owned(),
                server: field(sv).to_owned(),
                current: field(scur).parse().unwrap_or(0),
                status: field(status).to_owned(),
                check: field(check).to_owned(),
            });
        }
        Ok(out)
    }

    /// The servers of `backend` that hold at least one connection now.
    pub async fn busy(&self, backend: &str) -> Result<Vec<String>> {
        Ok(self
            .servers()
            .await?
            .into_iter()
            .filter(|s| s.backend == backend && s.current > 0)
            .map(|s| s.server)
            .collect())
    }

    /// Polls until `done` holds for the servers' stats, within `within`.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[ServerStat]) -> bool,
    ) -> Result<Vec<ServerStat>> {
        let deadline = Instant::now() + within;
        loop {
            let servers = self.servers().await?;
            if done(&servers) {
                return Ok(servers);
            }
            if Instant::now() >= deadline {
                bail!("haproxy: never {what} within {within:?}: {servers:#?}");
            }
            sleep(POLL).await;
        }
    }

    /// Waits until every server of both backends is up after passing its health check.
    pub async fn wait_all_up(&self) -> Result<()> {
        self.wait_until("all servers up", WAIT, |s| {
            !s.is_empty()
                && (s.iter()).all(|s| {
                    s.status == "UP" && s.check.starts_with('L') && s.check.ends_with("OK")
                })
        })
        .await
        .map(drop)
    }
}
