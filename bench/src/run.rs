//! The benchmark plan: which stacks run, what is measured on each, in which order. Stacks are
//! measured interleaved (a, b, ceiling, then again) so that drift of the machine spreads over all
//! of them. A failing measurement becomes a line under "Problems" and an empty cell, never a
//! wrong figure. Concurrent sessions are measured spread over agents first (sessions of different
//! workstations), then all on ONE agent, so that a broker that drops a busy agent (see
//! BENCHMARKS.md) cannot disturb the other figures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::host::{self, CpuWatch};
use crate::loadgen::{self, LoadConfig, LoadGen};
use crate::measure::{self, Direction, Endpoint, median, ms, percentile};
use crate::report::{Concurrent, ConcurrentLine, IdleFigures, Layout, StackFigures};
use crate::stacks::log_summary;
use crate::stacks::passerelle::{Broker, BrokerCmd, known_hosts_line};

/// What to measure and how much.
#[derive(Debug, Clone)]
pub struct Plan {
    pub runs: usize,
    pub bulk_bytes: u64,
    pub directions: Vec<Direction>,
    pub rtt_count: usize,
    pub setup_count: usize,
    pub sessions: Vec<usize>,
    pub window: Duration,
    pub agents: Vec<usize>,
    pub source_ips: u8,
    pub parallel_connects: usize,
    pub cipher: &'static str,
    /// The idle agents' key exchange (see [`crate::loadgen::KEXES`]).
    pub agent_kex: &'static str,
    /// Concurrent sessions per agent in the spread figures (one agent per this many sessions).
    pub sessions_per_agent: usize,
    /// Also measure every concurrency level with all sessions on ONE agent.
    pub one_agent: bool,
}

impl Plan {
    /// Load agents `agents` connecting to `target` as this plan says (source addresses,
    /// attempts in flight, cipher, key exchange).
    pub fn load_config(
        &self,
        target: SocketAddr,
        host_key: russh::keys::PublicKey,
        agents: std::ops::Range<usize>,
    ) -> LoadConfig {
        LoadConfig {
            target,
            host_key,
            agents,
            source_ips: self.source_ips,
            parallel_connects: self.parallel_connects,
            cipher: self.cipher,
            kex: self.agent_kex,
        }
    }

    /// Agents that `n` spread sessions use.
    pub fn agents_for(&self, n: usize) -> usize {
        n.div_ceil(self.sessions_per_agent.max(1))
    }

    /// Pool agents each stack needs for the spread figures.
    pub fn pool_size(&self) -> usize {
        self.sessions
            .iter()
            .map(|&n| self.agents_for(n))
            .max()
            .unwrap_or(0)
    }
}

/// One stack to measure.
pub struct Target<'a> {
    pub label: &'static str,
    /// The main agent: bulk, round trips, set-up.
    pub ep: Endpoint,
    /// The agent that carries the "ONE agent" concurrency figures.
    pub one: Endpoint,
    /// One endpoint per pool agent, for the spread concurrency figures.
    pub pool: Vec<Endpoint>,
    pub out: &'a mut StackFigures,
}

