//! Where the CPU goes during a phase of the idle-agent figure: each node, HAProxy, the
//! harness (the load generator and the poll of `cluster status`), the load generator's child
//! processes (`--fleet`), this run's PostgreSQL server,
//! and everything else on the machine (from `/proc/stat`), so that a slow phase can be told
//! apart from a busy machine.

use std::collections::HashMap;
use std::time::Instant;

use super::stack::ClusterStack;
use crate::host;

/// CPU ticks (10 ms) consumed so far, by part.
pub struct CpuSnap {
    at: Instant,
    parts: Vec<(String, u64)>,
    /// PostgreSQL's processes one by one: its backends come and go with the nodes' pools, and
    /// a backend that exits takes its ticks with it (only new ticks of live ones are counted).
    postgres: HashMap<u32, u64>,
    /// The machine's busy ticks (all CPUs).
    machine: u64,
}

/// The machine's busy ticks from `/proc/stat`'s `cpu` line (user to steal, without idle and
/// iowait).
fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = (line.split_whitespace().skip(1))
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// The postmaster of the server listening on `port` (its command line names the port).
fn postmaster(port: u16) -> Option<u32> {
    // Arguments are NUL-separated in `/proc/PID/cmdline`.
    let needle = format!("port={port}\0");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| host::cmdline_has(pid, "postgres") && host::cmdline_has(pid, &needle))
}

/// The port of the store URL in node 1's config file.
fn store_port(stack: &ClusterStack) -> Option<u16> {
    let config = std::fs::read_to_string(stack.cluster.config_path(0)).ok()?;
    let url = config
        .lines()
        .find_map(|l| l.strip_prefix("store_url = "))?;
    let hostport = url.trim_matches('"').split('@').nth(1)?.split('/').next()?;
    hostport.rsplit_once(':')?.1.parse().ok()
}

impl CpuSnap {
    pub fn take(stack: &ClusterStack) -> Self {
        let mut parts: Vec<(String, u64)> = (0..stack.nodes())
            .map(|i| {
                let ticks = stack.pid(i).map_or(0, |p| host::subtree_ticks(p, |_| true));
                (format!("node{}", i + 1), ticks)
            })
            .collect();
        let tree = host::tree_cpu();
        // The load generator's child processes (`--fleet`) are this executable: their name is
        // its file name's first 15 bytes.
        let exe = (std::env::current_exe().ok())
            .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .map(|name| name.chars().take(15).collect::<String>())
            .unwrap_or_default();
        for (name, comm) in [
            ("haproxy", "haproxy"),
            ("harness", "harness"),
            ("load generators", exe.as_str()),
        ] {
            parts.push((name.to_owned(), tree.get(comm).copied().unwrap_or(0)));
        }
        let postgres = store_port(stack)
            .and_then(postmaster)
            .map(|p| {
                (host::descendants_of(p).into_iter())
                    .filter_map(|pid| Some((pid, pid_ticks(pid)?)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            at: Instant::now(),
            parts,
            postgres,
            machine: machine_ticks(),
        }
    }

    /// CPU-seconds of each part from `self` to `later`, then "others" (the rest of the
    /// machine) and the phase's length as "wall".
    pub fn until(&self, later: &Self) -> Vec<(String, f64)> {
        let secs = |t: u64| t as f64 * host::tick_secs();
        let mut ours = 0;
        let mut out: Vec<(String, f64)> = (self.parts.iter())
            .map(|(name, before)| {
                let after = (later.parts.iter())
                    .find(|(n, _)| n == name)
                    .map_or(*before, |p| p.1);
                // A node killed in between counts nothing (its ticks are gone with it).
                let d = after.saturating_sub(*before);
                ours += d;
                (name.clone(), secs(d))
            })
            .collect();
        let pg: u64 = (later.postgres.iter())
            .map(|(pid, t)| t.saturating_sub(self.postgres.get(pid).copied().unwrap_or(0)))
            .sum();
        ours += pg;
        out.push(("postgres".to_owned(), secs(pg)));
        let machine = later.machine.saturating_sub(self.machine);
        out.push(("others".to_owned(), secs(machine.saturating_sub(ours))));
        out.push(("wall".to_owned(), (later.at - self.at).as_secs_f64()));
        out
    }
}

/// utime + stime of one process, in ticks (`/proc/PID/stat` fields 14 and 15).
fn pid_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): fields 14 and 15 are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
