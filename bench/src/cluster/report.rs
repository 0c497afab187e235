//! The cluster section of the report: same node against cross node, and the idle agents with
//! one node killed, as markdown tables.

use std::fmt::Write as _;

use super::idle::{IdleCluster, NodeFigures};
use super::streams::{PathFigures, StreamFigures, change_pct};
use crate::report::num;

pub(super) fn secs(v: Option<f64>) -> String {
    v.map_or_else(
        || "never (within the limit)".to_owned(),
        |v| format!("{v:.1} s"),
    )
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:+.0} %"))
}

fn diff_ms(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.2} ms", a - b),
        _ => "—".to_owned(),
    }
}

/// `node1 1.23, node2 0.45, ssh 0.30` (CPU-s per GB, most first, those above 0.005).
fn cpu(list: &[(String, f64)]) -> String {
    let shown: Vec<String> = (list.iter())
        .filter(|(_, v)| *v >= 0.005)
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    if shown.is_empty() {
        "—".to_owned()
    } else {
        shown.join(", ")
    }
}

fn mbs(v: Option<f64>, ok: usize, runs: usize) -> String {
    if ok < runs {
        format!("{} ({ok}/{runs} runs)", num(v))
    } else {
        num(v)
    }
}

/// The same node / cross node table.
pub fn streams(f: &StreamFigures, runs: usize, bulk_mib: u64) -> String {
    let (s, c): (&PathFigures, &PathFigures) = (&f.same, &f.cross);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "One stock OpenSSH agent connected straight to node1's SSH port (not through HAProxy, so \
         that node1 holds it); the viewer's session is made and viewed through node1 (same node) \
         or through node2, which forwards the API call and the WebSocket to node1 over the node \
         link (cross node). Bulk {bulk_mib} MiB, medians of {runs} runs; CPU is each process's \
         time around each transfer (session set-up included), per GB moved.\n"
    );
    let _ = writeln!(
        out,
        "| | {} | {} | cross vs same |\n|---|---:|---:|---:|",
        s.label, c.label
    );
    let rows = [
        (
            "download MB/s (agent → viewer)",
            mbs(s.down_mbs, s.down_ok, runs),
            mbs(c.down_mbs, c.down_ok, runs),
            pct(change_pct(c.down_mbs, s.down_mbs)),
        ),
        (
            "upload MB/s (viewer → agent)",
            mbs(s.up_mbs, s.up_ok, runs),
            mbs(c.up_mbs, c.up_ok, runs),
            pct(change_pct(c.up_mbs, s.up_mbs)),
        ),
        (
            "64-byte round trip p50 (ms)",
            num(s.rtt_p50_ms),
            num(c.rtt_p50_ms),
            diff_ms(c.rtt_p50_ms, s.rtt_p50_ms),
        ),
        (
            "64-byte round trip p99 (ms)",
            num(s.rtt_p99_ms),
            num(c.rtt_p99_ms),
            diff_ms(c.rtt_p99_ms, s.rtt_p99_ms),
        ),
        (
            "set-up p50: API call → first byte (ms)",
            num(s.setup_p50_ms),
            num(c.setup_p50_ms),
            diff_ms(c.setup_p50_ms, s.setup_p50_ms),
        ),
        (
            "set-up p99 (ms)",
            num(s.setup_p99_ms),
            num(c.setup_p99_ms),
            diff_ms(c.setup_p99_ms, s.setup_p99_ms),
        ),
        (
            "CPU-s per GB, download",
            cpu(&s.down_cpu),
            cpu(&c.down_cpu),
            String::new(),
        ),
        (
            "CPU-s per GB, upload",
            cpu(&s.up_cpu),
            cpu(&c.up_cpu),
            String::new(),
        ),
    ];
    for (name, a, b, d) in rows {
        let _ = writeln!(out, "| {name} | {a} | {b} | {d} |");
    }
    let _ = writeln!(
        out,
        "\nCipher negotiated by the agent: {}. Load average before: {}; after: {}.",
        f.cipher.as_deref().unwrap_or("unknown"),
        f.load_before,
        f.load_after
    );
    if let Some(e) = &f.agent_exited {
        let _ = writeln!(
            out,
            "\n**The agent's connection ended during the run:** {e}"
        );
    }
    out
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "—".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

fn node<'a>(list: &'a [NodeFigures], name: &str) -> Option<&'a NodeFigures> {
    list.iter().find(|n| n.name == name)
}

