//! [`TestBroker`] handles on brokers this harness did not start itself in one piece: a node of a
//! [`crate::cluster::TestCluster`] (a `passerelle serve` process over HTTPS with the cluster's
//! certificate) or a load balancer in front of several, so that every helper of `TestBroker`
//! (sessions, agents, audit) and of [`crate::Agent`] works against them.

use std::net::SocketAddr;

use tempfile::TempDir;

use super::TestBroker;
use crate::process::BrokerProcess;

/// What a [`TestBroker`] needs to talk to a broker started elsewhere.
pub struct Attached {
    /// The process, when this handle owns it (killed when the handle drops).
    pub process: Option<BrokerProcess>,
    /// Its data dir (removed when the handle drops), or any empty directory.
    pub dir: TempDir,
    /// The admin API key of tenant `default`.
    pub admin_key: String,
    /// A client that trusts the broker's certificate.
    pub http: reqwest::Client,
    /// `https://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    /// Where agents connect.
    pub ssh_addr: SocketAddr,
    /// Where the API listens.
    pub http_addr: SocketAddr,
    /// The host key agents pin, `ssh-ed25519 AAAA...`.
    pub host_key: String,
}

impl TestBroker {
    /// A handle on a broker started elsewhere. [`Self::broker`] and [`Self::store`] are not
    /// available on it, nor the restarts of [`Self::spawn_binary`]'s brokers.
    pub fn attach(parts: Attached) -> Self {
        Self {
            broker: None,
            process: parts.process,
            dir: parts.dir,
            admin_key: parts.admin_key,
            http: parts.http,
            base_url: parts.base_url.trim_end_matches('/').to_owned(),
            ssh_addr: parts.ssh_addr,
            http_addr: parts.http_addr,
            host_key: parts.host_key,
            extra_args: Vec::new(),
        }
    }

    /// Takes the broker process and the data dir out of the handle (e.g. to kill the process
    /// and start another on the same data dir).
    pub fn detach(mut self) -> (Option<BrokerProcess>, TempDir) {
        let process = self.process.take();
        let Self { dir, .. } = self;
        (process, dir)
    }
}
