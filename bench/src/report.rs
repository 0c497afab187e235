//! BENCHMARKS.md: the machine, the command, each Passerelle figure next to the OpenSSH +
//! websockify figure and the raw `ssh -R` ceiling with their ratios, the idle-agent figures, and
//! issue 6's targets with pass or miss.

use std::fmt::Write as _;

use crate::host::PhaseCpu;

mod text;
use text::{HOW_TO_RUN, NOTES};

/// Figures of one stack; `None` where it was not measured or failed.
#[derive(Debug, Default, Clone)]
pub struct StackFigures {
    pub down_mbs: Option<f64>,
    pub up_mbs: Option<f64>,
    /// Bulk runs that completed, each way, of `runs`.
    pub down_ok: usize,
    pub up_ok: usize,
    pub runs: usize,
    /// CPU-seconds per GB of bulk transfer, by process, most first.
    pub down_cpu: Vec<(String, f64)>,
    pub up_cpu: Vec<(String, f64)>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// API call -> first byte (Passerelle); connect -> first byte elsewhere.
    pub setup_total_p50_ms: Option<f64>,
    pub setup_total_p99_ms: Option<f64>,
    /// Connect (WebSocket handshake) -> first byte.
    pub setup_connect_p50_ms: Option<f64>,
    pub setup_connect_p99_ms: Option<f64>,
    /// Per concurrency level and layout.
    pub concurrent: Vec<ConcurrentLine>,
}

/// How concurrent sessions are laid out over agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Spread round-robin over this many agents (sessions of different workstations).
    Spread { agents: usize },
    /// Every session on one agent connection.
    OneAgent,
}

impl Layout {
    pub fn describe(self) -> String {
        match self {
            Self::Spread { agents: 1 } => "on 1 agent".to_owned(),
            Self::Spread { agents } => format!("over {agents} agents"),
            Self::OneAgent => "on ONE agent".to_owned(),
        }
    }
}

/// One concurrency figure: `sessions` at once laid out as `layout`, medians over the `ok` runs
/// (of `runs`) that completed.
#[derive(Debug, Clone, Copy)]
pub struct ConcurrentLine {
    pub sessions: usize,
    pub layout: Layout,
    pub figures: Option<Concurrent>,
    pub ok: usize,
    pub runs: usize,
}

/// Many sessions at once: medians over runs.
#[derive(Debug, Clone, Copy)]
pub struct Concurrent {
    pub aggregate_mbs: f64,
    pub min_mbs: f64,
    pub max_mbs: f64,
    pub jain: f64,
}

/// One idle-agent scale.
#[derive(Debug, Clone, Default)]
pub struct IdleFigures {
    pub agents: usize,
    pub register_s: f64,
    pub connect_all_s: Option<f64>,
    /// Agents connected at the end of the connect phase.
    pub connected: usize,
    pub rss_before_kib: u64,
    pub rss_with_agents_kib: u64,
    /// Open file descriptors of the broker with the agents connected.
    pub fds_with_agents: usize,
    pub reconnect_from_kill_s: Option<f64>,
    pub reconnect_from_ready_s: Option<f64>,
    pub rss_after_restart_kib: Option<u64>,
    pub online_by_api: Option<usize>,
    /// SSH connections established in all (first ones and after the restart).
    pub connections: usize,
    pub failures: usize,
    pub last_error: Option<String>,
    /// The broker's warnings and errors, summarised.
    pub broker_log: Option<String>,
}

impl IdleFigures {
    pub fn per_agent_kib(&self) -> f64 {
        self.rss_with_agents_kib.saturating_sub(self.rss_before_kib) as f64
            / self.agents.max(1) as f64
    }
}

/// Everything the report shows.
#[derive(Debug, Default)]
pub struct Report {
    pub machine: Vec<(String, String)>,
    pub command: String,
    pub settings: String,
    pub a: StackFigures,
    pub b: StackFigures,
    pub ceiling: StackFigures,
    pub idle: Vec<IdleFigures>,
    /// What other processes did with the CPUs, per phase, and over the whole run.
    pub phases: Vec<PhaseCpu>,
    pub whole_run: Option<PhaseCpu>,
    pub problems: Vec<String>,
}

