//! Real RDP servers for the RDP tests: FreeRDP's shadow server sharing an Xvfb display (TLS,
//! NLA with a SAM file from `winpr-hash`, or standard RDP security only), and xrdp with its Xorg
//! backend logging a local user on. Each server gets a fresh directory, so a fresh self-signed
//! certificate; children are killed on drop. Pages are driven by `tests/browser/rdp.mjs`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail, ensure};
use tokio::process::{Child, Command};

use crate::desktop::{XDisplay, free_port, wait_listening};

/// What the shadow server offers.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS only; any credentials are accepted (`-auth`).
    Tls,
    /// NLA only (CredSSP); this account alone gets in.
    Nla { user: String, password: String },
    /// Standard RDP security only: a server that refuses TLS.
    RdpOnly,
}

/// `freerdp-shadow-cli` sharing an Xvfb display on `127.0.0.1:port`.
pub struct ShadowServer {
    pub port: u16,
    dir: tempfile::TempDir,
    _child: Child,
}

impl ShadowServer {
    /// Starts it on `display`.
    pub async fn start(display: &XDisplay, security: Security) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cmd = Command::new("freerdp-shadow-cli");
        cmd.arg(format!("/port:{port}"))
            .arg("/bind-address:127.0.0.1")
            .env("DISPLAY", display.name())
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("shadow.log"))?)
            .kill_on_drop(true);
        match &security {
            Security::Tls => {
                cmd.args(["/sec:tls", "-auth"]);
            }
            Security::Nla { user, password } => {
                let out = Command::new("winpr-hash")
                    .args(["-u", user, "-p", password, "-f", "sam"])
                    .output()
                    .await
                    .context("winpr-hash")?;
                ensure!(out.status.success(), "winpr-hash failed");
                let sam = dir.path().join("sam");
                std::fs::write(&sam, &out.stdout)?;
                cmd.arg("/sec:nla")
                    .arg(format!("/sam-file:{}", sam.display()));
            }
            Security::RdpOnly => {
                cmd.args(["/sec:rdp", "-auth"]);
            }
        }
        let mut child = cmd.spawn().context("starting freerdp-shadow-cli")?;
        wait_listening(port, &mut child, "freerdp-shadow-cli").await?;
        Ok(Self {
            port,
            dir,
            _child: child,
        })
    }

    /// The SHA-256 (hex) of the certificate it presents.
    pub async fn certificate_sha256(&self) -> Result<String> {
        let pem = self.dir.path().join("config/freerdp/shadow/shadow.crt");
        der_sha256(&pem).await
    }

    /// What it logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shadow.log")).unwrap_or_default()
    }
}

/// SHA-256 (lowercase hex) of a PEM certificate's DER form, by `openssl`.
async fn der_sha256(pem: &Path) -> Result<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .await
        .context("openssl")?;
    ensure!(out.status.success(), "openssl x509 on {}", pem.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split('=')
        .nth(1)
        .context("no fingerprint in openssl's output")?;
    Ok(hex.trim().replace(':', "").to_ascii_lowercase())
}

/// The local account xrdp logs on: created once, given a fresh random password by each server.
pub const XRDP_USER: &str = "passerelle-rdp";

/// xrdp (TLS only) with its session manager, on `127.0.0.1:port`, for [`XRDP_USER`]: whose
/// session paints the root window `colour` and runs an xterm whose shell writes what is typed
/// to `typed`.
pub struct XrdpServer {
    pub port: u16,
    pub password: String,
    uid: u32,
    // Dropped in this order: xrdp, then its session manager, then the sessions left.
    _xrdp: Child,
    _sesman: Child,
    dir: tempfile::TempDir,
}

impl Drop for XrdpServer {
    fn drop(&mut self) {
        let _ = self._xrdp.start_kill();
        let _ = self._sesman.start_kill();
        kill_sessions(self.uid);
    }
}

/// Kills the processes of the test account (an X session sesman left, or one an earlier run
/// left behind): sesman would otherwise reconnect the next test to that session.
fn kill_sessions(uid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if owner == Some(uid) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
}

