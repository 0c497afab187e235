//! A throwaway PostgreSQL for tests that run the broker on it ([`TestPostgres`]).
//!
//! When the test command started one (`scripts/test.sh` exports `PASSERELLE_TEST_PG`, see
//! `scripts/lib/postgres.sh`), tests share it, each in a database of its own. Otherwise
//! [`TestPostgres::start`] makes one for the test: `initdb` in a temp dir (as `nobody` when the
//! tests run as root, which PostgreSQL refuses), `pg_ctl start` on a port chosen by the OS on
//! 127.0.0.1, trust authentication; it is stopped and deleted when the handle drops.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use tempfile::TempDir;

/// The environment variable naming a running test server, `postgres://user@host:port`.
pub const ENV: &str = "PASSERELLE_TEST_PG";

/// A PostgreSQL server for a test: the shared one, or one of its own.
pub struct TestPostgres {
    base: String,
    own: Option<OwnServer>,
}

struct OwnServer {
    dir: TempDir,
    bin: PathBuf,
    as_nobody: bool,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // `immediate`: a test server's data is thrown away anyway.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

impl OwnServer {
    /// `bin/NAME`, run as `nobody` when we are root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

/// Where Debian installs the server's programs.
fn server_bin() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (scripts/install-test-deps.sh installs it)")?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no /usr/lib/postgresql/*/bin/initdb (scripts/install-test-deps.sh)")
}

async fn run(cmd: Command, what: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(crate::WAIT * 4, cmd.output())
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TestPostgres {
    /// The shared server when `PASSERELLE_TEST_PG` is set, else a new one.
    pub async fn start() -> Result<Self> {
        if let Some(base) = std::env::var(ENV).ok().filter(|s| !s.is_empty()) {
            return Ok(Self { base, own: None });
        }
        Self::start_own().await
    }

    /// A new server for this test only; how long its start took is logged.
    pub async fn start_own() -> Result<Self> {
        Self::start_own_with("").await
    }

    /// [`Self::start_own`] with extra server settings, e.g. `-c max_connections=300` (the
    /// benchmark's three nodes with full pools need more than the default 100).
    pub async fn start_own_with(settings: &str) -> Result<Self> {
        let started = Instant::now();
        let bin = server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("passerelle-pg-")
            .tempdir()?;
        let as_nobody = std::fs::metadata(dir.path())?.uid() == 0;
        if as_nobody {
            let mut chown = Command::new("chown");
            chown.arg("nobody").arg(dir.path());
            run(chown, "chown nobody").await?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let server = OwnServer {
            dir,
            bin,
            as_nobody,
        };
        let data = server.dir.path().join("data");
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "passerelle",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]);
        run(initdb, "initdb").await?;
        let mut start = server.command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(server.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
                 -c fsync=off {settings}",
                server.dir.path().display()
            ))
            .arg("start");
        if let Err(e) = run(start, "pg_ctl start").await {
            let log =
                std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default();
            bail!("{e:#}\nserver log:\n{log}");
        }
        eprintln!(
            "a PostgreSQL test server started in {:.1} s on port {port}",
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            base: format!("postgres://passerelle@127.0.0.1:{port}"),
            own: Some(server),
        })
    }

    /// `postgres://user@host:port`, without a database.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A new, empty database; its URL (`createdb`, the server's own client).
    pub async fn database(&self) -> Result<String> {
        let name = crate::unique("passerelle_e2e").replace('-', "_");
        let name = format!("{name}_{}", std::process::id());
        let hostport = self
            .base
            .rsplit_once('@')
            .map(|(_, h)| h)
            .context("the test server's URL has no user@")?;
        let (host, port) = hostport.rsplit_once(':').context("no port")?;
        let mut createdb = Command::new(server_bin()?.join("createdb"));
        createdb.args(["-h", host, "-p", port, "-U", "passerelle", &name]);
        run(createdb, "createdb").await?;
        Ok(format!("{}/{name}", self.base))
    }

    /// The data directory of a server this handle started.
    pub fn own_dir(&self) -> Option<&Path> {
        self.own.as_ref().map(|s| s.dir.path())
    }
}
