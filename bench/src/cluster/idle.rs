//! Idle agents spread over the cluster, and one node killed: `n` load agents (the russh
//! generator of `loadgen`) through HAProxy's SSH frontend; the time until all are online, where
//! they landed (`passerelle cluster status` and HAProxy's connection counts) and each node's
//! RSS; then `kill -9` of the last node, and the times until the generator has all of them
//! online again (through the survivors), until `cluster status` shows the survivors holding all
//! of them, until HAProxy marks the node down and the store calls it dead; then the node is
//! started again and the time until it is back in rotation.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::cpu::CpuSnap;
use super::stack::{ClusterStack, NODES, NodeStatus};
use crate::host;
use crate::loadgen::{self, LoadGen, Online};
use crate::run::{Plan, rss_kib};

/// The node that is killed (the last).
pub const KILLED: usize = NODES - 1;

/// One node at one moment.
#[derive(Debug, Clone, Default)]
pub struct NodeFigures {
    pub name: String,
    /// Agents its presence rows hold (`cluster status`).
    pub agents: Option<usize>,
    /// SSH connections HAProxy holds to it.
    pub lb_conns: Option<u64>,
    pub rss_kib: Option<u64>,
    pub fds: Option<usize>,
}

/// The whole idle figure.
#[derive(Debug, Clone, Default)]
pub struct IdleCluster {
    pub agents: usize,
    pub register_s: f64,
    /// Loadgen start -> every agent online at the generator.
    pub connect_all_s: Option<f64>,
    /// Loadgen start -> `cluster status` shows them all.
    pub presence_all_s: Option<f64>,
    pub connected: usize,
    pub before: Vec<NodeFigures>,
    pub with_agents: Vec<NodeFigures>,
    pub killed: String,
    /// What the killed node had logged.
    pub killed_log: String,
    /// The kill's dip: `n` less the generator's lowest online count (agents that reconnect
    /// fast are back before the last ones notice).
    pub dropped: usize,
    /// Connections the generator made from the kill until all were back (the killed node's
    /// agents, reconnecting).
    pub reconnections: usize,
    /// From the kill: HAProxy's check marks the node's SSH server down.
    pub lb_down_s: Option<f64>,
    /// From the kill: the generator has every agent online again.
    pub back_s: Option<f64>,
    /// From the kill: `cluster status` shows the survivors holding every agent.
    pub presence_back_s: Option<f64>,
    /// From the kill: `cluster status` calls the node dead (or no longer lists it).
    pub dead_s: Option<f64>,
    /// The API (through HAProxy) counted this many agents online at `presence_back_s`.
    pub api_online: Option<usize>,
    pub after_kill: Vec<NodeFigures>,
    /// From the restart's ready banner: `cluster status` shows the node up again.
    pub rejoin_status_s: Option<f64>,
    /// From the restart's ready banner: HAProxy has it up again (both backends).
    pub rejoin_lb_s: Option<f64>,
    pub after_restart: Vec<NodeFigures>,
    /// CPU-seconds by part from the generator's start until every agent was present, and from
    /// the kill until the survivors held them all (see [`CpuSnap::until`]).
    pub connect_cpu: Vec<(String, f64)>,
    pub recover_cpu: Vec<(String, f64)>,
    pub connections: usize,
    pub failures: usize,
    pub last_error: Option<String>,
    pub load_start: String,
    pub load_kill: String,
    pub load_end: String,
}

/// Each node's figures now.
pub(super) async fn nodes_now(stack: &ClusterStack) -> Vec<NodeFigures> {
    let status = stack.status(0).await.unwrap_or_default();
    let lb = stack.lb_ssh().await.unwrap_or_default();
    (0..stack.nodes())
        .map(|i| {
            let name = passerelle_e2e::cluster::TestCluster::name(i);
            let pid = stack.pid(i);
            NodeFigures {
                agents: status.iter().find(|s| s.name == name).map(|s| s.agents),
                lb_conns: lb.iter().find(|s| s.0 == name).map(|s| s.1),
                rss_kib: pid.and_then(|p| rss_kib(p).ok()),
                fds: pid.and_then(|p| {
                    std::fs::read_dir(format!("/proc/{p}/fd"))
                        .ok()
                        .map(Iterator::count)
                }),
                name,
            }
        })
        .collect()
}

