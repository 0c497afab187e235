//! `passerelle cluster init|status`: a cluster's shared identity, made once, and the nodes'
//! leases as the store sees them. Part of the binary, not of the library.

use std::path::PathBuf;

use clap::Subcommand;
use passerelle::Store;
use passerelle::store::now_ms;

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Write a new cluster identity (SSH host key, TLS certificate, sealing key, recording key,
    /// node-link secret) into DIR; copy DIR to every node and set `cluster_dir` to it.
    Init {
        dir: PathBuf,
        /// The name clients use (the load balancer's), for the self-signed certificate.
        #[arg(long)]
        host: Option<String>,
    },
    /// The nodes, their leases, and what each holds (needs --store).
    Status,
}

/// Runs `init` (no store needed).
pub(crate) fn init(dir: &std::path::Path, host: Option<&str>) -> anyhow::Result<Vec<String>> {
    let made = passerelle::cluster::identity::init(dir, host)?;
    Ok(vec![
        format!("cluster identity written to {}", dir.display()),
        format!("SSH host key: {}", made.host_key_fingerprint),
        format!("TLS certificate SHA-256: {}", made.tls_fingerprint),
        "copy this directory to every node (mode 0700) and set cluster_dir to it".to_owned(),
    ])
}

/// Runs `status`.
pub(crate) fn status(store: &Store) -> anyhow::Result<Vec<String>> {
    let now = now_ms();
    let nodes = store.cluster_nodes()?;
    if nodes.is_empty() {
        return Ok(vec!["no node has joined this store's cluster".to_owned()]);
    }
    let mut lines = vec![format!(
        "{:<24} {:<6} {:>9} {:>8} {:>8}  {}",
        "NODE", "STATE", "LEASE AGE", "AGENTS", "SESSIONS", "URL"
    )];
    for n in nodes {
        let age = (now - n.renewed_at).max(0) as f64 / 1000.0;
        lines.push(format!(
            "{:<24} {:<6} {:>8.1}s {:>8} {:>8}  {}",
            n.name,
            if n.alive(now) { "up" } else { "dead" },
            age,
            n.agents,
            n.sessions,
            n.url
        ));
    }
    Ok(lines)
}
