//! [`TestCluster`]: several `passerelle serve` processes on one PostgreSQL database, sharing one
//! identity made by `passerelle cluster init` (SSH host key, TLS certificate, secrets), each
//! with its own data dir and its own config file in the shape the README shows, listening on
//! ports chosen by the OS. A node can be killed with SIGKILL and started again on the same data
//! dir and ports. Each node is a [`TestBroker`] whose HTTP client trusts the cluster's
//! certificate (and only it), so every helper of the harness works against any node, and
//! against a load balancer in front of them ([`TestCluster::front`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail, ensure};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tempfile::TempDir;
use tokio::process::Command;

use crate::haproxy::{Backend, TestHaproxy};
use crate::process::{Banner, BrokerProcess, CliOutput, passerelle_bin, run_cli};
use crate::{Attached, TestBroker, TestPostgres, WAIT, Ws, WssStream};

/// The file of the cluster's TLS certificate in the cluster dir.
pub const CLUSTER_CERT: &str = passerelle::keys::TLS_CERT_FILE;

/// A node's state in the cluster.
enum Node {
    Up(Box<TestBroker>),
    /// Killed; its data dir kept for a restart, and what it had logged.
    Down(TempDir, String),
    /// Between the two (only while a kill or a restart runs).
    Gone,
}

/// A cluster of `passerelle serve` processes; everything stops (SIGKILL) when it drops.
pub struct TestCluster {
    nodes: Vec<Node>,
    /// `(ssh, https)` of each node, kept across restarts.
    addrs: Vec<(SocketAddr, SocketAddr)>,
    root: TempDir,
    store_url: String,
    admin_key: String,
    host_key: String,
    tls: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
    /// Lines appended to every node's config file.
    extra_config: String,
    /// Last, so that the nodes stop before their database does.
    pg: TestPostgres,
}

impl TestCluster {
    /// `passerelle cluster init`, then `n` nodes on a new database of `pg`, started one after
    /// the other (the first creates tenant `default` and its admin key).
    pub async fn start(pg: TestPostgres, n: usize) -> Result<Self> {
        Self::start_with(pg, n, "").await
    }

    /// [`Self::start`] with `extra_config` (TOML lines) appended to every node's config file,
    /// e.g. the benchmark's `max_preauth_per_source = 0`.
    pub async fn start_with(pg: TestPostgres, n: usize, extra_config: &str) -> Result<Self> {
        crate::init();
        let root = tempfile::Builder::new()
            .prefix("passerelle-cluster-")
            .tempdir()?;
        let cluster_dir = root.path().join("cluster");
        let out = run_cli(
            &[
                "cluster".as_ref(),
                "init".as_ref(),
                cluster_dir.as_os_str(),
                "--host".as_ref(),
                "localhost".as_ref(),
            ],
            &[],
        )
        .await?;
        ensure!(out.success(), "passerelle cluster init: {out:?}");
        let tls = Arc::new(client_tls(&cluster_dir.join(CLUSTER_CERT))?);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(WAIT)
            .build()?;
        let store_url = pg.database().await?;
        let mut cluster = Self {
            nodes: Vec::new(),
            addrs: Vec::new(),
            root,
            store_url,
            admin_key: String::new(),
            host_key: String::new(),
            tls,
            http,
            extra_config: extra_config.to_owned(),
            pg,
        };
        for i in 0..n {
            let name = Self::name(i);
            std::fs::write(cluster.config_path(i), cluster.config(i))?;
            let dir = tempfile::Builder::new()
                .prefix(&format!("passerelle-{name}-"))
                .tempdir()?;
            let (process, banner) = cluster.serve(i, dir.path(), None).await?;
            if i == 0 {
                cluster.admin_key = crate::admin_key_file(dir.path())?;
                cluster.host_key = cluster.cli_host_key(0).await?;
            }
            let addrs = (banner_addr(&banner.ssh)?, banner_addr(&banner.http)?);
            cluster.addrs.push(addrs);
            let node = cluster.attach(i, process, dir);
            cluster.nodes.push(Node::Up(Box::new(node)));
        }
        Ok(cluster)
    }

    /// `node1`, `node2`...: node `i`'s name (`node_name`, and its server name in HAProxy).
    pub fn name(i: usize) -> String {
        format!("node{}", i + 1)
    }