pub(super) fn held(status: &[NodeStatus], skip: Option<&str>) -> usize {
    status
        .iter()
        .filter(|s| s.up && Some(s.name.as_str()) != skip)
        .map(|s| s.agents)
        .sum()
}

fn describe(status: &[NodeStatus]) -> String {
    let parts: Vec<String> = status
        .iter()
        .map(|s| {
            let state = if s.up { "" } else { " dead" };
            format!("{} {}{state}", s.name, s.agents)
        })
        .collect();
    parts.join(", ")
}

/// Runs the whole figure with `n` agents.
pub async fn idle_agents(
    plan: &Plan,
    stack: &mut ClusterStack,
    n: usize,
) -> anyhow::Result<IdleCluster> {
    let limit = Duration::from_secs(60 + (n as u64) / 50);
    let mut f = IdleCluster {
        agents: n,
        load_start: host::load_average(),
        ..Default::default()
    };
    println!("  registering {n} agents through node1");
    let t = Instant::now();
    loadgen::register(&stack.api(0)?, 0..n, 8)
        .await
        .context("registering load agents")?;
    f.register_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.before = nodes_now(stack).await;
    let host_key = russh::keys::PublicKey::from_openssh(stack.cluster.host_key())
        .context("parsing the cluster's host key")?;
    let cpu_start = CpuSnap::take(stack);
    let load = LoadGen::start(plan.load_config(stack.lb()?.ssh_addr(), host_key, 0..n))?;
    let result = measure(stack, &load, n, limit, cpu_start, &mut f).await;
    f.connections = load.connects();
    f.failures = load.failures();
    f.last_error = load.last_error();
    load.stop().await;
    f.load_end = host::load_average();
    result.map(|()| f)
}

/// The first connections of `n` agents, as far as the generator and the store see them.
pub(super) struct Connected {
    /// The generator's start -> every agent online at it.
    pub all_s: f64,
    /// The generator's start -> `cluster status` shows them all.
    pub presence_s: Option<f64>,
    /// CPU-seconds by part from `cpu_start` until then.
    pub cpu: Vec<(String, f64)>,
}

/// Watches `n` agents connect: fails fast when none gets in within 30 s (wrong cipher,
/// refused keys...), then polls the generator and `cluster status` until every agent is online
/// and present; an error when not all came online within `limit`.
pub(super) async fn connect_phase(
    stack: &ClusterStack,
    load: &impl Online,
    n: usize,
    limit: Duration,
    cpu_start: &CpuSnap,
) -> anyhow::Result<Connected> {
    let last_error = || load.last_error().unwrap_or_else(|| "none".to_owned());
    if loadgen::wait_online(load, Duration::from_secs(30), |k| k > 0)
        .await
        .is_none()
    {
        bail!(
            "no load agent could connect within 30 s; the last error: {}",
            last_error()
        );
    }
    let ((_, all), presence_s) = tokio::join!(
        watch_generator(load, n, limit, false),
        watch_status(stack, load, limit, "every agent present", |s, _| {
            held(s, None) >= n
        }),
    );
    let cpu = cpu_start.until(&CpuSnap::take(stack));
    let Some(all_s) = all else {
        bail!(
            "only {} of {n} agents came online within {limit:?}; the last error: {}",
            load.online(),
            last_error()
        );
    };
    Ok(Connected {
        all_s,
        presence_s,
        cpu,
    })
}

