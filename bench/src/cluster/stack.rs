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

/// Three nodes' store pools (32 clients each) and their listeners, with room to spare.
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

/// PostgreSQL, three nodes and HAProxy.
pub struct ClusterStack {
    /// Dropped first: HAProxy stops before the nodes, the nodes before PostgreSQL.
    pub lb: TestHaproxy,
    pub cluster: TestCluster,
}

impl ClusterStack {
    /// Starts everything with `bin` as every node's binary; HAProxy takes `maxconn` client
    /// connections. Returns once HAProxy's health checks pass on every node.
    pub async fn start(bin: &Path, maxconn: u32) -> anyhow::Result<Self> {
        passerelle_e2e::process::use_passerelle_bin(bin.to_owned())?;
        let pg = TestPostgres::start_own_with(PG_SETTINGS)
            .await
            .context("starting PostgreSQL")?;
        let cluster = TestCluster::start_with(pg, NODES, NODE_CONFIG)
            .await
            .context("starting the nodes")?;
        let lb = TestHaproxy::start_with_maxconn(
            &cluster.backends(),
            &cluster.cluster_dir().join(CLUSTER_CERT),
            maxconn,
        )
        .await
        .context("starting HAProxy")?;
        lb.wait_all_up().await.context("HAProxy's health checks")?;
        Ok(Self { lb, cluster })
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
            &format!("https://{}", self.lb.https_addr()),
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

    /// SSH connections HAProxy holds to each node now, and whether its check says it is up, by
    /// node name.
    pub async fn lb_ssh(&self) -> anyhow::Result<Vec<(String, u64, bool)>> {
        Ok(self
            .lb
            .servers()
            .await?
            .into_iter()
            .filter(|s| s.backend == SSH_BACKEND)
            .map(|s| (s.server, s.current, s.status.starts_with("UP")))
            .collect())
    }
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
