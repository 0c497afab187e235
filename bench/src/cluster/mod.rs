//! `passerelle-bench --cluster` (issue 16): the cluster's figures. A throwaway PostgreSQL,
//! `passerelle cluster init`, three nodes of the `--passerelle-bin` broker and HAProxy
//! ([`stack`], on the e2e harness's drivers); then what the node link costs a session (same
//! node against cross node, [`streams`]) and idle agents spread over the nodes with one killed
//! ([`idle`]); the markdown section comes from [`report`].
//!
//! Progress is printed as it happens. Every process the run started (nodes, HAProxy, agents,
//! PostgreSQL) is stopped when it ends: on success, on an error, on Ctrl-C and on SIGTERM.

mod cpu;
mod fleet;
mod idle;
mod pgstats;
mod report;
mod stack;
mod streams;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::bail;

pub use self::fleet::run as fleet;
use self::stack::{ClusterStack, NODES};
use crate::run::Plan;
use crate::service::Service;
use crate::stacks::log_summary;

/// What `--cluster` measures.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// Same node against cross node (`--no-streams` skips it).
    pub streams: bool,
    /// Idle agents (the largest `--agents` scale; 0 skips them).
    pub agents: usize,
    /// `-o` options of the OpenSSH agent.
    pub agent_options: Vec<String>,
}

/// Runs the cluster figures; the markdown section. On Ctrl-C or SIGTERM, `main` drops this
/// run, which kills its nodes, HAProxy and agents and stops PostgreSQL, then sweeps whatever
/// is left (crate::reap).
pub async fn run(
    plan: &Plan,
    cplan: &ClusterPlan,
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<String> {
    require_bin(bin)?;
    let started = Instant::now();
    let service = Service::start().await?;
    println!(
        "cluster: starting PostgreSQL, `cluster init`, {NODES} nodes of {} and HAProxy",
        bin.display()
    );
    // Client connections through HAProxy: the agents, and viewers and API calls.
    let mut stack = ClusterStack::start(bin, cplan.agents as u64 + 1024).await?;
    let lb = stack.lb()?;
    println!(
        "cluster: up after {:.1} s (HAProxy, {} process(es): agents {}, operators {})",
        started.elapsed().as_secs_f64(),
        stack.lbs().count(),
        lb.ssh_addr(),
        lb.https_addr()
    );
    let mut problems = Vec::new();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Three `passerelle serve` nodes on one PostgreSQL 15 (throwaway, `fsync=off`), sharing \
         the identity of `passerelle cluster init`, behind Debian's HAProxy (`{}`), all on \
         127.0.0.1; cipher {}. Command: `passerelle-bench --cluster` (README \"Benchmarks\").\n",
        haproxy_version().await,
        plan.cipher
    );
    if stack.lbs().count() > 1 {
        let _ = writeln!(
            md,
            "HAProxy ran as {} processes on the same ports (`SO_REUSEPORT`: the kernel spreads \
             new connections over them): one process's open-files limit cannot hold two \
             sockets per agent.\n",
            stack.lbs().count()
        );
    }

    if cplan.streams {
        println!("cluster: same node against cross node");
        match streams::same_vs_cross(
            plan,
            &stack,
            dir,
            service.addr(),
            &cplan.agent_options,
            &mut problems,
        )
        .await
        {
            Ok(f) => {
                let _ = writeln!(md, "### Same node against cross node (the node link)\n");
                md.push_str(&report::streams(&f, plan.runs, plan.bulk_bytes >> 20));
            }
            Err(e) => {
                println!("cluster: same/cross failed: {e:#}");
                problems.push(format!("same node against cross node: {e:#}"));
            }
        }
    }

    if cplan.agents > 0 {
        println!("cluster: {} idle agents", cplan.agents);
        match idle::idle_agents(plan, &mut stack, cplan.agents).await {
            Ok(f) => {
                let _ = writeln!(
                    md,
                    "\n### {} idle agents over {NODES} nodes, one killed\n",
                    f.agents
                );
                md.push_str(&report::idle(&f));
                let log = dir.join(format!("{}-killed.log", f.killed));
                if std::fs::write(&log, &f.killed_log).is_ok()
                    && let Some(s) = log_summary(&log)
                {
                    problems.push(format!("{} logged before its kill: {s}", f.killed));
                }
            }
            Err(e) => {
                println!("cluster: idle agents failed: {e:#}");
                problems.push(format!("idle agents: {e:#}"));
            }
        }
    }

    for i in 0..stack.nodes() {
        let name = passerelle_e2e::cluster::TestCluster::name(i);
        let log = dir.join(format!("{name}.log"));
        if std::fs::write(&log, stack.cluster.logs(i)).is_ok()
            && let Some(s) = log_summary(&log)
        {
            problems.push(format!("{name} logged {s}"));
        }
    }
    let lb_log: String = stack.lbs().map(|lb| lb.log()).collect();
    if lb_log.lines().any(|l| l.contains("ALERT")) {
        problems.push(format!(
            "HAProxy alerted: {}",
            (lb_log.lines())
                .filter(|l| l.contains("ALERT"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    if !problems.is_empty() {
        let _ = writeln!(md, "\n### Problems\n");
        for p in &problems {
            let _ = writeln!(md, "- {p}");
        }
    }
    println!(
        "cluster: done after {:.0} s; stopping HAProxy, the nodes and PostgreSQL",
        started.elapsed().as_secs_f64()
    );
    drop(stack);
    drop(service);
    Ok(md)
}

/// Fails when the broker binary the nodes run is missing.
fn require_bin(bin: &Path) -> anyhow::Result<()> {
    if !bin.exists() {
        bail!(
            "{} not found: pass --passerelle-bin or build it with `cargo build --release -p passerelle`",
            bin.display()
        );
    }
    Ok(())
}

/// `HAProxy version 2.6.12-1+deb12u4 ...`'s version, or "HAProxy".
async fn haproxy_version() -> String {
    let out = tokio::process::Command::new("haproxy")
        .arg("-v")
        .kill_on_drop(true)
        .output()
        .await;
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().next()?.to_owned();
            line.split_whitespace()
                .nth(2)
                .map(|v| format!("HAProxy {v}"))
        })
        .unwrap_or_else(|| "HAProxy".to_owned())
}