/// `node1 Some(500) agents, Some(46240) KiB; ...`: where the agents are.
pub(super) fn spread(nodes: &[NodeFigures]) -> String {
    (nodes.iter())
        .map(|x| format!("{} {:?} agents, {:?} KiB", x.name, x.agents, x.rss_kib))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The generator's side of a phase: polled every 20 ms until every agent is online, having
/// first seen fewer when `expect_drop`; the lowest count seen and when all were online.
pub(super) async fn watch_generator(
    load: &impl Online,
    n: usize,
    limit: Duration,
    expect_drop: bool,
) -> (usize, Option<f64>) {
    let start = Instant::now();
    let mut lowest = load.online();
    while start.elapsed() < limit && load.alive() {
        let online = load.online();
        lowest = lowest.min(online);
        if online >= n && (!expect_drop || lowest < n) {
            let at = start.elapsed().as_secs_f64();
            println!("  all {n} online at the generator after {at:.1} s");
            return (lowest, Some(at));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (lowest, None)
}

/// The store's side: `cluster status` every 500 ms until `done` holds for it (or `limit`
/// passes), printing progress every 5 s; when it held.
pub(super) async fn watch_status(
    stack: &ClusterStack,
    load: &impl Online,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&[NodeStatus], f64) -> bool,
) -> Option<f64> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    while start.elapsed() < limit && load.alive() {
        let status = stack.status(0).await.unwrap_or_default();
        let at = start.elapsed().as_secs_f64();
        if done(&status, at) {
            println!(
                "  cluster status: {what} after {at:.1} s ({})",
                describe(&status)
            );
            return Some(at);
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "  {at:.0} s: {} online at the generator; cluster status: {}",
                load.online(),
                describe(&status)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

async fn measure(
    stack: &mut ClusterStack,
    load: &LoadGen,
    n: usize,
    limit: Duration,
    cpu_start: CpuSnap,
    f: &mut IdleCluster,
) -> anyhow::Result<()> {
    let connected = connect_phase(stack, load, n, limit, &cpu_start).await?;
    (f.connect_all_s, f.presence_all_s) = (Some(connected.all_s), connected.presence_s);
    f.connect_cpu = connected.cpu;
    f.connected = load.online();
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.with_agents = nodes_now(stack).await;
    println!("  spread: {}", spread(&f.with_agents));

    let killed = passerelle_e2e::cluster::TestCluster::name(KILLED);
    f.killed.clone_from(&killed);
    f.load_kill = host::load_average();
    println!("  kill -9 {killed}");
    let connects_before = load.connects();
    let cpu_kill = CpuSnap::take(stack);
    let t_kill = Instant::now();
    f.killed_log = stack.cluster.kill(KILLED).await?;
    let stack_ref: &ClusterStack = stack;
    let lb_watch = async {
        while t_kill.elapsed() < limit {
            if let Ok(true) = stack_ref.lb_ssh_down(&killed).await {
                return Some(t_kill.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    };
    let (mut dead_s, mut presence_s, mut cpu_back) = (None, None, None);
    let ((lowest, back), _, lb_down) = tokio::join!(
        watch_generator(load, n, limit, true),
        watch_status(
            stack_ref,
            load,
            limit,
            "the survivors hold every agent and the killed node is dead",
            |s, at| {
                if dead_s.is_none() && !s.iter().any(|s| s.name == killed && s.up) {
                    dead_s = Some(at);
                }
                if presence_s.is_none() && held(s, Some(&killed)) >= n {
                    presence_s = Some(at);
                    cpu_back = Some(CpuSnap::take(stack_ref));
                }
                dead_s.is_some() && presence_s.is_some()
            }
        ),
        lb_watch,
    );
    f.reconnections = load.connects() - connects_before;
    if let Some(back) = cpu_back {
        f.recover_cpu = cpu_kill.until(&back);
    }
    (f.dead_s, f.presence_back_s) = (dead_s, presence_s);
    (f.dropped, f.back_s, f.lb_down_s) = (n.saturating_sub(lowest), back, lb_down);
    f.api_online = stack
        .front_api()?
        .agents()
        .await
        .ok()
        .map(|v| v.iter().filter(|a| a.online).count());
    f.after_kill = nodes_now(stack).await;

    println!("  restarting {killed}");
    stack.cluster.restart(KILLED).await?;
    let ready = Instant::now();
    while ready.elapsed() < Duration::from_secs(60)
        && (f.rejoin_status_s.is_none() || f.rejoin_lb_s.is_none())
    {
        let now = Some(ready.elapsed().as_secs_f64());
        if f.rejoin_status_s.is_none()
            && let Ok(status) = stack.status(0).await
            && status.iter().any(|s| s.name == killed && s.up)
        {
            f.rejoin_status_s = now;
        }
        if f.rejoin_lb_s.is_none()
            && let Ok(ssh) = stack.lb_servers(passerelle_e2e::haproxy::SSH_BACKEND).await
            && let Ok(https) = stack
                .lb_servers(passerelle_e2e::haproxy::HTTPS_BACKEND)
                .await
            && ssh.iter().chain(&https).all(|s| s.0 != killed || s.2)
        {
            f.rejoin_lb_s = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.after_restart = nodes_now(stack).await;
    println!(
        "  {killed} rejoined: status up after {:?} s, HAProxy up after {:?} s",
        f.rejoin_status_s, f.rejoin_lb_s
    );
    Ok(())
}
