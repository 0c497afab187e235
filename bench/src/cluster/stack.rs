//! The cluster under test: a throwaway PostgreSQL, `passerelle cluster init`, three `passerelle
//! serve` nodes and Debian's HAProxy in front of them, all started by the e2e harness's drivers
//! (`passerelle_e2e::{TestPostgres, cluster::TestCluster, haproxy::TestHaproxy}`), with the
//! settings a benchmark needs on top: room for 10,000+ connections in HAProxy and for three full
//! store pools in PostgreSQL, and the per-source SSH limits off (thousands of simulated
//! workstations share 8 source addresses). Everything stops when [`ClusterStack`] drops.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use passerelle_e2e::TestPostgres;
use passerelle_e2e::cluster::{CLUSTER_CERT, TestCluster};
use passerelle_e2e::haproxy::{SSH_BACKEND, TestHaproxy};

use crate::stacks::passerelle::Api;

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// Lines added to every node's config (the single-broker bench's `bench.toml` does the same).
const NODE_CONFIG: &str = "ssh_connection_burst_per_source = 0\n\
                           max_preauth_per_source = 0\n\
                           ssh_auth_failure_limit = 0\n";

/// Up to six nodes' store pools (32 clients each) and their listeners, with room to spare.
const PG_SETTINGS: &str = "-c max_connections=300";

/// One node's line of `passerelle cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    /// `up` or `dead` (its lease is older than 15 s).
    pub up: bool,
    /// Agents its presence rows say it holds.
    pub agents: usize,
}

/// Open files a HAProxy process keeps for itself beyond two per connection.
const LB_SPARE_FILES: u64 = 2048;

/// PostgreSQL, the nodes and HAProxy (when there is one).
pub struct ClusterStack {
    /// Dropped first: HAProxy stops before the nodes, the nodes before PostgreSQL. The first
    /// process, then more on the same ports (`SO_REUSEPORT`) when one process's open-files
    /// limit cannot hold every connection; none when the clients go to the nodes directly.
    lbs: Vec<TestHaproxy>,
    pub cluster: TestCluster,
}

impl ClusterStack {
    /// Starts everything with `bin` as every node's binary: [`NODES`] nodes and HAProxy, which
    /// takes `connections` client connections, over as many processes as the open-files limit
    /// they inherit requires. Returns once HAProxy's health checks pass on every node.
    pub async fn start(bin: &Path, connections: u64) -> anyhow::Result<Self> {
        let cluster = Self::start_nodes(bin, NODES, PG_SETTINGS).await?;
        let (instances, maxconn) = lb_processes(connections)?;
        let (backends, ca) = (cluster.backends(), cluster.cluster_dir().join(CLUSTER_CERT));
        let lb = TestHaproxy::start_with_maxconn(&backends, &ca, maxconn)
            .await
            .context("starting HAProxy")?;
        let mut lbs = Vec::new();
        for _ in 1..instances {
            lbs.push(lb.start_sibling(&backends, &ca, maxconn).await?);
        }
        lbs.insert(0, lb);
        for lb in &lbs {
            lb.wait_all_up().await.context("HAProxy's health checks")?;
        }
        Ok(Self { lbs, cluster })
    }

    /// PostgreSQL and `nodes` nodes without a load balancer: clients connect to the nodes
    /// directly (as agents given several broker addresses, or DNS round robin, do).
    /// With `statements`, PostgreSQL counts what each statement costs ([`super::pgstats`]).
    pub async fn without_lb(bin: &Path, nodes: usize, statements: bool) -> anyhow::Result<Self> {
        let settings = if statements {
            format!("{PG_SETTINGS}{}", super::pgstats::SETTINGS)
        } else {
            PG_SETTINGS.to_owned()
        };
        let cluster = Self::start_nodes(bin, nodes, &settings).await?;
        if statements {
            super::pgstats::enable(&cluster).await?;
        }
        Ok(Self {
            lbs: Vec::new(),
            cluster,
        })
    }

    async fn start_nodes(bin: &Path, nodes: usize, settings: &str) -> anyhow::Result<TestCluster> {
        passerelle_e2e::process::use_passerelle_bin(bin.to_owned())?;
        let pg = TestPostgres::start_own_with(settings)
            .await
            .context("starting PostgreSQL")?;
        TestCluster::start_with(pg, nodes, NODE_CONFIG)
            .await
            .context("starting the nodes")
    }

    /// How many nodes the cluster has.
    pub fn nodes(&self) -> usize {
        self.cluster.len()
    }

    /// The first HAProxy process (its addresses are every process's).
    pub fn lb(&self) -> anyhow::Result<&TestHaproxy> {
        self.lbs.first().context("this run has no HAProxy")
    }

    /// Every HAProxy process.
    pub fn lbs(&self) -> impl Iterator<Item = &TestHaproxy> {
        self.lbs.iter()
    }

