//! [`Sshd`]: the workstation's real OpenSSH server for the terminal tests, started by the test
//! on a free port of 127.0.0.1 with its own configuration, host key and `authorized_keys` in a
//! temporary directory. It lets in the test user [`TEST_USER`] only (created, with a random
//! password kept in [`PASSWORD_FILE`], by `scripts/install-test-deps.sh`; tests run as root,
//! as sshd must).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, bail, ensure};
use tempfile::TempDir;
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::WAIT;
use crate::desktop::{free_port, wait_listening};

/// The workstation user the terminal tests log in as.
pub const TEST_USER: &str = "passerelle-term";
/// Where the install script keeps that user's password (root only).
pub const PASSWORD_FILE: &str = "/var/lib/passerelle-tests/term-password";
const SSHD: &str = "/usr/sbin/sshd";

/// The test user's password.
pub fn test_user_password() -> Result<String> {
    let text = std::fs::read_to_string(PASSWORD_FILE).with_context(|| {
        format!("reading {PASSWORD_FILE}: run scripts/install-test-deps.sh as root")
    })?;
    Ok(text.trim().to_owned())
}

/// Whether this machine can run the terminal tests' sshd (root, sshd, the test user).
pub fn check_ready() -> Result<()> {
    ensure!(
        Path::new(SSHD).exists(),
        "{SSHD} missing: run scripts/install-test-deps.sh"
    );
    ensure!(
        nix_is_root(),
        "the terminal tests start sshd, which needs root (CI runs them as root)"
    );
    test_user_password()?;
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A running sshd.
pub struct Sshd {
    pub port: u16,
    dir: TempDir,
    _child: Child,
    log: Arc<Mutex<String>>,
    /// The host key's public line, `ssh-ed25519 AAAA...`.
    pub host_key: String,
}

/// How the sshd is set up.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Allow password authentication.
    pub passwords: bool,
    /// Lines of `authorized_keys` (e.g. the tenant's key with `from="127.0.0.1,::1"`).
    pub authorized_keys: Vec<String>,
}

async fn keygen(path: &Path) -> Result<()> {
    let out = timeout(
        WAIT,
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("ssh-keygen timed out")??;
    ensure!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Sshd {
    /// Starts sshd with a fresh host key.
    pub async fn start(opts: &SshdOptions) -> Result<Self> {
        check_ready()?;
        let dir = tempfile::Builder::new()
            .prefix("passerelle-sshd-")
            .tempdir()?;
        // sshd reads authorized_keys as the test user: the directory must be readable to it.
        set_mode(dir.path(), 0o755)?;
        keygen(&dir.path().join("host_ed25519")).await?;
        Self::start_in(dir, opts).await
    }

    async fn start_in(dir: TempDir, opts: &SshdOptions) -> Result<Self> {
        // Privilege separation needs this directory (it may not exist in a container).
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let keys = dir.path().join("authorized_keys");
        std::fs::write(&keys, opts.authorized_keys.join("\n") + "\n")?;
        set_mode(&keys, 0o644)?;
        let host_key = std::fs::read_to_string(dir.path().join("host_ed25519.pub"))?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        // A free port can be taken between its probe and sshd's bind: try a few.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let config = config(dir.path(), port, opts.passwords);
            let path = dir.path().join("sshd_config");
            std::fs::write(&path, config)?;
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting sshd")?;
            let log = Arc::new(Mutex::new(String::new()));
            let mut pipe = child.stderr.take().context("sshd stderr")?;
            let sink = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                    sink.lock()
                        .expect("sshd log")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            match wait_listening(port, &mut child, "sshd").await {
                Ok(()) => {
                    return Ok(Self {
                        port,
                        dir,
                        _child: child,
                        log,
                        host_key,
                    });
                }
                Err(e) => last = Some(format!("{e:#}: {}", log.lock().expect("log"))),
            }
        }
        bail!("sshd did not start: {}", last.unwrap_or_default())
    }

    /// The host key's SHA256 fingerprint, as `ssh-keygen -l` prints it.
    pub async fn fingerprint(&self) -> Result<String> {
        let out = timeout(
            WAIT,
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.dir.path().join("host_ed25519.pub"))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("ssh-keygen timed out")??;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("ssh-keygen -l said {text:?}"))
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("sshd log").clone()
    }

    /// A file under sshd's directory, readable by the test user (e.g. big test data).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// Sets a file's or directory's mode.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn config(dir: &Path, port: u16, passwords: bool) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {dir}/host_ed25519\n\
         PidFile none\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         StrictModes no\n\
         UsePAM no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication {pw}\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin no\n\
         AllowUsers {TEST_USER}\n\
         MaxAuthTries 6\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         LogLevel VERBOSE\n",
        dir = dir.display(),
        pw = yes(passwords),
    )
}
