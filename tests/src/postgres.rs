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

impl OwnServer {
    /// Makes a CA (`DIR/ca.pem`) and a server certificate for `localhost` and 127.0.0.1 in
    /// `data`, and a `pg_hba.conf` that takes TCP connections over TLS only; the server
    /// options that turn TLS on.
    async fn tls_only(&self, data: &Path) -> Result<String> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Passerelle test PostgreSQL CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(self.dir.path().join("ca.pem"), ca.pem())?;
        let (crt, pem) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&crt, cert.pem())?;
        std::fs::write(&pem, key.serialize_pem())?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600))?;
        if self.as_nobody {
            let mut chown = Command::new("chown");
            chown
                .arg("nobody")
                .arg(&crt)
                .arg(&pem)
                .arg(data.join("pg_hba.conf"));
            run(chown, "chown nobody").await?;
        }
        Ok(format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            crt.display(),
            pem.display()
        ))
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

    /// A new server that takes TLS connections only (`hostssl` in `pg_hba.conf`), with a
    /// certificate for `localhost` and 127.0.0.1 from a CA made for it; and that CA's PEM file.
    pub async fn start_own_tls() -> Result<(Self, PathBuf)> {
        let pg = Self::start_own_inner("", true).await?;
        let ca = pg.own_dir().context("an own server")?.join("ca.pem");
        Ok((pg, ca))
    }

    /// [`Self::start_own`] with extra server settings, e.g. `-c max_connections=300` (the
    /// benchmark's three nodes with full pools need more than the default 100).
    pub async fn start_own_with(settings: &str) -> Result<Self> {
        Self::start_own_inner(settings, false).await
    }

    async fn start_own_inner(settings: &str, tls: bool) -> Result<Self> {
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
        let tls_options = if tls {
            server.tls_only(&data).await?
        } else {
            String::new()
        };
        let mut start = server.command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(server.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
                 -c fsync=off{tls_options} {settings}",
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

    /// One statement's rows, `|`-separated, through the server's own `psql` (libpq, which
    /// takes TLS where the server asks for it).
    pub async fn psql(&self, url: &str, sql: &str) -> Result<String> {
        let mut psql = tokio::process::Command::new(server_bin()?.join("psql"));
        psql.arg(url).args(["-Atc", sql]).kill_on_drop(true);
        let out = tokio::time::timeout(crate::WAIT, psql.output())
            .await
            .context("psql timed out")??;
        ensure!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The data directory of a server this handle started.
    pub fn own_dir(&self) -> Option<&Path> {
        self.own.as_ref().map(|s| s.dir.path())
    }
}