pub(crate) fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v >= 100.0 => format!("{v:.0}"),
        Some(v) if v.is_finite() && v >= 10.0 => format!("{v:.1}"),
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "—".to_owned(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratio_str(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"))
}

fn conc(s: &StackFigures, n: usize, layout: Layout) -> Option<&ConcurrentLine> {
    s.concurrent
        .iter()
        .find(|c| c.sessions == n && c.layout == layout)
}

/// A figure with "(k of n runs)" when some runs failed.
fn partial(v: Option<f64>, line: Option<&ConcurrentLine>) -> String {
    match line {
        Some(l) if l.ok < l.runs => format!("{} ({} of {} runs)", num(v), l.ok, l.runs),
        _ => num(v),
    }
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# Benchmarks\n");
        let _ = writeln!(
            o,
            "Passerelle (a) against the stack it replaces (b): OpenSSH sshd receiving `ssh -R` plus websockify \
             in front of the forwarded port, and the raw `ssh -R` tunnel without WebSocket as the ceiling. \
             Same machine, same run, same OpenSSH client as the agent, loopback only. The sections up to \
             \"Problems during this run\" are written by `passerelle-bench` (bench/); an \"Analysis\" \
             section, if any, is written by hand about this run.\n"
        );
        let _ = writeln!(o, "## Machine and command\n");
        for (k, v) in &self.machine {
            let _ = writeln!(o, "- {k}: {v}");
        }
        let _ = writeln!(o, "- command: `{}`", self.command);
        let _ = writeln!(o, "- settings: {}\n", self.settings);
        self.comparison(&mut o);
        self.cpu_per_gb(&mut o);
        self.idle_table(&mut o);
        self.targets(&mut o);
        self.cpu_table(&mut o);
        o.push_str(HOW_TO_RUN);
        o.push_str(NOTES);
        if !self.problems.is_empty() {
            let _ = writeln!(o, "## Problems during this run\n");
            for p in &self.problems {
                let _ = writeln!(o, "- {}", p.replace('\n', " / "));
            }
            let _ = writeln!(o);
        }
        o
    }

    fn cpu_per_gb(&self, o: &mut String) {
        let stacks = [
            ("(a) Passerelle", &self.a),
            ("(b) sshd + websockify", &self.b),
            ("raw `ssh -R` ceiling", &self.ceiling),
        ];
        if stacks
            .iter()
            .all(|(_, s)| s.down_cpu.is_empty() && s.up_cpu.is_empty())
        {
            return;
        }
        let _ = writeln!(o, "## CPU per GB moved (bulk)\n");
        let _ = writeln!(
            o,
            "CPU-seconds spent per 10^9 bytes of bulk transfer, by process, over all runs (from \
             `/proc/<pid>/stat`, 10 ms ticks). \"harness\" is the measuring client and the \
             workstation's service together (the same for (a) and (b)); \"ssh\" is the agent. On \
             2 cores, throughput is about 2 / total when nothing else runs.\n"
        );
        let _ = writeln!(o, "| stack | direction | total | by process |");
        let _ = writeln!(o, "| --- | --- | ---: | --- |");
        for (name, s) in stacks {
            for (dir, cpu) in [
                ("workstation → viewer", &s.down_cpu),
                ("viewer → workstation", &s.up_cpu),
            ] {
                if cpu.is_empty() {
                    continue;
                }
                let total: f64 = cpu.iter().map(|c| c.1).sum();
                let parts: Vec<String> = cpu.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
                let _ = writeln!(o, "| {name} | {dir} | {total:.2} | {} |", parts.join(", "));
            }
        }
        let _ = writeln!(o);
    }

    fn cpu_table(&self, o: &mut String) {
        if self.phases.is_empty() {
            return;
        }
        let _ = writeln!(o, "## Other work on the machine during the run\n");
        let _ = writeln!(
            o,
            "CPU time of processes other than the benchmark's (not the harness, broker, sshd, ssh, \
             websockify, nor kernel threads), sampled every second from `/proc`, in cores (2 = both \
             cores busy); and the 1-minute load average, which includes the benchmark itself.\n"
        );
        let _ = writeln!(
            o,
            "| phase | duration, s | other processes' CPU mean / max, cores | 1-min load min / max |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: |");
        for p in self.phases.iter().chain(&self.whole_run) {
            let _ = writeln!(
                o,
                "| {} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} |",
                p.name, p.secs, p.others_mean, p.others_max, p.load_min, p.load_max
            );
        }
        let _ = writeln!(o);
    }

    fn comparison(&self, o: &mut String) {
        let _ = writeln!(o, "## Passerelle (a) against OpenSSH + websockify (b)\n");
        let _ = writeln!(
            o,
            "| figure | (a) Passerelle | (b) sshd + websockify | a/b | raw `ssh -R` ceiling | a/ceiling |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: |");
        let (a, b, c) = (&self.a, &self.b, &self.ceiling);
        // A bulk figure from fewer runs than asked says so.
        let cell = |s: &StackFigures, v: Option<f64>, ok: Option<usize>| match ok {
            Some(k) if v.is_some() && k < s.runs => format!("{} ({k} of {} runs)", num(v), s.runs),
            _ => num(v),
        };
        let mut row_with = |name: &str,
                            f: fn(&StackFigures) -> Option<f64>,
                            ok: fn(&StackFigures) -> Option<usize>| {
            let (va, vb, vc) = (f(a), f(b), f(c));
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} | {} |",
                cell(a, va, ok(a)),
                cell(b, vb, ok(b)),
                ratio_str(ratio(va, vb)),
                cell(c, vc, ok(c)),
                ratio_str(ratio(va, vc))
            );
        };
        row_with(
            "bulk workstation → viewer, MB/s",
            |s| s.down_mbs,
            |s| Some(s.down_ok),
        );
        row_with(
            "bulk viewer → workstation, MB/s",
            |s| s.up_mbs,
            |s| Some(s.up_ok),
        );
        let mut row = |name: &str, f: fn(&StackFigures) -> Option<f64>| row_with(name, f, |_| None);
        row("64-byte round trip p50, ms", |s| s.rtt_p50_ms);
        row("64-byte round trip p99, ms", |s| s.rtt_p99_ms);
        row("set-up, connect → first byte p50, ms", |s| {
            s.setup_connect_p50_ms
        });
        row("set-up, connect → first byte p99, ms", |s| {
            s.setup_connect_p99_ms
        });
        let _ = writeln!(
            o,
            "| set-up, API call → first byte p50 / p99, ms | {} / {} | n/a (sleep-based) | | | |",
            num(a.setup_total_p50_ms),
            num(a.setup_total_p99_ms)
        );
        let mut lines: Vec<(usize, Layout)> = a
            .concurrent
            .iter()
            .chain(&b.concurrent)
            .map(|c| (c.sessions, c.layout))
            .collect();
        // Spread lines first, then ONE agent; each by session count.
        lines.sort_by_key(|&(n, l)| (matches!(l, Layout::OneAgent), n));
        lines.dedup();
        for (n, layout) in lines {
            let (la, lb, lc) = (conc(a, n, layout), conc(b, n, layout), conc(c, n, layout));
            let agg =
                |l: Option<&ConcurrentLine>| l.and_then(|l| l.figures).map(|x| x.aggregate_mbs);
            let (ga, gb, gc) = (agg(la), agg(lb), agg(lc));
            let what = format!("{n} sessions {}", layout.describe());
            let _ = writeln!(
                o,
                "| {what}: aggregate MB/s | {} | {} | {} | {} | {} |",
                partial(ga, la),
                partial(gb, lb),
                ratio_str(ratio(ga, gb)),
                partial(gc, lc),
                ratio_str(ratio(ga, gc))
            );
            let fair = |l: Option<&ConcurrentLine>| {
                l.and_then(|l| l.figures).map_or_else(
                    || "—".to_owned(),
                    |c| {
                        format!(
                            "{} / {} ({:.3})",
                            num(Some(c.min_mbs)),
                            num(Some(c.max_mbs)),
                            c.jain
                        )
                    },
                )
            };
            let _ = writeln!(
                o,
                "| {what}: min / max per session MB/s (Jain) | {} | {} | | {} | |",
                fair(la),
                fair(lb),
                fair(lc)
            );
        }
        let _ = writeln!(o);
    }

    fn idle_table(&self, o: &mut String) {
        if self.idle.is_empty() {
            return;
        }
        let _ = writeln!(o, "## Idle agents (Passerelle)\n");
        let _ = writeln!(
            o,
            "| agents | register (API), s | connected | all connected, s | broker RSS before / with agents, MiB | per agent, KiB | broker fds | \
             all back after restart: from kill / from ready, s | RSS after restart, MiB | online per API | connections / failed attempts |"
        );
        let _ = writeln!(
            o,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for f in &self.idle {
            let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
            let _ = writeln!(
                o,
                "| {} | {:.1} | {} | {} | {} / {} | {:.1} | {} | {} / {} | {} | {} | {} / {} |",
                f.agents,
                f.register_s,
                f.connected,
                num(f.connect_all_s),
                mib(f.rss_before_kib),
                mib(f.rss_with_agents_kib),
                f.per_agent_kib(),
                f.fds_with_agents,
                num(f.reconnect_from_kill_s),
                num(f.reconnect_from_ready_s),
                f.rss_after_restart_kib.map_or_else(|| "—".to_owned(), mib),
                f.online_by_api
                    .map_or_else(|| "—".to_owned(), |n| n.to_string()),
                f.connections,
                f.failures
            );
        }
        let _ = writeln!(o);
    }

    fn targets(&self, o: &mut String) {
        let _ = writeln!(o, "## Targets (issue 6)\n");
        let _ = writeln!(o, "| target | measured | verdict |");
        let _ = writeln!(o, "| --- | ---: | --- |");
        let (a, b, c) = (&self.a, &self.b, &self.ceiling);
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "not measured",
        };
        let mut line = |name: &str, shown: String, ok: Option<bool>| {
            let _ = writeln!(o, "| {name} | {shown} | {} |", verdict(ok));
        };
        let r = ratio(a.down_mbs, b.down_mbs);
        line("throughput ≥ 1.3× (b)", ratio_str(r), r.map(|r| r >= 1.3));
        let r = ratio(a.down_mbs, c.down_mbs);
        line(
            "throughput ≥ 0.9× raw `ssh -R`",
            ratio_str(r),
            r.map(|r| r >= 0.9),
        );
        let r = ratio(a.rtt_p50_ms, b.rtt_p50_ms);
        line(
            "round trip p50 ≤ 0.7× (b)",
            ratio_str(r),
            r.map(|r| r <= 0.7),
        );
        let r = ratio(a.rtt_p99_ms, b.rtt_p99_ms);
        line(
            "round trip p99 ≤ 1.0× (b)",
            ratio_str(r),
            r.map(|r| r <= 1.0),
        );
        let s = a.setup_total_p50_ms;
        line(
            "set-up p50 (API → first byte) < 50 ms",
            format!("{} ms", num(s)),
            s.map(|s| s < 50.0),
        );
        let big = self.idle.iter().find(|f| f.agents == 10_000);
        let of = |f: &IdleFigures| {
            if f.connected < f.agents {
                format!(" ({} of {} connected)", f.connected, f.agents)
            } else {
                String::new()
            }
        };
        line(
            "idle agent memory < 64 KiB each at 10,000",
            big.map_or_else(
                || "—".to_owned(),
                |f| format!("{:.1} KiB{}", f.per_agent_kib(), of(f)),
            ),
            big.map(|f| f.connected == f.agents && f.per_agent_kib() < 64.0),
        );
        line(
            "10,000 agents reconnect within 60 s",
            big.map_or_else(
                || "—".to_owned(),
                |f| format!("{} s{}", num(f.reconnect_from_kill_s), of(f)),
            ),
            big.map(|f| {
                f.connected == f.agents && f.reconnect_from_kill_s.is_some_and(|s| s <= 60.0)
            }),
        );
        let _ = writeln!(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sessions: usize, layout: Layout, ok: usize) -> ConcurrentLine {
        ConcurrentLine {
            sessions,
            layout,
            figures: Some(Concurrent {
                aggregate_mbs: 300.0,
                min_mbs: 29.0,
                max_mbs: 31.0,
                jain: 0.999,
            }),
            ok,
            runs: 5,
        }
    }

    #[test]
    fn spread_and_one_agent_lines_are_labelled_and_partial_runs_shown() {
        let mut r = Report::default();
        r.a.concurrent = vec![
            line(10, Layout::Spread { agents: 10 }, 5),
            line(10, Layout::OneAgent, 3),
        ];
        r.b.concurrent = vec![
            line(10, Layout::Spread { agents: 10 }, 5),
            line(10, Layout::OneAgent, 5),
        ];
        let md = r.to_markdown();
        assert!(md.contains("| 10 sessions over 10 agents: aggregate MB/s | 300 | 300 | 1.00× |"));
        assert!(
            md.contains("| 10 sessions on ONE agent: aggregate MB/s | 300 (3 of 5 runs) | 300 |")
        );
        let spread = md.find("over 10 agents").unwrap_or(usize::MAX);
        let one = md.find("on ONE agent: aggregate").unwrap_or(0);
        assert!(spread < one, "spread lines come first");
    }
}
