//! The machine the figures come from: its description for the report, and a watcher of what
//! *other* processes do with the CPUs while the benchmark runs.
//!
//! The benchmark machine may be shared (other people compile on it). The 1-minute load average
//! cannot tell their work from ours, since the benchmark itself keeps both cores busy. So
//! [`CpuWatch`] samples `/proc/<pid>/stat` every second and sums the CPU time of processes that
//! are neither this process nor its descendants (the broker, sshd, ssh agents, websockify) nor
//! kernel threads. It is an estimate: a process that starts and ends between two samples is
//! missed, which on a build machine mostly means short compiler invocations.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// `/proc` reports CPU times in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
const TICKS_PER_SEC: f64 = 100.0;
/// Sampling period of [`CpuWatch`].
const PERIOD: Duration = Duration::from_secs(1);

/// The machine's description for the report.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or("unknown".to_owned(), |k| {
            format!("{:.1} GiB", k / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let ssh = std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    vec![
        ("date (UTC)".to_owned(), date),
        ("load average at start".to_owned(), load_average()),
        ("CPU".to_owned(), format!("{model}, nproc {cpus}")),
        ("RAM".to_owned(), ram),
        ("kernel".to_owned(), kernel),
        ("OpenSSH".to_owned(), ssh),
    ]
}

/// `git rev-parse --short HEAD` of the checkout the harness was built from, with a note when
/// its tree is dirty.
pub fn git_commit() -> String {
    // The checkout this harness was built from, wherever it is run from.
    let checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&checkout)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = if git(&["status", "--porcelain"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    format!("{}{dirty}", git(&["rev-parse", "--short", "HEAD"]))
}

/// `/proc/loadavg`'s first three fields.
pub fn load_average() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn load1() -> f64 {
    load_average()
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One sample: when, the CPU (in cores) other processes used since the previous sample, and
/// the 1-minute load average.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    others_cores: f64,
    load1: f64,
}

/// What other processes did during one phase of the benchmark.
#[derive(Debug, Clone)]
pub struct PhaseCpu {
    pub name: String,
    pub secs: f64,
    /// Mean and highest CPU of other processes over the phase's samples, in cores.
    pub others_mean: f64,
    pub others_max: f64,
    /// Lowest and highest 1-minute load average seen.
    pub load_min: f64,
    pub load_max: f64,
}

/// Samples other processes' CPU every second until stopped; see the module header.
pub struct CpuWatch {
    samples: Arc<Mutex<Vec<Sample>>>,
    phases: Vec<(String, Instant)>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl CpuWatch {
    pub fn start() -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(samples.clone(), stop.clone()));
        Self {
            samples,
            phases: Vec::new(),
            stop,
            task,
        }
    }

    /// Starts a new phase (the previous one ends here).
    pub fn phase(&mut self, name: impl Into<String>) {
        self.phases.push((name.into(), Instant::now()));
    }

    /// Stops sampling; per phase, what other processes did, and the same for the whole run.
    pub async fn finish(self) -> (Vec<PhaseCpu>, Option<PhaseCpu>) {
        self.stop.cancel();
        let _ = self.task.await;
        let end = Instant::now();
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let summary = |name: &str, from: Instant, to: Instant| {
            let s: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.at > from && s.at <= to)
                .collect();
            (!s.is_empty()).then(|| PhaseCpu {
                name: name.to_owned(),
                secs: (to - from).as_secs_f64(),
                others_mean: s.iter().map(|s| s.others_cores).sum::<f64>() / s.len() as f64,
                others_max: s.iter().map(|s| s.others_cores).fold(0.0, f64::max),
                load_min: s.iter().map(|s| s.load1).fold(f64::INFINITY, f64::min),
                load_max: s.iter().map(|s| s.load1).fold(0.0, f64::max),
            })
        };
        let mut out = Vec::new();
        for (i, (name, from)) in self.phases.iter().enumerate() {
            let to = self.phases.get(i + 1).map_or(end, |p| p.1);
            out.extend(summary(name, *from, to));
        }
        let whole = self
            .phases
            .first()
            .and_then(|p| summary("whole run", p.1, end));
        (out, whole)
    }
}

