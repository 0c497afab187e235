//! What the node link costs a session: one stock OpenSSH agent held by node 1 (connected
//! straight to node 1's SSH port, from 127.0.0.2: not the load balancer, so that the figures
//! know which node holds it), and a viewer whose session is made and viewed through node 1
//! ("same node") or through node 2 ("cross node": the API call and the WebSocket are forwarded
//! to node 1 over the node link). Bulk MB/s each way, 64-byte round trips, set-up, and each
//! node's CPU per GB moved (its process's CPU time around each transfer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::stack::{ClusterStack, NODES};
use crate::host;
use crate::measure::{self, Direction, Endpoint, median, ms, percentile};
use crate::run::Plan;
use crate::stacks::passerelle::SERVICE;
use crate::stacks::{AgentSpec, Proc, spawn_agent, wait_for, write_key};

/// The agent's id.
const AGENT: &str = "cluster-bench-agent";

/// One way of reaching the agent, measured.
#[derive(Debug, Clone, Default)]
pub struct PathFigures {
    pub label: String,
    pub down_mbs: Option<f64>,
    pub up_mbs: Option<f64>,
    pub down_ok: usize,
    pub up_ok: usize,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub setup_p50_ms: Option<f64>,
    pub setup_p99_ms: Option<f64>,
    /// CPU-seconds per GB by process ("node1".."node3", "ssh", "harness", "haproxy"...), each
    /// way, most first.
    pub down_cpu: Vec<(String, f64)>,
    pub up_cpu: Vec<(String, f64)>,
}

/// Both paths, and the machine's load while they were measured.
#[derive(Debug, Clone, Default)]
pub struct StreamFigures {
    pub same: PathFigures,
    pub cross: PathFigures,
    pub load_before: String,
    pub load_after: String,
    pub cipher: Option<String>,
    /// The agent's connection ended during the measurements.
    pub agent_exited: Option<String>,
}

/// Each node's CPU ticks now (0 for a node that is down).
fn node_ticks(stack: &ClusterStack) -> Vec<u64> {
    (0..NODES)
        .map(|i| stack.pid(i).map_or(0, |p| host::subtree_ticks(p, |_| true)))
        .collect()
}

/// Starts the agent on node 1 and measures both paths.
pub async fn same_vs_cross(
    plan: &Plan,
    stack: &ClusterStack,
    dir: &Path,
    service: SocketAddr,
    agent_options: &[String],
    problems: &mut Vec<String>,
) -> anyhow::Result<StreamFigures> {
    let node1 = stack.api(0)?;
    let key = dir.join("cluster-agent_ed25519");
    let public = write_key(&key, b'c', 0)?;
    node1.register_agent(AGENT, &public).await?;
    let known_hosts = dir.join("known_hosts_cluster");
    let ssh = stack.cluster.ssh_addr(0);
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", ssh.port(), stack.cluster.host_key()),
    )?;
    let mut options = agent_options.to_vec();
    // 127.0.0.1 is the load balancer's address, trusted to send a PROXY header.
    options.push("BindAddress=127.0.0.2".to_owned());
    let spec = AgentSpec {
        key,
        known_hosts,
        cipher: plan.cipher.to_owned(),
        port: ssh.port(),
        user: AGENT.to_owned(),
        forward: format!("{SERVICE}:0:127.0.0.1:{}", service.port()),
        verbose: true,
        options,
    };
    let agent_log = dir.join("cluster-agent.log");
    let mut agent = spawn_agent(&spec, &agent_log)?;
    wait_for("the agent on node 1", Duration::from_secs(30), async || {
        agent.check_alive()?;
        let online = node1.agents().await?.iter().any(|a| {
            a.id.as_str() == AGENT
                && a.online
                && a.services.iter().any(|s| s.name.as_str() == SERVICE)
        });
        Ok(online.then_some(()))
    })
    .await?;

    let endpoint = |i: usize| -> anyhow::Result<Endpoint> {
        Ok(Endpoint::Node {
            api: stack.api(i)?,
            agent: AGENT.to_owned(),
            via: stack.https_addr(i),
            tls: stack.tls(),
        })
    };
    let targets = [
        ("same node (node1)", endpoint(0)?),
        ("cross node (via node2)", endpoint(1)?),
    ];
    let mut figures = StreamFigures {
        load_before: host::load_average(),
        ..Default::default()
    };
    let mut out = [PathFigures::default(), PathFigures::default()];
    for (o, (label, _)) in out.iter_mut().zip(&targets) {
        o.label = (*label).to_owned();
    }
    measure_paths(plan, stack, &targets, &mut out, problems, &mut agent).await;
    figures.load_after = host::load_average();
    figures.cipher = crate::stacks::negotiated_cipher(&agent_log);
    if let Err(e) = agent.check_alive() {
        figures.agent_exited = Some(format!("{e:#}"));
    }
    agent.kill().await;
    let [same, cross] = out;
    figures.same = same;
    figures.cross = cross;
    Ok(figures)
}