/// Runs every throughput, latency and set-up measurement over `targets`.
pub async fn streams(
    plan: &Plan,
    targets: &mut [Target<'_>],
    problems: &mut Vec<String>,
    watch: &mut CpuWatch,
) {
    watch.phase("bulk");
    // Warm-up: one small transfer each (first connections pay for forks, caches, lazy inits).
    for t in targets.iter() {
        if let Err(e) = measure::bulk(&t.ep, Direction::Down, 4 << 20).await {
            problems.push(format!("{}: warm-up: {e:#}", t.label));
        }
    }
    for &dir in &plan.directions {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let mut cpu: Vec<HashMap<String, u64>> = vec![HashMap::new(); targets.len()];
        for run in 0..plan.runs {
            for (i, t) in targets.iter().enumerate() {
                match measure::bulk(&t.ep, dir, plan.bulk_bytes).await {
                    Ok(b) => {
                        samples[i].push(b.mbs);
                        for (k, v) in b.cpu {
                            *cpu[i].entry(k).or_default() += v;
                        }
                    }
                    Err(e) => problems.push(format!("{}: bulk {dir:?} run {run}: {e:#}", t.label)),
                }
            }
        }
        for ((t, s), c) in targets.iter_mut().zip(&samples).zip(&cpu) {
            let v = (!s.is_empty()).then(|| median(s));
            // CPU-seconds per GB moved, over all runs together (10 ms ticks are coarse).
            let gb = s.len() as f64 * plan.bulk_bytes as f64 / 1e9;
            let mut per_gb: Vec<(String, f64)> = c
                .iter()
                .map(|(k, &v)| (k.clone(), v as f64 * host::tick_secs() / gb.max(1e-9)))
                .collect();
            per_gb.sort_by(|a, b| b.1.total_cmp(&a.1));
            t.out.runs = plan.runs;
            match dir {
                Direction::Down => {
                    t.out.down_ok = s.len();
                    t.out.down_mbs = v;
                    t.out.down_cpu = per_gb;
                }
                Direction::Up => {
                    t.out.up_ok = s.len();
                    t.out.up_mbs = v;
                    t.out.up_cpu = per_gb;
                }
            }
        }
    }

    watch.phase("round trips");
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut p99s = p50s.clone();
    for run in 0..plan.runs {
        for (i, t) in targets.iter().enumerate() {
            match measure::round_trips(&t.ep, plan.rtt_count).await {
                Ok(d) => {
                    let v: Vec<f64> = d.into_iter().map(ms).collect();
                    p50s[i].push(percentile(&v, 50.0));
                    p99s[i].push(percentile(&v, 99.0));
                }
                Err(e) => problems.push(format!("{}: round trips run {run}: {e:#}", t.label)),
            }
        }
    }
    for (i, t) in targets.iter_mut().enumerate() {
        t.out.rtt_p50_ms = (!p50s[i].is_empty()).then(|| median(&p50s[i]));
        t.out.rtt_p99_ms = (!p99s[i].is_empty()).then(|| median(&p99s[i]));
    }

    watch.phase("set-up");
    let mut totals: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut connects = totals.clone();
    let per_run = plan.setup_count.div_ceil(plan.runs.max(1));
    for run in 0..plan.runs {
        for (i, t) in targets.iter().enumerate() {
            match measure::setups(&t.ep, per_run).await {
                Ok(v) => {
                    totals[i].extend(v.iter().map(|s| ms(s.total)));
                    connects[i].extend(v.iter().map(|s| ms(s.connect_to_first_byte)));
                }
                Err(e) => problems.push(format!("{}: set-up run {run}: {e:#}", t.label)),
            }
        }
    }
    for (i, t) in targets.iter_mut().enumerate() {
        let some = |v: &Vec<f64>, p| (!v.is_empty()).then(|| percentile(v, p));
        t.out.setup_total_p50_ms = some(&totals[i], 50.0);
        t.out.setup_total_p99_ms = some(&totals[i], 99.0);
        t.out.setup_connect_p50_ms = some(&connects[i], 50.0);
        t.out.setup_connect_p99_ms = some(&connects[i], 99.0);
    }

    // Spread first, then ONE agent: a broker that drops the ONE agent must not disturb the rest.
    let mut lines: Vec<(usize, Layout)> = plan
        .sessions
        .iter()
        .map(|&n| {
            (
                n,
                Layout::Spread {
                    agents: plan.agents_for(n),
                },
            )
        })
        .collect();
    if plan.one_agent {
        lines.extend(
            plan.sessions
                .iter()
                .filter(|&&n| plan.agents_for(n) > 1)
                .map(|&n| (n, Layout::OneAgent)),
        );
    }
    for (n, layout) in lines {
        watch.phase(format!("{n} sessions {}", layout.describe()));
        let mut runs: Vec<Vec<Concurrent>> = vec![Vec::new(); targets.len()];
        for run in 0..plan.runs {
            for (i, t) in targets.iter().enumerate() {
                let eps = match layout {
                    Layout::Spread { agents } if t.pool.len() >= agents => &t.pool[..agents],
                    Layout::Spread { agents } => {
                        problems.push(format!(
                            "{}: {n} sessions need {agents} agents, {} started",
                            t.label,
                            t.pool.len()
                        ));
                        continue;
                    }
                    Layout::OneAgent => std::slice::from_ref(&t.one),
                };
                match measure::concurrent(eps, n, plan.window).await {
                    Ok(rates) => runs[i].push(Concurrent {
                        aggregate_mbs: rates.iter().sum(),
                        min_mbs: rates.iter().copied().fold(f64::INFINITY, f64::min),
                        max_mbs: rates.iter().copied().fold(0.0, f64::max),
                        jain: measure::jain(&rates),
                    }),
                    Err(e) => problems.push(format!(
                        "{}: {n} sessions {} run {run}: {e:#}",
                        t.label,
                        layout.describe()
                    )),
                }
            }
        }
        for (i, t) in targets.iter_mut().enumerate() {
            let r = &runs[i];
            let figures = (!r.is_empty()).then(|| {
                let m = |f: fn(&Concurrent) -> f64| median(&r.iter().map(f).collect::<Vec<_>>());
                Concurrent {
                    aggregate_mbs: m(|c| c.aggregate_mbs),
                    min_mbs: m(|c| c.min_mbs),
                    max_mbs: m(|c| c.max_mbs),
                    jain: m(|c| c.jain),
                }
            });
            t.out.concurrent.push(ConcurrentLine {
                sessions: n,
                layout,
                figures,
                ok: r.len(),
                runs: plan.runs,
            });
        }
    }
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

/// Idle agents at one scale: a fresh broker, `n` registered agents connecting, RSS, then a
/// SIGKILL and restart on the same data dir and SSH port, and the time until all are back.
pub async fn idle_agents(
    plan: &Plan,
    bin: &BrokerCmd,
    dir: &Path,
    n: usize,
) -> anyhow::Result<IdleFigures> {
    let data = dir.join(format!("idle-{n}"));
    let log = dir.join(format!("passerelle-idle-{n}.log"));
    let broker = Broker::start(bin, &data, SocketAddr::from(([127, 0, 0, 1], 0)), &log).await?;
    let ssh_addr = broker.ssh_addr;
    let api = broker.api()?;
    let t = Instant::now();
    loadgen::register(&api, 0..n, 8)
        .await
        .context("registering load agents")?;
    let mut f = IdleFigures {
        agents: n,
        register_s: t.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let line = known_hosts_line(&bin.bin, &data, ssh_addr).await?;
    let host_key =
        russh::keys::PublicKey::from_openssh(line.split_once(' ').map_or("", |(_, k)| k))
            .context("parsing the broker's host key")?;
    // Let the registration's allocations settle before the "before" figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.rss_before_kib = rss_kib(broker.pid())?;

    let load = LoadGen::start(plan.load_config(ssh_addr, host_key, 0..n))?;
    // Fail fast when nothing gets in at all (wrong cipher, refused keys...).
    if loadgen::wait_online(&load, Duration::from_secs(20), |k| k > 0)
        .await
        .is_none()
    {
        let e = load.last_error().unwrap_or_default();
        load.stop().await;
        broker.kill().await;
        anyhow::bail!("no load agent could connect within 20 s; the last error: {e}");
    }
    let limit = Duration::from_secs(60 + (n as u64) / 50);
    f.connect_all_s = loadgen::wait_online(&load, limit, |k| k >= n)
        .await
        .map(|d| d.as_secs_f64());
    f.connected = load.online();
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.rss_with_agents_kib = rss_kib(broker.pid())?;
    f.fds_with_agents = std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
        .map(Iterator::count)
        .unwrap_or(0);
    f.online_by_api = api
        .agents()
        .await
        .ok()
        .map(|v| v.iter().filter(|a| a.online).count());

    // Restart: the agents that were connected must all come back.
    let target = f.connected;
    let killed = Instant::now();
    broker.kill().await;
    let _ = loadgen::wait_online(&load, Duration::from_secs(30), |k| k == 0).await;
    let broker = Broker::start(bin, &data, ssh_addr, &log).await?;
    let ready = Instant::now();
    let back = loadgen::wait_online(&load, limit, |k| k >= target).await;
    f.reconnect_from_kill_s = back.map(|_| killed.elapsed().as_secs_f64());
    f.reconnect_from_ready_s = back.map(|_| ready.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.rss_after_restart_kib = rss_kib(broker.pid()).ok();
    f.failures = load.failures();
    f.connections = load.connects();
    f.last_error = load.last_error();
    load.stop().await;
    broker.kill().await;
    f.broker_log = log_summary(&log);
    Ok(f)
}
