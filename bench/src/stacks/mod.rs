//! The stacks under test and the processes they are made of.
//!
//! [`openssh`] is the baseline: OpenSSH's sshd receiving `ssh -R` from a stock OpenSSH agent, with
//! websockify in front of the forwarded port. [`passerelle`] is the broker binary with the same
//! OpenSSH agent. Every process is spawned in its own process group and killed with its whole
//! group when its [`Proc`] is dropped, so that no sshd child or websockify worker outlives a run.

pub mod openssh;
pub mod passerelle;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::service::BANNER;

/// A child process that is the leader of its own process group.
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed, stderr (and stdout unless the caller set it) appended to
    /// `log`.
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null());
        Self::spawn_inner(name, cmd, log, pipe_stdout)
    }

    /// [`Self::spawn`] with stdin and stdout piped (a process driven by commands on stdin).
    pub fn spawn_with_stdin(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::piped());
        Self::spawn_inner(name, cmd, log, true)
    }

    fn spawn_inner(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        let child = cmd
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails with the end of the log if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGKILL to the whole group, then reaps the leader (bounded).
    pub async fn kill(&mut self) {
        self.signal_group();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    fn signal_group(&self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            // ESRCH (already gone) is fine.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The leader is reaped by tokio (kill_on_drop); the group signal also reaches its children.
        self.signal_group();
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The distinct WARN and ERROR messages of a broker log with their counts (most frequent
/// first, at most five), or `None` if there are none.
pub fn log_summary(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let Some(pos) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
            continue;
        };
        let msg = message_of(line[pos..].trim());
        match counts.iter_mut().find(|(m, _)| *m == msg) {
            Some((_, c)) => *c += 1,
            None => counts.push((msg, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let shown: Vec<String> = counts
        .iter()
        .take(5)
        .map(|(m, c)| format!("{c}× `{m}`"))
        .collect();
    (!shown.is_empty()).then(|| shown.join("; "))
}

/// A tracing line without its spans and fields, except `error=`: "WARN target: text error=...".
fn message_of(line: &str) -> String {
    let mut parts = line.split(": ");
    let level = parts
        .next()
        .unwrap_or_default()
        .split(' ')
        .next()
        .unwrap_or_default();
    // Skip spans (`agent{peer=...}`) up to the target (`passerelle::ssh`).
    let mut rest: Vec<&str> = parts.collect();
    if let Some(i) = rest
        .iter()
        .position(|p| p.contains("::") && !p.contains(' '))
    {
        rest.drain(..=i);
    }
    let text = rest.join(": ");
    let mut keep = true;
    let mut out = vec![level];
    for token in text.split(' ') {
        if token.contains('=') {
            keep = token.starts_with("error=");
        }
        if keep {
            out.push(token);
        }
    }
    out.join(" ").chars().take(160).collect()
}

/// A port that was free a moment ago on 127.0.0.1 (bind port 0, read it, release it). Another
/// process could take it before ours binds it; on a quiet benchmark machine that race is rare,
/// and a lost race shows as a start-up error, not as a wrong figure.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `f` every 20 ms until it yields `Some`, for at most `limit`.
pub async fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a TCP connection to `addr` gets the service's banner: the tunnel leads to the service.
pub async fn banner_reachable(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut b = [0u8; BANNER.len()];
        s.read_exact(&mut b).await?;
        // The bench's own service, or a VNC server's version line (the screen benchmark).
        anyhow::Ok(&b == BANNER || b.starts_with(b"RFB "))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// Whether something accepts TCP connections on `addr`.
pub async fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_ok()
}

/// `ssh-keygen -t ed25519` without passphrase; returns the public key line.
pub async fn keygen(path: &Path, comment: &str) -> anyhow::Result<String> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running ssh-keygen (install openssh-client)")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))?;
    Ok(public.trim().to_owned())
}

/// Writes an ed25519 key pair as OpenSSH files (`path`, mode 0600, and `path.pub`) without
/// running `ssh-keygen`: a hundred agents need a hundred keys. The key is derived from `tag` and
/// `index` (a benchmark key protects nothing), so distinct (tag, index) pairs give distinct keys.
/// Returns the public key line.
pub fn write_key(path: &Path, tag: u8, index: usize) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::LineEnding;
    use russh::keys::ssh_key::private::Ed25519Keypair;

    let mut seed = [0x5bu8; 32];
    seed[0] = tag;
    seed[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let private = key.to_openssh(LineEnding::LF)?;
    let public = key.public_key().to_openssh()?;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(path.with_extension("pub"), format!("{public}\n"))?;
    Ok(public)
}

/// What a stock OpenSSH agent needs to open one remote forward.
#[derive(Clone)]
pub struct AgentSpec {
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub cipher: String,
    pub port: u16,
    pub user: String,
    /// The `-R` argument, e.g. `vnc:0:127.0.0.1:5900`.
    pub forward: String,
    /// `-v`: the log then shows the negotiated algorithms (see [`negotiated_cipher`]).
    pub verbose: bool,
    /// Extra `-o` options (e.g. `RekeyLimit=512M`).
    pub options: Vec<String>,
}

/// The ciphers OpenSSH's `-v` log says were negotiated, e.g. "aes128-gcm@openssh.com both ways".
pub fn negotiated_cipher(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let find = |dir: &str| {
        text.lines()
            .find_map(|l| l.split_once(&format!("kex: {dir} cipher: ")))
            .and_then(|(_, r)| r.split_whitespace().next())
            .map(str::to_owned)
    };
    match (find("server->client")?, find("client->server")?) {
        (a, b) if a == b => Some(format!("{a} both ways")),
        (a, b) => Some(format!("{a} server->client, {b} client->server")),
    }
}

/// Starts `ssh -N -R ...` as the agent, with no user or system configuration involved.
pub fn spawn_agent(spec: &AgentSpec, log: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-N",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ExitOnForwardFailure=yes",
    ])
    .args([
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .args([
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .args(["-o", "IdentityAgent=none"])
    .args(spec.verbose.then_some("-v"))
    .args(spec.options.iter().flat_map(|o| ["-o", o]))
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", spec.known_hosts.display()))
    .arg("-i")
    .arg(&spec.key)
    .args([
        "-c",
        &spec.cipher,
        "-p",
        &spec.port.to_string(),
        "-R",
        &spec.forward,
    ])
    .arg(format!("{}@127.0.0.1", spec.user));
    Proc::spawn("ssh agent", &mut cmd, log, false)
}

#[cfg(test)]
mod tests {
    use super::message_of;

    #[test]
    fn log_messages_lose_spans_and_fields_but_keep_errors() {
        assert_eq!(
            message_of(
                "WARN agent{peer=127.0.0.8:60905}: passerelle::ssh: agent connection ended \
                 agent=load-01191 error=Pending buffer limit reached"
            ),
            "WARN agent connection ended error=Pending buffer limit reached"
        );
        assert_eq!(
            message_of(
                "ERROR axum::serve::listener: accept error: Too many open files (os error 24)"
            ),
            "ERROR accept error: Too many open files (os error 24)"
        );
    }
}
