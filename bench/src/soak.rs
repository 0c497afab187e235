//! Soak: for a bounded time, agents connect and disconnect (russh load agents, in waves) while
//! viewers open, use and close sessions on OpenSSH agents without pause; the broker's RSS and
//! open file descriptors are sampled every 30 s. Memory and descriptors must stay flat: what a
//! session or an agent connection takes must come back when it ends.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::loadgen::{self, LoadConfig, LoadGen};
use crate::measure::{self, Endpoint};
use crate::run::{Plan, rss_kib};
use crate::stacks::log_summary;
use crate::stacks::passerelle::{BrokerCmd, PasserelleStack, known_hosts_line};

/// Agents in each connect/disconnect wave.
const WAVE_AGENTS: usize = 200;
/// Viewers opening sessions at once.
const VIEWERS: usize = 8;
/// Round trips per session before it is closed.
const TRIPS_PER_SESSION: usize = 50;
/// A viewer's pause between sessions (a soak, not a load test: CPU stays available).
const VIEWER_PAUSE: Duration = Duration::from_millis(200);
/// Sampling period.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    fds: usize,
    threads: usize,
    sessions: usize,
    session_errors: usize,
    agent_connects: usize,
}

fn sample(pid: u32, at: Instant, counters: &Counters) -> Sample {
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    Sample {
        at_s: at.elapsed().as_secs_f64(),
        rss_kib: rss_kib(pid).unwrap_or(0),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(Iterator::count)
            .unwrap_or(0),
        threads,
        sessions: counters.sessions.load(Ordering::Relaxed),
        session_errors: counters.session_errors.load(Ordering::Relaxed),
        agent_connects: counters.agent_connects.load(Ordering::Relaxed),
    }
}

#[derive(Default)]
struct Counters {
    sessions: AtomicUsize,
    session_errors: AtomicUsize,
    agent_connects: AtomicUsize,
    waves: AtomicUsize,
    last_error: std::sync::Mutex<Option<String>>,
}

