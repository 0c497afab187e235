//! `passerelle-bench --fleet` (issue 17, "Scale"): tens of thousands of idle agents on this one
//! machine, every broker process killed with SIGKILL and started again, and the time until all
//! are back. One process may hold at most as many sockets as its open-files limit, so the
//! agents are spread over `--fleet-nodes` cluster nodes (one PostgreSQL, no load balancer: each
//! agent knows its node, as with DNS round robin) and over as many load-generator processes
//! ([`crate::loadprocs`]). Figures: each node's memory per agent, the time for all to connect,
//! and after `kill -9` of every node and their restart, the time until every agent is online
//! again and `cluster status` shows them; the CPU of each part in both phases.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::cpu::CpuSnap;
use super::idle::{
    NodeFigures, connect_phase, held, nodes_now, spread, watch_generator, watch_status,
};
use super::pgstats;
use super::report::{cpu_table, secs, totals};
use super::stack::ClusterStack;
use crate::host;
use crate::loadprocs::{ChildSettings, LoadProcs};
use crate::run::Plan;
use crate::stacks::log_summary;

/// A phase (all connecting, or all coming back) of `n` agents must end within this.
fn phase_limit(n: usize) -> Duration {
    Duration::from_secs(60 + n as u64 / 100)
}

/// The whole figure.
#[derive(Debug, Default)]
struct Fleet {
    agents: usize,
    nodes: usize,
    register_s: f64,
    /// Generators' start -> every agent online at them.
    connect_all_s: Option<f64>,
    /// Generators' start -> `cluster status` shows them all.
    presence_all_s: Option<f64>,
    before: Vec<NodeFigures>,
    with_agents: Vec<NodeFigures>,
    /// From the first kill: every node killed.
    killed_s: f64,
    /// From the first kill: each node's restart printed its ready banner.
    ready_s: Vec<f64>,
    /// From the first kill: every agent online again at the generators.
    back_s: Option<f64>,
    /// From the first kill: `cluster status` shows every agent held again.
    presence_back_s: Option<f64>,
    after: Vec<NodeFigures>,
    connect_cpu: Vec<(String, f64)>,
    recover_cpu: Vec<(String, f64)>,
    connections: usize,
    reconnections: usize,
    failures: usize,
    last_error: Option<String>,
    /// `--pg-statements`: PostgreSQL's statements in each phase.
    statements: bool,
    connect_statements: Vec<pgstats::Statement>,
    recover_statements: Vec<pgstats::Statement>,
    load_start: String,
    load_kill: String,
    load_end: String,
}