async fn watch(samples: Arc<Mutex<Vec<Sample>>>, stop: CancellationToken) {
    let me = std::process::id();
    let mut prev = scan();
    let mut prev_at = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(PERIOD) => {}
            () = stop.cancelled() => return,
        }
        let now = scan();
        let at = Instant::now();
        let ours = descendants(&now, me);
        let ticks: u64 = now
            .iter()
            .filter(|(pid, p)| !ours.contains(pid) && !p.kernel)
            .map(|(pid, p)| p.ticks.saturating_sub(prev.get(pid).map_or(0, |q| q.ticks)))
            .sum();
        let secs = (at - prev_at).as_secs_f64().max(1e-3);
        if let Ok(mut s) = samples.lock() {
            s.push(Sample {
                at,
                others_cores: ticks as f64 / TICKS_PER_SEC / secs,
                load1: load1(),
            });
        }
        prev = now;
        prev_at = at;
    }
}

/// CPU time (ticks of 10 ms) of this process and its descendants, by process name (the
/// harness itself is "harness"). Compared before and after a transfer, it says which process
/// spent how much of the machine on it.
pub fn tree_cpu() -> HashMap<String, u64> {
    let procs = scan();
    let me = std::process::id();
    let mut out: HashMap<String, u64> = HashMap::new();
    for pid in descendants(&procs, me) {
        if let Some(p) = procs.get(&pid) {
            let name = if pid == me {
                "harness".to_owned()
            } else {
                p.comm.clone()
            };
            *out.entry(name).or_default() += p.ticks;
        }
    }
    out
}

/// `after - before` per name (names that vanished count nothing).
pub fn cpu_delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// CPU time (ticks of 10 ms) of `root` and those of its descendants that `keep` accepts (given
/// the pid), whoever their parent is: a process tree's CPU, e.g. sshd and its per-connection
/// processes, or Chromium's renderers alone.
pub fn subtree_ticks(root: u32, keep: impl Fn(u32) -> bool) -> u64 {
    let procs = scan();
    descendants(&procs, root)
        .into_iter()
        .filter(|&pid| keep(pid))
        .filter_map(|pid| procs.get(&pid).map(|p| p.ticks))
        .sum()
}

/// `root` and every process below it, now.
pub fn descendants_of(root: u32) -> Vec<u32> {
    let mut out: Vec<u32> = descendants(&scan(), root).into_iter().collect();
    out.sort_unstable();
    out
}

/// Whether `/proc/<pid>/cmdline` contains `needle` (Chromium rewrites its processes' titles into
/// one space-separated string, so arguments are not matched one by one).
pub fn cmdline_has(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}

/// Seconds of one tick in [`tree_cpu`].
pub fn tick_secs() -> f64 {
    1.0 / TICKS_PER_SEC
}

/// One process as `/proc/<pid>/stat` shows it.
struct ProcStat {
    /// The command name (at most 15 bytes).
    comm: String,
    ppid: u32,
    /// utime + stime, all threads.
    ticks: u64,
    /// A kernel thread (kthreadd's child, or kthreadd itself).
    kernel: bool,
}

fn scan() -> HashMap<u32, ProcStat> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may vanish between the listing and the read.
        if let Some(p) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            out.insert(
                pid,
                ProcStat {
                    kernel: pid == 2 || p.ppid == 2,
                    ..p
                },
            );
        }
    }
    out
}

/// Fields after the command name, which is in parentheses and may itself hold spaces and ')'.
fn parse_stat(s: &str) -> Option<ProcStat> {
    let close = s.rfind(')')?;
    let comm = s[s.find('(')? + 1..close].to_owned();
    let rest = &s[close + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    Some(ProcStat {
        comm,
        ppid: f.get(1)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        kernel: false,
    })
}

/// `root` and every process below it.
fn descendants(procs: &HashMap<u32, ProcStat>, root: u32) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, p) in procs {
        children.entry(p.ppid).or_default().push(pid);
    }
    let mut out = HashSet::from([root]);
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map_or(&[][..], Vec::as_slice) {
            if out.insert(c) {
                stack.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "1234 (we ird) name)) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        let p = parse_stat(line).unwrap();
        assert_eq!(p.comm, "we ird) name)");
        assert_eq!(p.ppid, 77);
        assert_eq!(p.ticks, 300);
    }

    #[test]
    fn descendants_follow_the_tree() {
        let p = |ppid| ProcStat {
            comm: String::new(),
            ppid,
            ticks: 0,
            kernel: false,
        };
        let procs = HashMap::from([(10, p(1)), (11, p(10)), (12, p(11)), (13, p(1))]);
        let d = descendants(&procs, 10);
        assert_eq!(d, HashSet::from([10, 11, 12]));
    }

    #[test]
    fn this_process_is_seen() {
        let procs = scan();
        assert!(procs.contains_key(&std::process::id()));
    }
}