/// The idle-agent tables.
pub fn idle(f: &IdleCluster) -> String {
    let n = f.agents;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{n} idle agents (russh load generator, `tcpip_forward(\"vnc\")` each, reconnecting on \
         drop) through HAProxy's SSH frontend (`balance leastconn`, PROXY v2, checks every 1 s, \
         fall 2), then `kill -9` of {}. Registration through node1 took {:.1} s.\n",
        f.killed, f.register_s
    );
    let _ = writeln!(
        out,
        "| node | agents (`cluster status`) | HAProxy SSH conns | RSS before (MiB) | RSS with \
         agents (MiB) | KiB per agent | open fds | agents after the kill | RSS after the kill \
         (MiB) | agents after its restart |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for w in &f.with_agents {
        let before = node(&f.before, &w.name).and_then(|b| b.rss_kib);
        let per_agent = match (w.rss_kib, before, w.agents) {
            (Some(a), Some(b), Some(k)) if k > 0 => {
                format!("{:.1}", a.saturating_sub(b) as f64 / k as f64)
            }
            _ => "—".to_owned(),
        };
        let after = node(&f.after_kill, &w.name);
        let restarted = node(&f.after_restart, &w.name);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {per_agent} | {} | {} | {} | {} |",
            w.name,
            opt(w.agents),
            opt(w.lb_conns),
            mib(before),
            mib(w.rss_kib),
            opt(w.fds),
            opt(after.and_then(|a| a.agents)),
            mib(after.and_then(|a| a.rss_kib)),
            opt(restarted.and_then(|a| a.agents)),
        );
    }
    let _ = writeln!(out, "\n| event | time |\n|---|---:|");
    let rows = [
        (
            format!("all {n} online at the generator, from its start"),
            secs(f.connect_all_s),
        ),
        (
            format!("`cluster status` shows all {n} held, from the start"),
            secs(f.presence_all_s),
        ),
        (
            format!(
                "after `kill -9 {}` (online dipped by {}; {} reconnections): HAProxy takes it out \
                 of rotation (`DOWN`)",
                f.killed, f.dropped, f.reconnections
            ),
            secs(f.lb_down_s),
        ),
        (
            format!("all {n} online again at the generator (via the survivors), from the kill"),
            secs(f.back_s),
        ),
        (
            format!(
                "`cluster status` shows the survivors holding all {n}, from the kill (the API \
                 then counted {} online)",
                opt(f.api_online)
            ),
            secs(f.presence_back_s),
        ),
        (
            format!(
                "`cluster status` calls {} dead (15 s lease), from the kill",
                f.killed
            ),
            secs(f.dead_s),
        ),
        (
            format!(
                "{} restarted: `cluster status` shows it up, from its banner",
                f.killed
            ),
            secs(f.rejoin_status_s),
        ),
        (
            format!(
                "{} restarted: HAProxy has it up (rise 2), from its banner",
                f.killed
            ),
            secs(f.rejoin_lb_s),
        ),
    ];
    for (what, t) in rows {
        let _ = writeln!(out, "| {what} | {t} |");
    }
    let intro = format!(
        "from the generator's start until `cluster status` showed all {n} present ({n} \
         connections), and from the kill until it showed the survivors holding all ({r} \
         reconnections). \"harness\" is the load generator and the harness's polls",
        n = f.agents,
        r = f.reconnections
    );
    out.push_str(&cpu_table(
        (&f.connect_cpu, f.agents),
        (&f.recover_cpu, f.reconnections),
        &intro,
    ));
    out.push_str(&totals(
        (f.connections, f.failures, f.last_error.as_deref()),
        [&f.load_start, &f.load_kill, &f.load_end],
    ));
    out
}

/// An idle figure's closing line: `(connections, failed attempts, the last failure)` and the
/// load averages at the start, at the kill and at the end.
pub(super) fn totals(
    (connections, failures, last_error): (usize, usize, Option<&str>),
    [start, kill, end]: [&str; 3],
) -> String {
    let last = last_error
        .map(|e| format!(" (the last: `{e}`)"))
        .unwrap_or_default();
    format!(
        "\n{connections} SSH connections in all, {failures} failed attempts{last}. Load average at \
         the start: {start}; at the kill: {kill}; at the end: {end}.\n"
    )
}

/// CPU-seconds by part in the connect and the recovery phases (each with the connections it
/// made), and per connection; `phases` says what the phases are.
pub(super) fn cpu_table(
    (connect, connections): (&[(String, f64)], usize),
    (recover, reconnections): (&[(String, f64)], usize),
    phases: &str,
) -> String {
    let mut out = String::new();
    if connect.is_empty() && recover.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nCPU-seconds spent, and their share per connection made (CPU-ms; the column's sum is \
         what one connection costs the machine, a node's share is its part of what one costs \
         the node that handles it), {phases} (one `passerelle cluster status` every 0.5–1 s is \
         not in it: \"others\"); \"others\" is the rest of the machine, other people's work \
         included.\n\n\
         | part | connect: CPU-s | ms per connection | recovery: CPU-s | ms per reconnection |\n\
         |---|---:|---:|---:|---:|"
    );
    let names: Vec<&String> =
        (connect.iter().chain(recover))
            .map(|(n, _)| n)
            .fold(Vec::new(), |mut v, n| {
                if !v.contains(&n) {
                    v.push(n);
                }
                v
            });
    let get =
        |list: &[(String, f64)], name: &str| list.iter().find(|(n, _)| n == name).map(|p| p.1);
    let per = |v: Option<f64>, k: usize| match v {
        Some(v) if k > 0 => format!("{:.2}", v * 1e3 / k as f64),
        _ => "—".to_owned(),
    };
    for name in names {
        let (c, r) = (get(connect, name), get(recover, name));
        if name == "wall" {
            let _ = writeln!(out, "| (wall clock, s) | {} | | {} | |", num(c), num(r));
            continue;
        }
        if c.unwrap_or(0.0) < 0.005 && r.unwrap_or(0.0) < 0.005 {
            continue;
        }
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            num(c),
            per(c, connections),
            num(r),
            per(r, reconnections)
        );
    }
    out
}