/// Whether this machine can run xrdp for the tests (root, to create the user and start
/// sessions as it).
pub fn xrdp_usable() -> bool {
    crate::desktop::have(&["xrdp", "xrdp-sesman", "useradd", "chpasswd"])
        && nix_is_root()
        && Path::new("/usr/lib/xorg/Xorg").exists()
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

async fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().await.with_context(|| what.to_owned())?;
    ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Whether xrdp's session manager listens (xrdp 0.9 binds `::1` for `127.0.0.1` when it can).
async fn sesman_listening() -> bool {
    for addr in ["[::1]:3350", "127.0.0.1:3350"] {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
    }
    false
}

impl XrdpServer {
    /// Creates the user if needed, sets a fresh password, writes its session script, and starts
    /// xrdp-sesman (unless one already listens on 3350, the port xrdp asks) and xrdp.
    pub async fn start(colour: &str, typed: &Path) -> Result<Self> {
        let exists = Command::new("id")
            .arg(XRDP_USER)
            .output()
            .await?
            .status
            .success();
        if !exists {
            run(
                Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", XRDP_USER]),
                "useradd",
            )
            .await?;
        }
        let password = format!("Xr-{}", crate::unique("pw").replace('-', ""))
            + &std::process::id().to_string();
        let mut chpasswd = Command::new("chpasswd");
        chpasswd.stdin(Stdio::piped());
        let mut child = chpasswd.spawn()?;
        {
            use tokio::io::AsyncWriteExt as _;
            let mut stdin = child.stdin.take().context("chpasswd stdin")?;
            stdin
                .write_all(format!("{XRDP_USER}:{password}\n").as_bytes())
                .await?;
        }
        ensure!(child.wait().await?.success(), "chpasswd failed");
        let home = PathBuf::from(format!("/home/{XRDP_USER}"));
        let script = format!(
            "#!/bin/sh\nxsetroot -solid '{colour}'\nexec xterm -geometry 40x8+200+180 -e sh -c \"cat > '{}'\"\n",
            typed.display()
        );
        std::fs::write(home.join(".xsession"), script)?;
        run(
            Command::new("chmod")
                .args(["755"])
                .arg(home.join(".xsession")),
            "chmod",
        )
        .await?;
        // The typed file's directory must be writable by the user.
        if let Some(parent) = typed.parent() {
            run(Command::new("chmod").arg("777").arg(parent), "chmod").await?;
        }

        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=xrdp-test",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req",
        )
        .await?;
        let ini = std::fs::read_to_string("/etc/xrdp/xrdp.ini")?
            .replace("security_layer=negotiate", "security_layer=tls")
            .replace(
                "certificate=\n",
                &format!("certificate={}\n", cert.display()),
            )
            .replace("key_file=\n", &format!("key_file={}\n", key.display()))
            .replace(
                "LogFile=xrdp.log",
                &format!("LogFile={}", dir.path().join("xrdp.log").display()),
            );
        ensure!(
            ini.contains("security_layer=tls"),
            "unexpected /etc/xrdp/xrdp.ini"
        );
        let ini_path = dir.path().join("xrdp.ini");
        std::fs::write(&ini_path, ini)?;

        // xrdp finds its session manager on port 3350 (from /etc/xrdp/sesman.ini); ours ends a
        // session when its client disconnects, so that no X session outlives its test.
        let sesman_ini = std::fs::read_to_string("/etc/xrdp/sesman.ini")?
            .replace("KillDisconnected=false", "KillDisconnected=true")
            .replace(
                "LogFile=xrdp-sesman.log",
                &format!("LogFile={}", dir.path().join("sesman.log").display()),
            );
        let sesman_path = dir.path().join("sesman.ini");
        std::fs::write(&sesman_path, sesman_ini)?;
        ensure!(
            !sesman_listening().await,
            "an xrdp-sesman already listens on port 3350; the xrdp test needs its own (stop it)"
        );
        let uid: u32 = String::from_utf8(
            Command::new("id")
                .args(["-u", XRDP_USER])
                .output()
                .await?
                .stdout,
        )?
        .trim()
        .parse()?;
        kill_sessions(uid);
        let sesman = {
            std::fs::create_dir_all("/run/xrdp/sockdir")?;
            let mut s = Command::new("xrdp-sesman")
                .arg("--nodaemon")
                .arg("--config")
                .arg(&sesman_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting xrdp-sesman")?;
            let deadline = tokio::time::Instant::now() + crate::WAIT;
            while !sesman_listening().await {
                if let Some(status) = s.try_wait()? {
                    bail!("xrdp-sesman exited ({status})");
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "xrdp-sesman did not listen in time: {}",
                    std::fs::read_to_string(dir.path().join("sesman.log")).unwrap_or_default()
                );
                tokio::time::sleep(crate::POLL).await;
            }
            s
        };
        let mut xrdp = Command::new("xrdp")
            .arg("--nodaemon")
            .arg("--port")
            .arg(port.to_string())
            .arg("--config")
            .arg(&ini_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("xrdp.stderr"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting xrdp")?;
        if let Err(e) = wait_listening(port, &mut xrdp, "xrdp").await {
            bail!(
                "{e}: {}",
                std::fs::read_to_string(dir.path().join("xrdp.stderr")).unwrap_or_default()
            );
        }
        Ok(Self {
            port,
            password,
            uid,
            _xrdp: xrdp,
            _sesman: sesman,
            dir,
        })
    }

    /// xrdp's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("xrdp.log")).unwrap_or_default()
    }
}

/// A width and a height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

/// What the RDP page showed (see `tests/browser/rdp.mjs`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RdpPage {
    pub state: Option<String>,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    /// The text of the page's notice, once it shows one.
    pub notice: Option<String>,
    /// What the page made of IronRDP's error, and IronRDP's error kind.
    pub error: Option<String>,
    pub error_kind: Option<u8>,
    /// A script error or a driver failure.
    pub page_error: Option<String>,
    pub dominant: Option<Vec<u8>>,
    pub desktop: Option<Size>,
    pub resized: Option<Size>,
    pub login_shown: bool,
    pub recorded_badge: bool,
    pub target: Option<String>,
    /// When (ms since the epoch) the page was asked to load.
    pub navigated_at: Option<u64>,
    /// When (ms since the epoch) the canvas first showed something other than black (polled
    /// every 20 ms).
    pub first_frame_at: Option<u64>,
    #[serde(default)]
    pub console: Vec<String>,
}

impl RdpPage {
    /// Whether the remote desktop's dominant colour is `colour` (within 12 per channel).
    pub fn shows(&self, colour: (u8, u8, u8)) -> bool {
        crate::desktop::shows(self.dominant.as_deref(), colour)
    }

    /// Whether the page reached the workstation's desktop.
    pub fn connected(&self) -> bool {
        self.state.as_deref() == Some("connected")
    }
}

/// Opens an RDP viewer URL in headless Chromium; `args` as `rdp.mjs` takes them.
pub async fn open_rdp(url: &str, screenshot: &Path, args: &[&str]) -> Result<RdpPage> {
    crate::desktop::run_page_script("rdp.mjs", url, screenshot, args).await
}