/// Runs the soak for `minutes` and returns its report (markdown).
pub async fn soak(
    plan: &Plan,
    bin: &BrokerCmd,
    dir: &Path,
    service: std::net::SocketAddr,
    minutes: f64,
) -> anyhow::Result<String> {
    let stack = PasserelleStack::start(bin, dir, service, plan.cipher, &[], VIEWERS).await?;
    let pid = stack.broker.pid();
    let api = stack.api.clone();
    loadgen::register(&api, 0..WAVE_AGENTS, 8).await?;
    let line = known_hosts_line(
        &bin.bin,
        &dir.join("passerelle-data"),
        stack.broker.ssh_addr,
    )
    .await?;
    let host_key =
        russh::keys::PublicKey::from_openssh(line.split_once(' ').map_or("", |(_, k)| k))
            .context("parsing the broker's host key")?;
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet_before = sample(pid, start, &counters);

    // Viewers: each opens a session on its own pool agent, round-trips, closes, again.
    let mut tasks = tokio::task::JoinSet::new();
    for agent in stack.pool_ids.iter().take(VIEWERS).cloned() {
        let ep = Endpoint::Passerelle {
            api: api.clone(),
            agent,
        };
        let (c, stop) = (counters.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                match measure::round_trips(&ep, TRIPS_PER_SESSION).await {
                    Ok(_) => {
                        tokio::time::sleep(VIEWER_PAUSE).await;
                        c.sessions.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        *c.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        c.session_errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    // Agents: waves of WAVE_AGENTS connect, stay 20 s, disconnect, 5 s apart.
    {
        let (c, stop) = (counters.clone(), stop.clone());
        let (target, source_ips, cipher) = (stack.broker.ssh_addr, plan.source_ips, plan.cipher);
        let cfg = move || LoadConfig {
            target,
            host_key: host_key.clone(),
            agents: 0..WAVE_AGENTS,
            source_ips,
            parallel_connects: 64,
            cipher,
            kex: crate::loadgen::KEXES[0],
        };
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                let Ok(load) = LoadGen::start(cfg()) else {
                    break;
                };
                let _ = loadgen::wait_online(&load, Duration::from_secs(60), |k| k >= WAVE_AGENTS)
                    .await;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(20)) => {}
                    () = stop.cancelled() => {}
                }
                c.agent_connects
                    .fetch_add(load.connects(), Ordering::Relaxed);
                load.stop().await;
                c.waves.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }

    let deadline = start + Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(SAMPLE_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        let s = sample(pid, start, &counters);
        println!(
            "soak {:>6.0} s: RSS {:>7} KiB, {:>4} fds, {:>3} threads, {} sessions ({} failed), {} agent connections",
            s.at_s, s.rss_kib, s.fds, s.threads, s.sessions, s.session_errors, s.agent_connects
        );
        samples.push(s);
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    // Ended sessions stay as tombstones for 10 minutes; descriptors must be back at once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let quiet_after = sample(pid, start, &counters);
    let broker_log = log_summary(&dir.join("passerelle.log"));
    let drops = stack.agent_drops();
    let last_error = counters.last_error.lock().ok().and_then(|e| e.clone());
    stack.stop().await;

    Ok(report(
        minutes,
        &samples,
        quiet_before,
        quiet_after,
        counters.waves.load(Ordering::Relaxed),
        [broker_log, drops, last_error],
    ))
}

fn report(
    minutes: f64,
    samples: &[Sample],
    before: Sample,
    after: Sample,
    waves: usize,
    notes: [Option<String>; 3],
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Soak of {minutes} min: {VIEWERS} viewers opening sessions one after the other ({TRIPS_PER_SESSION} \
         64-byte round trips each, close, {} ms pause) on OpenSSH agents, while waves of {WAVE_AGENTS} russh \
         agents connect, stay 20 s and disconnect ({waves} waves).\n",
        VIEWER_PAUSE.as_millis()
    );
    md.push_str(
        "| time | broker RSS | open fds | threads | sessions done (failed) | agent connections |\n",
    );
    md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    let row = |md: &mut String, label: &str, s: &Sample| {
        let _ = writeln!(
            md,
            "| {label} | {:.1} MiB | {} | {} | {} ({}) | {} |",
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.threads,
            s.sessions,
            s.session_errors,
            s.agent_connects
        );
    };
    row(&mut md, "start, idle", &before);
    let every = (samples.len() / 12).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % every == every - 1 || i + 1 == samples.len() {
            row(&mut md, &format!("{:.0} min", s.at_s / 60.0), s);
        }
    }
    row(&mut md, "end, idle (10 s after)", &after);
    // Flat: over the second half of the run, RSS grows by less than 5 % (or 2 MiB), and the
    // descriptors at rest are those of the start.
    let half: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s >= samples.last().map_or(0.0, |l| l.at_s) / 2.0)
        .collect();
    if let (Some(first), Some(last)) = (half.first(), half.last()) {
        let growth = last.rss_kib as f64 - first.rss_kib as f64;
        let max = half.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let flat = growth <= (first.rss_kib as f64 * 0.05).max(2048.0);
        let _ = writeln!(
            md,
            "\nSecond half of the run: RSS {:.1} → {:.1} MiB (max {:.1}): {}. Open fds at rest: {} before, {} after: {}.",
            first.rss_kib as f64 / 1024.0,
            last.rss_kib as f64 / 1024.0,
            max as f64 / 1024.0,
            if flat { "flat" } else { "GROWING" },
            before.fds,
            after.fds,
            if after.fds <= before.fds + 2 {
                "flat"
            } else {
                "LEAKING"
            }
        );
    }
    for note in notes.into_iter().flatten() {
        let _ = writeln!(md, "\nNote: {note}");
    }
    md
}