    /// How many nodes the cluster has (up or down).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether the cluster has no node.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Node `i`'s index from its name.
    pub fn index(name: &str) -> Result<usize> {
        name.strip_prefix("node")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .with_context(|| format!("not a node name: {name}"))
    }

    /// Node `i`, which must be up.
    pub fn node(&self, i: usize) -> Result<&TestBroker> {
        match self.nodes.get(i) {
            Some(Node::Up(node)) => Ok(node),
            Some(_) => bail!("{} is down", Self::name(i)),
            None => bail!("no node {i}"),
        }
    }

    /// The cluster's directory (`passerelle cluster init`'s output, shared by every node).
    pub fn cluster_dir(&self) -> PathBuf {
        self.root.path().join("cluster")
    }

    /// Node `i`'s config file.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("{}.toml", Self::name(i)))
    }

    /// The admin API key of tenant `default` (from the first node's data dir).
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// One statement's rows on the cluster's database (see [`TestPostgres::psql`]).
    pub async fn psql(&self, sql: &str) -> Result<String> {
        self.pg.psql(&self.store_url, sql).await
    }

    /// The cluster's SSH host key, `ssh-ed25519 AAAA...`.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// TLS settings that trust the cluster's certificate only.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// The nodes as HAProxy's servers.
    pub fn backends(&self) -> Vec<Backend> {
        (self.addrs.iter().enumerate())
            .map(|(i, &(ssh, https))| Backend {
                name: Self::name(i),
                ssh,
                https,
            })
            .collect()
    }

    /// HAProxy in front of every node, verifying their certificate against the cluster's.
    pub async fn haproxy(&self) -> Result<TestHaproxy> {
        TestHaproxy::start(&self.backends(), &self.cluster_dir().join(CLUSTER_CERT)).await
    }

    /// The cluster as clients see it: a [`TestBroker`] handle whose SSH and HTTPS addresses
    /// are `lb`'s.
    pub fn front(&self, lb: &TestHaproxy) -> Result<TestBroker> {
        Ok(TestBroker::attach(Attached {
            process: None,
            dir: tempfile::tempdir()?,
            admin_key: self.admin_key.clone(),
            http: self.http.clone(),
            base_url: format!("https://{}", lb.https_addr()),
            ssh_addr: lb.ssh_addr(),
            http_addr: lb.https_addr(),
            host_key: self.host_key.clone(),
        }))
    }

    /// A viewer on a session's `ws_url` or `raw_ws_url`, connected to `via` (a node's or the
    /// load balancer's HTTPS address) whatever host the URL names.
    pub async fn viewer(&self, url: &str, via: SocketAddr) -> Result<Ws<WssStream>> {
        let rest = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, path)| path)
            .with_context(|| format!("not an absolute URL: {url}"))?;
        Ws::connect_tls(&format!("wss://{via}/{rest}"), self.tls()).await
    }

    /// Node `i`'s HTTPS address (whether it is up or not).
    pub fn https_addr(&self, i: usize) -> SocketAddr {
        self.addrs[i].1
    }

    /// Node `i`'s SSH address (whether it is up or not).
    pub fn ssh_addr(&self, i: usize) -> SocketAddr {
        self.addrs[i].0
    }

    /// Kills node `i` with SIGKILL (no chance to clean up); returns what it had logged.
    pub async fn kill(&mut self, i: usize) -> Result<String> {
        let Node::Up(node) = std::mem::replace(&mut self.nodes[i], Node::Gone) else {
            bail!("{} is not up", Self::name(i));
        };
        let (process, dir) = node.detach();
        let process = process.context("a node without its process")?;
        let logs = process.stderr();
        let status = process.signal("KILL").await?;
        self.nodes[i] = Node::Down(dir, logs.clone());
        ensure!(
            !status.success(),
            "{} exited cleanly on SIGKILL",
            Self::name(i)
        );
        Ok(logs)
    }

    /// Starts killed node `i` again on its data dir and its ports.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let Node::Down(dir, _) = std::mem::replace(&mut self.nodes[i], Node::Gone) else {
            bail!("{} is not down", Self::name(i));
        };
        let (process, banner) = self.serve(i, dir.path(), Some(self.addrs[i])).await?;
        let addrs = (banner_addr(&banner.ssh)?, banner_addr(&banner.http)?);
        ensure!(addrs == self.addrs[i], "restarted elsewhere: {banner:?}");
        self.nodes[i] = Node::Up(Box::new(self.attach(i, process, dir)));
        Ok(())
    }

    /// What node `i` has logged so far (until it was killed, if it is down).
    pub fn logs(&self, i: usize) -> String {
        match &self.nodes[i] {
            Node::Up(node) => node.logs(),
            Node::Down(_, logs) => logs.clone(),
            Node::Gone => String::new(),
        }
    }

    /// Prints the last `lines` lines each node logged (for a failed test's output).
    pub fn print_logs(&self, lines: usize) {
        for i in 0..self.len() {
            let log = self.logs(i);
            let all: Vec<&str> = log.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            eprintln!("---- {} (last {lines} lines) ----\n{tail}", Self::name(i));
        }
    }

    /// `passerelle cluster status` with node `i`'s config.
    pub async fn status(&self, i: usize) -> Result<CliOutput> {
        let config = self.config_path(i);
        run_cli(
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "cluster".as_ref(),
                "status".as_ref(),
            ],
            &[],
        )
        .await
    }

    /// Node `i`'s config file: the README's shape, with test ports and directories.
    fn config(&self, i: usize) -> String {
        format!(
            "# {name}: passerelle serve --config {name}.toml\n\
             store_url = \"{store}\"\n\
             cluster_dir = \"{cluster}\"\n\
             node_name = \"{name}\"\n\
             ssh_listen = \"127.0.0.1:0\"\n\
             http_listen = \"127.0.0.1:0\"\n\
             trusted_proxies = [\"127.0.0.1/32\"]\n\
             {extra}",
            name = Self::name(i),
            store = self.store_url,
            cluster = self.cluster_dir().display(),
            extra = self.extra_config,
        )
    }

    /// `passerelle serve --config nodeI.toml --data-dir DIR`, on `addrs` when given.
    async fn serve(
        &self,
        i: usize,
        data_dir: &Path,
        addrs: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<(BrokerProcess, Banner)> {
        let mut cmd = Command::new(passerelle_bin()?);
        cmd.arg("--config")
            .arg(self.config_path(i))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir);
        if let Some((ssh, https)) = addrs {
            cmd.arg("--ssh-listen").arg(ssh.to_string());
            cmd.arg("--http-listen").arg(https.to_string());
        }
        let (process, banner) = BrokerProcess::spawn(cmd)
            .await
            .with_context(|| format!("starting {}", Self::name(i)))?;
        ensure!(
            banner.http.starts_with("https://"),
            "{} serves plain HTTP: {banner:?}",
            Self::name(i)
        );
        Ok((process, banner))
    }

    fn attach(&self, i: usize, process: BrokerProcess, dir: TempDir) -> TestBroker {
        let (ssh_addr, http_addr) = self.addrs[i];
        TestBroker::attach(Attached {
            process: Some(process),
            dir,
            admin_key: self.admin_key.clone(),
            http: self.http.clone(),
            base_url: format!("https://{http_addr}"),
            ssh_addr,
            http_addr,
            host_key: self.host_key.clone(),
        })
    }

    /// The host key that `passerelle host-key` prints for node `i`'s config.
    async fn cli_host_key(&self, i: usize) -> Result<String> {
        let config = self.config_path(i);
        let out = run_cli(
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "host-key".as_ref(),
                "--known-hosts-host".as_ref(),
                "127.0.0.1:2222".as_ref(),
            ],
            &[],
        )
        .await?;
        ensure!(out.success(), "passerelle host-key: {out:?}");
        let line = (out.stdout.lines())
            .find_map(|l| l.strip_prefix("[127.0.0.1]:2222 "))
            .with_context(|| format!("no known_hosts line in {out:?}"))?;
        Ok(line.trim().to_owned())
    }
}

/// `host:port` from a banner's `127.0.0.1:P` or `https://127.0.0.1:P/`.
fn banner_addr(s: &str) -> Result<SocketAddr> {
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    s.trim_end_matches('/')
        .parse()
        .with_context(|| format!("address in the banner: {s}"))
}

/// TLS client settings whose only trust anchor is the certificate in `pem`.
fn client_tls(pem: &Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(pem).with_context(|| format!("reading {}", pem.display()))?
    {
        roots.add(cert.with_context(|| format!("a certificate in {}", pem.display()))?)?;
    }
    ensure!(!roots.is_empty(), "no certificate in {}", pem.display());
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