/// Runs the figure with `n` agents over `nodes` nodes; the markdown section.
pub async fn run(
    plan: &Plan,
    bin: &Path,
    dir: &Path,
    n: usize,
    nodes: usize,
    statements: bool,
) -> anyhow::Result<String> {
    super::require_bin(bin)?;
    let started = Instant::now();
    println!(
        "fleet: starting PostgreSQL, `cluster init` and {nodes} nodes of {}",
        bin.display()
    );
    let mut stack = ClusterStack::without_lb(bin, nodes, statements).await?;
    println!("fleet: up after {:.1} s", started.elapsed().as_secs_f64());
    let parts: Vec<(SocketAddr, Range<usize>)> = (0..nodes)
        .map(|i| {
            (
                stack.cluster.ssh_addr(i),
                i * n / nodes..(i + 1) * n / nodes,
            )
        })
        .collect();
    let mut f = Fleet {
        agents: n,
        nodes,
        load_start: host::load_average(),
        ..Default::default()
    };
    println!("  registering {n} agents through the API, a share through each node");
    let t = Instant::now();
    let apis = (0..nodes)
        .map(|i| stack.api(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    futures_util::future::try_join_all(
        (apis.iter().zip(&parts))
            .map(|(api, (_, ids))| crate::loadgen::register(api, ids.clone(), 8)),
    )
    .await
    .context("registering load agents")?;
    f.register_s = t.elapsed().as_secs_f64();
    println!("  registered in {:.1} s", f.register_s);
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.before = nodes_now(&stack).await;
    let settings = ChildSettings {
        host_key: stack.cluster.host_key().to_owned(),
        source_ips: plan.source_ips,
        parallel_connects: (plan.parallel_connects / nodes).max(1),
        cipher: plan.cipher,
        kex: plan.agent_kex,
    };
    f.statements = statements;
    if statements {
        pgstats::reset(&stack.cluster).await?;
    }
    let cpu_start = CpuSnap::take(&stack);
    let load = LoadProcs::start(&parts, &settings)?;
    println!("  {nodes} load generator processes started");
    let result = measure(&mut stack, &load, cpu_start, &mut f).await;
    f.connections = load.connects();
    f.failures = load.failures();
    f.last_error = load.last_error();
    load.stop().await;
    f.load_end = host::load_average();
    let mut problems = Vec::new();
    for i in 0..nodes {
        let name = passerelle_e2e::cluster::TestCluster::name(i);
        let log = dir.join(format!("{name}.log"));
        if std::fs::write(&log, stack.cluster.logs(i)).is_ok()
            && let Some(s) = log_summary(&log)
        {
            println!("  {name} logged {s}");
            problems.push(format!("{name} logged {s}"));
        }
    }
    result?;
    println!(
        "fleet: done after {:.0} s; stopping the nodes and PostgreSQL",
        started.elapsed().as_secs_f64()
    );
    Ok(markdown(&f, &problems))
}

async fn measure(
    stack: &mut ClusterStack,
    load: &LoadProcs,
    cpu_start: CpuSnap,
    f: &mut Fleet,
) -> anyhow::Result<()> {
    let n = f.agents;
    let limit = phase_limit(n);
    let connected = match connect_phase(stack, load, n, limit, &cpu_start).await {
        Ok(c) => c,
        // A generator process that exited says why better than the count does.
        Err(e) => return Err(load.check_alive().err().unwrap_or(e)),
    };
    (f.connect_all_s, f.presence_all_s) = (Some(connected.all_s), connected.presence_s);
    f.connect_cpu = connected.cpu;
    if f.statements {
        f.connect_statements = pgstats::read(&stack.cluster).await?;
        pgstats::reset(&stack.cluster).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.with_agents = nodes_now(stack).await;
    println!("  spread: {}", spread(&f.with_agents));

    f.load_kill = host::load_average();
    println!("  kill -9 of every node, then each started again");
    let connects_before = load.connects();
    let t_kill = Instant::now();
    for i in 0..f.nodes {
        stack.cluster.kill(i).await?;
    }
    f.killed_s = t_kill.elapsed().as_secs_f64();
    // The nodes are gone: the restarted ones' CPU counts from their start.
    let cpu_kill = CpuSnap::take(stack);
    for i in 0..f.nodes {
        stack.cluster.restart(i).await?;
        f.ready_s.push(t_kill.elapsed().as_secs_f64());
    }
    println!(
        "  every node killed after {:.2} s, ready again after {:.1} s",
        f.killed_s,
        f.ready_s.last().copied().unwrap_or_default()
    );
    let (_, back) = watch_generator(load, n, limit, true).await;
    let from_ready = f.ready_s.last().copied().unwrap_or_default();
    f.back_s = back.map(|b| b + from_ready);
    let watched = Instant::now();
    let presence = watch_status(stack, load, limit, "every agent present", |s, _| {
        held(s, None) >= n
    })
    .await;
    f.presence_back_s = presence.map(|p| p + (watched - t_kill).as_secs_f64());
    f.recover_cpu = cpu_kill.until(&CpuSnap::take(stack));
    f.reconnections = load.connects() - connects_before;
    if f.statements {
        f.recover_statements = pgstats::read(&stack.cluster).await?;
    }
    load.check_alive()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.after = nodes_now(stack).await;
    println!("  after the restart: {}", spread(&f.after));
    Ok(())
}

/// KiB per agent: the nodes' RSS in `with` over the RSS in `base`, per agent.
fn per_agent(with: &[NodeFigures], base: &[NodeFigures], agents: usize) -> Option<f64> {
    let sum = |v: &[NodeFigures]| v.iter().map(|x| x.rss_kib).sum::<Option<u64>>();
    let (w, b) = (sum(with)?, sum(base)?);
    (agents > 0).then(|| w.saturating_sub(b) as f64 / agents as f64)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

fn markdown(f: &Fleet, problems: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{n} idle agents (the russh load generator, over {k} processes) connect straight to \
         {k} `passerelle serve` nodes of one cluster (one PostgreSQL 15, throwaway, \
         `fsync=off`; no load balancer: each agent knows its node, as with DNS round robin), a \
         share each. One process here may open at most the hard `RLIMIT_NOFILE` files, so no \
         single broker or generator process can hold them all. Then every node is killed with \
         SIGKILL and started again on its data dir and ports; the agents reconnect on their \
         own (a jitter of up to 250 ms, then retries backing off from 200 ms to 1 s).\n",
        n = f.agents,
        k = f.nodes
    );
    let _ = writeln!(
        out,
        "| node | agents | RSS before (KiB) | RSS with agents | KiB per agent | open files | \
         RSS after the restart | KiB per agent |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, w) in f.with_agents.iter().enumerate() {
        let (b, a) = (f.before.get(i), f.after.get(i));
        let per = |x: Option<&NodeFigures>, base: Option<&NodeFigures>| {
            let (x, base) = (x?.rss_kib?, base?.rss_kib?);
            let k = w.agents.filter(|&k| k > 0)?;
            Some(format!("{:.1}", x.saturating_sub(base) as f64 / k as f64))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            w.name,
            opt(w.agents),
            opt(b.and_then(|b| b.rss_kib)),
            opt(w.rss_kib),
            opt(per(Some(w), b)),
            opt(w.fds),
            opt(a.and_then(|a| a.rss_kib)),
            opt(per(a, b)),
        );
    }
    let kib = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1} KiB"));
    let ready: Vec<String> = f.ready_s.iter().map(|s| format!("{s:.1} s")).collect();
    let rows = [
        (
            format!("registering {} agents through the API", f.agents),
            format!("{:.1} s", f.register_s),
        ),
        (
            "all online at the generators, from their start".to_owned(),
            secs(f.connect_all_s),
        ),
        (
            "`cluster status` shows all present, from the generators' start".to_owned(),
            secs(f.presence_all_s),
        ),
        (
            "broker memory per agent, all nodes".to_owned(),
            kib(per_agent(&f.with_agents, &f.before, f.agents)),
        ),
        (
            "the same after the restart (new processes)".to_owned(),
            kib(per_agent(&f.after, &f.before, f.agents)),
        ),
        (
            format!("`kill -9` of the {} nodes, from the first", f.nodes),
            format!("{:.2} s", f.killed_s),
        ),
        (
            "each node restarted and ready (its banner), from the first kill".to_owned(),
            ready.join(", "),
        ),
        (
            "**all online again at the generators, from the first kill**".to_owned(),
            format!("**{}**", secs(f.back_s)),
        ),
        (
            "`cluster status` shows all present again, from the first kill".to_owned(),
            secs(f.presence_back_s),
        ),
    ];
    let _ = writeln!(out, "\n| | |\n|---|---:|");
    for (what, v) in rows {
        let _ = writeln!(out, "| {what} | {v} |");
    }
    let phases = format!(
        "from the generators' start until `cluster status` showed all {n} present ({n} \
         connections), and from the kill until it showed all present again ({r} \
         reconnections; the restarted nodes count from their start). \"load generators\" are \
         the agents' processes, \"harness\" the bench's polls",
        n = f.agents,
        r = f.reconnections
    );
    out.push_str(&cpu_table(
        (&f.connect_cpu, f.agents),
        (&f.recover_cpu, f.reconnections),
        &phases,
    ));
    if f.statements {
        out.push_str(&pgstats::table(
            "from the generators' start until all were connected",
            &f.connect_statements,
            f.agents,
        ));
        out.push_str(&pgstats::table(
            "from the kill until all were present again",
            &f.recover_statements,
            f.reconnections,
        ));
    }
    out.push_str(&totals(
        (f.connections, f.failures, f.last_error.as_deref()),
        [&f.load_start, &f.load_kill, &f.load_end],
    ));
    if !problems.is_empty() {
        let _ = writeln!(out, "\n#### Problems\n");
        for p in problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}
