//! The `passerelle` binary as a separate process: built once per test process, started with
//! `serve`, its banner read from stdout and its logs (stderr) kept, killed with SIGKILL or
//! stopped with SIGTERM. Used by tests that must crash the broker for real.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context as _, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

use crate::WAIT;

/// The `passerelle` binary of this build profile: `target/<profile>/passerelle`, next to the
/// `deps/` directory the test runs from. It belongs to another package, so `cargo test` does
/// not build it: this runs `cargo build --workspace --bin passerelle` once per test process (a
/// no-op when it is fresh, e.g. after `scripts/test.sh` has built it).
/// `PASSERELLE_BIN` overrides all of this.
pub fn passerelle_bin() -> Result<PathBuf> {
    passerelle_bin_cell()
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Makes [`passerelle_bin`] answer `bin` from now on, without building (the benchmark harness
/// passes its `--passerelle-bin`); an error if it was already decided.
pub fn use_passerelle_bin(bin: PathBuf) -> Result<()> {
    let chosen = bin.clone();
    let got = passerelle_bin_cell().get_or_init(|| Ok(chosen));
    ensure!(
        got.as_ref().is_ok_and(|b| *b == bin),
        "the passerelle binary was already chosen: {got:?}"
    );
    Ok(())
}

fn passerelle_bin_cell() -> &'static OnceLock<Result<PathBuf, String>> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    &BUILT
}

fn build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PASSERELLE_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test exe has no profile dir")?;
    let target_dir = profile_dir.parent().context("profile dir has no parent")?;
    let mut cargo = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    // `--workspace` resolves features as `cargo test --workspace` does, so this build reuses
    // the dependencies the tests were built with.
    cargo.args([
        "build",
        "--quiet",
        "--workspace",
        "--bin",
        "passerelle",
        "--target-dir",
    ]);
    cargo.arg(target_dir).current_dir(crate::manifest_dir());
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(other) => {
            cargo.args(["--profile", other]);
        }
        None => bail!("odd profile dir {}", profile_dir.display()),
    }
    let out = cargo
        .output()
        .context("running cargo build for the passerelle binary")?;
    ensure!(
        out.status.success(),
        "cargo build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir.join("passerelle");
    ensure!(bin.exists(), "{} missing after cargo build", bin.display());
    Ok(bin)
}

/// What a `passerelle` subcommand left.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `passerelle ARGS...` to completion with extra environment variables, bounded (3 min:
/// exports of a recording in a debug build take a while); the binary is built first if needed.
pub async fn run_cli(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Result<CliOutput> {
    let bin = tokio::task::spawn_blocking(passerelle_bin).await??;
    let out = timeout(
        std::time::Duration::from_secs(180),
        Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("passerelle {args:?} did not finish in 3 minutes"))??;
    Ok(CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// What `passerelle serve` printed on stdout.
#[derive(Debug, Clone)]
pub struct Banner {
    /// Printed on a first start only.
    pub admin_key: Option<String>,
    /// `host:port` of the SSH listener.
    pub ssh: String,
    /// Base URL of the HTTP listener.
    pub http: String,
    /// `SHA256:...` of the host key.
    pub fingerprint: String,
}

/// A running `passerelle serve`, killed when dropped.
pub struct BrokerProcess {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    /// Reads stderr until the pipe closes.
    reader: tokio::task::JoinHandle<()>,
}

impl BrokerProcess {
    /// `passerelle serve --data-dir DATA_DIR ARGS...`, up to its banner.
    pub async fn serve(data_dir: &Path, args: &[&str]) -> Result<(Self, Banner)> {
        Self::serve_with_env(data_dir, args, &[]).await
    }

    /// [`Self::serve`] with extra environment variables (e.g. `RUST_LOG`).
    pub async fn serve_with_env(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(Self, Banner)> {
        let mut cmd = Command::new(passerelle_bin()?);
        cmd.arg("serve").arg("--data-dir").arg(data_dir).args(args);
        cmd.envs(env.iter().copied());
        Self::spawn(cmd).await
    }

    /// Runs `cmd` (a `passerelle serve` command line of the caller's: another binary, e.g.
    /// the Debian package's, or `--config` alone) up to its banner.
    pub async fn spawn(mut cmd: Command) -> Result<(Self, Banner)> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning passerelle serve")?;
        // Logs go to stderr; keep the pipe drained so that logging never blocks the broker.
        let mut pipe = child.stderr.take().context("stderr")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut serve = Self {
            child,
            stdout,
            stderr,
            reader,
        };
        let banner = serve.banner().await?;
        Ok((serve, banner))
    }

    async fn banner(&mut self) -> Result<Banner> {
        let mut line = self.line().await?;
        let mut admin_key = None;
        if let Some(rest) = line.strip_prefix("admin API key (tenant default, shown once, also in ")
        {
            let (_, key) = rest
                .rsplit_once(": ")
                .context("admin key line without the key")?;
            admin_key = Some(key.trim().to_owned());
            line = self.line().await?;
        }
        let ssh = line
            .strip_prefix("ssh listening on ")
            .context(line.clone())?
            .to_owned();
        let line = self.line().await?;
        let http = line
            .strip_prefix("http listening on ")
            .context(line.clone())?
            .to_owned();
        let line = self.line().await?;
        let fingerprint = line
            .strip_prefix("host key fingerprint: ")
            .context(line.clone())?
            .to_owned();
        Ok(Banner {
            admin_key,
            ssh,
            http,
            fingerprint,
        })
    }

    async fn line(&mut self) -> Result<String> {
        match timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!(
                "passerelle serve closed stdout (exit: {:?}); stderr:\n{}",
                self.child.try_wait(),
                self.stderr()
            ),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("passerelle serve printed nothing for {WAIT:?}"),
        }
    }

    /// The process id (none once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything the broker has logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// SIGTERM, then the exit status and everything the broker wrote to stderr (bounded).
    pub async fn terminate_with_log(self) -> Result<(ExitStatus, String)> {
        let (stderr, reader) = (Arc::clone(&self.stderr), self.reader.abort_handle());
        let status = self.signal("TERM").await?;
        // The process has exited: its stderr reaches end of file soon.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !reader.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
        Ok((status, log))
    }

    /// Sends `signal` (e.g. "HUP") and returns at once; the process keeps running.
    pub async fn send_signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("already exited")?;
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .await?;
        ensure!(kill.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Sends `signal` (e.g. "KILL", "TERM") and waits (bounded) for the exit.
    pub async fn signal(mut self, signal: &str) -> Result<ExitStatus> {
        self.send_signal(signal).await?;
        Ok(timeout(WAIT, self.child.wait())
            .await
            .with_context(|| format!("no exit after SIG{signal}"))??)
    }
}