async fn measure_paths(
    plan: &Plan,
    stack: &ClusterStack,
    targets: &[(&str, Endpoint); 2],
    out: &mut [PathFigures; 2],
    problems: &mut Vec<String>,
    agent: &mut Proc,
) {
    for (label, ep) in targets {
        if let Err(e) = measure::bulk(ep, Direction::Down, 4 << 20).await {
            problems.push(format!("{label}: warm-up: {e:#}"));
        }
    }
    for &dir in &plan.directions {
        println!(
            "  bulk {dir:?}: {} runs of {} MiB",
            plan.runs,
            plan.bulk_bytes >> 20
        );
        let mut samples: [Vec<f64>; 2] = Default::default();
        let mut cpu: [HashMap<String, u64>; 2] = Default::default();
        for run in 0..plan.runs {
            for (i, (label, ep)) in targets.iter().enumerate() {
                let before = node_ticks(stack);
                let got = measure::bulk(ep, dir, plan.bulk_bytes).await;
                let after = node_ticks(stack);
                match got {
                    Ok(b) => {
                        println!("    {label} {dir:?} run {run}: {:.0} MB/s", b.mbs);
                        samples[i].push(b.mbs);
                        // The nodes (`passerelle`, or the binary's name, e.g. `passerelle-main`)
                        // are counted per node below instead.
                        let nodes = b
                            .cpu
                            .into_iter()
                            .filter(|(k, _)| !k.starts_with("passerelle"));
                        for (k, v) in nodes {
                            *cpu[i].entry(k).or_default() += v;
                        }
                        for (n, (a, b)) in after.iter().zip(&before).enumerate() {
                            *cpu[i].entry(format!("node{}", n + 1)).or_default() +=
                                a.saturating_sub(*b);
                        }
                    }
                    Err(e) => {
                        println!("    {label} {dir:?} run {run}: failed: {e:#}");
                        problems.push(format!("{label}: bulk {dir:?} run {run}: {e:#}"));
                    }
                }
            }
        }
        for (i, o) in out.iter_mut().enumerate() {
            let s = &samples[i];
            let v = (!s.is_empty()).then(|| median(s));
            let gb = s.len() as f64 * plan.bulk_bytes as f64 / 1e9;
            let mut per_gb: Vec<(String, f64)> = cpu[i]
                .iter()
                .map(|(k, &v)| (k.clone(), v as f64 * host::tick_secs() / gb.max(1e-9)))
                .collect();
            per_gb.sort_by(|a, b| b.1.total_cmp(&a.1));
            match dir {
                Direction::Down => (o.down_mbs, o.down_ok, o.down_cpu) = (v, s.len(), per_gb),
                Direction::Up => (o.up_mbs, o.up_ok, o.up_cpu) = (v, s.len(), per_gb),
            }
        }
    }

    println!("  round trips: {} runs of {}", plan.runs, plan.rtt_count);
    let mut p50s: [Vec<f64>; 2] = Default::default();
    let mut p99s: [Vec<f64>; 2] = Default::default();
    for run in 0..plan.runs {
        for (i, (label, ep)) in targets.iter().enumerate() {
            match measure::round_trips(ep, plan.rtt_count).await {
                Ok(d) => {
                    let v: Vec<f64> = d.into_iter().map(ms).collect();
                    let (p50, p99) = (percentile(&v, 50.0), percentile(&v, 99.0));
                    println!("    {label} run {run}: p50 {p50:.3} ms, p99 {p99:.3} ms");
                    p50s[i].push(p50);
                    p99s[i].push(p99);
                }
                Err(e) => problems.push(format!("{label}: round trips run {run}: {e:#}")),
            }
        }
    }
    println!("  set-up: {} sessions each", plan.setup_count);
    let mut setups: [Vec<f64>; 2] = Default::default();
    let per_run = plan.setup_count.div_ceil(plan.runs.max(1));
    for run in 0..plan.runs {
        for (i, (label, ep)) in targets.iter().enumerate() {
            match measure::setups(ep, per_run).await {
                Ok(v) => setups[i].extend(v.iter().map(|s| ms(s.total))),
                Err(e) => problems.push(format!("{label}: set-up run {run}: {e:#}")),
            }
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        let some = |v: &Vec<f64>, f: &dyn Fn(&[f64]) -> f64| (!v.is_empty()).then(|| f(v));
        o.rtt_p50_ms = some(&p50s[i], &median);
        o.rtt_p99_ms = some(&p99s[i], &median);
        o.setup_p50_ms = some(&setups[i], &|v| percentile(v, 50.0));
        o.setup_p99_ms = some(&setups[i], &|v| percentile(v, 99.0));
    }
    if let Err(e) = agent.check_alive() {
        problems.push(format!("the cluster's OpenSSH agent exited: {e:#}"));
    }
}

/// Used by the report: `a` relative to `b` as a signed percentage.
pub fn change_pct(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b - 1.0) * 100.0),
        _ => None,
    }
}