    /// TLS settings that trust the cluster's certificate.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.cluster.tls()
    }

    /// Node `i`'s API (tenant `default`'s admin key).
    pub fn api(&self, i: usize) -> anyhow::Result<Api> {
        let node = self.cluster.node(i)?;
        Api::with_tls(
            node.base_url(),
            self.cluster.admin_key(),
            (*self.tls()).clone(),
        )
    }

    /// The API through HAProxy (any live node answers).
    pub fn front_api(&self) -> anyhow::Result<Api> {
        Api::with_tls(
            &format!("https://{}", self.lb()?.https_addr()),
            self.cluster.admin_key(),
            (*self.tls()).clone(),
        )
    }

    /// Node `i`'s HTTPS address.
    pub fn https_addr(&self, i: usize) -> SocketAddr {
        self.cluster.https_addr(i)
    }

    /// Node `i`'s process id, if it is up.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.cluster.node(i).ok()?.pid()
    }

    /// `passerelle cluster status` run with node `via`'s config.
    pub async fn status(&self, via: usize) -> anyhow::Result<Vec<NodeStatus>> {
        let out = self.cluster.status(via).await?;
        if !out.success() {
            bail!("passerelle cluster status: {out:?}");
        }
        parse_status(&out.stdout)
    }

    /// SSH connections HAProxy holds to each node now (over its processes), and whether every
    /// process's check says it is up, by node name.
    pub async fn lb_ssh(&self) -> anyhow::Result<Vec<(String, u64, bool)>> {
        self.lb_servers(SSH_BACKEND).await
    }

    /// Whether every HAProxy process has taken node `name` out of the SSH rotation (`DOWN`:
    /// `fall` checks failed in a row; `UP 1/2` is one failed check, still in rotation).
    pub async fn lb_ssh_down(&self, name: &str) -> anyhow::Result<bool> {
        let mut down = true;
        for lb in self.lbs() {
            down &= (lb.servers().await?.iter())
                .filter(|s| s.backend == SSH_BACKEND && s.server == name)
                .all(|s| s.status.starts_with("DOWN"));
        }
        Ok(down)
    }

    /// [`Self::lb_ssh`] for `backend`.
    pub async fn lb_servers(&self, backend: &str) -> anyhow::Result<Vec<(String, u64, bool)>> {
        let mut out: Vec<(String, u64, bool)> = Vec::new();
        for lb in self.lbs() {
            for s in lb
                .servers()
                .await?
                .into_iter()
                .filter(|s| s.backend == backend)
            {
                let up = s.status == "UP";
                match out.iter_mut().find(|o| o.0 == s.server) {
                    Some(o) => (o.1, o.2) = (o.1 + s.current, o.2 && up),
                    None => out.push((s.server, s.current, up)),
                }
            }
        }
        Ok(out)
    }
}

/// How many HAProxy processes `connections` need within the open-files limit they inherit
/// (two files per connection), and the `maxconn` of each.
fn lb_processes(connections: u64) -> anyhow::Result<(u64, u32)> {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let per = soft.saturating_sub(LB_SPARE_FILES) / 2;
    if per < 1024 {
        bail!("RLIMIT_NOFILE {soft} is too low for HAProxy");
    }
    let instances = connections.div_ceil(per).max(1);
    // The kernel's spread over the processes is uneven by a few percent: room for that.
    let maxconn = (connections.div_ceil(instances) * 11 / 10 + 1024).min(per);
    Ok((instances, u32::try_from(maxconn)?))
}

/// The node lines of `cluster status`'s table (`NODE STATE LEASE-AGE AGENTS SESSIONS URL`).
fn parse_status(text: &str) -> anyhow::Result<Vec<NodeStatus>> {
    let mut out = Vec::new();
    for line in text.lines().skip_while(|l| !l.starts_with("NODE")).skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, state, _age, agents, ..] = f[..] else {
            bail!("odd cluster status line {line:?}");
        };
        out.push(NodeStatus {
            name: name.to_owned(),
            up: state == "up",
            agents: agents
                .parse()
                .with_context(|| format!("agents in {line:?}"))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{NodeStatus, parse_status};

    #[test]
    fn cluster_status_lines_are_parsed() {
        let text = "NODE                     STATE  LEASE AGE   AGENTS SESSIONS  URL\n\
                    node1                    up          1.2s     3334        0  https://127.0.0.1:1\n\
                    node3                    dead       17.0s        0        0  https://127.0.0.1:3\n";
        let got = parse_status(text).expect("parsed");
        assert_eq!(
            got,
            vec![
                NodeStatus {
                    name: "node1".into(),
                    up: true,
                    agents: 3334
                },
                NodeStatus {
                    name: "node3".into(),
                    up: false,
                    agents: 0
                },
            ]
        );
        assert!(parse_status("NODE STATE\nnode1 up\n").is_err());
    }
}
